"""PrismRec operated through live services, as its users run them (tests/live/stack.py): the
command line loads MovieLens-100K, the REST API v2 unpauses and triggers the DAGs, Celery workers
run the tasks, the MLflow server keeps the run and the registry, the champion asset publishes.

The tests share one stack and build on each other in file order: the data is loaded once, and
the training run triggered here is the one every later check reads.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.live.stack import ADMIN, WORKERS

pytestmark = pytest.mark.slow

TRAINING, PUBLISHING = "recsys_training", "recsys_materialize"
REASON = "live stack: the first model, whatever the gate says"
# The Params of the trigger form (tasks/contracts.py); the stack's environment already keeps training tiny.
PARAMS = {"epochs": 1, "n_interests": 2, "force_promote": True, "reason": REASON,
          "overrides": {"train.max_steps_per_epoch": 3}}


def _runs_of(live, dag_id: str, run_type: str) -> list[dict]:
    return [run for run in live.dag_runs(dag_id) if run["run_type"] == run_type]


def _wait_for(what: str, find, live, timeout_s: float = 600):
    """Poll `find()` until it returns something; the stack's health is checked on every look."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = find()
        if found:
            return found
        live.check_alive()
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(3)


def _assert_ran_on_the_workers(live, dag_id: str, run_id: str) -> set[str]:
    """Every task succeeded on one of the stack's Celery workers; returns the workers used."""
    instances = live.task_instances(dag_id, run_id)
    assert instances and {ti["state"] for ti in instances} == {"success"}, \
        [(ti["task_id"], ti["state"]) for ti in instances]
    hosts = {ti["hostname"] for ti in instances}
    assert hosts <= set(WORKERS), hosts
    assert {ti["queue"] for ti in instances} == {live.env["PRISMREC_CELERY_QUEUE"]}
    return hosts


def _upstream_versions(live, run: dict) -> list[str]:
    events = live.get(f"/dags/{PUBLISHING}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")["asset_events"]
    return [str((event.get("extra") or {}).get("version")) for event in events]


def _publication_of(live, version: str, after: str | None = None) -> dict:
    """The asset-triggered recsys_materialize run that an event for `version` started, once it ends."""
    def find():
        for run in reversed(_runs_of(live, PUBLISHING, "asset_triggered")):
            if (after is None or run["run_after"] > after) and version in _upstream_versions(live, run):
                return run
        return None

    run = _wait_for(f"{PUBLISHING} run for version {version}", find, live)
    return live.wait_for_run(PUBLISHING, run["dag_run_id"])


def _published_versions(live) -> tuple[set[str], int]:
    engine = sa.create_engine(live.database_url)
    try:
        with engine.connect() as conn:
            return (set(conn.execute(sa.text("select distinct model_version from reco.user_recommendations")).scalars()),
                    conn.execute(sa.text("select count(distinct user_id) from reco.user_recommendations")).scalar())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def loaded(live):
    """`prismrec load movielens-100k` against the stack's Postgres, as the README's first step."""
    done = live.prismrec("load", "movielens-100k")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def unpaused(live, loaded):
    """Both DAGs unpaused through REST, as a person does with the toggle in the UI."""
    for dag_id in (PUBLISHING, TRAINING):
        answer = live.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        assert answer.status_code == 200 and answer.json()["is_paused"] is False, answer.text[:500]


@pytest.fixture(scope="module")
def triggered(live, unpaused):
    """A training run triggered through REST v2 with Params and no logical date (the UI's null)."""
    # Airflow 3's API wants the key; the UI sends null, which means "no logical date: run now".
    missing = live.api("POST", f"/dags/{TRAINING}/dagRuns", json={"conf": PARAMS})
    assert missing.status_code == 422 and "logical_date" in missing.text
    answer = live.api("POST", f"/dags/{TRAINING}/dagRuns", json={"logical_date": None, "conf": PARAMS})
    assert answer.status_code == 200, answer.text[:1000]
    run = answer.json()
    return live.wait_for_run(TRAINING, run["dag_run_id"])


def test_the_load_records_its_replay(loaded):
    assert "loaded movielens-100k: 100,000 interactions, 943 users, 1,682 items" in loaded.stdout
    assert "replays history up to its last rating, 1998-04-22" in loaded.stdout


