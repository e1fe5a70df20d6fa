"""Snapshot extraction from a real Postgres holding the genuine MovieLens-100K."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.config import load_config
from tasks.data.extract import Replay, extract_snapshot
from tasks.data.quality import check_snapshot
from tasks.errors import DataQualityError, SourceDataError
from tasks.layout import SnapshotFiles

MIDDLE = datetime(1998, 1, 1, tzinfo=UTC)  # ML-100K runs from Sep 1997 to Apr 1998
LAST_RATING = datetime.fromtimestamp(893286638, tz=UTC)


def count_up_to(engine: sa.Engine, until: datetime, since: datetime | None = None) -> int:
    sql = "select count(*) from app.interactions where occurred_at <= :until"
    if since is not None:
        sql += " and occurred_at > :since"
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), {"until": until, "since": since}).scalar_one()


def test_snapshot_in_the_middle_of_movielens(ml100k, config, engine, tmp_path):
    info = extract_snapshot(config, MIDDLE, tmp_path / "snap")
    expected = count_up_to(engine, MIDDLE)
    assert 0 < expected < 100_000
    assert info.counts == {"items": 1682, "users": 943, "interactions": expected}
    assert info.path == tmp_path / "snap"
    files = SnapshotFiles(info.path)
    tables = list(files.tables().values())
    assert sorted(info.path.iterdir()) == sorted([*tables, files.manifest])

    manifest = json.loads(files.manifest.read_text())
    for path in tables:
        assert manifest["sha256"][path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["counts"] == info.counts
    assert manifest["logical_date"] == manifest["as_of"] == "1998-01-01T00:00:00+00:00"  # a backfill: its own date
    assert manifest["min_occurred_at"] == "1997-09-20T03:05:10+00:00"  # unix 874724710
    assert sa.make_url(manifest["source_url"]).password in (None, "***")  # never the password itself
    assert json.loads(json.dumps(info.to_dict())) == info.to_dict()

    interactions = pd.read_parquet(files.interactions)
    items = pd.read_parquet(files.items)
    users = pd.read_parquet(files.users)
    assert interactions.dtypes.astype(str).to_dict() == {
        "user_id": "int64", "item_id": "int64", "rating": "float64", "occurred_at": "datetime64[us, UTC]"}
    assert items.dtypes.astype(str).to_dict() == {
        "item_id": "int64", "title": "str", "genres": "str", "year": "Int64", "description": "str"}
    assert users.dtypes.astype(str).to_dict() == {"user_id": "int64"}
    assert len(interactions) == expected and interactions["occurred_at"].max() <= MIDDLE
    assert manifest["max_occurred_at"] == interactions["occurred_at"].max().isoformat()
    assert interactions.equals(interactions.sort_values(["user_id", "occurred_at"], kind="stable"))
    toy_story = items.set_index("item_id").loc[1]
    assert toy_story["description"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert pd.isna(items.set_index("item_id").loc[267, "year"])


def test_window_keeps_only_recent_interactions(ml100k, base_overrides, engine, tmp_path):
    windowed = load_config({**base_overrides, "extract.window_days": 30})
    info = extract_snapshot(windowed, MIDDLE, tmp_path / "snap")
    assert info.counts["interactions"] == count_up_to(engine, MIDDLE, MIDDLE - timedelta(days=30))
    manifest = json.loads(SnapshotFiles(info.path).manifest.read_text())
    assert (manifest["window_days"], manifest["window_start"]) == (30, "1997-12-02T00:00:00+00:00")


def test_last_rating_is_included_and_naive_dates_are_utc(ml100k, config, tmp_path):
    aware = extract_snapshot(config, LAST_RATING, tmp_path / "aware")
    naive = extract_snapshot(config, LAST_RATING.replace(tzinfo=None), tmp_path / "naive")
    paris = extract_snapshot(config, LAST_RATING.astimezone(timezone(timedelta(hours=1))), tmp_path / "paris")
    assert aware.counts["interactions"] == 100_000
    assert naive.sha256 == aware.sha256 == paris.sha256  # same instant, byte-identical snapshot


def test_rerun_replaces_the_snapshot_whole(ml100k, config, tmp_path):
    out = tmp_path / "snap"
    first = extract_snapshot(config, LAST_RATING, out)
    (out / "stale.txt").write_text("from an older run")
    second = extract_snapshot(config, MIDDLE, out)
    assert not (out / "stale.txt").exists()
    assert second.counts["interactions"] < first.counts["interactions"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]  # no temporary folders left behind


def test_missing_source_tables_are_a_user_error(ml100k, base_overrides, tmp_path):
    elsewhere = load_config({**base_overrides, "database.app_schema": "no_such_schema"})
    with pytest.raises(SourceDataError, match="no_such_schema.interactions does not exist.*prismrec load"):
        extract_snapshot(elsewhere, MIDDLE, tmp_path / "snap")
    assert not (tmp_path / "snap").exists()


def test_user_tables_with_extra_columns_and_no_load_order(ml100k, base_overrides, engine, tmp_path):
    # A production-like schema: views with extra columns and no source_row to break ties.
    with engine.begin() as conn:
        conn.execute(sa.text("drop schema if exists app_views cascade; create schema app_views"))
        conn.execute(sa.text("create view app_views.items as select *, 'x' as studio from app.items"))
        conn.execute(sa.text("create view app_views.users as select user_id, gender from app.users"))
        conn.execute(sa.text(
            "create view app_views.interactions as select user_id, item_id, rating, occurred_at, 1 as channel "
            "from app.interactions"))
    views = load_config({**base_overrides, "database.app_schema": "app_views"})
    info = extract_snapshot(views, MIDDLE, tmp_path / "snap")
    assert info.counts == {"items": 1682, "users": 943, "interactions": count_up_to(engine, MIDDLE)}
    assert list(pd.read_parquet(SnapshotFiles(info.path).interactions).columns) == [
        "user_id", "item_id", "rating", "occurred_at"]
    manifest = json.loads(SnapshotFiles(info.path).manifest.read_text())
    assert manifest["interactions_order"] == ["user_id", "occurred_at", "item_id"]


def test_interactions_stream_in_blocks_and_a_null_key_reads_back_nullable(ml100k, base_overrides, engine,
                                                                           tmp_path, monkeypatch):
    """The interactions go CSV -> Parquet a block at a time; a null key (a defect the data gate reports)
    comes back as a nullable Int64 column, as a whole-table read gives it."""
    import pyarrow.csv as pacsv

    from tasks.data import extract

    with engine.begin() as conn:
        user, item = conn.execute(sa.text("select user_id, item_id from app.interactions where occurred_at <= :t "
                                          "order by occurred_at, user_id, item_id limit 1"), {"t": MIDDLE}).one()
        conn.execute(sa.text("drop schema if exists app_nulls cascade; create schema app_nulls"))
        conn.execute(sa.text("create view app_nulls.items as select * from app.items"))
        conn.execute(sa.text("create view app_nulls.users as select * from app.users"))
        conn.execute(sa.text(
            f"create view app_nulls.interactions as select user_id, case when user_id = {user} and item_id = {item} "
            "then null else item_id end as item_id, rating, occurred_at from app.interactions"))
    monkeypatch.setattr(extract, "STREAM_BLOCK_BYTES", 256 << 10)  # 256 KiB: several blocks for ML-100K
    blocks, open_csv = [], pacsv.open_csv

    def counted(*args, **kwargs):
        for batch in open_csv(*args, **kwargs):
            blocks.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pacsv, "open_csv", counted)
    snap = extract_snapshot(load_config({**base_overrides, "database.app_schema": "app_nulls"}), MIDDLE,
                            tmp_path / "snap")
    path = SnapshotFiles(snap.path).interactions
    assert len(blocks) > 3 and sum(blocks) == snap.counts["interactions"]
    assert sorted(p.name for p in snap.path.iterdir()) == [
        "interactions.parquet", "items.parquet", "manifest.json", "users.parquet"]  # no CSV or copy left
    interactions = pd.read_parquet(path)
    assert len(interactions) == snap.counts["interactions"] == count_up_to(engine, MIDDLE)
    assert interactions.dtypes.astype(str).to_dict() == {
        "user_id": "int64", "item_id": "Int64", "rating": "float64", "occurred_at": "datetime64[us, UTC]"}
    assert interactions["item_id"].isna().sum() == 1
    assert interactions.loc[interactions["item_id"].isna(), "user_id"].tolist() == [user]
    assert snap.min_occurred_at == interactions["occurred_at"].min().isoformat()
    assert snap.max_occurred_at == interactions["occurred_at"].max().isoformat()
    with pytest.raises(DataQualityError, match=r"expect_column_values_to_not_be_null\(item_id\) failed for 1 of"):
        check_snapshot(load_config({**base_overrides, "database.app_schema": "app_nulls"}), snap.path, snap.as_of,
                       record=False)


def test_a_run_as_of_now_reads_the_replay_as_of_its_last_rating(ml100k, config, tmp_path):
    # What a run triggered from the Airflow form, the REST API or the schedule asks for: today.
    now = datetime.now(UTC)
    info = extract_snapshot(config, now, tmp_path / "snap")
    assert info.replay == Replay("movielens-100k", LAST_RATING)  # recorded by `prismrec load`
    assert (info.logical_date, info.as_of) == (now, LAST_RATING)
    assert info.counts == {"items": 1682, "users": 943, "interactions": 100_000}
    manifest = json.loads(SnapshotFiles(info.path).manifest.read_text())
    assert manifest["as_of"] == "1998-04-22T23:10:38+00:00" and manifest["logical_date"] == now.isoformat()
    assert manifest["replay"] == {"dataset": "movielens-100k", "ends_at": manifest["as_of"]}

    report = check_snapshot(config, info.path, info.as_of, record=False)  # fresh as of the replay's end
    assert report.passed and report.blocking == []


def test_live_data_keeps_the_logical_date_and_stale_data_is_refused(ml100k, base_overrides, engine, tmp_path):
    # The same rows behind views, without a replay record: a live source whose newest event is 1998.
    with engine.begin() as conn:
        conn.execute(sa.text("drop schema if exists app_live cascade; create schema app_live"))
        for table in ("items", "users", "interactions"):
            conn.execute(sa.text(f"create view app_live.{table} as select * from app.{table}"))
    live = load_config({**base_overrides, "database.app_schema": "app_live"})
    now = datetime.now(UTC)
    info = extract_snapshot(live, now, tmp_path / "snap")
    assert info.replay is None and info.as_of == now
    with pytest.raises(DataQualityError, match="expect_column_max_to_be_between.*occurred_at"):
        check_snapshot(live, info.path, info.as_of, record=False)
