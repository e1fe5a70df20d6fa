"""The cold-start benchmark's split and ranking (bench/cold_start.py) on hand-made ratings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cold_start import (
    NewItemHead,
    apply_head,
    catalogue_ages,
    cold_cutoff,
    figures,
    fit_head,
    item_features,
    ranks_from,
    recent_release_share,
    split_cases,
    with_policy,
)


def ratings(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, day) -> the snapshot's columns."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "day"])
    start = pd.Timestamp("2000-01-01", tz="UTC")
    return frame.assign(occurred_at=start + pd.to_timedelta(frame.pop("day"), unit="D"))


# Items 1-4 appear on days 0-3; items 5 and 6 are first rated on days 10 and 12: the last third.
RATINGS = ratings([
    (1, 1, 0), (1, 2, 1), (1, 3, 2), (1, 5, 10), (1, 4, 11), (1, 6, 13),
    (2, 2, 1), (2, 3, 3), (2, 4, 3), (2, 1, 14), (2, 6, 12),
    (3, 4, 3), (3, 1, 4), (3, 2, 4),
])


def test_the_last_share_of_titles_to_appear_are_new_and_set_the_cutoff():
    cutoff, new = cold_cutoff(RATINGS, cold_share=1 / 3)
    assert cutoff == pd.Timestamp("2000-01-11", tz="UTC")
    assert new.tolist() == [5, 6]
    with pytest.raises(ValueError, match="between 0 and 1"):
        cold_cutoff(RATINGS, cold_share=1.0)


def test_cases_are_each_users_first_cold_and_warm_rating_with_enough_history_strictly_before():
    cutoff, new = cold_cutoff(RATINGS, cold_share=1 / 3)
    cases = split_cases(RATINGS, cutoff, new, min_history=3).set_index(["user_id", "kind"])
    # User 1: item 5 (day 10) after 3 ratings; the first warm rating from the cut-off on is item 4 (day 11).
    assert cases.loc[(1, "cold"), "item_id"] == 5
    assert cases.loc[(1, "cold"), "history"].tolist() == [1, 2, 3]
    assert cases.loc[(1, "warm"), "item_id"] == 4
    assert cases.loc[(1, "warm"), "history"].tolist() == [1, 2, 3, 5]
    # User 2: item 6 on day 12 after 3 ratings (two of them on the same day, both before it).
    assert cases.loc[(2, "cold"), "history"].tolist() == [2, 3, 4]
    assert cases.loc[(2, "warm"), "item_id"] == 1
    # User 3 has no rating from the cut-off on: no case.
    assert 3 not in cases.index.get_level_values("user_id")
    # With 4 ratings needed before it, user 2's new title (3 before) is no case; user 1's item 6 is
    # then its first cold rating with enough history.
    strict = split_cases(RATINGS, cutoff, new, min_history=4).set_index(["user_id", "kind"])
    assert (2, "cold") not in strict.index
    assert strict.loc[(1, "cold"), "item_id"] == 6


def test_ranks_mask_the_history_count_ties_for_the_target_and_put_unplaceable_targets_last():
    candidates = np.array([10, 20, 30, 40])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0],   # target 30; 10 is in the history: rank 1
                           [1.0, 1.0, 1.0, 0.0],   # target 20 ties with two others: rank 0
                           [1.0, float("-inf"), 2.0, 0.0]])  # target 20 cannot be placed: after the 3 listed
    cases = pd.DataFrame({"item_id": [30, 20, 20], "history": [np.array([10]), np.array([], dtype=np.int64),
                                                                np.array([], dtype=np.int64)]})
    assert ranks_from(scores, cases, candidates).tolist() == [1, 0, 3]


def test_a_policy_lowers_new_items_and_keeps_each_rows_best_few():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    new = np.array([False, True, True, True])
    shifted = with_policy(scores, new, offset=1.0)
    assert shifted.tolist() == [[5.0, 3.0, 2.0, 1.0], [1.0, 1.0, 2.0, 3.0]]
    capped = with_policy(scores, new, offset=0.0, cap=1)
    assert capped[0].tolist() == [5.0, 4.0, float("-inf"), float("-inf")]
    assert capped[1].tolist() == [1.0, float("-inf"), float("-inf"), 4.0]


def test_figures():
    out = figures(np.array([0, 1, 9, 10, 500]))
    assert out["users"] == 5
    assert out["hr@10"] == pytest.approx(0.6)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5, abs=1e-5)
    assert out["median_rank"] == 10.0
    assert out["hr@10_se"] == pytest.approx(np.std([1, 1, 1, 0, 0], ddof=1) / np.sqrt(5), abs=1e-5)


def head_split() -> dict:
    """Trained titles 1-4 (newest from 2000), new titles 5 (2000, just added), 6 (1990, 2 ratings while in
    the catalogue) and 7 (no year); cold cases watch title 5, warm ones title 1."""
    catalogue = pd.DataFrame({"item_id": [1, 2, 3, 4, 5, 6, 7], "description": "x",
                              "year": pd.array([2000, 1999, 1995, 1980, 2000, 1990, None], dtype="Int64"),
                              "interactions": [np.nan] * 4 + [0, 2, 0]})
    history = [np.array([2, 3]), np.array([1, 4]), np.array([2, 4])]
    cases = pd.DataFrame({"item_id": [5, 5, 5], "history": history})
    return {"catalogue": catalogue, "items": catalogue.iloc[:4], "candidates": catalogue["item_id"].to_numpy(),
            "new": np.array([False] * 4 + [True] * 3), "cold": cases,
            "warm": cases.assign(item_id=[1, 2, 1], history=[np.array([3]), np.array([3, 4]), np.array([4])])}


def test_the_heads_inputs_are_what_the_catalogue_knew_at_the_cutoff():
    split = head_split()
    assert catalogue_ages(split).tolist()[:6] == [0, 1, 5, 20, 0, 10] and np.isnan(catalogue_ages(split).iloc[6])
    features = item_features(split)  # age 0, 1, 2-3, 4-6 | ratings 0, 1, 2
    assert features[4].tolist() == [1, 0, 0, 0, 1, 0, 0]
    assert features[5].tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert features[6].tolist() == [0, 0, 0, 0, 1, 0, 0]  # no year: the baseline age
    # Recent releases are at most one year behind the newest trained title: 1, 2 and 5.
    assert recent_release_share(split, split["cold"]).tolist() == [0.5, 0.5, 0.5]


def test_the_head_starts_as_the_identity_and_moves_only_new_items():
    split = head_split()
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3]] * 3)
    head = NewItemHead(item_features(split).shape[1])
    assert torch.equal(apply_head(head, scores, split, split["cold"]), scores)
    fitted = fit_head({"cold": scores, "warm": scores}, split)
    lifted = apply_head(fitted, scores, split, split["cold"])
    assert torch.equal(lifted[:, :4], scores[:, :4])
    # Title 5 (the cold cases' target) rose from the bottom of the unseen items; its age and ratings
    # weights say why: a new release just added.
    before = ranks_from(scores, split["cold"], split["candidates"])
    after = ranks_from(lifted, split["cold"], split["candidates"])
    assert (after < before).all()
    weights = fitted.weights()
    assert weights["age_0-0"] > 0 and weights["ratings_0"] > weights["ratings_2"]
