"""Disentanglement figures and the cold-start hold-out on hand-made tensors with known answers."""

import numpy as np
import pytest
import torch

from bench.interest_metrics import (
    hold_out_items,
    interest_counts,
    interest_specific_share,
    interest_usage,
    pairwise_interest_cosine,
)
from tasks.data.prepare import Sequences


def test_identical_interests_have_cosine_one():
    vector = torch.tensor([0.3, -1.0, 2.0])
    interests = vector.expand(2, 4, 3).clone()
    assert pairwise_interest_cosine(interests) == pytest.approx([1.0, 1.0], abs=1e-6)


def test_orthogonal_interests_have_cosine_zero():
    interests = torch.eye(4)[None] * 5.0  # four orthogonal interests, any length
    assert pairwise_interest_cosine(interests) == pytest.approx([0.0], abs=1e-6)


def test_cosine_is_the_mean_over_pairs():
    # pairs: (a, b) = 1, (a, c) = 0, (b, c) = 0 -> mean 1/3; numpy input works too
    interests = np.array([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])
    assert pairwise_interest_cosine(interests) == pytest.approx([1 / 3], abs=1e-6)


def test_cosine_needs_two_interests():
    with pytest.raises(ValueError):
        pairwise_interest_cosine(torch.ones(3, 1, 8))


def test_interest_specific_share():
    identical = torch.tensor([1.0, 2.0, 3.0]).expand(1, 4, 3)
    orthogonal = torch.eye(4)[None] * 3.0
    shared = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])  # common (1, 0) part, specific (0, +-1): half and half
    assert interest_specific_share(identical) == pytest.approx([0.0], abs=1e-6)
    assert interest_specific_share(orthogonal) == pytest.approx([0.75], abs=1e-6)
    assert interest_specific_share(shared) == pytest.approx([0.5], abs=1e-6)


def test_top10_from_one_interest():
    usage = interest_usage(np.full((3, 10), 2), n_interests=4)
    assert usage["mean_distinct_interests"] == 1.0
    assert usage["mean_dominant_share"] == 1.0
    assert usage["mean_normalised_entropy"] == pytest.approx(0.0)
    assert usage["single_interest_users"] == 1.0
    assert usage["share_by_rank"] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert usage["share_by_interest"] == pytest.approx([0.0, 0.0, 1.0, 0.0])


def test_top10_shared_between_interests():
    one = [0] * 5 + [1] * 5  # two interests, evenly
    two = [0, 1, 2, 3] * 2 + [0, 1]  # four interests: 3, 3, 2, 2
    usage = interest_usage(np.array([one, two]), n_interests=4)
    assert usage["mean_distinct_interests"] == 3.0
    assert usage["mean_dominant_share"] == pytest.approx((0.5 + 0.3) / 2)
    even_two = np.log(2) / np.log(4)
    four = -(2 * 0.3 * np.log(0.3) + 2 * 0.2 * np.log(0.2)) / np.log(4)
    assert usage["mean_normalised_entropy"] == pytest.approx((even_two + four) / 2)
    assert usage["single_interest_users"] == 0.0
    assert usage["share_by_interest"] == pytest.approx([8 / 20, 8 / 20, 2 / 20, 2 / 20])  # all 20 picks


def test_popularity_fallback_is_not_an_interest():
    ids = np.array([[-1] * 10, [1] * 8 + [-1] * 2])
    assert interest_counts(ids, 2).tolist() == [[0, 0], [0, 8]]
    usage = interest_usage(ids, n_interests=2)
    assert usage["users"] == 1 and usage["mean_dominant_share"] == 1.0


def _sequences(rows):
    lengths = [len(r) for r in rows]
    return Sequences(user_ids=np.arange(10, 10 + len(rows)), indptr=np.concatenate([[0], np.cumsum(lengths)]),
                     item_idx=np.concatenate(rows), item_ids=np.arange(-1, 10) * np.array([1] + [100] * 10))


def test_hold_out_removes_items_from_training_parts_only():
    rows = [np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8, 9, 10, 1, 2]), np.array([3, 1, 2])]
    sequences = _sequences(rows)
    cold, held, removed = hold_out_items(sequences, fraction=0.2, seed=0)
    assert len(held) == 2 and set(held) <= set(range(1, 11))
    assert np.array_equal(cold.item_ids, sequences.item_ids)  # the catalogue keeps every item
    for u in range(cold.n_users):
        train = cold.histories(2)[u]
        assert not np.isin(train, held).any()
    original = {uid: sequences.sequence(u) for u, uid in enumerate(sequences.user_ids)}
    for u, uid in enumerate(cold.user_ids):
        full = original[uid]
        assert cold.sequence(u)[-2:].tolist() == full[-2:].tolist()  # targets untouched
        assert cold.sequence(u)[:-2].tolist() == [i for i in full[:-2] if i not in set(held)]
    expected_removed = sum(int(np.isin(r[:-2], held).sum()) for r in rows)
    assert removed == expected_removed
    assert hold_out_items(sequences, 0.2, seed=0)[1].tolist() == held.tolist()  # seeded


def test_hold_out_drops_users_without_training_history():
    sequences = _sequences([np.array([1, 2, 3]), np.array([4, 5, 6, 7])])
    # find a seed that holds out item 1 (user 10's only training item)
    seed = next(s for s in range(100) if 1 in hold_out_items(sequences, 0.1, s)[1])
    cold, held, _ = hold_out_items(sequences, 0.1, seed)
    assert held.tolist() == [1]
    assert cold.user_ids.tolist() == [11] and cold.sequence(0).tolist() == [4, 5, 6, 7]
