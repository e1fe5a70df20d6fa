"""The really cold slice: ranks of new items among a user's unseen catalogue, on hand-made scores."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.data.prepare import Sequences
from tasks.evaluation.cold import cold_metrics, cold_ranks

# Two users over items 10, 20, 30 (indices 1..3); new items 40 and 50 exist outside the split.
SEQUENCES = Sequences(user_ids=np.array([1, 2]), indptr=np.array([0, 4, 7]),
                      item_idx=np.array([1, 2, 3, 1, 2, 3, 1]), item_ids=np.array([-1, 10, 20, 30]))
SCORES = {10: 5.0, 20: 4.0, 30: 3.0, 40: 4.5, 50: 1.0}


def score(histories, candidates, days=None):
    row = torch.tensor([SCORES.get(int(i), float("-inf")) for i in candidates])
    return row.expand(len(histories), -1)


def test_a_new_item_ranks_among_the_unseen_catalogue_and_one_not_held_ranks_last():
    targets = pd.DataFrame({"user": [0, 1, 1, 0], "item_id": [40, 50, 40, 60]})  # 60 is not in the catalogue
    # User 0's training history (holdout 2) is [10, 20]: unseen are 30, 40, 50 -> 40 is first.
    # User 1's training history is [20]: unseen 10, 30, 40, 50 -> 50 is last (rank 3), 40 second.
    assert cold_ranks(score, SEQUENCES, targets, np.array([40, 50]), holdout=2).tolist() == [0, 3, 1]
    unheld = cold_ranks(lambda h, c, d: score(h, c).masked_fill(torch.as_tensor(c == 40), float("-inf")),
                        SEQUENCES, targets.iloc[[0]], np.array([40, 50]), holdout=2)
    assert unheld.tolist() == [2]  # the model does not hold 40: after the 2 items it can rank


def test_cold_metrics_per_split():
    metrics = cold_metrics(score, SEQUENCES, pd.DataFrame({"user": [0], "item_id": [40]}), np.array([40, 50]))
    assert metrics["valid"]["users"] == 1 and metrics["valid"]["hr@10"] == pytest.approx(1.0)
    assert metrics["valid"]["median_rank"] == 1.0
    empty = cold_metrics(score, SEQUENCES, pd.DataFrame({"user": [], "item_id": []}, dtype=np.int64), np.array([40]))
    assert empty["test"]["users"] == 0 and "median_rank" not in empty["test"]


def test_a_baseline_ranks_every_new_item_last(tmp_path):
    from tasks.evaluation.evaluate import _ColdSlice

    slices = {"valid": {}, "test": {}}
    _ColdSlice(SEQUENCES, pd.DataFrame({"user": [0, 1], "item_id": [40, 50]}), np.array([40, 50])).add(slices, None)
    # After every item the baseline can score: user 0 has one unseen (30; 10 and 20 seen), so rank 2;
    # user 1 has two (10 and 30), so rank 3.
    assert slices["valid"]["items_new"]["users"] == 2 and slices["valid"]["items_new"]["median_rank"] == 2.5
