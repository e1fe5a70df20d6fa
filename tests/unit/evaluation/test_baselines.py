"""The gate's baselines on hand-made sequences: each one does what its definition says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.config import GATE_BASELINES
from tasks.evaluation.baselines import (
    BASELINES,
    GRIDS,
    ease_weights,
    fit_ease,
    fit_itemknn,
    interaction_matrix,
    search,
)
from tests.builders import make_items, make_sequences


def test_registry_names_every_gate_baseline():
    assert set(BASELINES) == set(GRIDS) == set(GATE_BASELINES) == {"popularity", "itemknn", "ease"}


def test_search_keeps_the_grid_point_with_the_best_validation_ndcg():
    sequences = make_sequences([[1, 3, 2], [2, 3, 1]], n_items=3)  # item 3 is everyone's validation target

    def fit(sequences, items, favour: int):
        def score(histories):
            scores = torch.zeros(len(histories), 4)
            scores[:, favour] = 1.0
            return scores
        return score

    tuned = search("toy", fit, {"favour": [1, 3, 2]}, sequences, make_items(["a"] * 3))
    assert tuned.hyper == {"favour": 3} and tuned.valid_ndcg == pytest.approx(1.0)


def test_itemknn_ranks_the_co_occurring_item_first():
    # Training histories (all but the last two items): 1 and 2 always together, 3 and 4 together;
    # 5 and 6 are the held-out targets.
    sequences = make_sequences([[1, 2, 5, 6], [1, 2, 6, 5], [2, 1, 5, 6], [3, 4, 5, 6], [4, 3, 6, 5]], n_items=6)
    scorer = fit_itemknn(sequences, make_items(["a"] * 6), neighbours=10, shrink=0.0)
    scores = scorer([np.array([1]), np.array([3])])
    assert scores.shape == (2, 7)
    scores[0, 1] = scores[1, 3] = float("-inf")  # the history itself is masked by the evaluation
    scores[:, 0] = float("-inf")
    assert scores.argmax(1).tolist() == [2, 4]
    assert scores[0, 2].item() == pytest.approx(1.0)  # cosine of identical user sets


def test_ease_closed_form_matches_per_column_ridge_regression():
    rng = np.random.default_rng(0)
    dense = (rng.random((12, 5)) < 0.5).astype(np.float64)
    matrix = interaction_matrix([np.flatnonzero(row) + 1 for row in dense], n_items=5)
    l2 = 2.0
    weights = ease_weights(matrix, l2)[1:, 1:]
    # EASE column j = ridge regression of item j on every other item (diagonal constrained to 0).
    for j in range(5):
        others = [i for i in range(5) if i != j]
        x = dense[:, others]
        expected = np.linalg.solve(x.T @ x + l2 * np.eye(4), x.T @ dense[:, j])
        np.testing.assert_allclose(weights[others, j], expected, rtol=1e-6, atol=1e-9)
        assert weights[j, j] == 0.0

    sequences = make_sequences([list(np.flatnonzero(row) + 1) + [1, 2] for row in dense], n_items=5)
    scorer = fit_ease(sequences, make_items(["a"] * 5), l2=l2)
    history = np.array([2, 4])
    full = ease_weights(interaction_matrix(sequences.histories(2), 5), l2)
    np.testing.assert_allclose(scorer([history])[0].numpy(), full[[2, 4]].sum(0), rtol=1e-5, atol=1e-6)
