"""Metrics against hand-computed values (microsoft/recommenders style)."""

import math

import numpy as np
import pytest
import torch

from tasks.evaluation.metrics import (
    METRIC_NAMES,
    RANKING_METRICS,
    SELECTION_METRIC,
    coverage,
    evaluate_scores,
    hit_rate,
    mask_history,
    mrr,
    ndcg,
    rank_targets,
    ranking_metrics,
    summarize,
)


def test_perfect_ranking_scores_one():
    ranks = np.zeros(5, dtype=int)
    assert hit_rate(ranks, 10) == 1.0
    assert ndcg(ranks, 10) == 1.0
    assert mrr(ranks, 10) == 1.0


def test_no_hit_scores_zero():
    ranks = np.array([10, 50, 99])
    assert hit_rate(ranks, 10) == 0.0
    assert ndcg(ranks, 10) == 0.0
    assert mrr(ranks, 10) == 0.0


def test_worked_example():
    # Targets at positions 1, 3 and 11 (0-based ranks 0, 2, 10).
    ranks = np.array([0, 2, 10])
    assert hit_rate(ranks, 10) == pytest.approx(2 / 3)
    assert hit_rate(ranks, 20) == 1.0
    assert ndcg(ranks, 10) == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)  # (1 + 0.5) / 3
    assert ndcg(ranks, 20) == pytest.approx((1.0 + 0.5 + 1.0 / math.log2(12)) / 3)
    assert mrr(ranks, 10) == pytest.approx((1.0 + 1 / 3) / 3)


def test_coverage_counts_distinct_items():
    lists = np.array([[1, 2, 3], [2, 3, 4]])
    assert coverage(lists, 8) == pytest.approx(4 / 8)


def test_history_is_masked_but_never_the_target():
    scores = torch.tensor([[0.0, 9.0, 8.0, 7.0, 1.0]])
    # History holds items 1 and 3 (and also the target 3: a repeat) -> only item 1 is masked.
    masked = mask_history(scores, [np.array([1, 3])], torch.tensor([3]))
    assert masked[0, 1] == float("-inf") and masked[0, 3] == 7.0 and masked[0, 0] == float("-inf")
    ranks, _ = rank_targets(masked, torch.tensor([3]))
    assert ranks.tolist() == [1]  # only item 2 (8.0) is above item 3


def test_ties_are_broken_by_item_index():
    scores = torch.tensor([[float("-inf"), 1.0, 1.0, 1.0]])
    ranks, top = rank_targets(scores, torch.tensor([2]))
    assert ranks.tolist() == [1]  # item 1 ties and has the lower index
    assert sorted(top[0][:3].tolist()) == [1, 2, 3]


def test_evaluate_scores_end_to_end():
    n_items = 12
    scores = torch.arange(n_items + 1, dtype=torch.float).repeat(2, 1)  # item 12 best, then 11, ...
    histories = [np.array([12]), np.array([], dtype=int)]
    targets = np.array([11, 1])  # user 0: best after masking -> rank 0; user 1: rank 11
    metrics = evaluate_scores([(scores, histories, targets)], n_items)
    assert metrics["hr@10"] == 0.5
    assert metrics["hr@20"] == 1.0
    assert metrics["ndcg@20"] == pytest.approx((1.0 + 1.0 / math.log2(13)) / 2)


def test_metric_names_are_what_the_evaluation_reports():
    assert METRIC_NAMES == ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10", "coverage@10")
    ranks = np.array([0, 3, 12, 40])
    assert tuple(ranking_metrics(ranks)) == RANKING_METRICS
    assert tuple(summarize(ranks, np.array([[1, 2], [2, 3]]), n_items=6)) == METRIC_NAMES
    assert ranking_metrics(ranks)["hr@20"] == 0.75 and SELECTION_METRIC in RANKING_METRICS


def test_the_gate_judges_by_the_selection_metric_by_default():
    from tasks.config import GateConfig

    assert GateConfig().metric == SELECTION_METRIC
