"""bench.trend_prior's counts: training interactions only, on whole days before the user's last one."""

from __future__ import annotations

import numpy as np

from bench.trend_prior import split_counts
from tasks.data.prepare import Sequences


def test_window_counts_leave_out_held_out_items_and_the_users_own_day():
    # Two users of five interactions each (the last two of each held out), items 1..3, days 0..4.
    sequences = Sequences(user_ids=np.array([10, 11]), indptr=np.array([0, 5, 10]),
                          item_idx=np.array([1, 1, 2, 3, 3, 2, 1, 2, 3, 1]),
                          item_ids=np.array([-1, 100, 200, 300]), days=np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]))
    counts = split_counts(sequences)
    # Training interactions: user 0 items 1, 1, 2 on days 0-2; user 1 items 2, 1, 2 on days 0-2.
    assert counts.before(np.array([3]), 7).tolist() == [[0, 3, 3, 0]]
    # Day 2 itself is left out (a target of that day would count), and so is all before the window.
    assert counts.before(np.array([2]), 1).tolist() == [[0, 2, 0, 0]]
    assert counts.before(np.array([0]), 30).tolist() == [[0, 0, 0, 0]]
    # Items 3 (only ever held out) never count, whatever the day.
    assert counts.before(np.array([5]), 30)[0, 3] == 0
