"""The quality gate on a real MovieLens-100K snapshot extracted from Postgres: one test per defect.

Each test copies the module's one extracted snapshot, injects a single kind of defect into the
real rows and checks what the gate makes of it: blocking defects stop the run with the
expectation, the count and a sample row named; tolerant ones below their threshold pass with
the offending rows moved out of interactions.parquet into rejected_interactions.parquet.
Every config here has its own PrismRec home, so the record of successful snapshots (volume
band, drift baseline) is private to the test that builds it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import load_config
from tasks.data.extract import file_sha256 as sha256
from tasks.data.quality import check_snapshot
from tasks.errors import DataQualityError
from tasks.layout import SnapshotFiles

# After the last ML-100K rating (1998-04-22 23:10:38), so the snapshot holds all 100,000.
LOGICAL_DATE = datetime(1998, 5, 1, tzinfo=UTC)


def _config(base_overrides: dict, home: Path, **quality) -> object:
    return load_config(base_overrides | {"paths.home": str(home)} | {f"quality.{k}": v for k, v in quality.items()})


@pytest.fixture(scope="module")
def snapshot(base_overrides, ml100k, tmp_path_factory) -> Path:
    from tasks.data.extract import extract_snapshot

    config = _config(base_overrides, tmp_path_factory.mktemp("extract-home"))
    return extract_snapshot(config, LOGICAL_DATE, tmp_path_factory.mktemp("quality") / "snapshot").path


@pytest.fixture
def qconfig(base_overrides, tmp_path):
    return _config(base_overrides, tmp_path / "home")


def _corrupt(snapshot: Path, tmp_path: Path, table: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    copy = tmp_path / "snapshot"
    shutil.copytree(snapshot, copy)
    path = SnapshotFiles(copy).table(table)
    change(pd.read_parquet(path)).to_parquet(path, index=False)
    return copy


def _fails(config, snapshot: Path, *fragments: str, logical_date: datetime = LOGICAL_DATE) -> str:
    files = SnapshotFiles(snapshot)
    before = sha256(files.interactions)
    with pytest.raises(DataQualityError) as caught:
        check_snapshot(config, snapshot, logical_date)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert json.loads(files.quality_report.read_text())["summary"]["passed"] is False
    assert sha256(files.interactions) == before and not files.rejected_interactions.exists()
    return message


def test_real_snapshot_passes_and_is_recorded(qconfig, snapshot, tmp_path):
    clean = tmp_path / "clean"
    shutil.copytree(snapshot, clean)
    report = check_snapshot(qconfig, clean, LOGICAL_DATE)

    assert report.passed and report.failures == [] and report.rejected == {"interactions": 0}
    assert report.counts == {"items": 1682, "users": 943, "interactions": 100_000}
    assert report.summary() == (
        f"data quality: {report.evaluated}/{report.evaluated} expectations passed "
        "on 100,000 interactions, 1,682 items, 943 users"
    )
    written = json.loads(SnapshotFiles(clean).quality_report.read_text())
    assert written["summary"]["passed"] is True and written["drift"]["previous"] is None
    in_set = [r for r in written["validation_results"]["interactions"]["results"]
              if r["expectation_config"]["type"] == "expect_column_values_to_be_in_set"]
    assert {r["expectation_config"]["kwargs"]["value_set"] for r in in_set} == {
        "<943 ids of this snapshot>", "<1,682 ids of this snapshot>"}
    history = json.loads((qconfig.paths.home / "quality" / "snapshot_history.json").read_text())["snapshots"]
    assert [(h["logical_date"], h["counts"]["interactions"]) for h in history] == [
        ("1998-05-01T00:00:00+00:00", 100_000)]
    assert not SnapshotFiles(clean).rejected_interactions.exists()


def _set(frame: pd.DataFrame, row: int, **values) -> pd.DataFrame:
    frame = frame.copy()
    for column, value in values.items():
        if value is None and str(frame[column].dtype) == "int64":
            frame[column] = frame[column].astype("Int64")
        frame.loc[row, column] = value
    return frame


BLOCKING = {
    "missing_column": ("items", lambda f: f.drop(columns=["description"]),
                       ["items: expect_table_columns_to_match_set failed: missing columns description"]),
    "wrong_type": ("interactions", lambda f: f.assign(occurred_at=f["occurred_at"].astype(str)),
                   ["interactions: expect_column_dtype(occurred_at) failed: type is str, expected UTC timestamp"]),
    "null_key": ("interactions", lambda f: _set(f, 5, item_id=None),
                 [("interactions: expect_column_values_to_not_be_null(item_id) failed for 1 of 100,000 rows "
                  "(0.001%), e.g. null (user_id=1, occurred_at=1997-09-22T22:01:17+00:00)")]),
    "duplicate_item_id": ("items", lambda f: _set(f, 1, item_id=1),
                          [("items: expect_column_values_to_be_unique(item_id) failed for 2 of 1,682 rows "
                           "(0.12%), e.g. 1")]),
    "duplicate_user_id": ("users", lambda f: _set(f, 1, user_id=1),
                          ["users: expect_column_values_to_be_unique(user_id) failed for 2 of 943 rows"]),
}


@pytest.mark.parametrize("kind", BLOCKING)
def test_blocking_defect_stops_the_run_on_a_single_row(qconfig, snapshot, tmp_path, kind):
    table, change, fragments = BLOCKING[kind]
    corrupted = _corrupt(snapshot, tmp_path, table, change)

    message = _fails(qconfig, corrupted, *fragments)
    assert "Fix the offending rows in app.items / app.users / app.interactions" in message


def _append(rows: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Append rows derived from real ones (keeping dtypes) to the interactions."""
    return lambda f: pd.concat([f, rows(f).astype(f.dtypes.to_dict())], ignore_index=True)


