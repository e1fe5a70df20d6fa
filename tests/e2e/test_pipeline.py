"""The whole platform as a user drives it: `prismrec load/train/materialize/report` on real ML-100K.

Each command runs in its own process (as from a shell), against this test run's Postgres and the
home's own MLflow store, so Airflow is configured exactly as on a user's machine. An administrator
loads the data and runs `prismrec db grant`; the pipeline's commands connect as the least-privilege
writer role that sets up, with a password. When the story is over, every place PrismRec wrote to
(the MLflow store, the run folders, the Airflow home, what each command printed, the rows in
`reco`) is searched for that password.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.builders import shared_cache_env

pytestmark = pytest.mark.slow

LOGICAL_DATE = "1998-04-30"  # after the last ML-100K rating (1998-04-22)
APP, RECO = "app_e2e", "reco_e2e"
PRINTED: list[str] = []  # everything the commands printed, searched for the password at the end


@pytest.fixture(scope="module")
def role_names(database_url):
    """The owner, writer and reader roles `prismrec db grant` sets up, named for this test run (roles are
    cluster-wide); dropped with what they own afterwards."""
    suffix = secrets.token_hex(4)
    names = {"owner": f"prismrec_owner_{suffix}", "writer": f"prismrec_writer_{suffix}",
             "reader": f"prismrec_reader_{suffix}"}
    yield names
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"drop schema if exists {RECO} cascade"))
        for role in names.values():
            conn.execute(sa.text("select pg_terminate_backend(pid) from pg_stat_activity where usename = :r"),
                         {"r": role})
            conn.execute(sa.text(f"drop owned by {role}"))
            conn.execute(sa.text(f"drop role if exists {role}"))
    admin.dispose()


@pytest.fixture(scope="module")
def password() -> str:
    return f"S3cr#t-{secrets.token_hex(8)}@Pw:x"  # @, : and # must travel percent-encoded


@pytest.fixture(scope="module")
def role_url(database_url, role_names, password) -> str:
    """The pipeline's URL: the writer role `db grant` makes, with a password."""
    url = sa.make_url(database_url).set(username=role_names["writer"], password=password)
    url = url.render_as_string(hide_password=False)
    assert urllib.parse.quote(password, safe="") in url  # SQLAlchemy percent-encodes it, as a user must
    return url


@pytest.fixture(scope="module")
def e2e_env(tmp_path_factory, role_url, role_names):
    """What the pipeline runs with: connected as reco_writer (no superuser, no CREATE, no ownership)."""
    home = tmp_path_factory.mktemp("e2e-home")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PRISMREC_", "MLFLOW_", "AIRFLOW"))}
    return {**clean, **shared_cache_env(), "PRISMREC_HOME": str(home), "PRISMREC_DATABASE_URL": role_url,
            "PRISMREC_DATABASE__APP_SCHEMA": APP, "PRISMREC_DATABASE__RECO_SCHEMA": RECO, "HF_HUB_OFFLINE": "1",
            "PRISMREC_DATABASE__OWNER_ROLE": role_names["owner"], "PRISMREC_DATABASE__WRITER_ROLE": role_names["writer"],
            "PRISMREC_DATABASE__READER_ROLE": role_names["reader"]}


@pytest.fixture(scope="module")
def loaded(e2e_env, database_url, password):
    """The administrator's part: load ML-100K into `app` and set the roles up with `db grant`."""
    admin = {**e2e_env, "PRISMREC_DATABASE_URL": database_url, "PRISMREC_WRITER_PASSWORD": password}
    prismrec(admin, "load", "movielens-100k")
    prismrec(admin, "db", "grant")
    return e2e_env


