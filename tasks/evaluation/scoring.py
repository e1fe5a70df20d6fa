"""Scoring on the leave-one-out split: any model as a `Scorer`, ranked against every item.

A scorer maps histories (index arrays of the split) to scores [B, N+1] over the split's items;
PrismRec models, the gate's baselines and the benchmark's models are all scored through here,
by the same code on the same split (docs/protocol.md, LOO-full). A scorer marked `dated` (a PrismRec
model with a trend prior) also takes each history's day: the day of its last item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tasks.data.prepare import Sequences
from tasks.evaluation.metrics import rank_batches, summarize
from tasks.model.network import SCORE_MEMORY_MB

SPLITS = {"valid": 2, "test": 1}  # split -> items held out of the input history

BATCH_USERS = 512


Scorer = Callable[[Sequence[np.ndarray]], torch.Tensor]


def rank_splits(scorer: Scorer, sequences: Sequences,
                splits: tuple[str, ...] = tuple(SPLITS)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"valid": (ranks [U], top10 [U, 10]), "test": ...} for each of `splits`: each user's target rank and
    top-10 list."""
    results = {}
    for split in splits:
        holdout = SPLITS[split]
        histories = sequences.histories(holdout)
        targets = sequences.targets(split)
        days = sequences.as_of_days(holdout)
        # Scored longest history first (a batch pads to its own longest, pad_history), reported in user order.
        order = np.argsort([-len(h) for h in histories], kind="stable")
        ranks, top10 = rank_batches(scored_batches(scorer, [histories[i] for i in order], targets[order],
                                                   None if days is None else days[order]))
        results[split] = np.empty_like(ranks), np.empty_like(top10)
        results[split][0][order], results[split][1][order] = ranks, top10
    return results


def scored_batches(scorer: Scorer, histories: Sequence[np.ndarray], targets: np.ndarray,
                   days: np.ndarray | None = None):
    """(scores, histories, targets) for successive blocks of BATCH_USERS users; a `dated` scorer also gets
    each history's day (`days`)."""
    dated = getattr(scorer, "dated", False)
    for start in range(0, len(histories), BATCH_USERS):
        chunk = histories[start:start + BATCH_USERS]
        scores = scorer(chunk, None if days is None else days[start:start + BATCH_USERS]) if dated else scorer(chunk)
        yield scores, chunk, targets[start:start + BATCH_USERS]


def evaluate_scorer(scorer: Scorer, sequences: Sequences) -> dict[str, dict[str, float]]:
    """{"valid": metrics, "test": metrics} for one model on the split."""
    return {split: summarize(ranks, top10, sequences.n_items)
            for split, (ranks, top10) in rank_splits(scorer, sequences).items()}


def popularity_scorer(sequences: Sequences) -> Scorer:
    """Most-interacted items in the training histories first (the same for everyone)."""
    counts = np.bincount(np.concatenate(sequences.histories(2)), minlength=sequences.n_items + 1)
    scores = torch.as_tensor(counts, dtype=torch.float32)
    return lambda histories: scores.expand(len(histories), -1)


def model_scorer(model_dir: Path, sequences: Sequences, precision: str = "auto") -> Scorer:
    """A trained PrismRec model (candidate or champion) scoring the split's items by app item id, its
    user tower in train.precision's `precision` (as publishing runs it)."""
    from tasks.model.recommender import Recommender

    return recommender_scorer(Recommender.load(model_dir, precision), sequences)


def recommender_scorer(recommender, sequences: Sequences, memory_mb: float = SCORE_MEMORY_MB) -> Scorer:
    """A loaded tasks.model.recommender.Recommender as a scorer of the split's items (`dated`: with a
    trend prior, each history is scored as of its own day, from the split's training interactions)."""
    universe = sequences.item_ids[1:]
    recommender.date_by(sequences)

    def score(histories: Sequence[np.ndarray], days: np.ndarray | None = None) -> torch.Tensor:
        step = recommender.users_per_batch(memory_mb, max(len(histories), 1))
        scores = torch.cat([recommender.score_items([sequences.item_ids[h] for h in histories[start:start + step]],
                                                    universe, days=None if days is None else days[start:start + step])
                            for start in range(0, len(histories), step)])
        return torch.cat([torch.full((len(histories), 1), float("-inf")), scores], dim=1)

    score.dated = True
    return score

