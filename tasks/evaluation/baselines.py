"""The gate's baselines: what a PrismRec candidate must beat, scored by the same code on the same split.

Each `fit_<name>(sequences, items, **hyper) -> Scorer` trains on the TRAINING histories only
(`sequences.histories(2)`). A scorer receives whatever history the split gives it (for the
test split that includes the validation item) and may use it as input, but nothing is refit
on it. `tune` picks hyper-parameters on validation NDCG@10 only; the test split is never read.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
import torch

from tasks.data.prepare import Sequences
from tasks.errors import ConfigError
from tasks.evaluation.metrics import SELECTION_METRIC, evaluate_scores
from tasks.evaluation.scoring import SPLITS, Scorer, popularity_scorer, scored_batches

log = logging.getLogger(__name__)

FitFunction = Callable[..., Scorer]


def interaction_matrix(histories: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary user x item matrix [U, n_items + 1] (column 0 = padding, always empty)."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if len(histories) else np.array([], dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                           shape=(len(histories), n_items + 1))
    matrix.data[:] = 1.0  # repeated interactions count once
    return matrix


def _dense_rows(histories: Sequence[np.ndarray], n_items: int) -> torch.Tensor:
    return torch.from_numpy(interaction_matrix(histories, n_items).toarray())


def validation_ndcg(scorer: Scorer, sequences: Sequences) -> float:
    """The selection metric (NDCG@10) on the validation targets, from the training histories."""
    histories = sequences.histories(SPLITS["valid"])
    batches = scored_batches(scorer, histories, sequences.targets("valid"))
    return evaluate_scores(batches, sequences.n_items)[SELECTION_METRIC]


# ------------------------------------------------------------------ popularity


def fit_popularity(sequences: Sequences, items: pd.DataFrame) -> Scorer:
    """The same popularity scorer the pipeline's gate uses."""
    return popularity_scorer(sequences)


# ------------------------------------------------------------------ item-kNN


def fit_itemknn(sequences: Sequences, items: pd.DataFrame, neighbours: int = 100, shrink: float = 10.0) -> Scorer:
    """Item-item cosine CF: sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrink), top-k per item.

    A user's score for item j is the sum of j's similarities to the history items. One float32
    items x items matrix: the co-occurrence counts become the similarities in place, a block of
    rows at a time.
    """
    sim = cooccurrence(interaction_matrix(sequences.histories(2), sequences.n_items), np.float32)
    counts = np.diag(sim).copy()
    for rows in row_blocks(sim.shape[0], sim.shape[1]):
        sim[rows] /= np.sqrt(counts[rows, None] * counts[None, :]) + shrink + 1e-9
    np.fill_diagonal(sim, 0.0)
    sim = torch.from_numpy(sim)
    if neighbours < sim.shape[0]:
        # Keep each history item's k most similar items (its neighbourhood), zero the rest.
        for rows in row_blocks(sim.shape[0], sim.shape[1]):
            block = sim[rows]
            top = block.topk(neighbours, dim=1)
            block.zero_().scatter_(1, top.indices, top.values)

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        return _dense_rows(histories, sequences.n_items) @ sim

    return score


# ------------------------------------------------------------------ EASE^R


# Peak bytes per items x items cell while a baseline's grid is searched (the best fit so far kept,
# 4 bytes a cell): item-kNN's one float32 matrix; EASE's float64 Gram matrix, inverted in place,
# beside the float32 copy of its weights. Measured in tests/unit/evaluation/test_baseline_memory.py.
PEAK_BYTES_PER_CELL = {"itemknn": 8, "ease": 16}
BLOCK_BYTES = 64 << 20  # the temporaries of one block of rows or columns, at most
BLOCKS = 16  # and at most this share of the matrix


