"""The Celery profile: what every Airflow service of a deployment shares (tasks.airflow_runtime)."""

from __future__ import annotations

import pytest

from tasks.airflow_runtime import CeleryProfile, airflow_environment, celery_environment
from tasks.config import load_config
from tasks.errors import ConfigError


def test_the_profile_comes_from_the_environment_and_needs_airflow_s_own_postgres():
    with pytest.raises(ConfigError, match="PRISMREC_AIRFLOW_DATABASE_URL"):
        CeleryProfile.from_env({})
    profile = CeleryProfile.from_env({"PRISMREC_AIRFLOW_DATABASE_URL": "postgresql://af@db:5432/airflow",
                                      "PRISMREC_CELERY_BROKER_URL": "redis://cache:6379/2",
                                      "PRISMREC_AIRFLOW_API_URL": "http://api:8080/"})
    assert (profile.broker_url, profile.queue, profile.result_backend) == ("redis://cache:6379/2", "default", None)
    with pytest.raises(ConfigError, match="SQLite cannot serve"):
        CeleryProfile(metadata_url="sqlite:////tmp/airflow.db").sql_alchemy_conn()


def test_the_services_share_executor_metadata_db_broker_queue_and_api(tmp_path):
    config = load_config({"paths.home": str(tmp_path)}, environ={})
    profile = CeleryProfile(metadata_url="postgresql://af@db:5432/airflow", api_url="http://api:8080/", queue="gpu")
    env = celery_environment(config, profile)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://af@db:5432/airflow"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://af@db:5432/airflow"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/0"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "gpu"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api:8080/execution/"
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    # The services keep Airflow's logging; the in-process runner's quiet levels are not theirs.
    assert not [name for name in env if name.startswith("AIRFLOW__LOGGING__")]
    # In-process runs never use the profile: their metadata DB stays a private SQLite file.
    assert airflow_environment(config)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