TOLERANT = {
    "orphan_item": (_append(lambda f: f.iloc[:3].assign(item_id=[888_888, 999_999, 888_888])),
                    ("expect_column_values_to_be_in_set(item_id) failed for 3 of 100,003 rows (0.003%), "
                    "e.g. 888888, 999999 [tolerated (up to 1%): 3 rows left out of the snapshot]")),
    "orphan_user": (_append(lambda f: f.iloc[:2].assign(user_id=77_777)),
                    "expect_column_values_to_be_in_set(user_id) failed for 2 of 100,002 rows (0.002%), e.g. 77777"),
    "rating_off_scale": (lambda f: _set(f, 7, rating=50.0),
                         ("expect_column_values_to_be_between(rating) failed for 1 of 100,000 rows (0.001%), "
                         "e.g. 50.0 [tolerated")),
    "event_before_source_start": (lambda f: _set(f, 9, occurred_at=pd.Timestamp("1970-01-01", tz="UTC")),
                                  ("expect_column_values_to_be_between(occurred_at) failed for 1 of 100,000 rows "
                                  "(0.001%), e.g. 1970-01-01T00:00:00+00:00 [tolerated")),
    "event_after_logical_date": (lambda f: _set(f, 9, occurred_at=pd.Timestamp("1999-03-01", tz="UTC")),
                                 ("expect_column_values_to_be_between(occurred_at) failed for 1 of 100,000 rows "
                                 "(0.001%), e.g. 1999-03-01T00:00:00+00:00 [tolerated")),
    "duplicate_event": (_append(lambda f: f.iloc[[20, 30]]),
                        ("expect_compound_columns_to_be_unique failed for 4 of 100,002 rows (0.004%), "
                        "e.g. (user_id=1, item_id=")),
}


