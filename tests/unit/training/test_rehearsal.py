"""The rehearsal of day one (tasks.training.rehearsal): the time split and its cases on hand-made ratings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import load_config
from tasks.errors import ConfigError
from tasks.training.rehearsal import cold_cutoff, rehearsal_cases, split_cases


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
    cutoff, new = cold_cutoff(RATINGS, share=1 / 3)
    assert cutoff == pd.Timestamp("2000-01-11", tz="UTC")
    assert new.tolist() == [5, 6]
    with pytest.raises(ValueError, match="between 0 and 1"):
        cold_cutoff(RATINGS, share=1.0)


def test_cases_are_each_users_first_cold_and_warm_rating_with_enough_history_strictly_before():
    cutoff, new = cold_cutoff(RATINGS, share=1 / 3)
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


def test_rehearsal_cases_keep_warm_targets_the_model_trained_on_and_sample_each_kind():
    cutoff, new = cold_cutoff(RATINGS, share=1 / 3)
    cases = rehearsal_cases(RATINGS, cutoff, new, trained=np.array([2, 3, 4]), min_history=3)
    assert cases["cold"]["item_id"].tolist() == [5, 6]
    # User 1's first warm rating is item 4 (trained); user 2's is item 1, which the model never trained on.
    assert cases["warm"]["item_id"].tolist() == [4] and cases["warm"]["user_id"].tolist() == [1]
    sampled = rehearsal_cases(RATINGS, cutoff, new, trained=np.array([2, 3, 4]), min_history=3, max_cases=1)
    assert len(sampled["cold"]) == 1 and len(sampled["warm"]) == 1


def test_the_rehearsal_settings_are_checked():
    assert load_config({"train.new_item_head_share": 0.2}).train.new_item_head_share == 0.2
    with pytest.raises(ConfigError, match="train.new_item_head_share must be between 0 and 1"):
        load_config({"train.new_item_head_share": 1.5})
    assert load_config({"train.new_item_head_rehearsal": "retrain"}).train.new_item_head_rehearsal == "retrain"
    with pytest.raises(ConfigError, match="train.new_item_head_rehearsal must be one of retrain, model, got 'self'"):
        load_config({"train.new_item_head_rehearsal": "self"})


def test_a_snapshot_whose_titles_all_appear_at_once_is_refused_before_any_training(tmp_path):
    from tasks.errors import TrainingError
    from tasks.layout import SnapshotFiles
    from tasks.training.rehearsal import fit_new_item_head

    snapshot = SnapshotFiles(tmp_path / "snapshot")
    snapshot.root.mkdir()
    at_once = RATINGS.assign(occurred_at=pd.Timestamp("2000-01-01", tz="UTC"))
    at_once.to_parquet(snapshot.interactions, index=False)
    pd.DataFrame({"item_id": range(1, 7), "title": "t", "genres": "g", "year": 2000, "description": "d"}) \
        .to_parquet(snapshot.items, index=False)
    retrain = load_config({"paths.home": str(tmp_path), "train.new_item_head_rehearsal": "retrain"})
    with pytest.raises(TrainingError, match="too few to rehearse day one on") as refused:
        fit_new_item_head(retrain, snapshot.root, tmp_path / "work", tmp_path / "model")
    assert "lower train.new_item_head_share" in str(refused.value)
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()


def test_the_default_rehearsal_leaves_the_head_the_identity_where_nothing_comes_before_the_cut_off(tmp_path, caplog):
    """On by default, the head must not stop a run on data whose titles all appear at once: it stays the
    identity, says why in the log and in its facts, and nothing is trained."""
    from tasks.layout import ModelFiles, SnapshotFiles
    from tasks.model.new_item_head import NewItemHead, load_head
    from tasks.training.rehearsal import fit_new_item_head

    snapshot = SnapshotFiles(tmp_path / "snapshot")
    snapshot.root.mkdir()
    RATINGS.assign(occurred_at=pd.Timestamp("2000-01-01", tz="UTC")).to_parquet(snapshot.interactions, index=False)
    (tmp_path / "model").mkdir()
    config = load_config({"paths.home": str(tmp_path)})
    assert config.train.new_item_head and config.train.new_item_head_rehearsal == "model"
    facts = fit_new_item_head(config, snapshot.root, tmp_path / "work", tmp_path / "model")
    assert facts["skipped"] == "too few interactions before the cut-off" and facts["cases"] == {"cold": 0, "warm": 0}
    assert load_head(ModelFiles(tmp_path / "model").new_item_head).to_dict() == NewItemHead().to_dict()
    assert "the new-item head stays the identity" in caplog.text
    assert not (tmp_path / "work").exists()


def test_the_default_rehearsal_leaves_the_head_the_identity_where_the_data_before_the_cut_off_holds_no_5_core(
        tmp_path, caplog):
    """Interactions before the cut-off, but no user with 5 of them: no model of day one to rehearse with, so
    the head stays the identity (the "retrain" rehearsal stops there instead)."""
    from tasks.errors import SourceDataError
    from tasks.layout import ModelFiles, SnapshotFiles
    from tasks.model.new_item_head import NewItemHead, load_head
    from tasks.training.rehearsal import fit_new_item_head

    snapshot = SnapshotFiles(tmp_path / "snapshot")
    snapshot.root.mkdir()
    RATINGS.to_parquet(snapshot.interactions, index=False)
    pd.DataFrame({"item_id": range(1, 7), "title": "t", "genres": "g", "year": 2000, "description": "d"}) \
        .to_parquet(snapshot.items, index=False)
    (tmp_path / "model").mkdir()
    config = load_config({"paths.home": str(tmp_path), "train.new_item_head_share": 1 / 3})
    facts = fit_new_item_head(config, snapshot.root, tmp_path / "work", tmp_path / "model")
    assert facts["skipped"] == "no rehearsal universe" and facts["cases"] == {"cold": 0, "warm": 0}
    assert load_head(ModelFiles(tmp_path / "model").new_item_head).to_dict() == NewItemHead().to_dict()
    assert "leave no model of day one to rehearse with" in caplog.text
    retrain = load_config({"paths.home": str(tmp_path), "train.new_item_head_share": 1 / 3,
                           "train.new_item_head_rehearsal": "retrain"})
    with pytest.raises(SourceDataError):
        fit_new_item_head(retrain, snapshot.root, tmp_path / "work2", tmp_path / "model")


def test_the_trend_prior_of_day_one_counts_the_window_s_whole_days_before_the_cut_off_s_day():
    from tasks.model.trend import TrendPrior
    from tasks.training.rehearsal import trend_as_of

    at = pd.to_datetime(["2000-01-01 10:00", "2000-01-02 23:59", "2000-01-03 00:00", "2000-01-04 08:00",
                         "2000-01-04 09:00", "2000-01-05 12:00"], utc=True)
    interactions = pd.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "item_id": [7, 8, 8, 9, 9, 9], "occurred_at": at})
    prior = TrendPrior(window_days=2, weight=0.3, as_of_day=0, item_ids=[7], counts=[99], fit={"kept": True})
    day_one = trend_as_of(prior, interactions, pd.Timestamp("2000-01-04 09:00", tz="UTC"))
    # The cut-off's day (01-04) does not count; its two days before (01-02, 01-03) do; the saved counts go.
    assert (day_one.item_ids, day_one.counts) == ([8], [2])
    assert day_one.as_of_day == (pd.Timestamp("2000-01-04") - pd.Timestamp("1970-01-01")).days
    assert (day_one.window_days, day_one.weight, day_one.fit) == (2, 0.3, {"kept": True})
