"""The new-item head (tasks.model.new_item_head): its inputs, its fit, and the Recommender scoring through it."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.model.network import ModelSpec, PrismRecNet
from tasks.model.new_item_head import (
    Cases,
    NewItemHead,
    fit_head,
    item_ages,
    item_features,
    load_head,
    recent_share,
    save_head,
)
from tasks.model.recommender import Recommender

N_ITEMS = 120


def test_ages_are_years_behind_the_newest_trained_item_and_features_are_buckets():
    years = pd.Series([2000, 1999, 1995, 1980, 2001, 1990, None], dtype="Int64")
    trained = np.array([True, True, True, True, False, False, False])
    ages = item_ages(years, trained)
    assert ages[:6].tolist() == [0, 1, 5, 20, 0, 10] and np.isnan(ages[6])  # 2001 is newer: age 0, not -1
    features = item_features(ages, np.array([50, 40, 30, 20, 0, 2, 0]))  # age 0, 1, 2-3, 4-6 | interactions 0, 1, 2
    assert features[4].tolist() == [1, 0, 0, 0, 1, 0, 0]
    assert features[5].tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert features[6].tolist() == [0, 0, 0, 0, 1, 0, 0]  # no year: the baseline age
    recent = torch.tensor([False, True, False, True])  # by item row; row 0 is padding
    padded = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 0], [2, 2, 3, 1]])
    assert recent_share(padded, recent).tolist() == [0.5, 0.0, 0.5]


def test_the_head_starts_as_the_identity_and_round_trips_through_its_file(tmp_path):
    head = NewItemHead()
    scores = torch.randn(3, 5)
    features = item_features(np.zeros(5), np.zeros(5))
    assert torch.equal(head.lift(scores, features, torch.ones(5, dtype=torch.bool), torch.rand(3)), scores)
    with torch.no_grad():
        head.item.copy_(torch.arange(7.0))
        head.user.copy_(torch.tensor([0.5, -0.25]))
        head.bias.fill_(0.3)
    save_head(head, tmp_path / "head.json", {"cases": {"cold": 3}})
    loaded = load_head(tmp_path / "head.json")
    share = torch.rand(3)
    assert torch.allclose(loaded.lift(scores, features, torch.ones(5, dtype=torch.bool), share),
                          head.lift(scores, features, torch.ones(5, dtype=torch.bool), share))
    assert load_head(tmp_path / "absent.json") is None
    with pytest.raises(ValueError, match="another layout"):
        NewItemHead.from_dict({**head.to_dict(), "items": {}})


def test_the_fit_lifts_the_new_item_the_cases_watch_and_leaves_trained_items_alone():
    # Candidates 0-3 trained, 4-6 new; item 4 is a recent release just added, and every cold case watches it.
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3]] * 4)
    seen = torch.zeros_like(scores, dtype=torch.bool)
    new = torch.tensor([False] * 4 + [True] * 3)
    features = item_features(np.array([5, 5, 5, 5, 0, 10, np.nan]), np.array([9, 9, 9, 9, 0, 2, 0]))[4:]
    recent = torch.tensor([True, False, False])
    share = torch.full((4,), 0.5)
    cold = Cases.of(scores, seen, torch.full((4,), 4), share, new)
    warm = Cases.of(scores, seen, torch.tensor([0, 0, 1, 0]), share, new)
    head = fit_head([cold, warm], features, recent)
    lifted = head.lift(scores[:, 4:], features, recent, share)
    assert (lifted[:, 0] > scores[:, 1]).all()  # the recent release now outranks the second trained item
    assert (lifted[:, 0] > lifted[:, 1]).all() and (lifted[:, 0] > lifted[:, 2]).all()
    weights = head.to_dict()
    assert weights["items"]["age_0-0"] > 0 and weights["scale"] > 0
    # Nothing to fit on: the identity.
    assert fit_head([], features, recent).to_dict()["bias"] == 0.0


def test_the_cases_loss_is_the_cross_entropy_over_the_whole_catalogue():
    """Folding the trained candidates into one log-sum-exp changes nothing: the same loss as the
    softmax over every candidate with the new ones lifted, history masked, trained and new targets."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 9, generator=generator) * 3
    new = torch.tensor([False, True, False, False, True, True, False, True, False])
    seen = torch.zeros(6, 9, dtype=torch.bool)
    seen[0, 1] = seen[1, 0] = seen[2, [2, 4]] = True
    targets = torch.tensor([4, 7, 0, 1, 8, 5])  # new, new, trained, new, trained, new
    share = torch.rand(6, generator=generator)
    features = item_features(np.array([0, 1, 3, 9]), np.array([0, 1, 2, 0]))
    recent = torch.tensor([True, False, True, False])
    head = NewItemHead()
    with torch.no_grad():
        head.scale.fill_(1.7)
        head.bias.fill_(-0.4)
        head.item.copy_(torch.linspace(-1, 1, 7))
        head.user.copy_(torch.tensor([0.3, 0.9]))
    cases = Cases.join([Cases.of(scores[:4], seen[:4], targets[:4], share[:4], new),
                        Cases.of(scores[4:], seen[4:], targets[4:], share[4:], new)])
    full = scores.clone()
    full[:, new] = head.lift(scores[:, new], features, recent, share)
    expected = torch.nn.functional.cross_entropy(full.masked_fill(seen, float("-inf")), targets)
    assert torch.allclose(cases.loss(head, features, recent), expected, atol=1e-6)
    assert cases.scores.shape == (6, 4) and cases.targets.tolist() == [1, 3, -1, 0, -1, 2]


