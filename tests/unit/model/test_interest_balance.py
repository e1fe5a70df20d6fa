"""ComiRec's controllable aggregation (tasks.model.recommender.balance_interests) and how the
Recommender lists, explains and scores with it, on a small random network (no language model)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.config import ConfigError, load_config
from tasks.model.network import ModelSpec, PrismRecNet
from tasks.model.recommender import Recommender, balance_interests


def greedy_reference(scores: np.ndarray, items: np.ndarray, penalty: float, depth: int) -> list[tuple[int, int]]:
    """The aggregation written out for one user: maximise f(u, i) + penalty x #{j in S: interest(j) != interest(i)}."""
    chosen: list[tuple[int, int]] = []  # (item, interest)
    for _ in range(depth):
        best, best_gain = None, -np.inf
        for k in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                item = items[k, c]
                if any(item == i for i, _ in chosen) or not np.isfinite(scores[k, c]):
                    continue
                gain = scores[k, c] + penalty * sum(1 for _, other in chosen if other != k)
                if gain > best_gain:
                    best, best_gain = (int(item), k), gain
        if best is None:
            break
        chosen.append(best)
    return chosen


def candidates(users: int = 5, k: int = 3, n: int = 12, depth: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    full = torch.randn(users, k, n, generator=generator, dtype=torch.float64) * 2
    return full, *full.topk(depth, dim=2)


@pytest.mark.parametrize("penalty", [0.3, 1.0, 5.0])
def test_greedy_matches_the_objective_written_out(penalty):
    _, scores, items = candidates()
    got_scores, got_items, got_interest = balance_interests(scores, items, penalty, 6)
    for user in range(scores.shape[0]):
        expected = greedy_reference(scores[user].numpy(), items[user].numpy(), penalty, 6)
        assert list(zip(got_items[user].tolist(), got_interest[user].tolist())) == expected
        for position, (item, interest) in enumerate(expected):
            position_of = (items[user, interest] == item).nonzero().item()
            assert got_scores[user, position] == scores[user, interest, position_of]


def test_no_penalty_is_the_best_interest_ranking():
    full, scores, items = candidates()
    _, got_items, got_interest = balance_interests(scores, items, 0.0, 6)
    best_scores, best = full.max(1)
    expected = best_scores.topk(6, dim=1).indices
    assert torch.equal(got_items, expected)
    assert torch.equal(got_interest, best.gather(1, expected))


def test_a_large_penalty_takes_turns_and_never_lists_an_item_twice():
    # Two interests that like the same items: without a penalty interest 0 takes every pick.
    scores = torch.tensor([[[9.0, 8.0, 7.0, 6.0], [5.0, 4.0, 3.0, 2.0]]])
    items = torch.tensor([[[1, 2, 3, 4], [1, 2, 5, 6]]])
    _, plain, plain_interest = balance_interests(scores, items, 0.0, 4)
    assert plain.tolist() == [[1, 2, 3, 4]] and plain_interest.tolist() == [[0, 0, 0, 0]]
    _, got, interest = balance_interests(scores, items, 100.0, 4)
    assert interest.tolist() == [[0, 1, 0, 1]]
    # Interest 1's turn skips item 1 (listed by interest 0) and takes item 2; interest 0 then
    # moves on to item 3, and interest 1 to item 5.
    assert got.tolist() == [[1, 2, 3, 5]]
    assert len(set(got[0].tolist())) == 4


def test_candidates_running_out_leave_empty_slots():
    scores = torch.tensor([[[3.0, float("-inf")], [2.0, float("-inf")]]])
    items = torch.tensor([[[1, 0], [1, 0]]])
    got_scores, got_items, _ = balance_interests(scores, items, 1.0, 3)
    assert got_items.tolist() == [[1, 0, 0]]
    assert torch.isfinite(got_scores).tolist() == [[True, False, False]]


def small_recommender(balance: float, n_items: int = 30, k: int = 3, bf16: bool = False) -> Recommender:
    torch.manual_seed(0)
    spec = ModelSpec(n_items=n_items, max_history=8, dim=16, n_interests=k, user_layers=1, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True,
                     interest_balance=balance)
    net = PrismRecNet(spec)
    with torch.no_grad():
        net.id_embedding.weight.normal_(std=1.0)  # distinct items, so interests disagree
    items = pd.DataFrame({"item_id": np.arange(100, 100 + n_items), "title": [f"Film {i}" for i in range(n_items)],
                          "train_interactions": np.arange(n_items) + 1})
    return Recommender(net, torch.randn(n_items + 1, 384), items, bf16=bf16)


HISTORIES = [[100, 105, 111, 117], [103], [120, 121, 122, 123, 124, 125, 126], []]


def test_balance_shares_out_the_list_and_scores_rank_like_the_list():
    plain, balanced = small_recommender(0.0), small_recommender(2.0)
    before = plain.recommend(HISTORIES, 10)
    after = balanced.recommend(HISTORIES, 10)
    for user, history in enumerate(HISTORIES[:3]):
        listed = after.item_ids[user]
        assert len(set(listed)) == 10 and not set(listed) & set(history)
        # Each pick's score is its score under the interest that picked it.
        per_interest, *_ = balanced.score_indices([balanced.to_indices(history)])
        picked = per_interest[0, torch.as_tensor(after.interest_ids[user]),
                              torch.tensor(balanced.to_indices(listed))]
        assert torch.allclose(torch.as_tensor(after.scores[user]), picked)
        scores = balanced.score_items([history], listed)[0]
        # score_items ranks the listed items first, in list order (what the evaluation measures).
        everything = balanced.score_items([history], balanced.item_ids)[0]
        unseen = ~np.isin(balanced.item_ids, history)
        order = balanced.item_ids[unseen][np.argsort(-everything[torch.as_tensor(unseen)].numpy(), kind="stable")]
        assert order[:10].tolist() == listed.tolist()
        assert (scores[:-1] > scores[1:]).all()
    spread = [len(set(ids)) for ids in after.interest_ids[:3]]
    assert sum(spread) > sum(len(set(ids)) for ids in before.interest_ids[:3])
    assert np.array_equal(after.item_ids[3], before.item_ids[3])  # no history: popularity, as before
    assert (after.interest_ids[3] == -1).all()


@pytest.mark.parametrize("bf16", [False, True])
def test_no_balance_keeps_the_best_interest_ranking(bf16):
    """What the gate's evaluation ranks (score_items) is what publishing lists (recommend), in either precision."""
    recommender = small_recommender(0.0, bf16=bf16)
    result = recommender.recommend(HISTORIES[:3], 10)
    for user, history in enumerate(HISTORIES[:3]):
        scores = recommender.score_items([history], recommender.item_ids)[0].numpy()
        scores[np.isin(recommender.item_ids, history)] = -np.inf
        assert result.item_ids[user].tolist() == recommender.item_ids[np.argsort(-scores, kind="stable")[:10]].tolist()


def test_one_interest_scores_rank_like_its_balanced_lists_without_re_ranking(monkeypatch):
    recommender = small_recommender(2.0, k=1)
    result = recommender.recommend(HISTORIES[:3], 10)
    monkeypatch.setattr(recommender, "_ranked", lambda *args, **kwargs: pytest.fail("re-ranked one interest"))
    for user, history in enumerate(HISTORIES[:3]):
        scores = recommender.score_items([history], recommender.item_ids)[0].numpy()
        scores[np.isin(recommender.item_ids, history)] = -np.inf
        assert result.item_ids[user].tolist() == recommender.item_ids[np.argsort(-scores, kind="stable")[:10]].tolist()


def test_balance_is_saved_with_the_model_and_checked_in_the_config():
    assert dataclasses.asdict(small_recommender(0.7).spec)["interest_balance"] == 0.7
    assert load_config({"train.interest_balance": 0.5}).train.interest_balance == 0.5
    with pytest.raises(ConfigError, match="train.interest_balance must be >= 0"):
        load_config({"train.interest_balance": -1})


def test_a_call_can_override_the_models_balance():
    plain, balanced = small_recommender(0.0), small_recommender(2.0)
    asked = plain.recommend(HISTORIES, 10, interest_balance=2.0)
    own = balanced.recommend(HISTORIES, 10)
    assert np.array_equal(asked.item_ids, own.item_ids) and np.array_equal(asked.interest_ids, own.interest_ids)
    assert np.array_equal(balanced.recommend(HISTORIES, 10, interest_balance=0.0).item_ids,
                          plain.recommend(HISTORIES, 10).item_ids)
    with pytest.raises(ValueError, match="interest_balance must be >= 0"):
        plain.recommend(HISTORIES, 10, interest_balance=-0.5)


def test_the_user_tower_ranks_in_bf16_with_float32_scores_near_the_float32_ones():
    full, half = small_recommender(0.0), small_recommender(0.0, bf16=True)
    indexed = [full.to_indices(h) for h in HISTORIES[:3]]
    exact, _, _ = full.score_indices(indexed)
    rounded, _, _ = half.score_indices(indexed)
    assert rounded.dtype == exact.dtype == torch.float32
    assert not torch.equal(rounded, exact)  # the flag reaches the tower
    assert torch.allclose(rounded, exact, atol=0.25)  # scaled cosines in [-20, 20]: a bf16 tower moves them a little
