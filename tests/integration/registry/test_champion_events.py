"""A promotion by hand publishes the new champion: the asset event sent to Airflow's REST API
(against a small local HTTP server speaking that API), and the in-process path of `prismrec
promote` (a subprocess against the test run's real Postgres, MLflow store and tiny model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import sqlalchemy as sa

from tasks.registry.champion_events import AirflowApi, AssetEventError, fire_champion_changed


class _FakeAirflow(BaseHTTPRequestHandler):
    """Answers like Airflow 3.3's api-server: /auth/token, GET /api/v2/assets, POST /api/v2/assets/events."""

    seen: ClassVar[list[tuple[str, str, dict, dict | None]]] = []
    assets: ClassVar[list[dict]] = [{"id": 3, "uri": "prismrec://champion-old"}, {"id": 7, "uri": "prismrec://champion"}]

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append((self.command, self.path, dict(self.headers), body))
        return body

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/api/v2/assets?"):
            self._answer(200, {"assets": self.assets, "total_entries": len(self.assets)})
        else:
            self._answer(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = self._record()
        if self.path == "/auth/token":
            ok = body == {"username": "ops", "password": "s3cret"}
            self._answer(201 if ok else 401, {"access_token": "jwt-from-login"} if ok else {"detail": "bad"})
        elif self.path == "/api/v2/assets/events":
            if self.headers.get("Authorization") != "Bearer jwt-from-login":
                self._answer(401, {"detail": "Not authenticated"})
                return
            self._answer(200, {"id": 42, "asset_id": body["asset_id"], "extra": body["extra"]})
        else:
            self._answer(404, {"detail": "Not Found"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def airflow_server():
    _FakeAirflow.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAirflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_asset_event_logs_in_looks_up_the_asset_by_exact_uri_and_posts_version_and_source(airflow_server):
    api = AirflowApi.from_env({"PRISMREC_AIRFLOW_API_URL": airflow_server + "/",
                               "PRISMREC_AIRFLOW_USERNAME": "ops", "PRISMREC_AIRFLOW_PASSWORD": "s3cret"})
    event = fire_champion_changed(api, "5", "cli promote")

    assert event == {"id": 42, "asset_id": 7, "extra": {"version": "5", "source": "cli promote"}}
    (m1, p1, _, b1), (m2, p2, h2, _), (m3, p3, h3, b3) = _FakeAirflow.seen
    assert (m1, p1, b1) == ("POST", "/auth/token", {"username": "ops", "password": "s3cret"})
    assert (m2, p2) == ("GET", "/api/v2/assets?uri_pattern=prismrec%3A%2F%2Fchampion&limit=100")
    assert h2["Authorization"] == "Bearer jwt-from-login"
    assert (m3, p3, b3) == ("POST", "/api/v2/assets/events",
                            {"asset_id": 7, "extra": {"version": "5", "source": "cli promote"}})
    assert h3["Authorization"] == "Bearer jwt-from-login" and h3["Content-Type"] == "application/json"


def test_asset_event_failures_say_what_went_wrong(airflow_server):
    assert AirflowApi.from_env({}) is None
    no_auth = AirflowApi(base_url=airflow_server)  # the all-admins stack: no header sent
    with pytest.raises(AssetEventError, match="HTTP 401 .*PRISMREC_AIRFLOW_API_TOKEN"):
        fire_champion_changed(no_auth, "5", "cli promote")
    assert "Authorization" not in _FakeAirflow.seen[-1][2]

    _FakeAirflow.assets = []
    try:
        with pytest.raises(AssetEventError, match="does not know the asset prismrec://champion"):
            fire_champion_changed(AirflowApi(base_url=airflow_server, token="jwt-from-login"), "5", "cli promote")
    finally:
        _FakeAirflow.assets = [{"id": 3, "uri": "prismrec://champion-old"}, {"id": 7, "uri": "prismrec://champion"}]
    with pytest.raises(AssetEventError, match="cannot reach the Airflow API server at http://127.0.0.1:9"):
        fire_champion_changed(AirflowApi(base_url="http://127.0.0.1:9", timeout_s=2), "5", "cli promote")


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
