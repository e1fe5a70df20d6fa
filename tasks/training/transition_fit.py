"""Fit the transition prior (tasks.model.transitions) after training: its weight, on validation NDCG@10.

Runs after the trend prior's fit (tasks.training.trend_fit), on the model with that prior on, so the weight
is what the transitions add to both. The successor table of the split's training histories scores the
validation users (held-out targets never count); the table saved with the model comes from every
interaction of the dataset, as publishing's lists are for after its last day.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from tasks.model.transitions import (
    NO_SUCCESSIONS,
    WEIGHTS,
    TransitionPrior,
    TransitionTable,
    successor_table,
)
from tasks.training.trend_fit import fit_trend, fit_users

log = logging.getLogger(__name__)


def fit_priors(config, dataset_dir: Path, model_dir: Path):
    """The priors the settings ask for, fitted after training in their order (train.trend_prior, then
    train.transition_prior on the model with the trend prior on) and saved into `model_dir`; returns the
    trend prior (None without one: the new-item head's rehearsal applies it)."""
    from tasks.layout import ModelFiles

    # The trend prior is fitted on the model alone: a transition prior left by an earlier fit would score with it.
    ModelFiles(Path(model_dir)).transitions.unlink(missing_ok=True)
    trend = None
    if config.train.trend_prior:
        trend = fit_trend(config, dataset_dir, model_dir)
    if config.train.transition_prior:
        fit_transitions(config, dataset_dir, model_dir)
    return trend


def fit_transitions(config, dataset_dir: Path, model_dir: Path) -> TransitionPrior:
    """Choose the weight on validation NDCG@10 for the model in `model_dir` (with its trend prior, if it has
    one) and save it with the table it publishes with (`transitions.npz`)."""
    from tasks.data.prepare import load_dataset
    from tasks.evaluation.metrics import SELECTION_METRIC, rank_batches, ranking_metrics
    from tasks.evaluation.scoring import BATCH_USERS
    from tasks.layout import ModelFiles
    from tasks.model.network import SCORE_MEMORY_MB
    from tasks.model.recommender import Recommender

    started = time.time()
    files = ModelFiles(Path(model_dir))
    files.transitions.unlink(missing_ok=True)  # a re-fit starts from the model (and its trend prior) alone
    sequences, _ = load_dataset(dataset_dir)
    if sequences.tied is None:
        log.warning("transition prior: %s was prepared before items saved at one time were marked; their pairs "
                    "count as successions (run prepare again to leave them out)", dataset_dir)
    recommender = Recommender.load(model_dir, config.train.precision)
    recommender.date_by(sequences)
    histories, targets = sequences.histories(2), sequences.targets("valid")
    training_part = successor_table(sequences.successions(2), sequences.item_ids)
    table = TransitionTable(TransitionPrior(1.0).with_table(training_part), recommender.index_of)
    users = fit_users(histories, config.train.seed)
    as_of = sequences.as_of_days(2)
    ranks: dict[float, list[np.ndarray]] = {weight: [] for weight in WEIGHTS}
    step = recommender.users_per_batch(SCORE_MEMORY_MB, BATCH_USERS)
    padding = torch.full((step, 1), float("-inf"))  # index 0 of a split's scores
    for start in range(0, len(users), step):  # the user tower runs once a batch; each weight shifts and ranks
        batch = users[start:start + step]
        per_interest, indexed = recommender.interest_scores([sequences.item_ids[histories[u]] for u in batch])
        shift = recommender.trend_shift(None if as_of is None else as_of[batch])
        moved = table.lift(indexed, recommender.n_items + 1)[:, None, :]
        for weight in WEIGHTS:
            scores = recommender.split_scores(per_interest + weight * moved, indexed, sequences.item_ids[1:], shift)
            scores = torch.cat([padding[:len(batch)], scores], dim=1)
            ranks[weight].append(rank_batches([(scores, [histories[u] for u in batch], targets[batch])])[0])
    measured = {weight: float(ranking_metrics(np.concatenate(ranks[weight]))[SELECTION_METRIC]) for weight in WEIGHTS}
    weight, best = max(measured.items(), key=lambda pair: (pair[1], -pair[0]))  # ties: less weight
    alone = measured[0.0]
    fit = {"validation_users": len(users), SELECTION_METRIC: {str(w): value for w, value in measured.items()},
           "seconds": round(time.time() - started, 1)}
    everything = sequences.successions(0) if weight else NO_SUCCESSIONS  # publishing's table: all of the data
    prior = TransitionPrior(weight, *successor_table(everything, sequences.item_ids), fit=fit)
    prior.save(files.transitions)
    if weight:
        log.info("transition prior: weight %.1f: validation %s %.4f -> %.4f on %d users (%.0fs)", weight,
                 SELECTION_METRIC, alone, best, len(users), time.time() - started)
    else:
        log.info("transition prior: none (no weight validated above the model alone, %s %.4f, on %d users; %.0fs)",
                 SELECTION_METRIC, alone, len(users), time.time() - started)
    return prior
