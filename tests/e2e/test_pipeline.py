"""The whole platform as a user drives it: `prismrec load/train/materialize` on real ML-100K.

Each command runs in its own process (as from a shell), against this test run's Postgres
and MLflow store, so Airflow is configured exactly as on a user's machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow

LOGICAL_DATE = "1998-04-30"  # after the last ML-100K rating (1998-04-22)


@pytest.fixture(scope="module")
def e2e_env(tmp_path_factory, database_url):
    home = tmp_path_factory.mktemp("e2e-home")
    return {
        **os.environ,
        "PRISMREC_HOME": str(home),
        "PRISMREC_DATABASE_URL": database_url,
        "PRISMREC_DATABASE__APP_SCHEMA": "app_e2e",
        "PRISMREC_DATABASE__RECO_SCHEMA": "reco_e2e",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
    }


def prismrec(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=env, capture_output=True,
                            text=True, timeout=1200, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"prismrec {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def e2e_engine(database_url):
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def test_load_train_materialize_publishes_the_champion(e2e_env, e2e_engine):
    prismrec(e2e_env, "load", "movielens-100k")
    # Two epochs of 30 steps on all of ML-100K clear the gate against popularity; whether the model
    # beats the stronger baselines is the training tests' and the quality benchmark's question.
    train = prismrec(e2e_env, "train", "--logical-date", LOGICAL_DATE, "--epochs", "2",
                     "--set", "train.max_steps_per_epoch=30", "--set", "gate.baselines=popularity")
    assert "gate" in train.stderr.lower()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=e2e_env["MLFLOW_TRACKING_URI"], registry_uri=e2e_env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("prismrec", "champion")
    challenger = client.get_model_version_by_alias("prismrec", "challenger")
    assert str(champion.version) == str(challenger.version) == "1"

    prismrec(e2e_env, "materialize")
    with e2e_engine.connect() as conn:
        users = conn.execute(sa.text("select count(*) from app_e2e.users")).scalar()
        stats = conn.execute(sa.text(
            "select count(*), count(distinct user_id), min(rank), max(rank), "
            "count(distinct model_version), min(model_version) from reco_e2e.user_recommendations")).one()
        seen = conn.execute(sa.text(
            "select count(*) from reco_e2e.user_recommendations r join app_e2e.interactions i "
            "using (user_id, item_id)")).scalar()
    assert stats[1] == users  # every user gets a list
    assert (stats[2], stats[3]) == (1, 50) and stats[0] == 50 * users
    assert stats[4] == 1 and stats[5] == "1"
    assert seen == 0  # never an item from the user's own history

    # A rerun for the same champion replaces the set instead of adding to it.
    prismrec(e2e_env, "materialize")
    with e2e_engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from reco_e2e.user_recommendations")).scalar() == 50 * users

    # The registered pyfunc (what a serving endpoint loads) lists what the table holds, and takes a
    # per-call interest balance.
    import pandas as pd

    from tasks.config import load_config
    from tasks.publish.materialize import read_histories
    from tasks.registry.store import load_champion

    config = load_config({"paths.home": e2e_env["PRISMREC_HOME"]}, environ=e2e_env)
    version, model = load_champion(config)
    assert version == "1"
    users = read_histories(e2e_engine, config).head(20)
    served = model.predict(users[["user_id", "history"]], params={"top_k": 10})
    with e2e_engine.connect() as conn:
        table = pd.read_sql(sa.text(
            "select user_id, rank, item_id, interest_id, explanation from reco_e2e.user_recommendations "
            "where rank <= 10 and user_id = any(:users) order by user_id, rank"),
            conn, params={"users": users["user_id"].tolist()})
    ordered = served.sort_values(["user_id", "rank"]).reset_index(drop=True)[table.columns]
    pd.testing.assert_frame_equal(ordered, table, check_dtype=False)
    plain = model.predict(users[["user_id", "history"]], params={"top_k": 10, "interest_balance": 0.0})
    for _, mine in plain.groupby("user_id"):  # no balance: each item under its best interest, best first
        assert mine["score"].is_monotonic_decreasing

    report = prismrec(e2e_env, "report")
    assert "Gate PASSED" in report.stdout and "popularity (baseline)" in report.stdout


def test_corrupt_interactions_stop_the_run_at_the_quality_gate(e2e_env, e2e_engine):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=e2e_env["MLFLOW_TRACKING_URI"], registry_uri=e2e_env["MLFLOW_TRACKING_URI"])
    versions_before = len(client.search_model_versions("name='prismrec'"))
    with e2e_engine.begin() as conn:
        published_before = conn.execute(sa.text(
            "select count(*), max(generated_at) from reco_e2e.user_recommendations")).one()
        # A broken upstream job: events with no user id at all.
        conn.execute(sa.text(
            "insert into app_e2e.interactions (user_id, item_id, rating, occurred_at) "
            "select null, item_id, rating, occurred_at from app_e2e.interactions limit 500"))
    try:
        result = prismrec(e2e_env, "train", "--logical-date", LOGICAL_DATE, "--epochs", "1", check=False)
        assert result.returncode == 1
        assert "user_id" in result.stderr and "not_be_null" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(client.search_model_versions("name='prismrec'")) == versions_before
        # The refusal is kept in MLflow with the quality report, for the UI.
        refused = client.search_runs(
            [client.get_experiment_by_name("prismrec").experiment_id], "tags.stage = 'data_gate'")
        assert len(refused) == 1 and refused[0].info.status == "FAILED"
        assert "quality_report.json" in [a.path for a in client.list_artifacts(refused[0].info.run_id)]
        with e2e_engine.connect() as conn:
            assert conn.execute(sa.text(
                "select count(*), max(generated_at) from reco_e2e.user_recommendations")).one() == published_before
    finally:
        with e2e_engine.begin() as conn:
            conn.execute(sa.text("delete from app_e2e.interactions where user_id is null"))