def row_blocks(rows: int, width: int, bytes_per_cell: int = 8) -> list[slice]:
    """Slices of `rows` whose [block, width] temporaries hold at most BLOCK_BYTES and 1/BLOCKS of the rows."""
    step = max(1, min(-(-rows // BLOCKS), BLOCK_BYTES // (bytes_per_cell * max(width, 1))))
    return [slice(start, start + step) for start in range(0, rows, step)]


def cooccurrence(matrix: sp.csr_matrix, dtype: type) -> np.ndarray:
    """XᵀX as a dense items x items array of `dtype`, a block of columns at a time: the sparse product
    of a whole catalogue (~8 bytes a co-occurring pair) is never held beside it."""
    n = matrix.shape[1]
    out = np.empty((n, n), dtype=dtype)
    transposed, columns = matrix.T.tocsr(), matrix.tocsc()
    for block in row_blocks(n, n, 12):
        out[:, block] = (transposed @ columns[:, block]).toarray()
    return out


def ease_weights(matrix: sp.spmatrix, l2: float) -> np.ndarray:
    """EASE^R closed form (Steck 2019): P = (XᵀX + λI)⁻¹, B = I - P·diag(1/diag(P)), diag(B) = 0.
    One items x items float64 matrix: the Gram matrix is inverted in its own memory (LAPACK getrf
    and getri; it is symmetric, so its transpose is the Fortran-ordered matrix LAPACK overwrites)
    and B is computed there too."""
    gram = cooccurrence(matrix, np.float64)
    gram[np.diag_indices_from(gram)] += l2
    precision = scipy.linalg.inv(gram.T, overwrite_a=True, check_finite=False).T
    del gram
    precision /= -np.diag(precision).copy()[None, :]
    np.fill_diagonal(precision, 0.0)
    return precision


def check_baselines_fit(names: Sequence[str], n_items: int, memory_bytes: float, machine_bytes: float) -> None:
    """Refuse a gate whose items x items baselines cannot fit in `memory_bytes` for this catalogue
    (asked before training, so that hours of it are not lost to an out-of-memory kill in evaluate)."""
    need = {name: PEAK_BYTES_PER_CELL[name] * (n_items + 1) ** 2 for name in names if name in PEAK_BYTES_PER_CELL}
    too_large = [name for name, size in need.items() if size > memory_bytes]
    if too_large:
        kept = ",".join(name for name in names if name not in too_large) or "popularity"
        sizes = " and ".join(f"{name} ~{need[name] / 1e9:.1f} GB" for name in too_large)
        raise ConfigError(
            f"gate.baselines includes {', '.join(too_large)}, whose items x items matrices need more memory for "
            f"this run's {n_items:,} items ({sizes}) than the {memory_bytes / 1e9:.1f} GB a task may use on this "
            f"machine ({machine_bytes / 1e9:.1f} GB): leave {'it' if len(too_large) == 1 else 'them'} out "
            f"(e.g. gate.baselines={kept}) or run the pipeline on a machine with more memory. "
            "Nothing was trained, registered or published")


def fit_ease(sequences: Sequences, items: pd.DataFrame, l2: float = 500.0) -> Scorer:
    """EASE^R: a linear item-item autoencoder with a zero diagonal, in closed form."""
    matrix = interaction_matrix(sequences.histories(2), sequences.n_items)
    weights = torch.from_numpy(ease_weights(matrix, l2).astype(np.float32))

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        return _dense_rows(histories, sequences.n_items) @ weights

    return score


# ------------------------------------------------------------------ registry and selection

BASELINES: dict[str, FitFunction] = {
    "popularity": fit_popularity,
    "itemknn": fit_itemknn,
    "ease": fit_ease,
}

# Small grids searched on validation NDCG@10.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "popularity": {},
    "itemknn": {"neighbours": [20, 50, 100, 200, 500, 100_000], "shrink": [0.0, 5.0, 20.0]},
    "ease": {"l2": [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]},
}


@dataclass
class Tuned:
    scorer: Scorer
    hyper: dict[str, Any]
    valid_ndcg: float
    seconds: float  # fitting plus validation-based selection


def search(name: str, fit: FitFunction, grid: dict[str, list[Any]], sequences: Sequences, items: pd.DataFrame,
           **shared: Any) -> Tuned:
    """Fit for every point of `grid` (with the `shared` keywords); keep the best validation NDCG@10."""
    started = time.time()
    best: Tuned | None = None
    for values in itertools.product(*grid.values()):
        hyper = dict(zip(grid.keys(), values))
        scorer = fit(sequences, items, **hyper, **shared)
        ndcg = validation_ndcg(scorer, sequences)
        log.info("%s %s: valid NDCG@10 %.4f", name, hyper, ndcg)
        if best is None or ndcg > best.valid_ndcg:
            best = Tuned(scorer, hyper, ndcg, 0.0)
    best.seconds = time.time() - started
    return best


def tune(name: str, sequences: Sequences, items: pd.DataFrame, grid: dict[str, list[Any]] | None = None) -> Tuned:
    """Fit the gate baseline `name` over its grid (or `grid`); keep the best on validation NDCG@10."""
    return search(name, BASELINES[name], GRIDS[name] if grid is None else grid, sequences, items)
