"""The cold-start benchmark's ranking and figures (bench/cold_start.py); its split is the rehearsal's
(tests/unit/training/test_rehearsal.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cold_start import figures, ranks_from, with_policy


def test_ranks_mask_the_history_count_ties_for_the_target_and_put_unplaceable_targets_last():
    candidates = np.array([10, 20, 30, 40])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0],   # target 30; 10 is in the history: rank 1
                           [1.0, 1.0, 1.0, 0.0],   # target 20 ties with two others: rank 0
                           [1.0, float("-inf"), 2.0, 0.0]])  # target 20 cannot be placed: after the 3 listed
    cases = pd.DataFrame({"item_id": [30, 20, 20], "history": [np.array([10]), np.array([], dtype=np.int64),
                                                                np.array([], dtype=np.int64)]})
    assert ranks_from(scores, cases, candidates).tolist() == [1, 0, 3]


def test_a_policy_lowers_new_items_and_keeps_each_rows_best_few():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    new = np.array([False, True, True, True])
    shifted = with_policy(scores, new, offset=1.0)
    assert shifted.tolist() == [[5.0, 3.0, 2.0, 1.0], [1.0, 1.0, 2.0, 3.0]]
    capped = with_policy(scores, new, offset=0.0, cap=1)
    assert capped[0].tolist() == [5.0, 4.0, float("-inf"), float("-inf")]
    assert capped[1].tolist() == [1.0, float("-inf"), float("-inf"), 4.0]


def test_figures():
    out = figures(np.array([0, 1, 9, 10, 500]))
    assert out["users"] == 5
    assert out["hr@10"] == pytest.approx(0.6)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5, abs=1e-5)
    assert out["median_rank"] == 10.0
    assert out["hr@10_se"] == pytest.approx(np.std([1, 1, 1, 0, 0], ddof=1) / np.sqrt(5), abs=1e-5)

