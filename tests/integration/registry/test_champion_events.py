"""A promotion by hand publishes the new champion: the asset event sent to a live Airflow
api-server (started natively from this venv on a fresh metadata DB holding this project's parsed
DAGs), and the in-process path of `prismrec promote` (a subprocess against the test run's real
Postgres, MLflow store and tiny model).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.contracts import CHAMPION_URI
from tasks.registry.champion_events import (
    AirflowApi,
    AssetEventError,
    asset_id,
    auth_headers,
    fire_champion_changed,
    set_run_note,
)

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def live_airflow(tmp_path_factory):
    """Airflow 3's api-server with SimpleAuthManager (user `ops`, password `s3cret`), the DAGs parsed
    into its metadata DB and recsys_materialize unpaused; yields its URL and the metadata DB file."""
    home = tmp_path_factory.mktemp("airflow-live")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"ops": "s3cret"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PRISMREC_AIRFLOW_"))} | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }

    def airflow(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, f"airflow {' '.join(args)}: {done.stderr[-3000:]}"

    airflow("db", "migrate")
    airflow("dags", "reserialize")  # what the dag-processor does: DAGs and their assets into the DB
    airflow("dags", "unpause", "recsys_materialize")
    port = _free_port()
    with open(home / "api-server.log", "w") as server_log:
        server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=server_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (home / "api-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the api-server did not answer within 120 s"
            time.sleep(1)
        yield url, home / "airflow.db"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_asset_event_reaches_a_live_airflow_and_queues_the_publication(live_airflow):
    url, metadata_db = live_airflow
    api = AirflowApi.from_env({"PRISMREC_AIRFLOW_API_URL": url + "/",
                               "PRISMREC_AIRFLOW_USERNAME": "ops", "PRISMREC_AIRFLOW_PASSWORD": "s3cret"})
    event = fire_champion_changed(api, "5", "cli promote")

    # Airflow keeps the URI in its own normal form; the lookup found it all the same.
    assert (event["uri"], event["name"]) == ("prismrec://champion/", "prismrec_champion")
    assert event["extra"]["version"] == "5" and event["extra"]["source"] == "cli promote"
    with sqlite3.connect(metadata_db) as db:
        stored = db.execute("select a.uri, e.extra from asset_event e join asset a on a.id = e.asset_id").fetchall()
        queued = db.execute("select target_dag_id from asset_dag_run_queue").fetchall()
    assert [(uri, json.loads(extra)["version"]) for uri, extra in stored] == [("prismrec://champion/", "5")]
    assert queued == [("recsys_materialize",)]  # the scheduler's next loop starts the publication


@pytest.mark.slow
def test_asset_event_failures_say_what_went_wrong(live_airflow):
    url, _ = live_airflow
    assert AirflowApi.from_env({}) is None
    with pytest.raises(AssetEventError, match="HTTP 401 .*PRISMREC_AIRFLOW_API_TOKEN"):
        fire_champion_changed(AirflowApi(base_url=url), "5", "cli promote")  # no credentials
    with pytest.raises(AssetEventError, match="HTTP 401"):
        auth_headers(AirflowApi(base_url=url, username="ops", password="wrong"))

    api = AirflowApi(base_url=url, username="ops", password="s3cret")
    headers = auth_headers(api)
    assert asset_id(api, CHAMPION_URI, headers) == asset_id(api, CHAMPION_URI + "/", headers)
    with pytest.raises(AssetEventError, match="does not know the asset prismrec://champion-old"):
        asset_id(api, "prismrec://champion-old", headers)
    with pytest.raises(AssetEventError, match="cannot reach the Airflow API server at http://127.0.0.1:9"):
        fire_champion_changed(AirflowApi(base_url="http://127.0.0.1:9", timeout_s=2), "5", "cli promote")


@pytest.mark.slow
def test_a_run_note_for_a_run_this_airflow_does_not_know_is_skipped(live_airflow):
    """`register` writes the gate's verdict as its run's note through REST; an in-process run
    (`prismrec train` with PRISMREC_AIRFLOW_API_URL set) is not this Airflow's: no note, no error."""
    url, _ = live_airflow
    api = AirflowApi(base_url=url, username="ops", password="s3cret")
    assert set_run_note(api, "recsys_training", "manual__2026-12-04T00:00:00+00:00", "the gate passed v1") is False
    with pytest.raises(AssetEventError, match="HTTP 401"):
        set_run_note(AirflowApi(base_url=url), "recsys_training", "manual__x", "note")


MODEL, RECO = "champion_events_test", "events_reco"


def _register(config, trained_model_dir: Path, run_dir: Path, passed: bool) -> str:
    from tasks.registry.store import register_candidate

    run_dir.mkdir(parents=True, exist_ok=True)
    registered = register_candidate(config, model_dir=trained_model_dir, run_dir=run_dir, evaluation={},
                                    decision={"passed": passed, "reasons": ["test"]},
                                    lineage={"run_key": run_dir.name})
    return str(registered.version)


@pytest.mark.slow
def test_cli_promote_without_airflow_publishes_the_new_champion_in_process(
        base_overrides, prismrec_home, database_url, engine, ml100k, trained_model_dir, tmp_path):
    from tasks.config import load_config
    from tasks.registry.store import champion_version

    config = load_config(base_overrides | {"registry.model_name": MODEL, "database.reco_schema": RECO})
    first = _register(config, trained_model_dir, tmp_path / "events-run-1", passed=True)
    second = _register(config, trained_model_dir, tmp_path / "events-run-2", passed=False)
    assert (first, second, champion_version(config)) == ("1", "2", "1")

    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMREC_AIRFLOW_")} | {
        "PRISMREC_HOME": str(tmp_path / "cli-home"),  # own Airflow metadata DB for the in-process run
        "PRISMREC_DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": base_overrides["registry.tracking_uri"],
        "PRISMREC_REGISTRY__MODEL_NAME": MODEL,
        "PRISMREC_DATABASE__RECO_SCHEMA": RECO,
        "PRISMREC_MATERIALIZE__TOP_K": "5",
        "HF_HUB_OFFLINE": "1",
    }

    def prismrec(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=env, capture_output=True,
                              text=True, timeout=900, check=False)

    refused = prismrec("promote", "9", "--reason", "typo")
    assert refused.returncode == 1 and "has no version '9'" in refused.stderr
    assert sa.inspect(engine).has_table("user_recommendations", schema=RECO) is False  # nothing published

    done = prismrec("promote", second, "--reason", "checked by hand")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"version {second} is the champion" in done.stdout
    assert f"from model version {second} into {RECO}.user_recommendations" in done.stdout
    with engine.connect() as conn:
        versions = set(conn.execute(sa.text(f"select distinct model_version from {RECO}.user_recommendations"))
                       .scalars())
        users = conn.execute(sa.text(f"select count(distinct user_id) from {RECO}.user_recommendations")).scalar()
        decision = conn.execute(sa.text(
            f"select action, champion_before, champion_after from {RECO}.model_decisions "
            "where model_name = :m order by decision_id desc limit 1"), {"m": MODEL}).one()
    assert versions == {second} and users == ml100k.users
    assert tuple(decision) == ("promote", "1", second)

    quiet = prismrec("rollback", "--no-publish", "--reason", "not yet")
    assert quiet.returncode == 0 and "rolled back to version 1" in quiet.stdout and "--no-publish" in quiet.stdout
    with engine.connect() as conn:
        assert set(conn.execute(sa.text(f"select distinct model_version from {RECO}.user_recommendations"))
                   .scalars()) == {second}
