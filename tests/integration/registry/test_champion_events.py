"""A promotion by hand publishes the new champion on the in-process path of `prismrec promote` (a
subprocess against the test run's real Postgres, MLflow store and tiny model). The path through a
live Airflow is tests/live's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

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
