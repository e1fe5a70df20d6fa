"""Evaluation slices on hand-made histories: known cut-offs, head/tail/cold membership, per-slice metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.config import GateConfig
from tasks.errors import ConfigError
from tasks.evaluation.metrics import evaluate_scores, rank_batches
from tasks.evaluation.slices import (
    define_slices,
    head_items,
    history_cutoffs,
    item_popularity,
    slice_metrics,
)


def test_terciles_and_fixed_cutoffs():
    lengths = np.arange(1, 10)  # 1..9: terciles at 3.67 and 6.33
    assert history_cutoffs(lengths, GateConfig()) == (3, 7)
    assert history_cutoffs(lengths, GateConfig(short_history_max=5, long_history_min=20)) == (5, 20)
    with pytest.raises(ConfigError, match="short_history_max"):
        GateConfig(short_history_max=5)
    with pytest.raises(ConfigError, match="short < long"):
        GateConfig(short_history_max=20, long_history_min=5)


def test_head_items_cover_the_share_of_training_interactions():
    # item 1: 6 interactions, item 2: 3, item 3: 1, item 4: 0 (index 0 is padding).
    popularity = item_popularity([np.array([1, 1, 2, 3]), np.array([1, 1, 1, 1, 2, 2])], n_items=4)
    assert popularity.tolist() == [0, 6, 3, 1, 0]
    assert head_items(popularity, 0.5).tolist() == [False, True, False, False, False]  # 6/10 >= 50%
    assert head_items(popularity, 0.7).tolist() == [False, True, True, False, False]  # 9/10 >= 70%
    assert head_items(popularity, 0.6).tolist() == [False, True, False, False, False]  # exactly 60%: item 1 alone
    # Ties: the lower index is taken first, so the head is deterministic.
    assert head_items(np.array([0, 2, 2, 2, 2]), 0.5).tolist() == [False, True, True, False, False]


def test_define_slices_masks_and_descriptions():
    config = GateConfig(short_history_max=2, long_history_min=5, head_share=0.5, cold_item_interactions=2)
    lengths = np.array([1, 2, 3, 4, 5, 9])
    popularity = np.array([0, 6, 3, 1, 0])
    targets = np.array([1, 2, 3, 4, 1, 2])
    slices = {s.name: s for s in define_slices(lengths, targets, popularity, config)}
    assert {n: s.mask.tolist() for n, s in slices.items()} == {
        "history_short": [True, True, False, False, False, False],
        "history_medium": [False, False, True, True, False, False],
        "history_long": [False, False, False, False, True, True],
        "items_head": [True, False, False, False, True, False],
        "items_tail": [False, True, True, True, False, True],
        "items_cold": [False, False, True, True, False, False],
        "items_unseen": [False, False, False, True, False, False],  # item 4: no training interaction
    }
    assert slices["history_medium"].description == "users with 3..4 training items"
    assert slices["items_head"].description == "target among the 1 most popular items (50% of training interactions)"
    assert slices["items_cold"].description == "target with < 2 training interactions"


def test_slice_metrics_from_known_ranks():
    config = GateConfig(short_history_max=2, long_history_min=5, cold_item_interactions=2)
    slices = define_slices(np.array([1, 2, 3, 4, 5, 9]), np.array([1, 2, 3, 4, 1, 2]),
                           np.array([0, 6, 3, 1, 0]), config)
    ranks = np.array([0, 9, 10, 1, 3, 25])  # hits@10 for users 0, 1, 3, 4
    metrics = slice_metrics(ranks, slices)
    short = metrics["history_short"]
    assert short["users"] == 2
    assert short["hr@10"] == pytest.approx(1.0)
    assert short["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(11)) / 2)
    assert short["mrr@10"] == pytest.approx((1.0 + 0.1) / 2)
    cold = metrics["items_cold"]  # users 2 (rank 10: no hit@10, hit@20) and 3 (rank 1)
    assert cold["users"] == 2 and cold["hr@10"] == pytest.approx(0.5) and cold["hr@20"] == pytest.approx(1.0)
    assert cold["ndcg@10"] == pytest.approx(0.5 / math.log2(3))
    unseen = metrics["items_unseen"]  # user 3 alone, rank 1
    assert unseen["users"] == 1 and unseen["hr@10"] == pytest.approx(1.0) and unseen["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert metrics["history_long"]["hr@20"] == pytest.approx(0.5)
    assert set(metrics["items_head"]) == {"users", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10"}


def test_empty_slice_reports_zero_users():
    config = GateConfig(short_history_max=0, long_history_min=100)
    slices = define_slices(np.array([3, 4]), np.array([1, 1]), np.array([0, 5]), config)
    metrics = slice_metrics(np.array([0, 1]), slices)
    assert metrics["history_short"] == {"users": 0, "hr@10": 0.0, "ndcg@10": 0.0, "hr@20": 0.0,
                                        "ndcg@20": 0.0, "mrr@10": 0.0}
    assert metrics["history_medium"]["users"] == 2


def test_rank_batches_matches_evaluate_scores():
    generator = torch.Generator().manual_seed(7)
    scores = torch.rand(6, 31, generator=generator)
    histories = [np.array([1, 2]), np.array([3]), np.array([4, 5, 6]), np.array([7]), np.array([8, 9]), np.array([10])]
    targets = np.array([11, 12, 13, 14, 15, 16])
    batches = [(scores[:4], histories[:4], targets[:4]), (scores[4:], histories[4:], targets[4:])]
    ranks, top10 = rank_batches(batches)
    assert ranks.shape == (6,) and top10.shape == (6, 10)
    expected = evaluate_scores(batches, n_items=30)
    assert slice_metrics(ranks, [_everyone(6)])["all"]["ndcg@10"] == pytest.approx(expected["ndcg@10"])
    # Masked history items never appear in a top-10 list.
    assert not any(set(top10[u]) & set(histories[u]) for u in range(6))


def _everyone(n: int):
    from tasks.evaluation.slices import Slice

    return Slice("all", np.ones(n, dtype=bool), "every user")
