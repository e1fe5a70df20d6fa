"""Publishing beside readers: one complete set during swaps, lookups that never wait long behind a
BI report, a reader that cannot stall the publisher. Killed and cut-off publishers are
tests/integration/publish/test_faults.py's.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

APP, RECO, MODEL = "swap_app", "swap_reco", "swap_test"
USERS, TOP_K = 40, 7
D1 = datetime(2024, 2, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def overrides(base_overrides) -> dict:
    return {**base_overrides, "database.app_schema": APP, "database.reco_schema": RECO, "registry.model_name": MODEL,
            "materialize.top_k": TOP_K, "materialize.batch_users": 16, "materialize.keep_runs": 2,
            "materialize.similar_top_k": 3}


@pytest.fixture(scope="module")
def swap_config(overrides):
    from tasks.config import load_config

    return load_config(overrides)


@pytest.fixture(scope="module")
def versions(swap_config, engine, trained_model_dir, tmp_path_factory) -> list[str]:
    """App data for USERS users and two registered versions of the real model; the second is champion."""
    from tasks.model.recommender import Recommender
    from tasks.registry.store import register_candidate

    items = Recommender.load(trained_model_dir).item_ids
    rng = np.random.default_rng(7)
    start = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [{"u": u, "i": int(i), "t": start + timedelta(days=u, hours=n)}
            for u in range(1, USERS + 1) for n, i in enumerate(rng.choice(items, 8, replace=False))]
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {APP} cascade; create schema {APP}; drop schema if exists {RECO} cascade"))
        conn.execute(sa.text(f"create table {APP}.interactions (user_id bigint, item_id bigint, rating real, occurred_at timestamptz)"))
        conn.execute(sa.text(f"insert into {APP}.interactions values (:u, :i, 4, :t)"), rows)
    root = tmp_path_factory.mktemp("swap-runs")
    return [register_candidate(
        swap_config, model_dir=trained_model_dir, run_dir=root / f"run-{n}",
        evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["test"]},
        lineage={"run_key": f"swap-{n}"}).version for n in range(2)]


def _current(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            f"select min(materialization_id), count(*) from {RECO}.user_recommendations")).one()


def _run(engine, mid: int):
    with engine.connect() as conn:
        return conn.execute(sa.text(f"select * from {RECO}.runs where materialization_id = :m"), {"m": mid}).mappings().one()


def test_readers_see_one_complete_set_during_swaps(swap_config, engine, versions):
    from tasks.publish.materialize import materialize
    from tasks.registry.store import promote

    materialize(swap_config)
    expected = USERS * TOP_K
    stop, reads, errors = threading.Event(), [], []

    def reader() -> None:
        local = sa.create_engine(engine.url)
        try:
            with local.connect() as conn:
                while not stop.is_set():
                    reads.append(tuple(conn.execute(sa.text(
                        "select count(*), count(distinct materialization_id), count(distinct model_version), "
                        f"count(distinct generated_at), min(model_version) from {RECO}.user_recommendations")).one()))
                    conn.rollback()
        except Exception as exc:  # noqa: BLE001 - any failure of a reader fails the test
            errors.append(repr(exc))
        finally:
            local.dispose()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        published = []
        for swap in range(4):  # alternate the champion so consecutive sets differ in version
            promote(swap_config, versions[swap % 2], reason="swap test")
            published.append(materialize(swap_config))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors
    assert reads and all(r[:4] == (expected, 1, 1, 1) for r in reads), {r for r in reads if r[:4] != (expected, 1, 1, 1)}
    assert {r[4] for r in reads} == set(versions)  # the readers really did straddle swaps
    assert _current(engine) == (published[-1].materialization_id, expected)


def _publish_beside_a_long_report(swap_config, engine, report_seconds: float, **patience):
    """Hold a BI report's transaction on the current view while a publisher runs, and look one user up
    again and again meanwhile; returns (the publisher's outcome, the lookups' outcomes, the report's pid).
    A lookup arriving while the swap waits for its lock queues behind it, for at most the swap's
    swap_lock_timeout_ms (then the swap gives way): each lookup may wait three times that for a lock
    (lock_timeout) and fails with LockNotAvailable past it, as it would behind a swap that did not give
    way. lock_timeout counts lock waits alone, so the check does not depend on how fast the machine is."""
    import dataclasses

    from tasks.publish.materialize import materialize

    config = dataclasses.replace(swap_config, materialize=dataclasses.replace(swap_config.materialize, **patience))
    report_engine = sa.create_engine(engine.url, connect_args={"application_name": "bi-report"})
    holding, report_pid, outcome, lookups = threading.Event(), [], {}, []

    def report() -> None:
        with report_engine.connect() as conn:
            report_pid.append(conn.execute(sa.text("select pg_backend_pid()")).scalar())
            conn.execute(sa.text(f"select count(*) from {RECO}.user_recommendations"))
            holding.set()
            conn.execute(sa.text("select pg_sleep(:s)"), {"s": report_seconds})
            conn.rollback()

    def publish() -> None:
        try:
            outcome["summary"] = materialize(config)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    reporter = threading.Thread(target=report)
    reporter.start()
    assert holding.wait(30)
    publisher = threading.Thread(target=publish)
    publisher.start()
    patience_ms = 3 * config.materialize.swap_lock_timeout_ms
    lookup_engine = sa.create_engine(engine.url, connect_args={"options": f"-c lock_timeout={patience_ms}"})
    while publisher.is_alive():
        try:
            with lookup_engine.connect() as conn:
                rows = conn.execute(sa.text(f"select rank, item_id from {RECO}.user_recommendations "
                                            "where user_id = 1 order by rank")).all()
            lookups.append(len(rows))
        except sa.exc.OperationalError as exc:  # LockNotAvailable: the lookup queued behind a lock
            lookups.append(f"waited on a lock: {exc.orig}")
        time.sleep(0.05)
    publisher.join()
    reporter.join()
    report_engine.dispose()
    lookup_engine.dispose()
    return outcome, lookups, report_pid[0]


def test_a_long_report_never_stalls_a_lookup_and_the_swap_gives_up_cleanly(swap_config, engine, versions, caplog):
    from tasks.errors import PublishBlockedError
    from tasks.publish.materialize import materialize

    materialize(swap_config)
    before = _current(engine)
    with caplog.at_level("WARNING", logger="tasks.publish.locks"):
        outcome, lookups, report_pid = _publish_beside_a_long_report(
            swap_config, engine, report_seconds=12, swap_lock_timeout_ms=500, swap_attempts=3)
    error = outcome.get("error")
    assert isinstance(error, PublishBlockedError), outcome
    message = str(error)
    assert f"pid {report_pid}" in message and "'bi-report'" in message and "untouched" in message
    assert "\n" not in message and "Traceback" not in message
    assert f"pg_cancel_backend({report_pid})" in message
    retried = [r for r in caplog.records if r.levelname == "WARNING" and "gave way to readers" in r.getMessage()]
    assert len(retried) == 2  # tries 1 and 2 waited and retried, try 3 stopped the run
    assert len(lookups) > 20 and set(lookups) == {TOP_K}, {str(x) for x in lookups} - {str(TOP_K)}
    assert _current(engine) == before
    with engine.connect() as conn:
        failed = conn.execute(sa.text(f"select status, error from {RECO}.runs order by materialization_id desc "
                                      "limit 1")).one()
    assert failed.status == "failed" and "PublishBlockedError" in failed.error and f"pid {report_pid}" in failed.error


def test_a_swap_that_outlasts_the_report_publishes_after_it(swap_config, engine, versions):
    materialize_before = _current(engine)
    outcome, lookups, _ = _publish_beside_a_long_report(
        swap_config, engine, report_seconds=3, swap_lock_timeout_ms=500, swap_attempts=6)
    summary = outcome.get("summary")
    assert summary is not None, outcome
    assert lookups and set(lookups) == {TOP_K}, {str(x) for x in lookups} - {str(TOP_K)}
    assert _current(engine) == (summary.materialization_id, USERS * TOP_K) != materialize_before


def test_reco_reader_cannot_take_the_publishers_lock(swap_config, engine, versions):
    """Publishers take turns on a row of reco.publish_lock; a reader may see it but not lock it."""
    from tasks.publish.materialize import materialize

    materialize(swap_config)
    role = f"swap_reader_{os.getpid()}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"create role {role}"))
        conn.execute(sa.text(f"grant usage on schema {RECO} to {role}; grant select on all tables in schema {RECO} "
                             f"to {role}"))
    as_reader = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)  # its role never returns to a pool
    try:
        with as_reader.connect() as conn:
            conn.execute(sa.text(f"set role {role}"))
            conn.commit()  # a rolled-back transaction would take the SET back
            assert conn.execute(sa.text(f"select count(*) from {RECO}.publish_lock")).scalar() == 1
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(f"select * from {RECO}.publish_lock for update"))
            conn.rollback()
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(f"lock table {RECO}.publish_lock in row share mode"))
            conn.rollback()
            # An advisory lock of any key is open to every role, so publishing no longer uses one.
            conn.execute(sa.text("select pg_advisory_lock(1347568963, 0)"))
            published = materialize(swap_config, logical_date=D1 + timedelta(days=30))
            assert _current(engine)[0] == published.materialization_id
            conn.execute(sa.text("select pg_advisory_unlock_all()"))
            conn.rollback()
    finally:
        as_reader.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop owned by {role}; drop role {role}"))


def test_publishing_from_a_database_without_the_source_records_nothing(swap_config, overrides, engine, versions):
    """No `app` schema: one sentence, and no "champion moved outside PrismRec" decision recorded first."""
    from tasks.errors import SourceDataError
    from tasks.pipeline import run_materialize
    from tasks.registry.store import promote

    promote(swap_config, versions[0], reason="moved by a script, not yet recorded")

    def rows(table: str) -> int:
        with engine.connect() as conn:
            if conn.execute(sa.text("select to_regclass(:t)"), {"t": f"{RECO}.{table}"}).scalar() is None:
                return 0
            return conn.execute(sa.text(f"select count(*) from {RECO}.{table}")).scalar()

    before = rows("model_decisions"), rows("runs")
    with pytest.raises(SourceDataError, match="has no no_such_app.interactions table or view") as raised:
        run_materialize({**overrides, "database.app_schema": "no_such_app"})
    assert "nothing was published or recorded" in str(raised.value)
    assert (rows("model_decisions"), rows("runs")) == before

