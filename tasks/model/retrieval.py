"""Candidates from a large catalogue: an inverted-file index over the unit item vectors.

Ranking a user against the whole catalogue costs interests x items x d multiply-adds and a top-k
over every item; at 100k items and four interests that is about half of scoring's time, the user
tower the rest (bench/results/scoring.md). An
inverted-file index (faiss's IndexIVFFlat, inner product) clusters the unit item vectors into
`lists` cells by k-means; a query visits the `probes` cells whose centroids it matches best and
scores their items exactly. Each interest retrieves its best `candidates` items, and the
recommender ranks the union of every interest's candidates with exact scores, as it ranks the whole
catalogue (tasks.model.recommender). It is approximate: an item in a cell no interest visits is
never listed. Publishing measures what it misses (recall against exact ranking on a sample of
users) and records it with the run (tasks.publish.materialize).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

log = logging.getLogger(__name__)

MIN_POINTS_PER_LIST = 39  # faiss's k-means wants at least this many items a cell


def default_lists(items: int) -> int:
    """Cells for `items` vectors: ~4 sqrt(items) (faiss's guidance for IVF), each with enough items to train."""
    return max(1, min(round(4 * math.sqrt(items)), items // MIN_POINTS_PER_LIST))


class ItemIndex:
    """An inverted-file index over the rows of `unit_items` [N+1, d] where `listable` [N+1] is True;
    search returns those rows' indices (the recommender's item indices)."""

    def __init__(self, unit_items: torch.Tensor, listable: torch.Tensor, lists: int | None = None,
                 probes: int = 32, seed: int = 0):
        import faiss

        started = time.perf_counter()
        ids = torch.nonzero(listable).flatten().numpy().astype(np.int64)
        if not len(ids):
            raise ValueError("no listable items to index")
        vectors = np.ascontiguousarray(unit_items[torch.from_numpy(ids)].numpy(), dtype=np.float32)
        self.lists = min(lists or default_lists(len(ids)), max(1, len(ids) // MIN_POINTS_PER_LIST))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], self.lists,
                                        faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = seed
        self.index.train(vectors)
        self.index.add_with_ids(vectors, ids)
        self.probe(probes)
        self.items = len(ids)
        self.build_seconds = time.perf_counter() - started
        log.info("indexed %d items in %d lists (%d probed a query) in %.1fs", self.items, self.lists, self.probes,
                 self.build_seconds)

    def __getstate__(self) -> dict:
        """Picklable (faiss's own serialisation): a scoring process receives the index publishing built and tuned."""
        import faiss

        return {**self.__dict__, "index": faiss.serialize_index(self.index)}

    def __setstate__(self, state: dict) -> None:
        import faiss

        self.__dict__.update(state)
        self.index = faiss.deserialize_index(state["index"])
        self.probe(state["probes"])

    def probe(self, probes: int) -> None:
        """Visit `probes` cells a query from now on (at most every cell)."""
        self.probes = self.index.nprobe = max(1, min(probes, self.lists))

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Queries [Q, d] -> the indices of their `k` best items by inner product [Q, k], best
        first (0 where a query's probed cells hold fewer than k items)."""
        _, found = self.index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
        return torch.from_numpy(np.where(found < 0, 0, found))
