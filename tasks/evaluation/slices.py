"""Evaluation slices: who and what a model serves well or badly, beyond the overall average.

An overall NDCG@10 can hold steady while a new model quietly gets worse for newcomers or
for the long tail. Users are sliced by training-history length (short / medium / long) and
by their target item: head (the most popular items that together hold `head_share` of the
training interactions), tail (the rest), cold (fewer than `cold_item_interactions`
training interactions) and unseen (none at all: the item's first interaction lies in the
held-out part, so the model places it by its text alone, as it does a new title). Pure: per-user ranks in, per-slice metrics out, so the candidate,
the baselines and the champion are sliced by exactly the same masks on the same split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.config import GateConfig
from tasks.evaluation.metrics import ranking_metrics


@dataclass(frozen=True)
class Slice:
    """One subset of a split's users: a boolean mask over users and what it means in words."""

    name: str
    mask: np.ndarray
    description: str


def history_cutoffs(lengths: np.ndarray, config: GateConfig) -> tuple[int, int]:
    """(short max, long min) in training items: configured, else the terciles of `lengths`."""
    if config.short_history_max is not None and config.long_history_min is not None:
        return config.short_history_max, config.long_history_min
    if not len(lengths):
        return 0, 1
    low, high = np.quantile(lengths, [1 / 3, 2 / 3])
    short_max = int(np.floor(low))
    return short_max, max(int(np.floor(high)) + 1, short_max + 1)


def item_popularity(train_histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Training interactions per item index [n_items + 1] (index 0 is padding)."""
    joined = np.concatenate(list(train_histories)) if len(train_histories) else np.zeros(0, dtype=np.int64)
    return np.bincount(joined.astype(np.int64), minlength=n_items + 1)


def head_items(popularity: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask over item indices: the most popular items holding `share` of all interactions.

    Items are taken in order of popularity (ties: lower index first) until their cumulative
    interactions reach `share` of the total; the item that crosses the line is head.
    """
    counts = popularity.astype(np.float64).copy()
    counts[0] = 0.0
    total = counts.sum()
    head = np.zeros(len(counts), dtype=bool)
    if total <= 0:
        return head
    order = np.lexsort((np.arange(len(counts)), -counts))
    cumulative = np.cumsum(counts[order])
    n_head = int(np.searchsorted(cumulative, share * total, side="left")) + 1
    head[order[:n_head]] = True
    head[counts == 0] = False
    return head


def define_slices(history_lengths: np.ndarray, targets: np.ndarray, popularity: np.ndarray,
                  config: GateConfig) -> list[Slice]:
    """The seven slices of one split, as masks over its users (same order as `targets`)."""
    short_max, long_min = history_cutoffs(history_lengths, config)
    head = head_items(popularity, config.head_share)
    target_counts = popularity[targets]
    n_head = int(head.sum())
    return [
        Slice("history_short", history_lengths <= short_max, f"users with <= {short_max} training items"),
        Slice("history_medium", (history_lengths > short_max) & (history_lengths < long_min),
              f"users with {short_max + 1}..{long_min - 1} training items"),
        Slice("history_long", history_lengths >= long_min, f"users with >= {long_min} training items"),
        Slice("items_head", head[targets],
              f"target among the {n_head} most popular items ({config.head_share:.0%} of training interactions)"),
        Slice("items_tail", ~head[targets], "target outside the head items"),
        Slice("items_cold", target_counts < config.cold_item_interactions,
              f"target with < {config.cold_item_interactions} training interactions"),
        Slice("items_unseen", target_counts == 0,
              "target never seen in training (first interaction held out): placed by its text"),
    ]


def slice_metrics(ranks: np.ndarray, slices: Sequence[Slice]) -> dict[str, dict[str, float]]:
    """{slice: {"users": n, metric: value for the RANKING_METRICS}} from 0-based target ranks.

    Coverage is left out: it describes a whole catalogue's exposure, not a subset of users.
    """
    return {piece.name: {"users": int(piece.mask.sum()), **ranking_metrics(ranks[piece.mask])} for piece in slices}
