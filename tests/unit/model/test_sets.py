"""tasks.model.sets: the binary-search membership test publishing masks seen items with is np.isin's."""

import numpy as np

from tasks.model.sets import history_keys, in_sorted, pair_keys


def test_membership_of_pairs_in_histories_is_what_isin_says():
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 50, size=n) for n in (0, 1, 7, 30, 0, 12)]
    candidates = rng.integers(0, 50, size=(len(histories), 20))
    got = in_sorted(pair_keys(np.arange(len(histories))[:, None], candidates, 50), history_keys(histories, 50))
    expected = np.array([np.isin(row, history) for row, history in zip(candidates, histories, strict=True)])
    assert got.shape == candidates.shape and np.array_equal(got, expected)
    assert got.any() and not got[0].any() and not got[4].any()  # users with no history see nothing masked


def test_no_history_at_all_masks_nothing():
    keys = history_keys([np.array([], dtype=np.int64)] * 3, 10)
    assert len(keys) == 0 and not in_sorted(np.arange(6).reshape(3, 2), keys).any()
