"""Fit the recent-popularity prior (tasks.model.trend) of a trained model on validation, after training.

The window and weight with the best validation NDCG@10 over a small grid (weight 0 included) are saved
with the model (`trend.json`) beside the counts publishing scores with. The user tower runs once per
batch of validation users; each cell of the grid only adds its shift and ranks, through the same code the
gate's evaluation ranks with, so the figure chosen is the figure the gate then measures.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from tasks.model.trend import (
    FIT_USERS,
    WEIGHTS,
    WINDOWS,
    TrendPrior,
    WindowCounts,
    lift,
    training_counts,
)

log = logging.getLogger(__name__)


def fit_users(histories, seed: int) -> np.ndarray:
    """The validation users a prior's fit ranks: all, or a fixed sample of FIT_USERS drawn from `seed`,
    longest history first (a batch pads to its own longest)."""
    users = np.arange(len(histories))
    if len(users) > FIT_USERS:
        users = np.sort(np.random.default_rng(seed).choice(users, FIT_USERS, replace=False))
    return users[np.argsort([-len(histories[u]) for u in users], kind="stable")]


def fit_trend(config, dataset_dir: Path, model_dir: Path) -> TrendPrior | None:
    """Choose the window and weight on validation NDCG@10 for the model in `model_dir` and save them with
    the counts it publishes with (`trend.json`); None (nothing saved) for a split prepared without days."""
    from tasks.data.prepare import load_dataset
    from tasks.evaluation.metrics import SELECTION_METRIC, rank_batches, ranking_metrics
    from tasks.evaluation.scoring import BATCH_USERS
    from tasks.layout import ModelFiles
    from tasks.model.network import SCORE_MEMORY_MB
    from tasks.model.recommender import Recommender

    started = time.time()
    files = ModelFiles(Path(model_dir))
    files.trend.unlink(missing_ok=True)  # a re-fit starts from the model alone
    sequences, _ = load_dataset(dataset_dir)
    if sequences.days is None:
        log.warning("trend prior: %s was prepared without interaction days; run prepare again to fit one "
                    "(the model is kept without it)", dataset_dir)
        return None
    recommender = Recommender.load(model_dir, config.train.precision)
    histories, targets = sequences.histories(2), sequences.targets("valid")
    users = fit_users(histories, config.train.seed)
    as_of = sequences.as_of_days(2)
    counts = training_counts(sequences, recommender.index_of)
    cells = [(0, 0.0)] + [(w, x) for w in WINDOWS for x in WEIGHTS if x > 0]
    ranks: dict[tuple[int, float], list[np.ndarray]] = {cell: [] for cell in cells}
    step = recommender.users_per_batch(SCORE_MEMORY_MB, BATCH_USERS)  # score tensors as evaluation sizes them
    padding = torch.full((step, 1), float("-inf"))  # index 0 of a split's scores

    def rank(cell, per_interest, indexed, batch, shift=None) -> None:
        scores = recommender.split_scores(per_interest.clone(), indexed, sequences.item_ids[1:], shift)
        scores = torch.cat([padding[:len(batch)], scores], dim=1)
        ranks[cell].append(rank_batches([(scores, [histories[u] for u in batch], targets[batch])])[0])

    for start in range(0, len(users), step):  # the user tower runs once a batch; each cell shifts and ranks
        batch = users[start:start + step]
        per_interest, indexed = recommender.interest_scores([sequences.item_ids[histories[u]] for u in batch])
        rank((0, 0.0), per_interest, indexed, batch)
        for window in WINDOWS:  # one window's counts at a time: [batch, N+1] each
            centred = lift(counts.before(as_of[batch], window), recommender.trained, 1.0)
            for weight in WEIGHTS[1:]:
                rank((window, weight), per_interest, indexed, batch, centred * weight)
    measured = {cell: float(ranking_metrics(np.concatenate(ranks[cell]))[SELECTION_METRIC]) for cell in cells}
    (window, weight), best = max(measured.items(), key=lambda pair: (pair[1], -pair[0][1]))  # ties: less weight
    alone = measured[(0, 0.0)]
    fit = {f"{w} days x {x}" if x else "none": value for (w, x), value in measured.items()}
    end = int(sequences.days.max()) + 1  # the data's last day counts: publishing's lists are for the day after
    everything = WindowCounts(sequences.item_idx, sequences.days, sequences.n_items + 1).before(
        np.array([end]), window)[0].numpy().astype(np.int64)
    busy = np.flatnonzero(everything[1:]) + 1 if weight else np.zeros(0, dtype=np.int64)
    prior = TrendPrior(window_days=window, weight=weight, as_of_day=end,
                       item_ids=sequences.item_ids[busy].tolist(), counts=everything[busy].tolist(),
                       fit={"validation_users": len(users), SELECTION_METRIC: fit,
                            "seconds": round(time.time() - started, 1)})
    prior.save(files.trend)
    if weight:
        log.info("trend prior: the last %d days' interactions, weight %.1f: validation %s %.4f -> %.4f on %d users "
                 "(%.0fs)", window, weight, SELECTION_METRIC, alone, best, len(users), time.time() - started)
    else:
        log.info("trend prior: none (no window and weight validated above the model alone, %s %.4f, on %d users; "
                 "%.0fs)", SELECTION_METRIC, alone, len(users), time.time() - started)
    return prior
