"""Defects injected into a real Postgres source travel through extraction to the quality gate.

The real ML-100K tables of `app` are copied into a scratch schema, defects are written there
with SQL (the source has no foreign keys, like the replicas and views it stands for), and the
pipeline's own extract + check_snapshot decide. Tolerated defects end in
rejected_interactions.parquet; a blocking one stops the run with the offending row named.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.config import load_config
from tasks.data.extract import extract_snapshot
from tasks.data.quality import check_snapshot
from tasks.errors import DataQualityError
from tasks.layout import SnapshotFiles

LOGICAL_DATE = datetime(1998, 5, 1, tzinfo=UTC)
SCHEMA = "qa_defects"


@pytest.fixture
def source(engine, ml100k, base_overrides, tmp_path):
    """A copy of the real app tables in SCHEMA, dropped afterwards; yields a config reading it."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {SCHEMA} cascade; create schema {SCHEMA}"))
        for table in ("items", "users", "interactions"):
            conn.execute(sa.text(f"create table {SCHEMA}.{table} as table app.{table}"))
    yield load_config(base_overrides | {"paths.home": str(tmp_path / "home"), "database.app_schema": SCHEMA})
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema {SCHEMA} cascade"))


def test_tolerated_source_defects_are_left_out_of_the_snapshot(engine, source, tmp_path):
    with engine.begin() as conn:
        # 3 interactions with an item the catalogue lacks, 2 replayed writes, 1 rating off the scale,
        # 1 event stamped after the logical date (extraction must never let it in).
        conn.execute(sa.text(f"""
            insert into {SCHEMA}.interactions (user_id, item_id, rating, occurred_at)
            select user_id, 999999, rating, occurred_at from {SCHEMA}.interactions where user_id = 5 limit 3"""))
        conn.execute(sa.text(f"""
            insert into {SCHEMA}.interactions (user_id, item_id, rating, occurred_at)
            select user_id, item_id, rating, occurred_at from {SCHEMA}.interactions
            where user_id = 7 order by occurred_at, item_id limit 2"""))
        conn.execute(sa.text(f"""
            update {SCHEMA}.interactions set rating = 0 where user_id = 9 and item_id = 6"""))
        conn.execute(sa.text(f"""
            insert into {SCHEMA}.interactions (user_id, item_id, rating, occurred_at)
            values (1, 1, 4, '1999-01-01T00:00:00Z')"""))

    snapshot = extract_snapshot(source, LOGICAL_DATE, tmp_path / "snapshot")
    assert snapshot.counts["interactions"] == 100_005
    report = check_snapshot(source, snapshot.path, LOGICAL_DATE)

    assert report.passed and report.rejected == {"interactions": 6}
    rejected = pd.read_parquet(SnapshotFiles(snapshot.path).rejected_interactions)
    assert sorted(rejected["reason"].str.split("(").str[0].value_counts().items()) == [
        ("expect_column_values_to_be_between", 1),
        ("expect_column_values_to_be_in_set", 3),
        ("expect_compound_columns_to_be_unique", 2),
    ]
    assert set(rejected.loc[rejected["item_id"] == 999999, "user_id"]) == {5}
    assert rejected.loc[rejected["rating"] == 0, ["user_id", "item_id"]].values.tolist() == [[9, 6]]
    kept = pd.read_parquet(SnapshotFiles(snapshot.path).interactions)
    assert len(kept) == 99_999 and not kept.duplicated(["user_id", "item_id", "occurred_at"]).any()
    assert kept["occurred_at"].max() < pd.Timestamp(LOGICAL_DATE)
    manifest = json.loads(SnapshotFiles(snapshot.path).manifest.read_text())
    assert manifest["counts"]["interactions"] == 99_999 and manifest["rejected"]["interactions"] == 6

    # A retry of the gate on the cleaned snapshot passes and keeps the first check's rejects.
    again = check_snapshot(source, snapshot.path, LOGICAL_DATE)
    assert again.passed and again.rejected == {"interactions": 0} and again.failures == []
    assert len(pd.read_parquet(SnapshotFiles(snapshot.path).rejected_interactions)) == 6


def test_blocking_source_defect_stops_the_run(engine, source, tmp_path):
    with engine.begin() as conn:
        conn.execute(sa.text(f"""
            insert into {SCHEMA}.items (item_id, title, genres, year, description)
            select item_id, title || ' (director''s cut)', genres, year, description
            from {SCHEMA}.items where item_id = 50"""))

    snapshot = extract_snapshot(source, LOGICAL_DATE, tmp_path / "snapshot")
    with pytest.raises(DataQualityError) as caught:
        check_snapshot(source, snapshot.path, LOGICAL_DATE)

    assert ("items: expect_column_values_to_be_unique(item_id) failed for 2 of 1,683 rows (0.12%), e.g. 50"
            in str(caught.value))
    assert f"Fix the offending rows in {SCHEMA}.items" in str(caught.value)
    assert not SnapshotFiles(snapshot.path).rejected_interactions.exists()