@pytest.mark.parametrize("kind", TOLERANT)
def test_tolerant_defect_below_threshold_leaves_the_rows_out(qconfig, snapshot, tmp_path, kind):
    change, fragment = TOLERANT[kind]
    corrupted = _corrupt(snapshot, tmp_path, "interactions", change)
    injected = pd.read_parquet(SnapshotFiles(corrupted).interactions)
    bad = len(injected) - 100_000 if len(injected) > 100_000 else 1

    report = check_snapshot(qconfig, corrupted, LOGICAL_DATE)

    assert report.passed and report.rejected == {"interactions": bad}
    assert [f.describe() for f in report.failures if fragment in f.describe()], report.failures
    files = SnapshotFiles(corrupted)
    kept = pd.read_parquet(files.interactions)
    rejected = pd.read_parquet(files.rejected_interactions)
    assert len(kept) == len(injected) - bad and len(rejected) == bad
    assert rejected["reason"].str.startswith(report.failures[0].expectation).all()
    original = pd.read_parquet(SnapshotFiles(snapshot).interactions)
    if len(injected) > 100_000:  # appended rows: exactly the real snapshot is left
        pd.testing.assert_frame_equal(kept, original)
    manifest = json.loads(files.manifest.read_text())
    assert manifest["counts"]["interactions"] == len(kept) == report.counts["interactions"]
    assert manifest["sha256"][files.interactions.name] == sha256(files.interactions)
    assert manifest["rejected"] == {"interactions": bad, "file": files.rejected_interactions.name}
    written = json.loads(files.quality_report.read_text())
    assert written["summary"]["rejected"] == {"interactions": bad}


def test_tolerant_defect_above_threshold_fails(qconfig, snapshot, tmp_path):
    # 2% of the real interactions point at items the catalogue does not have.
    corrupted = _corrupt(snapshot, tmp_path, "interactions",
                         lambda f: f.assign(item_id=f["item_id"].where(f.index % 50 != 0, 999_999)))

    _fails(qconfig, corrupted,
           "1 of 33 expectations failed:",
           "interactions: expect_column_values_to_be_in_set(item_id) failed for 2,000 of 100,000 rows (2%), "
           "e.g. 999999 [more than the tolerated 1%]")


BLANK_TEXT = {
    "blank_title": (lambda f: _set(f, 0, title="  "),
                    ("items: expect_column_values_to_match_regex(title) failed for 1 of 1,682 rows "
                     "(0.059%), e.g. '  ' (item_id=1) [tolerated (up to 1%): 1 rows left out of the snapshot]")),
    "null_description": (lambda f: _set(f, 1, description=None),
                         ("items: expect_column_values_to_not_be_null(description) failed for 1 of 1,682 rows "
                          "(0.059%), e.g. null (item_id=2, title='GoldenEye') [tolerated")),
}


@pytest.mark.parametrize("kind", BLANK_TEXT)
def test_blank_item_text_within_the_share_leaves_the_item_and_its_interactions_out(qconfig, snapshot, tmp_path,
                                                                                   kind):
    change, fragment = BLANK_TEXT[kind]
    corrupted = _corrupt(snapshot, tmp_path, "items", change)
    bad_item = int(pd.read_parquet(SnapshotFiles(corrupted).items).loc[0 if kind == "blank_title" else 1, "item_id"])
    original = pd.read_parquet(SnapshotFiles(snapshot).interactions)
    its_ratings = int((original["item_id"] == bad_item).sum())

    report = check_snapshot(qconfig, corrupted, LOGICAL_DATE)

    assert report.passed and report.rejected == {"interactions": its_ratings, "items": 1}
    assert [f for f in report.failures if fragment in f.describe() and not f.blocking], report.failures
    files = SnapshotFiles(corrupted)
    items = pd.read_parquet(files.items)
    assert len(items) == 1681 and bad_item not in set(items["item_id"])
    assert pd.read_parquet(files.rejected_items)["item_id"].tolist() == [bad_item]
    kept = pd.read_parquet(files.interactions)
    assert len(kept) == 100_000 - its_ratings and bad_item not in set(kept["item_id"])
    reasons = pd.read_parquet(files.rejected_interactions)["reason"]
    assert len(reasons) == its_ratings and reasons.str.startswith("its item was left out: expect_column_values_to_").all()
    manifest = json.loads(files.manifest.read_text())
    assert manifest["counts"]["items"] == 1681 and manifest["sha256"][files.items.name] == sha256(files.items)


def test_blank_item_text_above_the_share_stops_the_run(qconfig, snapshot, tmp_path):
    # 2 % of the real catalogue has a blank title: more than quality.max_rejected_share (1 %).
    corrupted = _corrupt(snapshot, tmp_path, "items", lambda f: f.assign(title=f["title"].where(f.index % 50 != 0, " ")))

    message = _fails(qconfig, corrupted,
                     "items: expect_column_values_to_match_regex(title) failed for 34 of 1,682 rows (2%)",
                     "[more than the tolerated 1%]",
                     "Fix the offending rows in app.items")
    assert not SnapshotFiles(corrupted).rejected_items.exists() and message