def prismrec(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=env, capture_output=True,
                            text=True, timeout=1200, check=False)
    PRINTED.extend([result.stdout, result.stderr])
    if check and result.returncode != 0:
        raise AssertionError(f"prismrec {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def home_config(env):
    """The commands' config, with the home's own MLflow store named outright: an MLflow call made in
    this process by another test leaves MLFLOW_TRACKING_URI in os.environ, which the default would follow."""
    from tasks.config import load_config

    home = load_config({"paths.home": env["PRISMREC_HOME"]}, environ=env)
    return load_config({"paths.home": env["PRISMREC_HOME"],
                        "registry.tracking_uri": f"sqlite:///{home.paths.mlflow_db}"}, environ=env)


def mlflow_client(env):
    from mlflow import MlflowClient
    from tasks.registry.store import tracking_uri

    uri = tracking_uri(home_config(env))
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def e2e_engine(database_url):
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def test_materialize_before_any_training_fails_cleanly_through_airflow(loaded):
    e2e_env = loaded
    done = prismrec(e2e_env, "materialize", check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("prismrec materialize: error: model 'prismrec' has no champion yet")
    assert "Traceback" not in done.stderr and done.stdout == ""
    # The run really went through Airflow: the home's own metadata DB records a failed task.
    with sqlite3.connect(Path(e2e_env["PRISMREC_HOME"]) / "airflow" / "airflow.db") as db:
        states = db.execute("select task_id, state from task_instance where dag_id = 'recsys_materialize'").fetchall()
    assert states == [("materialize", "failed")]


NEW_ITEM = 99_001  # a title added to the catalogue after the ratings end: no one has rated it
NEW_ITEM_ROW = {"item_id": NEW_ITEM, "title": "Toy Story 3", "genres": "Animation|Children's|Comedy", "year": 2010,
                "description": "Toy Story 3 (2010). Genres: Animation, Children's, Comedy. Woody, Buzz Lightyear "
                               "and the other toys face a new home when Andy leaves for college."}


def test_load_train_materialize_publishes_the_champion(loaded, e2e_env, e2e_engine, role_url):
    with e2e_engine.begin() as conn:
        conn.execute(sa.text("insert into app_e2e.items (item_id, title, genres, year, description) "
                             "values (:item_id, :title, :genres, :year, :description)"), NEW_ITEM_ROW)
    # One epoch of 30 steps on all of ML-100K clears the gate against popularity; whether the model
    # beats the stronger baselines is the training tests' and the quality benchmark's question.
    # The URL comes as a flag this time: it must reach the tasks without landing in the stored run conf.
    without_url = {k: v for k, v in e2e_env.items() if k != "PRISMREC_DATABASE_URL"}
    train = prismrec(without_url, "train", "--logical-date", LOGICAL_DATE, "--epochs", "1",
                     "--set", "train.max_steps_per_epoch=30", "--set", "gate.baselines=popularity",
                     "--set", f"database.url={role_url}")
    assert "gate" in train.stderr.lower()

    client = mlflow_client(e2e_env)
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

    # The registered pyfunc (what a serving endpoint loads) lists what the table holds, and takes a
    # per-call interest balance.
    import pandas as pd

    from tasks.publish.materialize import read_histories
    from tasks.registry.store import load_champion

    config = home_config(e2e_env)
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
    assert "more catalogue items are new (placed by their text)" in report.stdout

    # The title nobody has rated is offered to some users, flagged new, explained by what they watched.
    with e2e_engine.connect() as conn:
        offered = pd.read_sql(sa.text(
            "select user_id, is_new_item, explanation from reco_e2e.user_recommendations where item_id = :i"),
            conn, params={"i": NEW_ITEM})
        new_per_user = conn.execute(sa.text(
            "select max(n) from (select count(*) filter (where is_new_item) as n "
            "from reco_e2e.user_recommendations group by user_id) per_user")).scalar()
    assert len(offered) > 0 and offered["is_new_item"].all()
    assert offered["explanation"].str.fullmatch(r"new: like .+ you watched|new: close to what you watch").all()
    assert 0 < new_per_user <= config.materialize.max_new_items

    # An item retired from the catalogue leaves every list at the next publication.
    with e2e_engine.begin() as conn:
        retired = conn.execute(sa.text(
            "select item_id from reco_e2e.user_recommendations where not is_new_item "
            "group by item_id order by count(*) desc limit 1")).scalar()
        kept_row = conn.execute(sa.text("select * from app_e2e.items where item_id = :i"), {"i": retired}).mappings().one()
        conn.execute(sa.text("delete from app_e2e.items where item_id = :i"), {"i": retired})
    try:
        prismrec(e2e_env, "materialize")
        with e2e_engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from reco_e2e.user_recommendations where item_id = :i"),
                                {"i": retired}).scalar() == 0
            assert conn.execute(sa.text("select count(*) from reco_e2e.similar_items where :i in (item_id, "
                                        "similar_item_id)"), {"i": retired}).scalar() == 0
            assert conn.execute(sa.text("select count(*) from reco_e2e.user_recommendations")).scalar() == 50 * len(
                read_histories(e2e_engine, config))
    finally:
        with e2e_engine.begin() as conn:
            conn.execute(sa.text(f"insert into app_e2e.items ({', '.join(kept_row)}) "
                                 f"values ({', '.join(':' + c for c in kept_row)})"), dict(kept_row))


def test_corrupt_interactions_stop_the_run_at_the_quality_gate(e2e_env, e2e_engine):
    client = mlflow_client(e2e_env)
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


def _spellings(password: str) -> set[str]:
    """The password as it may have been written anywhere: raw, percent-encoded, and its long parts."""
    return {password, urllib.parse.quote(password, safe=""), password.split("@")[0], password.split("#")[1][:20]}


def test_no_store_holds_the_database_password(e2e_env, e2e_engine, role_names, password):
    """After the runs above (a promotion, a publication, a report, a refused snapshot) and a failure."""
    role = role_names["writer"]
    failed = prismrec(e2e_env, "materialize", "--set", "database.app_schema=no_such_app", check=False)
    assert failed.returncode == 1
    assert "no_such_app.interactions" in failed.stderr and "Traceback" not in failed.stderr

    home = Path(e2e_env["PRISMREC_HOME"])
    stores = {"MLflow store": [home / "mlflow.db", home / "mlartifacts"], "run folders": [home / "runs"],
              "Airflow home": [home / "airflow"], "quality history": [home / "quality"]}
    assert (home / "mlflow.db").exists() and any((home / "mlartifacts").rglob("config.json"))
    assert (home / "airflow" / "airflow.db").exists() and any((home / "runs").iterdir())
    forms = [form.encode() for form in _spellings(password)]
    found = []
    for store, roots in stores.items():
        for root in roots:
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                data = path.read_bytes()
                found += [f"{store}: {path}" for form in forms if form in data]
    found += [f"command output: {text[:200]}" for text in PRINTED for form in _spellings(password) if form in text]
    with e2e_engine.connect() as conn:
        writer = conn.execute(sa.text("select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = :r"),
                              {"r": role}).one()
        owners = set(conn.execute(sa.text("select distinct pg_get_userbyid(relowner) from pg_class "
                                          "where relnamespace = cast(:s as regnamespace)"), {"s": RECO}).scalars())
        assert tuple(writer) == (False, False, False) and owners == {role_names["owner"]}
        for table in ("runs", "model_decisions"):
            rows = conn.execute(sa.text(f"select row_to_json(t)::text from {RECO}.{table} t")).scalars().all()
            found += [f"{RECO}.{table}" for row in rows for form in _spellings(password) if form in row]
    assert found == []
    config_json = next((home / "mlartifacts").rglob("config.json")).read_text()
    assert f"{role}:***@" in config_json  # the URL is there, its password masked
