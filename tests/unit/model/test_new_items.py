"""New items (no training interactions) and retired items in scoring, on a small synthetic model."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.model.network import ModelSpec, PrismRecNet
from tasks.model.recommender import (
    NEW_ITEM_PREFIX,
    NEW_ITEM_SUFFIX,
    NEW_ITEM_UNEXPLAINED,
    Recommender,
)
from tasks.publish.rows import Catalogue, recommendation_table

TRAINED, APPENDED = 20, 6  # items 100..119 trained (110..111 never rated in training), 120..125 appended
HISTORIES = [[100, 101, 102], [105, 106], [112, 113, 114, 115]]


def recommender(balance: float = 0.0) -> Recommender:
    torch.manual_seed(0)
    spec = ModelSpec(n_items=TRAINED, max_history=8, dim=16, n_interests=2, user_layers=1, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True,
                     interest_balance=balance)
    net = PrismRecNet(spec)
    with torch.no_grad():
        net.id_embedding.weight.normal_(std=1.0)
    total = TRAINED + APPENDED
    counts = np.r_[np.arange(TRAINED) + 5, np.zeros(APPENDED)]
    counts[10:12] = 0  # in the training universe, rated only in the held-out part
    items = pd.DataFrame({"idx": np.arange(1, total + 1), "item_id": np.arange(100, 100 + total),
                          "title": [f"Film {i}" for i in range(total)], "genres": "Drama",
                          "train_interactions": counts.astype(np.int64)})
    text = torch.randn(total + 1, 384)
    return Recommender(net, text, items)


def test_items_past_the_id_table_are_placed_by_text_alone():
    model = recommender()
    net = model.net
    text = torch.randn(TRAINED + APPENDED + 1, 384)
    with torch.no_grad():
        vectors = net.item_vectors(text)
        projected = net.text_projection(text)
    assert torch.allclose(vectors[TRAINED + 1:], projected[TRAINED + 1:])
    assert torch.allclose(vectors[:TRAINED + 1], projected[:TRAINED + 1] + net.id_embedding.weight)
    assert model.is_new.nonzero().flatten().tolist() == [11, 12, *range(TRAINED + 1, TRAINED + APPENDED + 1)]


@pytest.mark.parametrize("balance", [0.0, 1.0])
def test_new_items_are_capped_flagged_and_explained(balance):
    model = recommender(balance)
    free = model.recommend(HISTORIES, 15)
    assert free.is_new.sum(1).max() > 2  # uncapped, these random vectors list several new items
    capped = model.recommend(HISTORIES, 15, max_new_items=2)
    assert (capped.is_new.sum(1) <= 2).all() and (capped.is_new.sum(1) == 2).all()
    for user in range(len(HISTORIES)):
        # The new items kept are the user's best-scoring new items of the free list.
        assert set(capped.item_ids[user][capped.is_new[user]]) == set(free.item_ids[user][free.is_new[user]][:2]) \
            or balance > 0
        assert len(set(capped.item_ids[user])) == 15
    new_ids = set(range(110, 112)) | set(range(120, 126))
    assert all((item in new_ids) == flag for item, flag in zip(capped.item_ids.ravel(), capped.is_new.ravel(),
                                                                strict=True))
    for text, flag in zip(capped.explanations.ravel(), capped.is_new.ravel(), strict=True):
        if flag:
            assert (text.startswith(NEW_ITEM_PREFIX) and text.endswith(NEW_ITEM_SUFFIX)) or text == NEW_ITEM_UNEXPLAINED
        else:
            assert text.startswith("because you watched ")
    assert (model.recommend(HISTORIES, 15, max_new_items=0).is_new.sum() == 0)
    with pytest.raises(ValueError, match="max_new_items must be >= 0"):
        model.recommend(HISTORIES, 5, max_new_items=-1)


def test_new_items_rows_carry_the_flag():
    model = recommender()
    recs = model.recommend(HISTORIES, 10, max_new_items=3)
    table = recommendation_table(np.array([1, 2, 3]), recs, Catalogue.from_items(model.items))
    assert table.column("is_new_item").to_pylist() == recs.is_new.ravel().tolist()
    per_user = np.asarray(table.column("is_new_item").to_pylist()).reshape(3, 10).sum(1)
    assert per_user.max() <= 3 and per_user.sum() > 0


def test_retired_items_leave_lists_and_neighbours():
    model = recommender()
    before = model.recommend(HISTORIES + [[]], 10)
    gone = {int(before.item_ids[0, 0]), int(before.item_ids[3, 0])}  # a pick and the most popular item
    assert model.restrict_to(np.setdiff1d(model.item_ids, list(gone))) == len(gone)
    after = model.recommend(HISTORIES + [[]], 10)
    assert not gone & set(after.item_ids.ravel().tolist())
    item_ids, similar, _ = model.similar_items(5)
    assert not gone & set(item_ids.tolist()) and not gone & set(similar.ravel().tolist())


def test_scores_for_a_split_rank_as_a_list_of_that_split_alone():
    model = recommender(balance=1.0)
    split = model.item_ids[:TRAINED]  # the split's universe: none of the appended items
    scores = model.score_items(HISTORIES, split)
    model.restrict_to(split)
    listed = model.recommend(HISTORIES, 8)
    for user, history in enumerate(HISTORIES):
        unseen = ~np.isin(split, history)
        order = split[unseen][np.argsort(-scores[user][torch.as_tensor(unseen)].numpy(), kind="stable")]
        assert order[:8].tolist() == listed.item_ids[user].tolist()
