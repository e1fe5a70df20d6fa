"""Sequence building and the leave-one-out split of docs/protocol.md, on hand-made interactions."""

import numpy as np
import pandas as pd
import pytest

from tasks.config import PrepareConfig
from tasks.data.prepare import Events, build_sequences, cold_targets, core, new_catalogue_items
from tasks.errors import SourceDataError


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "occurred_at"]).assign(
        occurred_at=lambda f: pd.to_datetime(f["occurred_at"], unit="s", utc=True))


def sequences_of(interactions: pd.DataFrame, cfg: PrepareConfig):
    """(events, their 5-core, its sequences), as prepare_dataset builds them."""
    events = Events.from_frame(interactions)
    kept = core(events, cfg)
    return events, kept, build_sequences(events, kept)


def test_five_core_is_one_pass_users_then_items():
    cfg = PrepareConfig(min_user_interactions=3, min_item_interactions=2)
    rows = [(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 14, 4),
            (2, 10, 1), (2, 11, 2), (2, 12, 3), (2, 13, 4),
            (3, 14, 1), (3, 10, 2)]  # user 3 has too few: dropped before items are counted
    events = Events.from_frame(frame(rows))
    kept = core(events, cfg)
    assert set(events.user_id[kept.rows]) == {1, 2}
    # Item 14 would have 2 interactions counting user 3; users go first, so it has 1 and goes.
    assert set(events.item_id[kept.rows]) == {10, 11, 12}


def test_sequences_are_time_ordered_with_ties_in_source_order_and_split_leave_one_out():
    cfg = PrepareConfig(min_user_interactions=1, min_item_interactions=1)
    rows = [(7, 30, 5), (7, 10, 1), (7, 20, 3), (7, 40, 3), (7, 50, 9),  # 20 and 40 tie at t=3
            (8, 10, 2), (8, 30, 1), (8, 20, 4)]
    *_, seqs = sequences_of(frame(rows), cfg)
    assert seqs.user_ids.tolist() == [7, 8]
    assert seqs.item_ids.tolist() == [-1, 10, 20, 30, 40, 50]  # index 0 is padding
    as_ids = [seqs.item_ids[seqs.sequence(u)].tolist() for u in range(2)]
    assert as_ids == [[10, 20, 40, 30, 50], [30, 10, 20]]
    assert seqs.item_ids[seqs.targets("test")].tolist() == [50, 20]
    assert seqs.item_ids[seqs.targets("valid")].tolist() == [30, 10]
    assert [seqs.item_ids[h].tolist() for h in seqs.histories(2)] == [[10, 20, 40], [30]]
    assert [seqs.item_ids[h].tolist() for h in seqs.histories(1)] == [[10, 20, 40, 30], [30, 10]]


def test_sequences_survive_save_and_load(tmp_path):
    cfg = PrepareConfig(min_user_interactions=1, min_item_interactions=1)
    *_, seqs = sequences_of(frame([(1, 5, 1), (1, 6, 2), (1, 7, 3)]), cfg)
    seqs.save(tmp_path / "s.npz")
    loaded = type(seqs).load(tmp_path / "s.npz")
    assert np.array_equal(loaded.item_idx, seqs.item_idx) and np.array_equal(loaded.indptr, seqs.indptr)


def test_nothing_left_after_filtering_is_a_clear_error():
    with pytest.raises(SourceDataError, match="5-core"):
        sequences_of(frame([(1, 5, 1), (1, 6, 2)]), PrepareConfig())


def test_catalogue_items_outside_the_five_core_are_kept_as_new_items():
    cfg = PrepareConfig(min_user_interactions=3, min_item_interactions=2)
    rows = [(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 14, 4),
            (2, 10, 1), (2, 11, 2), (2, 12, 3), (2, 13, 4)]
    interactions = frame(rows)
    items = pd.DataFrame({"item_id": [15, 14, 13, 12, 11, 10], "title": list("FEDCBA"),
                          "genres": "", "description": [f"text {i}" for i in range(6)]})
    trained = sequences_of(interactions, cfg)[2].item_ids[1:]
    new = new_catalogue_items(items, interactions["item_id"].value_counts(), trained)
    # 13 and 14 have one rating each (too few for the filter); 15 has none: all three are new.
    assert new["item_id"].tolist() == [13, 14, 15] and new["interactions"].tolist() == [1, 1, 0]
    assert new["title"].tolist() == ["D", "E", "F"]


