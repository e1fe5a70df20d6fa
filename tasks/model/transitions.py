"""A transition prior: what people took right after the titles a user took last.

The user tower reads a whole history, and still the plain counts of "who watched A, watched B next" know
something it does not: on ML-1M's leave-one-out targets taken later than the history's latest item, adding them
after training lifts test NDCG@10 by ~0.005 over the model and its trend prior (docs/experiments.md, v90). With
`train.transition_prior`, each item's score under every interest gets

    weight * log(1 + p / SMOOTHING),    p = sum over k = 1..RECENT of P(item | k-th latest history item) / k

where P(b | a) is the share of a's direct successors in the training histories that were b, kept for a's TOP
most frequent successors. A succession is a pair taken one after the other at a later time: items saved at one
time (a page of ratings, tasks.data.prepare's `tied`) follow each other in the source's order, which no user
chose, so they make no pair (counted, they made the whole of an earlier leave-one-out gain on ML-1M, and cost on
its time split: docs/experiments.md, v86-v90). An item that never followed any of the latest items (a new
title among them) gets nothing, so the prior only lifts. The weight is fitted on validation NDCG@10 after
training and the trend prior (tasks.training.transition_fit; 0 included) and saved with the model
(`transitions.npz`), with the successor table it publishes with. Off by default: leave-one-out validation on
ML-1M, 42 % of whose targets share the second of the history's latest rating, chooses 0 (v90), and on the time
split it is level on trained titles and costs new titles a little (v89).

The table, as for the trend prior's counts:
- evaluation (the gate, the benchmarks): the split's training histories only (held-out targets never count);
- publishing and the MLflow pyfunc: the table saved with the model, from every interaction of its data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RECENT = 3  # latest history items whose successors count, the k-th weighted 1/k
TOP = 100  # successors kept per item: the table is [items, TOP], whatever the catalogue's size
SMOOTHING = 1e-3  # p below this lifts little: log(1 + p / SMOOTHING)
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)  # logit units; scores are ~20 x cosine
TRANSITION_CANDIDATES = 64  # items the candidate index adds to each list's candidates: its most lifted


@dataclass(frozen=True)
class TransitionPrior:
    """A fitted prior: its weight, and the successor table it scores with, in app item ids."""

    weight: float
    item_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [S] items with successors
    successors: np.ndarray = field(default_factory=lambda: np.zeros((0, TOP), dtype=np.int64))  # [S, TOP], -1: none
    shares: np.ndarray = field(default_factory=lambda: np.zeros((0, TOP), dtype=np.float32))  # [S, TOP] P(b | a)
    fit: dict = field(default_factory=dict)  # validation NDCG@10 per weight, for the record

    def save(self, path: Path) -> None:
        np.savez(path, weight=np.float64(self.weight), item_ids=self.item_ids, successors=self.successors,
                 shares=self.shares, fit=np.array(json.dumps(self.fit)))

    @classmethod
    def load(cls, path: Path) -> TransitionPrior | None:
        """The prior saved at `path`, or None where training fitted none."""
        path = Path(path)
        if not path.exists():
            return None
        with np.load(path) as data:
            return cls(weight=float(data["weight"]), item_ids=data["item_ids"], successors=data["successors"],
                       shares=data["shares"], fit=json.loads(str(data["fit"])))

    def with_table(self, table: tuple[np.ndarray, np.ndarray, np.ndarray]) -> TransitionPrior:
        """The same weight with another successor table (successor_table's)."""
        item_ids, successors, shares = table
        return TransitionPrior(self.weight, item_ids, successors, shares, self.fit)


NO_SUCCESSIONS = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))  # no successions: successor_table(NO_SUCCESSIONS, ...)


def successor_table(successions: tuple[np.ndarray, np.ndarray], item_ids: np.ndarray,
                    top: int = TOP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From direct successions (a, b) of item indices (into `item_ids`, an app id per index; 0 unused), as
    Sequences.successions gives them: every item's `top` most frequent successors, as app ids ([S], [S, top]
    with -1 where fewer) and their shares of its successors ([S, top] float32)."""
    a, b = (np.asarray(side, dtype=np.int64) for side in successions)
    if not len(a):
        return np.zeros(0, dtype=np.int64), np.zeros((0, top), dtype=np.int64), np.zeros((0, top), dtype=np.float32)
    width = len(item_ids)
    pairs, counts = np.unique(a * width + b, return_counts=True)  # sorted by a, then b
    a, b = pairs // width, pairs % width
    totals = np.bincount(a, weights=counts, minlength=width)
    # Within each a, most frequent first (ties by item): a stable sort on -count inside a's block.
    order = np.lexsort((b, -counts, a))
    a, b, counts = a[order], b[order], counts[order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    rank = np.arange(len(a)) - np.repeat(starts, np.diff(np.r_[starts, len(a)]))
    keep = rank < top
    sources = a[starts]
    row = np.searchsorted(sources, a[keep])
    successors = np.full((len(sources), top), -1, dtype=np.int64)
    shares = np.zeros((len(sources), top), dtype=np.float32)
    successors[row, rank[keep]] = item_ids[b[keep]]
    shares[row, rank[keep]] = counts[keep] / totals[a[keep]]
    return np.asarray(item_ids)[sources].astype(np.int64), successors, shares


class TransitionTable:
    """A successor table in one model's indices: [N+1, TOP] successor indices (0: none) and shares."""

    def __init__(self, prior: TransitionPrior, index_of):
        """`index_of`: app item id -> the model's index (a pandas Series); items it does not hold are left out."""
        width = len(index_of) + 1
        top = prior.successors.shape[1]
        self.successors = torch.zeros((width, top), dtype=torch.long)
        self.shares = torch.zeros((width, top), dtype=torch.float32)
        rows = index_of.reindex(prior.item_ids).fillna(0).to_numpy(np.int64)
        known = rows > 0
        columns = index_of.reindex(prior.successors[known].ravel()).fillna(0).to_numpy(np.int64)
        columns = columns.reshape(-1, top)
        self.successors[rows[known]] = torch.tensor(columns)
        self.shares[rows[known]] = torch.from_numpy(np.where(columns > 0, prior.shares[known], 0.0).astype(np.float32))
        self.weight = prior.weight

    def lift(self, histories, width: int) -> torch.Tensor:
        """The prior's score shift [B, width] for histories of model indices (their latest RECENT items)."""
        mass = torch.zeros((len(histories), width), dtype=torch.float32)
        for k in range(1, RECENT + 1):
            latest = torch.as_tensor(np.fromiter((h[-k] if len(h) >= k else 0 for h in histories), dtype=np.int64,
                                                 count=len(histories)))
            mass.scatter_add_(1, self.successors[latest], self.shares[latest] / k)
        mass[:, 0] = 0.0  # index 0: padding and "no successor"
        return torch.log1p(mass.div_(SMOOTHING)).mul_(self.weight)
