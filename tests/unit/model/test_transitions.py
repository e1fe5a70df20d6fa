"""The transition prior's table and lift (tasks.model.transitions)."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.data.prepare import Sequences
from tasks.model.transitions import SMOOTHING, TransitionPrior, TransitionTable
from tasks.model.transitions import successor_table as table_of_successions
from tests.builders import make_sequences

ITEM_IDS = np.array([-1, 10, 20, 30, 40])  # index -> app id, index 0 unused (as a split's item_ids)


def successor_table(histories, item_ids, top=100):
    """The table of whole histories' successions (no held-out items, no ties)."""
    return table_of_successions(make_sequences(histories, len(item_ids) - 1).successions(0), item_ids, top)


def test_each_item_keeps_its_most_frequent_direct_successors_and_their_shares():
    histories = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([1, 3]), np.array([2, 3]), np.array([4])]
    sources, successors, shares = successor_table(histories, ITEM_IDS, top=2)
    assert sources.tolist() == [10, 20]  # 30 and 40 are never followed by anything
    assert successors.tolist() == [[20, 30], [30, 40]]  # 1 -> 2 twice, 1 -> 3 once; 2 -> 3 twice, 2 -> 4 once
    np.testing.assert_allclose(shares, [[2 / 3, 1 / 3], [2 / 3, 1 / 3]], rtol=1e-6)
    sources, successors, shares = successor_table(histories, ITEM_IDS, top=1)  # the top cut keeps the shares of all
    assert successors.tolist() == [[20], [30]] and shares[:, 0] == pytest.approx([2 / 3, 2 / 3])
    _, successors, shares = successor_table([np.array([1, 2])], ITEM_IDS, top=3)
    assert successors.tolist() == [[20, -1, -1]] and shares.tolist() == [[1.0, 0.0, 0.0]]  # -1: none


def test_the_lift_weighs_the_latest_items_successors_and_leaves_every_other_item_alone(tmp_path):
    prior = TransitionPrior(0.5, *successor_table([np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3])],
                                                  ITEM_IDS), fit={"ndcg@10": {"0.5": 0.2}})
    prior.save(tmp_path / "transitions.npz")
    loaded = TransitionPrior.load(tmp_path / "transitions.npz")
    assert loaded.weight == 0.5 and loaded.fit == prior.fit and np.array_equal(loaded.successors, prior.successors)
    assert TransitionPrior.load(tmp_path / "none.npz") is None
    # A model that indexes the same items in another order, and holds one more (50, never in a history).
    index_of = pd.Series([1, 2, 3, 4, 5], index=[40, 30, 20, 10, 50])
    lift = TransitionTable(loaded, index_of).lift([np.array([4, 3]), np.array([2]), np.array([], dtype=np.int64)], 6)
    # 20 then 30 last: P(. | 20) = {30: 2/3, 40: 1/3}, P(. | 30): none; P(. | 10) = {20: 1} at half weight (2nd latest)
    # ... in model indices: 20 -> 3, 30 -> 2, 40 -> 1, 10 -> 4.
    expected = torch.zeros(3, 6)
    expected[0, 2], expected[0, 1] = 0.5 * np.log1p((2 / 3) / SMOOTHING), 0.5 * np.log1p((1 / 3) / SMOOTHING)
    expected[0, 3] = 0.5 * np.log1p(0.5 / SMOOTHING)  # 10 -> 20, second latest
    torch.testing.assert_close(lift, expected)  # 30 (index 2) has no successors; no history lifts nothing


def test_items_the_model_does_not_hold_drop_out_of_the_table():
    prior = TransitionPrior(1.0, *successor_table([np.array([1, 2]), np.array([1, 3])], ITEM_IDS))
    table = TransitionTable(prior, pd.Series([1, 2], index=[10, 30]))  # 20 is not in this model
    assert table.successors[1].tolist()[:2] == [0, 2] and table.shares[1].tolist()[:2] == [0.0, 0.5]  # ties: by id
    lift = table.lift([np.array([1])], 3)
    assert lift[0, 0] == 0 and lift[0, 1] == 0 and lift[0, 2] == pytest.approx(np.log1p(0.5 / SMOOTHING))


def test_successions_leave_out_the_held_out_items_and_items_saved_at_one_time():
    """Items saved together (one timestamp, as a page of ratings) follow each other only in the source's order:
    their pairs are no succession; nor is a pair into a held-out item, or across two users."""
    plain = make_sequences([[1, 2, 3, 4], [2, 3, 1]], 4)
    assert [list(side) for side in plain.successions(0)] == [[1, 2, 3, 2, 3], [2, 3, 4, 3, 1]]
    assert [list(side) for side in plain.successions(2)] == [[1], [2]]  # 1 -> 2 | 3, 4 held out; 2 | 3, 1 held out
    # user 0 saved 2 and 3 at 2's time; user 1 saved 3 and 1 at one time
    tied = Sequences(plain.user_ids, plain.indptr, plain.item_idx, plain.item_ids,
                     tied=np.array([False, False, True, False, False, False, True]))
    assert [list(side) for side in tied.successions(0)] == [[1, 3, 2], [2, 4, 3]]
    sources, successors, _ = table_of_successions(tied.successions(0), ITEM_IDS, top=2)
    assert sources.tolist() == [10, 20, 30]  # 20 -> 30 once (user 1's pair), 30 -> 40 and never 30 -> 10
    assert successors.tolist() == [[20, -1], [30, -1], [40, -1]]