def test_freshness_fails_when_the_newest_event_is_too_old(base_overrides, qconfig, snapshot, tmp_path):
    late = datetime(1998, 8, 1, tzinfo=UTC)  # 100 days after the last ML-100K rating
    stale = tmp_path / "stale"
    shutil.copytree(snapshot, stale)

    _fails(qconfig, stale,
           "interactions: expect_column_max_to_be_between(occurred_at) failed: newest is "
           "1998-04-22T23:10:38+00:00, expected no earlier than 1998-07-02T00:00:00+00:00",
           logical_date=late)
    relaxed = _config(base_overrides, tmp_path / "relaxed", max_event_age_days=120)
    assert check_snapshot(relaxed, stale, late).passed


def test_volume_band_against_the_last_success_at_or_before_the_date(qconfig, snapshot, tmp_path):
    from tasks.data.extract import extract_snapshot

    april = extract_snapshot(qconfig, datetime(1998, 4, 1, tzinfo=UTC), tmp_path / "april")
    assert check_snapshot(qconfig, april.path, april.logical_date).passed  # first run: no band
    n_april = april.counts["interactions"]

    may = tmp_path / "may"
    shutil.copytree(snapshot, may)
    report = check_snapshot(qconfig, may, LOGICAL_DATE)
    assert report.passed and report.drift["previous"] == str(april.path) and report.drift["breaches"] == []
    assert 0 < report.drift["metrics"]["new_user_share"] < 0.2

    # Two thirds of May's rows gone: a rerun of May compares with May's run, not April's.
    thinned = _corrupt(snapshot, tmp_path / "thin", "interactions", lambda f: f.iloc[::3])  # 33,334 rows
    _fails(qconfig, thinned,
           "interactions: expect_table_row_count_to_be_between failed: 33,334 rows, expected between "
           "50,000 and 300,000 (the last successful snapshot had 100,000)",
           "that passed the gate: as of 1998-05-01T00:00:00+00:00, checked at 20", f"in {may}. If the rows")
    # A backfill of a date between the two compares with April's, the latest at or before it.
    _fails(qconfig, thinned, f"expected between {n_april // 2:,} and {n_april * 3:,} "
           f"(the last successful snapshot had {n_april:,})", logical_date=datetime(1998, 4, 15, tzinfo=UTC))


@pytest.fixture
def drifted_history(base_overrides, snapshot, tmp_path) -> dict:
    """A recorded earlier snapshot holding only the real rows of users 1..300 (a partial source)."""
    overrides = base_overrides | {"paths.home": str(tmp_path / "home"), "quality.volume_max_ratio": 10}
    partial = _corrupt(snapshot, tmp_path / "partial", "interactions", lambda f: f[f["user_id"] <= 300])
    earlier = load_config(overrides | {"quality.max_event_age_days": None})
    assert check_snapshot(earlier, partial, datetime(1998, 4, 30, tzinfo=UTC)).passed
    return overrides


def test_drift_warns_by_default(drifted_history, snapshot, tmp_path):
    current = tmp_path / "current"
    shutil.copytree(snapshot, current)

    report = check_snapshot(load_config(drifted_history), current, LOGICAL_DATE)

    assert report.passed and report.summary().endswith("; drift warning")
    assert report.drift["breaches"] == ["new_user_share 0.682 > 0.5"]  # 643 of 943 users are new
    assert json.loads(SnapshotFiles(current).quality_report.read_text())["drift"]["metrics"]["new_user_share"] == 0.681866


def test_drift_fails_in_fail_mode(drifted_history, snapshot, tmp_path):
    current = tmp_path / "current"
    shutil.copytree(snapshot, current)

    _fails(load_config(drifted_history | {"quality.drift_mode": "fail"}), current,
           "0 of 33 expectations failed and drift passed its threshold:",
           "drift FAILED: item_popularity_js=", "(new_user_share 0.682 > 0.5) [quality.drift_mode=fail]")
    assert json.loads(SnapshotFiles(current).quality_report.read_text())["drift"]["failed"] is True
