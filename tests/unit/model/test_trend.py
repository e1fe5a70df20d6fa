"""The recent-popularity prior (tasks.model.trend): its window counts, its shift of scores, and how a
Recommender applies it when publishing (as of the model's data end) and when evaluating (as of each
user's own day, from the split's training interactions only)."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.data.prepare import Sequences
from tasks.model.network import ModelSpec, PrismRecNet
from tasks.model.recommender import Recommender
from tasks.model.trend import TrendPrior, WindowCounts, lift, training_counts

N_ITEMS = 12  # app ids 100..111; 111 has no training interactions (new)


def recommender() -> Recommender:
    torch.manual_seed(0)
    spec = ModelSpec(n_items=N_ITEMS, max_history=8, dim=16, n_interests=1, user_layers=1, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True)
    counts = np.r_[np.arange(N_ITEMS - 1) + 5, 0]
    items = pd.DataFrame({"idx": np.arange(1, N_ITEMS + 1), "item_id": np.arange(100, 100 + N_ITEMS),
                          "title": [f"Film {i}" for i in range(N_ITEMS)], "genres": "Drama",
                          "train_interactions": counts.astype(np.int64)})
    return Recommender(PrismRecNet(spec), torch.randn(N_ITEMS + 1, 384), items)


def test_window_counts_count_the_days_before_and_never_the_day_itself():
    counts = WindowCounts(items=np.array([1, 1, 2, 3, 1]), days=np.array([10, 12, 12, 13, 5]), width=4)
    rows = counts.before(np.array([13, 12, 13, 30]), window=3)  # days 10..12, 9..11, 10..12, 27..29
    assert rows.tolist() == [[0, 2, 1, 0], [0, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0]]


def test_the_shift_is_centred_on_the_typical_trained_item_and_leaves_untrained_ones_alone():
    counts = torch.tensor([[0.0, 0.0, np.e - 1, np.e**2 - 1, 100.0]])  # log(1 + n): 0, 1, 2, 4.6
    trained = torch.tensor([False, True, True, True, False])  # padding and a new item are not
    shift = lift(counts, trained, weight=0.5)
    assert shift[0].tolist() == pytest.approx([0.0, -0.5, 0.0, 0.5, 0.0])


def test_training_counts_leave_the_held_out_targets_out_and_map_to_the_models_items():
    # Two users; each one's last two items are held out. App ids 100..103; the model does not hold 103.
    sequences = Sequences(user_ids=np.array([1, 2]), indptr=np.array([0, 4, 8]),
                          item_idx=np.array([1, 2, 3, 1, 4, 2, 2, 2]), item_ids=np.array([-1, 100, 101, 102, 103]),
                          days=np.array([1, 2, 3, 3, 1, 2, 3, 3]))
    index_of = pd.Series([1, 2, 3], index=[101, 100, 102])  # a model that orders its items differently
    rows = training_counts(sequences, index_of).before(np.array([3]), window=5)
    # Training interactions: user 1's 100 (day 1), 101 (day 2); user 2's 103 (not held), 101 (day 2).
    assert rows.tolist() == [[0, 2, 1, 0]]  # model index 1 is app id 101, 2 is 100


def busy_prior(item_id: int, weight: float = 100.0) -> TrendPrior:
    counts = [1] * 10 + [500]
    ids = [i for i in range(100, 111) if i != item_id] + [item_id]
    return TrendPrior(window_days=7, weight=weight, as_of_day=50, item_ids=ids[:11], counts=counts)


def test_published_lists_lift_the_busiest_item_with_or_without_the_candidate_index():
    model = recommender()
    plain = model.recommend([[100, 101]], top_k=3)
    busy = next(i for i in range(102, 111) if i not in plain.item_ids[0])  # an item the model does not list
    model.use_trend(busy_prior(busy))
    assert model.recommend([[100, 101]], top_k=3).item_ids[0, 0] == busy
    index = model.candidate_index(lists=2, probes=1)
    found = model.recommend([[100, 101]], top_k=3, index=index, candidates=1)
    assert found.item_ids[0, 0] == busy  # the index alone would not retrieve it; the prior's candidates do
    assert not found.is_new[0, 0]
    model.use_trend(busy_prior(busy, weight=0.0))  # weight 0: no prior at all
    assert model.trend is None and model.recommend([[100, 101]], top_k=3).item_ids.tolist() == plain.item_ids.tolist()


def test_a_split_is_scored_as_of_each_users_day_from_its_training_interactions():
    model = recommender()
    model.use_trend(busy_prior(105))  # publishing's counts: a split must never be scored with them
    # Five users took index 8 (app 107) on day 15 and index 1 on day 16 in their training part; their
    # held-out items, index 10 on days 41 and 42, must not count. A sixth user is elsewhere in time.
    item_ids = np.r_[-1, np.arange(100, 100 + N_ITEMS)]
    sequences = Sequences(user_ids=np.arange(6), indptr=np.arange(0, 25, 4), item_ids=item_ids,
                          item_idx=np.r_[[8, 1, 10, 10] * 5, [2, 3, 4, 5]],
                          days=np.r_[[15, 16, 41, 42] * 5, [1, 2, 3, 4]])
    model.date_by(sequences)
    histories = [[100, 101], [101, 102]]
    with pytest.raises(ValueError, match="pass each history's day"):
        model.score_items(histories, item_ids[1:])
    gained = model.score_items(histories, item_ids[1:], days=np.array([20, 43])) - recommender().score_items(
        histories, item_ids[1:])
    # Day 20's week (days 13-19) holds indices 8 and 1 five times each, nothing else: they gain, the rest not.
    assert gained[0, 7].item() == pytest.approx(100 * np.log(6), rel=1e-4) and gained[0, 0] == pytest.approx(gained[0, 7])
    assert gained[0, [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]].abs().max() < 1e-3
    # Day 43's week (days 36-42) holds only held-out items: nothing gains.
    assert gained[1].abs().max() < 1e-3
