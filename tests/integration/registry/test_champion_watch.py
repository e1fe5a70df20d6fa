"""A champion moved in the MLflow registry by a person is published, once, with no other command.

Against the test run's real Postgres and MLflow store: the alias is moved with MlflowClient, as
the MLflow UI does; Airflow's own triggerer (started natively on a fresh metadata DB holding
this project's parsed DAGs) runs the asset watcher of recsys_materialize and queues the
publication; `prismrec materialize` (the same DAG, in-process) publishes it; looks with no move
in between publish nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.registry.champion_watch import ACTOR, ChampionMovedTrigger, look_once
from tests.builders import EMPTY_MODEL_CODE

ROOT = Path(__file__).resolve().parents[3]
MODEL, RECO = "champion_watch_test", "watch_reco"

def _config(base_overrides: dict, model: str, reco: str):
    from tasks.config import load_config

    return load_config(base_overrides | {"registry.model_name": model, "database.reco_schema": reco})


def _register(config, model_dir: Path, run_dir: Path, passed: bool, model_code: Path | None = None) -> str:
    """A candidate registered through the real registry code; a passed one's gate decision on record."""
    from tasks.registry.decisions import ModelDecision, record
    from tasks.registry.store import champion_version, register_candidate

    before = champion_version(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    version = register_candidate(config, model_dir=model_dir, run_dir=run_dir, evaluation={},
                                 decision={"passed": passed, "reasons": ["test"]},
                                 lineage={"run_key": run_dir.name}, model_code=model_code).version
    record(config, ModelDecision(
        model_name=config.registry.model_name, action="gate", decided_by="gate", actor="test",
        candidate_version=version, champion_before=before, champion_after=version if passed else before,
        passed=passed, run_key=run_dir.name, decision_key=f"{config.registry.model_name}:{run_dir.name}"))
    return str(version)


def _move_in_mlflow(config, version: str) -> None:
    """What the MLflow UI does when a person moves `@champion`."""
    from mlflow import MlflowClient
    from tasks.registry.store import tracking_uri

    MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config)).set_registered_model_alias(config.registry.model_name, "champion", version)


def _decisions(engine, reco: str, model: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            f"select action, decided_by, actor, champion_before, champion_after from {reco}.model_decisions "
            "where model_name = :m order by decision_id"), {"m": model})]


def _watcher_env(base_overrides: dict, database_url: str, model: str, reco: str) -> dict[str, str]:
    """How a deployment's triggerer and scheduler are configured: PrismRec's settings from the environment."""
    return {
        "PYTHONPATH": str(ROOT),
        "PRISMREC_DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": base_overrides["registry.tracking_uri"],
        "PRISMREC_REGISTRY__MODEL_NAME": model,
        "PRISMREC_DATABASE__RECO_SCHEMA": reco,
        "HF_HUB_OFFLINE": "1",
    }


async def _events(trigger: ChampionMovedTrigger, seconds: float) -> list[dict]:
    """The payloads `trigger` fires within `seconds` (its run() is what the triggerer iterates)."""
    fired: list[dict] = []

    async def collect() -> None:
        async for event in trigger.run():
            fired.append(event.payload)

    try:
        await asyncio.wait_for(collect(), timeout=seconds)
    except TimeoutError:
        pass
    return fired


@pytest.fixture
def toy(tmp_path) -> tuple[Path, Path]:
    code = tmp_path / "toy.py"
    code.write_text(EMPTY_MODEL_CODE)
    model_dir = tmp_path / "toy-model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"toy")
    return code, model_dir


def test_prismrec_moving_the_champion_is_never_taken_for_a_person(base_overrides, engine, toy, tmp_path):
    from tasks.registry.decisions import champion_lock

    code, model_dir = toy
    config = _config(base_overrides, "champion_watch_lock_test", "watch_lock_reco")
    first = _register(config, model_dir, tmp_path / "lock-run-1", passed=True, model_code=code)
    second = _register(config, model_dir, tmp_path / "lock-run-2", passed=False, model_code=code)
    assert look_once(config) is None  # nothing moved: nothing recorded, nothing fired

    with champion_lock(config):  # PrismRec is between moving the alias and recording the move
        _move_in_mlflow(config, second)
        assert look_once(config) is None
    assert _decisions(engine, "watch_lock_reco", config.registry.model_name)[-1][0] == "gate"

    # Once the lock is free a move nobody recorded is a person's: recorded once, fired once.
    assert look_once(config) == {"version": second, "champion_before": first,
                                 "model_name": config.registry.model_name, "source": "mlflow registry"}
    assert look_once(config) is None
    assert _decisions(engine, "watch_lock_reco", config.registry.model_name)[-1] == (
        "external", "mlflow-ui move detected", ACTOR, first, second)

    from mlflow import MlflowClient
    from tasks.registry.store import tracking_uri

    MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config)).delete_registered_model_alias(config.registry.model_name, "champion")
    assert look_once(config) is None  # no champion: nothing to publish, reco keeps its lists


