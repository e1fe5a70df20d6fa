"""Lists drawn from candidates of the inverted-file index (tasks.model.retrieval) against lists
ranked over the whole catalogue, on a small random network (no language model)."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.model.network import ModelSpec, PrismRecNet
from tasks.model.recommender import Recommender
from tasks.model.retrieval import MIN_POINTS_PER_LIST, ItemIndex, default_lists

N_ITEMS = 400


def recommender(balance: float, k: int = 3) -> Recommender:
    torch.manual_seed(0)
    spec = ModelSpec(n_items=N_ITEMS, max_history=16, dim=16, n_interests=k, user_layers=1, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True,
                     interest_balance=balance)
    net = PrismRecNet(spec)
    with torch.no_grad():
        net.id_embedding.weight.normal_(std=1.0)
    trained = np.arange(N_ITEMS) % 7  # every 7th item has no training interactions: new, placed by text
    items = pd.DataFrame({"item_id": np.arange(1000, 1000 + N_ITEMS), "title": [f"Film {i}" for i in range(N_ITEMS)],
                          "train_interactions": trained})
    return Recommender(net, torch.randn(N_ITEMS + 1, 384), items)


def histories(users: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    made = [rng.choice(np.arange(1000, 1000 + N_ITEMS), size=rng.integers(1, 30), replace=False) for _ in range(users)]
    return [*made, np.array([], dtype=np.int64)]  # and a user with no history (the popularity list)


@pytest.mark.parametrize("balance", [0.0, 0.3])
@pytest.mark.parametrize("max_new", [None, 2])
def test_an_index_that_visits_every_cell_lists_what_exact_ranking_lists(balance, max_new):
    model = recommender(balance)
    model.restrict_to(np.setdiff1d(np.arange(1000, 1000 + N_ITEMS), np.arange(1000, 1000 + N_ITEMS, 9)))  # retired
    index = model.candidate_index(lists=8, probes=8)
    users = histories()
    exact = model.recommend(users, 20, max_new_items=max_new)
    approx = model.recommend(users, 20, max_new_items=max_new, index=index, candidates=N_ITEMS)
    assert np.array_equal(approx.item_ids, exact.item_ids)
    assert np.array_equal(approx.interest_ids, exact.interest_ids)
    assert np.array_equal(approx.explanations, exact.explanations)
    assert np.array_equal(approx.is_new, exact.is_new)
    assert np.allclose(approx.scores, exact.scores, atol=1e-5)
    retired = np.arange(1000, 1000 + N_ITEMS, 9)
    assert not np.isin(approx.item_ids, retired).any()
    if max_new is not None:
        assert approx.is_new.sum(1).max() <= max_new and approx.is_new.any()
    assert approx.exact_rescored_users == 0


def test_users_short_of_candidates_are_ranked_against_the_whole_catalogue():
    model = recommender(0.0)
    index = model.candidate_index(lists=8, probes=8)
    heavy = np.arange(1000, 1000 + N_ITEMS)[:-30]  # has seen all but 30 items: their candidates are mostly seen
    exact = model.top_item_ids([heavy], 20)
    approx = model.recommend([heavy], 20, index=index, candidates=20)
    assert approx.exact_rescored_users == 1
    assert np.array_equal(approx.item_ids, exact)


def test_a_partial_index_lists_only_listable_unseen_items_and_mostly_the_exact_ones():
    model = recommender(0.3)
    index = model.candidate_index(lists=8, probes=2)
    users = histories(seed=1)
    exact = model.top_item_ids(users, 20, max_new_items=2)
    approx = model.recommend(users, 20, max_new_items=2, index=index, candidates=60)
    for listed, seen in zip(approx.item_ids, users, strict=True):
        listed = listed[listed >= 0]
        assert len(np.unique(listed)) == len(listed) == 20 and not np.isin(listed, seen).any()
    overlap = np.mean([len(np.intersect1d(a, e)) / 20 for a, e in zip(approx.item_ids, exact, strict=True)])
    assert 0.5 < overlap < 1.0  # a quarter of the cells visited: most of the list, not all of it


def test_cells_follow_the_catalogue_size_and_never_starve():
    assert default_lists(100_000) == round(4 * 100_000 ** 0.5)
    assert default_lists(100) == 100 // MIN_POINTS_PER_LIST and default_lists(10) == 1
    model = recommender(0.0)
    index = ItemIndex(model.unit_items, model.available, lists=1000, probes=64)
    assert index.lists == N_ITEMS // MIN_POINTS_PER_LIST and index.probes == index.lists
    assert index.items == N_ITEMS
    index.probe(2)
    assert index.probes == index.index.nprobe == 2
    index.probe(0)
    assert index.probes == 1
    found = index.search(model.net.query_vectors(torch.randn(3, 16)), 5)
    assert found.shape == (3, 5) and (found > 0).all() and (found <= N_ITEMS).all()


def test_a_pickled_index_searches_as_the_original_with_its_probes():
    """Publishing hands its tuned index to the scoring processes pickled (faiss's serialisation)."""
    import pickle

    model = recommender(0.0)
    index = ItemIndex(model.unit_items, model.available, lists=8, probes=2)
    index.probe(3)
    copy = pickle.loads(pickle.dumps(index))
    assert (copy.lists, copy.probes, copy.index.nprobe, copy.items) == (8, 3, 3, N_ITEMS)
    queries = model.net.query_vectors(torch.randn(6, 16))
    assert torch.equal(copy.search(queries, 20), index.search(queries, 20))
