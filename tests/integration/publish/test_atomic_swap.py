"""Publishing under concurrency and faults: readers during swaps, a killed publisher, a dropped connection.

The publisher is made to stop right before its swap by holding a lock its ATTACH PARTITION
needs (readers are not blocked by it); the test then kills the process or its connection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

APP, RECO, MODEL = "swap_app", "swap_reco", "swap_test"
USERS, TOP_K = 40, 7
D1 = datetime(2024, 2, 1, tzinfo=UTC)
SUBPROCESS = """
import json, logging, sys
from datetime import datetime
logging.basicConfig(level=logging.INFO)
from tasks.config import load_config
from tasks.publish.materialize import materialize
materialize(load_config(json.loads(sys.argv[1])), logical_date=datetime.fromisoformat(sys.argv[2]))
"""


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


def _start_blocked_publisher(engine, overrides, logical_date):
    """Hold the lock ATTACH PARTITION needs, start a publisher process, wait until it waits right before its swap."""
    blocker = engine.connect()
    blocker.execute(sa.text(f"lock table {RECO}.user_recommendations_history in share update exclusive mode"))
    process = subprocess.Popen([sys.executable, "-c", SUBPROCESS, json.dumps(overrides), logical_date.isoformat()],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        with engine.connect() as conn:
            waiting = conn.execute(sa.text(
                f"select r.materialization_id, r.backend_pid from {RECO}.runs r join pg_stat_activity a "
                "on a.pid = r.backend_pid where r.status = 'running' and a.wait_event_type = 'Lock'")).first()
        if waiting:
            return blocker, process, waiting[0], waiting[1]
        time.sleep(0.3)
    blocker.rollback()
    blocker.close()
    output = process.communicate(timeout=30)[0] if process.poll() is not None else "still running"
    process.kill()
    pytest.fail(f"the publisher never reached its swap:\n{output[-3000:]}")


def _wait_until_gone(engine, pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if not conn.execute(sa.text("select 1 from pg_stat_activity where pid = :p"), {"p": pid}).scalar():
                return
        time.sleep(0.2)
    pytest.fail(f"backend {pid} of the killed publisher is still there")


def test_killed_publisher_leaves_the_current_set_and_is_marked_failed_by_the_next_run(
        swap_config, overrides, engine, versions):
    from tasks.publish.materialize import DEAD_RUN_ERROR, materialize

    materialize(swap_config)
    before = _current(engine)
    blocker, process, mid, pid = _start_blocked_publisher(engine, overrides, D1)
    try:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert _current(engine) == before
        assert _run(engine, mid)["status"] == "running"  # nobody alive to say otherwise yet
    finally:
        blocker.rollback()
        blocker.close()
    _wait_until_gone(engine, pid)
    assert _current(engine) == before

    retry = materialize(swap_config, logical_date=D1)
    killed = _run(engine, mid)
    assert killed["status"] == "failed" and killed["error"] == DEAD_RUN_ERROR and not killed["output_kept"]
    assert _run(engine, retry.materialization_id)["status"] == "succeeded" and not retry.reused
    assert _current(engine) == (retry.materialization_id, USERS * TOP_K)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select to_regclass(:t)"), {"t": f"{RECO}.user_recommendations_m{mid}"}).scalar() is None


def test_dropped_connection_marks_the_run_failed_and_the_retry_succeeds(swap_config, overrides, engine, versions):
    from tasks.publish.materialize import materialize

    materialize(swap_config)
    before = _current(engine)
    logical_date = D1 + timedelta(days=1)
    blocker, process, mid, pid = _start_blocked_publisher(engine, overrides, logical_date)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select pg_terminate_backend(:p)"), {"p": pid}).scalar()
        output = process.communicate(timeout=120)[0]
    finally:
        blocker.rollback()
        blocker.close()
    assert process.returncode != 0 and "terminat" in output
    failed = _run(engine, mid)
    assert failed["status"] == "failed" and "connection" in failed["error"]
    assert _current(engine) == before

    retry = materialize(swap_config, logical_date=logical_date)
    assert _current(engine) == (retry.materialization_id, USERS * TOP_K)
    again = materialize(swap_config, logical_date=logical_date)  # idempotent for the same champion and date
    assert again.reused and again.materialization_id == retry.materialization_id