@pytest.fixture
def airflow_home(tmp_path) -> tuple[Path, dict[str, str]]:
    """A fresh Airflow metadata DB holding this project's DAGs, unpaused (recsys_materialize's watcher
    only runs then: here created unpaused, where a user unpauses it), as the dag-processor of
    `make airflow-ui` or docker/ leaves it."""
    home = tmp_path / "airflow"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PRISMREC_"))} | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }

    def airflow(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, f"airflow {' '.join(args)}: {done.stderr[-3000:]}"

    airflow("db", "migrate")
    airflow("dags", "reserialize")  # the watchers of an unpaused DAG's assets become triggers
    return home, env


def _trigger_events(metadata_db: Path) -> list[dict]:
    with sqlite3.connect(metadata_db) as db:
        rows = db.execute("select a.uri, e.extra from asset_event e join asset a on a.id = e.asset_id").fetchall()
    return [json.loads(extra) | {"uri": uri} for uri, extra in rows]


@pytest.mark.slow
def test_a_move_in_the_mlflow_registry_is_published_once(
        airflow_home, base_overrides, database_url, engine, ml100k, trained_model_dir, tmp_path, monkeypatch):
    config = _config(base_overrides, MODEL, RECO)
    first = _register(config, trained_model_dir, tmp_path / "watch-run-1", passed=True)
    second = _register(config, trained_model_dir, tmp_path / "watch-run-2", passed=False)
    assert look_once(config) is None  # a challenger is not a move
    on_record = [("gate", "gate", "test", None, first), ("gate", "gate", "test", first, first)]
    assert _decisions(engine, RECO, MODEL) == on_record

    _move_in_mlflow(config, second)  # while no watcher runs: a triggerer that starts later catches up

    home, env = airflow_home
    env = env | _watcher_env(base_overrides, database_url, MODEL, RECO)
    with sqlite3.connect(home / "airflow.db") as db:  # the dag-processor made the watcher a trigger
        watchers = db.execute("select w.name, t.classpath from asset_watcher w join trigger t on t.id = w.trigger_id "
                              "join asset a on a.id = w.asset_id where a.uri = 'prismrec://champion/'").fetchall()
    assert watchers == [("mlflow_champion_alias", "tasks.registry.champion_watch.ChampionMovedTrigger")]

    with open(home / "triggerer.log", "w") as log:
        triggerer = subprocess.Popen([sys.executable, "-m", "airflow", "triggerer"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _trigger_events(home / "airflow.db"):
            assert triggerer.poll() is None, (home / "triggerer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (home / "triggerer.log").read_text()[-3000:]
            time.sleep(2)
    finally:
        triggerer.terminate()
        triggerer.wait(timeout=60)

    (event,) = _trigger_events(home / "airflow.db")
    assert event["uri"] == "prismrec://champion/" and event["from_trigger"] is True
    assert event["payload"] == {"version": second, "champion_before": first, "model_name": MODEL,
                                "source": "mlflow registry"}
    with sqlite3.connect(home / "airflow.db") as db:
        assert db.execute("select target_dag_id from asset_dag_run_queue").fetchall() == [("recsys_materialize",)]
    moved = ("external", "mlflow-ui move detected", ACTOR, first, second)
    assert _decisions(engine, RECO, MODEL) == [*on_record, moved]

    # What the scheduler then runs: recsys_materialize's task, here called in this process (the same DAG
    # through `prismrec materialize` and through Celery workers: the e2e story and the live stack).
    from tasks.pipeline import run_materialize

    run_materialize(base_overrides | {"registry.model_name": MODEL, "database.reco_schema": RECO,
                                      "materialize.top_k": 5}, airflow_run_id="asset_triggered__watch")
    with engine.connect() as conn:
        published = set(conn.execute(sa.text(f"select distinct model_version from {RECO}.user_recommendations"))
                        .scalars())
        runs = conn.execute(sa.text(f"select model_version, status from {RECO}.runs")).all()
    assert published == {second} and [tuple(r) for r in runs] == [(second, "succeeded")]

    # A watcher that looks again (restarted, or at its next interval) finds nothing new to publish.
    for key, value in _watcher_env(base_overrides, database_url, MODEL, RECO).items():
        monkeypatch.setenv(key, value)
    assert asyncio.run(_events(ChampionMovedTrigger(poll_interval=0.2), seconds=3)) == []
    assert _decisions(engine, RECO, MODEL) == [*on_record, moved]
