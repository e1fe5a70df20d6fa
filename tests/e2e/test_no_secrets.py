"""No store keeps the database password: the real pipeline runs with a password-bearing URL, then
every place it writes is searched for the password.

The commands run as a user runs them (`prismrec load/train/materialize/report`, each in its own
process, Airflow in-process), connected as a role with a password. Searched afterwards: the MLflow
store (its SQLite file and the artifacts folder), the run folders, the Airflow home (metadata DB,
logs), what each command printed, and the rows PrismRec wrote in `reco`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.parse

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow

APP, RECO = "app_secret", "reco_secret"


@pytest.fixture(scope="module")
def password_role(database_url):
    """A login role with a password on the test run's server; dropped with what it owns afterwards."""
    role = f"prismrec_secret_test_{secrets.token_hex(4)}"
    password = f"S3cr#t-{secrets.token_hex(8)}@Pw:x"  # @, : and # must travel percent-encoded
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"create role {role} login superuser password :pw"), {"pw": password})
    yield role, password
    with admin.connect() as conn:
        conn.execute(sa.text("select pg_terminate_backend(pid) from pg_stat_activity where usename = :r"), {"r": role})
        conn.execute(sa.text(f"reassign owned by {role} to current_user"))
        conn.execute(sa.text(f"drop owned by {role}"))
        conn.execute(sa.text(f"drop role {role}"))
    admin.dispose()


def _spellings(password: str) -> set[bytes]:
    """The password as it may have been written anywhere: raw, percent-encoded, and its long parts."""
    forms = {password, urllib.parse.quote(password, safe=""), password.split("@")[0], password.split("#")[1][:20]}
    return {form.encode() for form in forms}


def test_no_store_holds_the_database_password(tmp_path_factory, database_url, password_role):
    role, password = password_role
    url = sa.make_url(database_url).set(username=role, password=password).render_as_string(hide_password=False)
    assert urllib.parse.quote(password, safe="") in url  # SQLAlchemy percent-encodes it, as a user must
    home = tmp_path_factory.mktemp("secret-home")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PRISMREC_", "MLFLOW_", "AIRFLOW"))},
           "PRISMREC_HOME": str(home), "PRISMREC_DATABASE__APP_SCHEMA": APP, "PRISMREC_DATABASE__RECO_SCHEMA": RECO,
           "HF_HUB_OFFLINE": "1"}
    with_env = {**env, "PRISMREC_DATABASE_URL": url}
    printed: list[str] = []

    def prismrec(environ, *args, expect=0):
        done = subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=environ, capture_output=True,
                              text=True, timeout=1500, check=False)
        printed.extend([done.stdout, done.stderr])
        assert done.returncode == expect, f"prismrec {args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    prismrec(with_env, "load", "movielens-100k", "--max-users", "60")
    # The URL as a flag this time: it must reach the tasks without landing in the stored run conf.
    prismrec(env, "train", "--logical-date", "1998-04-30", "--epochs", "1", "--max-users", "60",
             "--set", "train.max_steps_per_epoch=2", "--set", "gate.baselines=popularity",
             "--force-promote", "--reason", "secret search", "--set", f"database.url={url}")
    prismrec(with_env, "materialize")
    report = prismrec(with_env, "report")
    assert "Published:" in report.stdout
    failed = prismrec(with_env, "materialize", "--set", "database.app_schema=no_such_app", expect=1)
    assert "no_such_app.interactions" in failed.stderr and "Traceback" not in failed.stderr

    stores = {"MLflow store": [home / "mlflow.db", home / "mlartifacts"], "run folders": [home / "runs"],
              "Airflow home": [home / "airflow"], "quality history": [home / "quality"]}
    assert (home / "mlflow.db").exists() and any((home / "mlartifacts").rglob("config.json"))
    assert (home / "airflow" / "airflow.db").exists() and any((home / "runs").iterdir())
    found = []
    for store, roots in stores.items():
        for root in roots:
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                data = path.read_bytes()
                found += [f"{store}: {path}" for form in _spellings(password) if form in data]
    found += [f"command output: {text[:200]}" for text in printed for form in _spellings(password)
              if form.decode() in text]
    with sa.create_engine(database_url).connect() as conn:
        for table in ("runs", "model_decisions"):
            rows = conn.execute(sa.text(f"select row_to_json(t)::text from {RECO}.{table} t")).scalars().all()
            found += [f"{RECO}.{table}" for row in rows for form in _spellings(password) if form.decode() in row]
    assert found == []
    config_json = next((home / "mlartifacts").rglob("config.json")).read_text()
    assert f"{role}:***@" in config_json  # the URL is there, its password masked
