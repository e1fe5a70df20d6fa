"""`prismrec forget` on real Postgres: the person leaves every reco table, stays out, and the audit names nobody."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

APP, RECO, MODEL = "forget_app", "forget_reco", "forget_test"
PERSON = 424242  # an id that appears nowhere else, so a search for it means something
OTHERS = (11, 12, 13, 14)
D1 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def forget_config(config):
    return dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, app_schema=APP, reco_schema=RECO),
        registry=dataclasses.replace(config.registry, model_name=MODEL),
        materialize=dataclasses.replace(config.materialize, top_k=5, keep_runs=3, similar_top_k=3),
    )


@pytest.fixture(scope="module")
def published(forget_config, engine, trained_model_dir, tmp_path_factory):
    """Five users with real items, two publishes (so the person is in the history twice)."""
    from tasks.model.recommender import Recommender
    from tasks.publish.materialize import materialize
    from tasks.registry.store import register_candidate

    items = [int(i) for i in Recommender.load(trained_model_dir).item_ids[:40]]
    start = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [{"u": u, "i": items[(k * 5 + n) % 40], "t": start + timedelta(days=k, hours=n)}
            for k, u in enumerate((*OTHERS, PERSON)) for n in range(6)]
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {APP} cascade; drop schema if exists {RECO} cascade; "
                             f"create schema {APP}"))
        conn.execute(sa.text(f"create table {APP}.items (item_id bigint primary key, title text, genres text, "
                             "year int, description text)"))
        conn.execute(sa.text(f"insert into {APP}.items values (:i, 't', 'Drama', 1990, 'd')"), [{"i": i} for i in items])
        conn.execute(sa.text(f"create table {APP}.users (user_id bigint primary key)"))
        conn.execute(sa.text(f"insert into {APP}.users values (:u)"), [{"u": u} for u in (*OTHERS, PERSON)])
        conn.execute(sa.text(f"create table {APP}.interactions (user_id bigint, item_id bigint, rating real, "
                             "occurred_at timestamptz)"))
        conn.execute(sa.text(f"insert into {APP}.interactions values (:u, :i, 4, :t)"), rows)
    register_candidate(
        forget_config, model_dir=trained_model_dir, run_dir=tmp_path_factory.mktemp("forget-run") / "run",
        evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["test"]},
        lineage={"run_key": "forget-test"})
    return [materialize(forget_config, logical_date=D1 + timedelta(days=d)) for d in (0, 1)]


def _count(engine, query: str, **params) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(query), params).scalar()


@pytest.fixture(scope="module")
def erasure(forget_config, published):
    from tasks.publish.forget import forget

    return forget(forget_config, PERSON, "ticket DPO-17", "privacy-officer")


def test_the_person_leaves_current_and_historical_tables(erasure, published, engine):
    assert published[0].users == 5
    assert erasure.rows_removed["user_recommendations_history"] == 2 * 5  # two kept runs, top 5 each
    assert erasure.rows_removed["user_interests_history"] >= 2 and not erasure.already_erased
    for relation in ("user_recommendations", "user_interests", "user_recommendations_history",
                     "user_interests_history"):
        assert _count(engine, f"select count(*) from {RECO}.{relation} where user_id = :u", u=PERSON) == 0
    assert _count(engine, f"select count(*) from {RECO}.user_recommendations") == len(OTHERS) * 5


def test_the_audit_records_the_request_without_the_person(erasure, engine):
    with engine.connect() as conn:
        row = conn.execute(sa.text(f"select row_to_json(e)::text from {RECO}.erasures e")).scalars().all()
    assert len(row) == 1 and "ticket DPO-17" in row[0] and "privacy-officer" in row[0]
    assert str(PERSON) not in row[0]


def test_later_publishes_and_snapshots_leave_the_person_out(erasure, forget_config, engine, tmp_path):
    import pandas as pd

    from tasks.data.extract import extract_snapshot
    from tasks.layout import SnapshotFiles
    from tasks.publish.materialize import materialize

    later = materialize(forget_config, logical_date=D1 + timedelta(days=5))
    assert later.users == len(OTHERS)
    assert _count(engine, f"select count(*) from {RECO}.user_recommendations where user_id = :u", u=PERSON) == 0
    snapshot = extract_snapshot(forget_config, D1 + timedelta(days=5), tmp_path / "snapshot")
    files = SnapshotFiles(snapshot.path)
    assert PERSON not in set(pd.read_parquet(files.interactions)["user_id"])
    assert PERSON not in set(pd.read_parquet(files.users)["user_id"])
    assert snapshot.counts["users"] == len(OTHERS)


def test_a_publish_running_during_the_erasure_drops_the_persons_rows_at_its_swap(erasure, forget_config, engine):
    """A run that scored the person before the request: its rows for them go right before its attach."""
    from tasks.publish import owner_functions

    with engine.connect() as conn:
        mid = conn.execute(sa.text(
            f"insert into {RECO}.runs (run_key, model_name, model_version, status, backend_pid) values "
            "('in-flight', :m, '1', 'running', pg_backend_pid()) returning materialization_id"), {"m": MODEL}).scalar()
        tables = owner_functions.create_partitions(conn, RECO, mid)
        conn.execute(sa.text(f"insert into {tables['user_recommendations']} (user_id, rank, item_id, score, "
                             "interest_id) values (:u, 1, 1, 0.5, 0), (11, 1, 1, 0.5, 0)"), {"u": PERSON})
        owner_functions.index_partitions(conn, RECO, mid)
        owner_functions.swap_in(conn, RECO, mid)
        rows = conn.execute(sa.text(f"select user_id from {RECO}.user_recommendations")).scalars().all()
        conn.rollback()
    assert rows == [11]


def test_a_repeated_request_is_recorded_and_removes_nothing_more(erasure, forget_config):
    from tasks.publish.forget import forget

    again = forget(forget_config, PERSON, None, "privacy-officer")
    assert again.already_erased and sum(again.rows_removed.values()) == 0 and again.erasure_id > erasure.erasure_id


def test_the_command_prints_one_line_and_refuses_bad_input(erasure, base_overrides, capsys):
    from tasks.cli import main

    flags = ["--set", f"database.url={base_overrides['database.url']}", "--set", f"paths.home={base_overrides['paths.home']}",
             "--set", f"database.reco_schema={RECO}", "--set", f"database.app_schema={APP}"]
    assert main(["forget", "11", "--reason", "ticket DPO-18", *flags]) == 0
    out = capsys.readouterr()
    assert "removed" in out.out and "user_recommendations_history" in out.out and "Traceback" not in out.err
    with pytest.raises(SystemExit) as bad:
        main(["forget", "eleven", *flags])
    assert bad.value.code == 2 and "invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["forget", "12", "--reason", "x" * 600, *flags])
    assert "at most 500 characters" in capsys.readouterr().err
