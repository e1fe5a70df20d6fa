"""The data-quality gate on small hand-built snapshots: one test per kind of bad data.

Each failing case asserts that DataQualityError is raised and that its message names the
expectation, the column and an offending value, so a person can find the broken source row.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import load_config
from tasks.errors import DataQualityError
from tasks.quality import check_snapshot

LOGICAL_DATE = datetime(1999, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def config():
    # Thresholds sized to the toy snapshot; environ={} keeps the developer's env out.
    return load_config(
        {"quality.min_items": 3, "quality.min_users": 2, "quality.min_interactions": 10},
        environ={},
    )


def _items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": pd.array([1, 2, 3, 4, 5], dtype="int64"),
        "title": ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat"],
        "genres": ["Animation Comedy", "Action", "Thriller", "Comedy", "Crime"],
        "year": pd.array([1995, 1995, 1995, 1995, None], dtype="Int64"),
        "description": [f"Movie {i} (1995)" for i in range(1, 6)],
    })


def _users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.array([10, 20, 30, 40], dtype="int64")})


def _interactions() -> pd.DataFrame:
    rows = [(u, i) for u in (10, 20, 30, 40) for i in (1, 2, 3)]
    return pd.DataFrame({
        "user_id": pd.array([u for u, _ in rows], dtype="int64"),
        "item_id": pd.array([i for _, i in rows], dtype="int64"),
        "rating": [float(1 + k % 5) for k in range(len(rows))],
        "occurred_at": pd.Series(
            pd.date_range("1998-03-01", periods=len(rows), freq="D", tz="UTC")
        ).astype("datetime64[us, UTC]"),
    })


def _write(snapshot: Path, items=None, users=None, interactions=None) -> Path:
    snapshot.mkdir(parents=True, exist_ok=True)
    (items if items is not None else _items()).to_parquet(snapshot / "items.parquet")
    (users if users is not None else _users()).to_parquet(snapshot / "users.parquet")
    (interactions if interactions is not None else _interactions()).to_parquet(snapshot / "interactions.parquet")
    return snapshot


def _with(frame: pd.DataFrame, row: dict) -> pd.DataFrame:
    """`frame` plus one row, keeping the column dtypes (nullable ints where a null is added)."""
    extra = pd.DataFrame([row])
    out = pd.concat([frame, extra], ignore_index=True)
    for column, dtype in frame.dtypes.items():
        if row.get(column, 0) is None and str(dtype) == "int64":
            dtype = "Int64"
        out[column] = out[column].astype(dtype)
    return out


def _fails(config, snapshot: Path) -> DataQualityError:
    with pytest.raises(DataQualityError) as caught:
        check_snapshot(config, snapshot, LOGICAL_DATE)
    report = json.loads((snapshot / "quality_report.json").read_text())
    assert report["summary"]["passed"] is False
    assert "re-run" in str(caught.value).splitlines()[-1]
    return caught.value


def test_clean_snapshot_passes_and_writes_report(config, tmp_path):
    snapshot = _write(tmp_path / "snap")
    report = check_snapshot(config, snapshot, LOGICAL_DATE)

    assert report.passed and report.failures == []
    assert report.counts == {"items": 5, "users": 4, "interactions": 12}
    assert report.summary() == (
        f"data quality: {report.evaluated}/{report.evaluated} expectations passed "
        "on 12 interactions, 5 items, 4 users"
    )
    assert report.evaluated == 21  # 8 on items, 4 on users, 9 on interactions
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True
    written = json.loads((snapshot / "quality_report.json").read_text())
    assert written["summary"]["passed"] is True
    assert set(written["validation_results"]) == {"items", "users", "interactions"}
    assert all(r["success"] for v in written["validation_results"].values() for r in v["results"])


CORRUPTIONS = {
    "null_key": (
        {"interactions": lambda: _with(_interactions(), {
            "user_id": 20, "item_id": None, "rating": 4.0,
            "occurred_at": pd.Timestamp("1998-05-01", tz="UTC")})},
        ["interactions: expect_column_values_to_not_be_null(item_id)", "1 of 13 rows", "user_id=20"],
    ),
    "duplicate_item_id": (
        {"items": lambda: _with(_items(), {
            "item_id": 3, "title": "Four Rooms (re-release)", "genres": "Thriller",
            "year": 1996, "description": "Four Rooms again"})},
        ["items: expect_column_values_to_be_unique(item_id)", "2 of 6 rows", "e.g. 3"],
    ),
    "orphan_item_id": (
        {"interactions": lambda: _with(_interactions(), {
            "user_id": 10, "item_id": 999999, "rating": 3.0,
            "occurred_at": pd.Timestamp("1998-05-01", tz="UTC")})},
        ["interactions: expect_column_values_to_be_in_set(item_id)", "1 of 13 rows (7.7%)", "e.g. 999999"],
    ),
    "orphan_user_id": (
        {"interactions": lambda: _with(_interactions(), {
            "user_id": 77, "item_id": 1, "rating": 3.0,
            "occurred_at": pd.Timestamp("1998-05-01", tz="UTC")})},
        ["interactions: expect_column_values_to_be_in_set(user_id)", "e.g. 77"],
    ),
    "event_after_logical_date": (
        {"interactions": lambda: _with(_interactions(), {
            "user_id": 10, "item_id": 4, "rating": 3.0,
            "occurred_at": pd.Timestamp("1999-06-30 12:00", tz="UTC")})},
        ["interactions: expect_column_values_to_be_between(occurred_at)", "1999-06-30T12:00:00+00:00"],
    ),
    "event_before_earliest": (
        {"interactions": lambda: _with(_interactions(), {
            "user_id": 10, "item_id": 4, "rating": 3.0,
            "occurred_at": pd.Timestamp("1970-01-01", tz="UTC")})},
        ["interactions: expect_column_values_to_be_between(occurred_at)", "1970-01-01T00:00:00+00:00"],
    ),
    "blank_description": (
        {"items": lambda: _items().assign(description=["Movie 1", "   ", "Movie 3", "Movie 4", "Movie 5"])},
        ["items: expect_column_values_to_match_regex(description)", "'   ' (item_id=2, title='GoldenEye')"],
    ),
    "null_title": (
        {"items": lambda: _items().assign(title=["Toy Story", "GoldenEye", None, "Get Shorty", "Copycat"])},
        ["items: expect_column_values_to_not_be_null(title)", "null (item_id=3)"],
    ),
    "rating_off_scale": (
        {"interactions": lambda: _interactions().assign(rating=[4.0] * 11 + [50.0])},
        ["interactions: expect_column_values_to_be_between(rating)", "e.g. 50.0"],
    ),
    "too_few_users": (
        {"users": lambda: _users().iloc[:1], "interactions": lambda: _interactions().query("user_id == 10")},
        ["users: expect_table_row_count_to_be_between failed: 1 rows, expected at least 2",
         "interactions: expect_table_row_count_to_be_between failed: 3 rows, expected at least 10"],
    ),
    "missing_column": (
        {"items": lambda: _items().drop(columns=["description"])},
        ["items: expect_table_columns_to_match_set failed: missing columns description"],
    ),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_kind_of_bad_data_is_named_with_an_offending_value(config, tmp_path, kind):
    tables, fragments = CORRUPTIONS[kind]
    snapshot = _write(tmp_path / "snap", **{name: make() for name, make in tables.items()})

    error = _fails(config, snapshot)

    message = str(error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert error.failures and all(f["severity"] == "critical" for f in error.failures)


def test_every_failure_is_listed_in_one_error(config, tmp_path):
    interactions = _with(_interactions(), {
        "user_id": 77, "item_id": 888888, "rating": 3.0, "occurred_at": pd.Timestamp("2001-01-01", tz="UTC")})
    interactions = _with(interactions, {
        "user_id": 10, "item_id": 999999, "rating": 3.0, "occurred_at": pd.Timestamp("1998-05-01", tz="UTC")})
    snapshot = _write(tmp_path / "snap", interactions=interactions)

    error = _fails(config, snapshot)

    failed = {(f["table"], f["expectation"], f["column"]) for f in error.failures}
    assert failed == {
        ("interactions", "expect_column_values_to_be_in_set", "user_id"),
        ("interactions", "expect_column_values_to_be_in_set", "item_id"),
        ("interactions", "expect_column_values_to_be_between", "occurred_at"),
    }
    item_failure = next(f for f in error.failures if f["column"] == "item_id")
    assert item_failure["unexpected_count"] == 2 and item_failure["sample"] == ["888888", "999999"]
    assert "3 of 21 expectations failed" in str(error)


def test_sample_size_caps_quoted_values(tmp_path):
    config = load_config({"quality.min_items": 3, "quality.min_users": 2, "quality.min_interactions": 10,
                          "quality.sample_size": 2}, environ={})
    interactions = _interactions().assign(item_id=[1, 2, 3] * 3 + [501, 502, 503])
    snapshot = _write(tmp_path / "snap", interactions=interactions)

    error = _fails(config, snapshot)

    assert "3 of 12 rows (25%), e.g. 501, 502\n" in str(error)


def test_missing_parquet_file_fails_the_gate(config, tmp_path):
    snapshot = _write(tmp_path / "snap")
    (snapshot / "users.parquet").unlink()

    error = _fails(config, snapshot)

    assert "users.parquet missing" in str(error)