def test_cold_targets_are_new_items_first_rated_in_the_held_out_part():
    cfg = PrepareConfig(min_user_interactions=3, min_item_interactions=3)
    rows = [(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4), (1, 30, 5),
            (2, 10, 1), (2, 11, 2), (2, 12, 3), (2, 13, 4), (2, 31, 5),
            (3, 31, 2), (3, 10, 6), (3, 11, 7), (3, 12, 8), (3, 13, 9)]
    interactions = frame(rows)
    events, kept, sequences = sequences_of(interactions, cfg)
    # Item 30 is rated once, by user 1 after its held-out part begins (t=3): really cold.
    # Item 31 is first rated at t=2 by user 3, before user 2's held-out part: not cold for user 2.
    cold = cold_targets(events, sequences, kept)
    assert cold.to_dict("list") == {"user": [0], "item_id": [30]}


def test_each_interaction_keeps_its_utc_day_through_save_and_load(tmp_path):
    from tasks.data.prepare import Sequences, ticks_per_second

    cfg = PrepareConfig(min_user_interactions=1, min_item_interactions=1)
    interactions = frame([(1, 5, 86_399), (1, 6, 86_400), (1, 7, 3 * 86_400 + 5), (2, 5, 10), (2, 6, 20), (2, 7, 30)])
    path = tmp_path / "interactions.parquet"
    interactions.assign(occurred_at=interactions["occurred_at"].astype("datetime64[us, UTC]")).to_parquet(path)
    assert ticks_per_second(path) == 10**6
    events = Events.read(path)
    seqs = build_sequences(events, core(events, cfg), ticks_per_second(path))
    assert seqs.days.tolist() == [0, 1, 3, 0, 0, 0]  # the second before midnight is day 0; midnight starts day 1
    assert seqs.as_of_days(2).tolist() == [0, 0] and seqs.as_of_days(1).tolist() == [1, 0]
    seqs.save(tmp_path / "s.npz")
    assert Sequences.load(tmp_path / "s.npz").days.tolist() == seqs.days.tolist()
    older = Sequences(seqs.user_ids, seqs.indptr, seqs.item_idx, seqs.item_ids)  # a split prepared before days
    older.save(tmp_path / "older.npz")
    assert Sequences.load(tmp_path / "older.npz").days is None and older.as_of_days(1) is None


def test_interactions_saved_at_the_time_of_the_previous_one_are_marked_tied_through_save_and_load(tmp_path):
    from tasks.data.prepare import Sequences

    cfg = PrepareConfig(min_user_interactions=1, min_item_interactions=1)
    # user 1 saved 6 and 7 together; user 2's first item has user 1's last time (another user: not tied)
    events = Events.from_frame(frame([(1, 5, 10), (1, 6, 20), (1, 7, 20), (1, 8, 30), (2, 5, 30), (2, 6, 40),
                                      (2, 7, 50)]))
    seqs = build_sequences(events, core(events, cfg))
    assert seqs.tied.tolist() == [False, False, True, False, False, False, False]
    seqs.save(tmp_path / "s.npz")
    assert Sequences.load(tmp_path / "s.npz").tied.tolist() == seqs.tied.tolist()
    older = Sequences(seqs.user_ids, seqs.indptr, seqs.item_idx, seqs.item_ids)  # a split prepared before ties
    older.save(tmp_path / "older.npz")
    assert Sequences.load(tmp_path / "older.npz").tied is None
    assert len(older.successions(0)[0]) == 5 and len(seqs.successions(0)[0]) == 4  # 6 -> 7 counts only without
