"""Membership of many (user, item) pairs in users' histories, the test publishing runs on every batch.

`np.isin` hashes both arrays on each call; here the histories' keys are sorted once and the pairs
found by binary search, ~5x faster at a batch's sizes (1,024 users, a few hundred candidates each).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pair_keys(users: np.ndarray, items: np.ndarray, width: int) -> np.ndarray:
    """(user row, item) -> one int64 key, for items in [0, width)."""
    return np.asarray(users, dtype=np.int64) * width + np.asarray(items, dtype=np.int64)


def history_keys(histories: Sequence[np.ndarray], width: int) -> np.ndarray:
    """The sorted keys of every (row, item) in `histories` (row i is histories[i])."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if not lengths.sum():
        return np.empty(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(histories), dtype=np.int64), lengths)
    return np.sort(pair_keys(rows, np.concatenate(histories), width))


def in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """np.isin(keys, sorted_keys) for sorted_keys in ascending order."""
    if not len(sorted_keys):
        return np.zeros(np.shape(keys), dtype=bool)
    where = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[where] == keys