def recommender(with_head: bool) -> Recommender:
    torch.manual_seed(0)
    spec = ModelSpec(n_items=N_ITEMS, max_history=16, dim=16, n_interests=3, user_layers=1, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True)
    net = PrismRecNet(spec)
    counts = np.where(np.arange(N_ITEMS) % 6 == 0, 0, 10)  # every 6th item is new
    items = pd.DataFrame({"item_id": np.arange(1000, 1000 + N_ITEMS), "title": "Film", "genres": "Drama",
                          "year": 1990 + np.arange(N_ITEMS) % 11, "interactions": np.where(counts == 0, np.arange(N_ITEMS) % 3, 10),
                          "train_interactions": counts})
    model = Recommender(net, torch.randn(N_ITEMS + 1, 384), items)
    if with_head:
        head = NewItemHead()
        with torch.no_grad():
            head.scale.fill_(0.5)
            head.bias.fill_(2.0)
            head.item.copy_(torch.tensor([3.0, 1.0, 0.0, -1.0, 2.0, -2.0, -3.0]))
            head.user.copy_(torch.tensor([1.0, 2.0]))
        model.head = head.requires_grad_(False)
    return model


def histories(users: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.choice(np.arange(1000, 1000 + N_ITEMS), size=rng.integers(1, 25), replace=False) for _ in range(users)]


def test_the_recommender_moves_new_items_alone_and_the_index_lists_what_exact_ranking_lists():
    plain, headed = recommender(False), recommender(True)
    users = histories()
    before, _, padded = plain.score_indices(plain.histories_to_indices(users), with_attention=False)
    after, _, _ = headed.score_indices(headed.histories_to_indices(users), with_attention=False)
    new = headed.new_rows
    assert torch.equal(after[:, :, ~headed.is_new], before[:, :, ~headed.is_new])
    share = recent_share(padded, headed.item_recent)
    expected = headed.head.lift(before[:, :, new], headed.item_features[new], headed.item_recent[new], share)
    assert torch.allclose(after[:, :, new], expected)
    assert headed.recommend(users, 10).is_new.sum() > plain.recommend(users, 10).is_new.sum()
    # Every new item is a candidate of the index's lists, so an index that visits every cell lists the same.
    exact = headed.recommend(users, 10, max_new_items=3)
    approx = headed.recommend(users, 10, max_new_items=3, index=headed.candidate_index(lists=4, probes=4),
                              candidates=N_ITEMS)
    assert np.array_equal(approx.item_ids, exact.item_ids)
    assert np.allclose(approx.scores, exact.scores, atol=1e-5)
    # With too few retrieved candidates, new items still reach the lists (they are appended, then lifted).
    narrow = headed.recommend(users, 10, index=headed.candidate_index(lists=4, probes=1), candidates=10)
    assert narrow.is_new.sum() >= exact.is_new.sum() // 2