def test_unpausing_starts_no_doomed_run(live, unpaused):
    """Unpausing a weekly DAG makes the scheduler start the latest interval's run at once; on the
    loaded MovieLens (ratings end in 1998) that run must succeed, not fail the freshness check."""
    scheduled = _wait_for("scheduled training run after unpausing", lambda: _runs_of(live, TRAINING, "scheduled"),
                          live, timeout_s=120)
    assert len(scheduled) == 1
    run = live.wait_for_run(TRAINING, scheduled[0]["dag_run_id"])
    assert run["state"] == "success", live.task_instances(TRAINING, run["dag_run_id"])
    assert run["logical_date"] > "2026"  # this week's interval, read as of the replay's end
    _assert_ran_on_the_workers(live, TRAINING, run["dag_run_id"])


def test_a_rest_trigger_with_params_and_no_logical_date_succeeds_on_the_celery_workers(live, triggered):
    assert triggered["state"] == "success", live.task_instances(TRAINING, triggered["dag_run_id"])
    assert triggered["logical_date"] is None and triggered["run_type"] == "manual"
    assert triggered["triggering_user_name"] == ADMIN[0]
    assert {key: triggered["conf"][key] for key in PARAMS} == PARAMS
    _assert_ran_on_the_workers(live, TRAINING, triggered["dag_run_id"])


def test_the_mlflow_server_shows_the_run_and_its_version_as_champion(live, triggered):
    champion = live.mlflow("registered-models/alias", name="prismrec", alias="champion")["model_version"]
    tags = {tag["key"]: tag["value"] for tag in champion.get("tags", [])}
    assert tags["airflow_run_id"] == triggered["dag_run_id"]  # the forced run's model holds @champion
    run = live.mlflow("runs/get", run_id=champion["run_id"])["run"]
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    metrics = {m["key"] for m in run["data"].get("metrics", [])}
    assert run["info"]["status"] == "FINISHED"
    assert params["train.epochs"] == "1" and params["train.n_interests"] == "2"
    assert params["train.max_steps_per_epoch"] == "3"
    assert "valid_ndcg_10" in metrics and any(name.startswith("system/") for name in metrics)


def test_the_champion_asset_event_publishes_through_recsys_materialize(live, triggered):
    version = live.mlflow("registered-models/alias", name="prismrec", alias="champion")["model_version"]["version"]
    run = _publication_of(live, str(version), after=triggered["run_after"])
    assert run["state"] == "success"
    _assert_ran_on_the_workers(live, PUBLISHING, run["dag_run_id"])
    assert _published_versions(live) == ({str(version)}, 943)


def test_cli_promote_and_rollback_reach_this_airflow(live, triggered):
    """`prismrec promote` / `rollback` with PRISMREC_AIRFLOW_API_URL post the asset event to this
    Airflow (login with a user's password), and its recsys_materialize publishes each move."""
    versions = sorted(int(v["version"]) for v in
                      live.mlflow("registered-models/get", name="prismrec")["registered_model"]["latest_versions"])
    champion = live.mlflow("registered-models/alias", name="prismrec", alias="champion")["model_version"]["version"]
    other = str(next(v for v in range(1, max(versions) + 1) if str(v) != str(champion)))
    cli_env = {"PRISMREC_AIRFLOW_API_URL": live.airflow_url,
               "PRISMREC_AIRFLOW_USERNAME": ADMIN[0], "PRISMREC_AIRFLOW_PASSWORD": ADMIN[1]}
    before = live.get(f"/dags/{PUBLISHING}/dagRuns", order_by="-run_after", limit=1)["dag_runs"][0]["run_after"]

    promoted = live.prismrec("promote", other, "--reason", "live stack: promote by hand", env=cli_env)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert f"version {other} is the champion" in promoted.stdout
    assert f"fired on {live.airflow_url}" in promoted.stdout, promoted.stdout + promoted.stderr
    run = _publication_of(live, other, after=before)
    assert run["state"] == "success" and _published_versions(live) == ({other}, 943)

    rolled = live.prismrec("rollback", "--reason", "live stack: back again", env=cli_env)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert f"rolled back to version {champion}" in rolled.stdout and f"fired on {live.airflow_url}" in rolled.stdout
    run = _publication_of(live, str(champion), after=run["run_after"])
    assert run["state"] == "success" and _published_versions(live) == ({str(champion)}, 943)

    events = live.get("/assets/events", order_by="-timestamp", limit=10)["asset_events"]
    sources = [(e["extra"].get("source"), str(e["extra"].get("version"))) for e in events if e.get("extra")]
    assert ("cli promote", other) in sources and ("cli rollback", str(champion)) in sources
