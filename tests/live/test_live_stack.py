"""PrismRec operated through live services, as its users run them (tests/live/stack.py): the
command line loads MovieLens-100K, the REST API v2 and the Airflow UI (a real headless chromium)
unpause and trigger the DAGs, Celery workers run the tasks, the MLflow server keeps the run and
the registry, the champion asset publishes, `prismrec promote` / `rollback` reach Airflow.

The tests share one stack and build on each other in file order. One training run goes all the
way (triggered from the UI's form, or through REST where no chromium can be had) and every later
check reads it; the runs that only prove a date is not doomed stop after the data gate, where a
stale date would fail them (a person marks them failed, as in the UI).
"""

from __future__ import annotations

import time

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
from tests.live.browser import (
    Screens,
    browser_page,
    ensure_chromium,
    log_into_airflow,
    trigger_from_the_form,
    wait_for_text,
)
from tests.live.stack import ADMIN, WORKERS

pytestmark = pytest.mark.slow

TRAINING, PUBLISHING = "recsys_training", "recsys_materialize"
REASON = "live stack: the first model, whatever the gate says"
# Params of the trigger form (tasks/contracts.py); the stack's environment already keeps training tiny.
# `overrides` is typed into the form's JSON editor: settings without a Param of their own reach the training.
FORM_PARAMS = {"epochs": 1, "n_interests": 2, "force_promote": True, "reason": REASON,
               "overrides": {"train.user_ffn": 3, "train.new_item_head_share": 0.2}}
REST_PARAMS = {"epochs": 1, "reason": "live stack: a run with no logical date", "overrides": {"train.lr": 0.001}}
USERS = 943  # MovieLens-100K


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
        time.sleep(2)


def _states(live, dag_id: str, run_id: str) -> dict[str, str | None]:
    return {ti["task_id"]: ti["state"] for ti in live.task_instances(dag_id, run_id)}


def _assert_ran_on_the_workers(live, dag_id: str, run_id: str, tasks: set[str] | None = None) -> set[str]:
    """The tasks (all by default) succeeded on the stack's Celery workers; returns the workers used."""
    instances = [ti for ti in live.task_instances(dag_id, run_id) if tasks is None or ti["task_id"] in tasks]
    assert instances and {ti["state"] for ti in instances} == {"success"}, \
        [(ti["task_id"], ti["state"]) for ti in instances]
    hosts = {ti["hostname"] for ti in instances}
    assert hosts <= set(WORKERS), hosts
    assert {ti["queue"] for ti in instances} == {live.env["PRISMREC_CELERY_QUEUE"]}
    return hosts


def _passes_the_data_gate_then_stop(live, run_id: str) -> None:
    """Wait until `extract` and `quality` of a training run succeeded (a stale 'now' fails them),
    then mark the run failed through REST so the next run does not wait for its training."""
    def gate_done():
        states = _states(live, TRAINING, run_id)
        assert "failed" not in states.values() and "upstream_failed" not in states.values(), states
        return states.get("quality") == "success"

    _wait_for(f"data gate of {run_id}", gate_done, live)
    _assert_ran_on_the_workers(live, TRAINING, run_id, {"extract", "quality"})
    for _ in range(3):
        answer = live.api("PATCH", f"/dags/{TRAINING}/dagRuns/{run_id}", json={"state": "failed"})
        if not (answer.status_code == 500 and "Database error" in answer.text):
            break
        # Marking a run failed while the scheduler queues its next task can deadlock in Airflow's
        # metadata DB (seen: UPDATE dag_run vs UPDATE task_instance); Postgres aborts one side, and a
        # client tries again, as a person would in the UI.
        time.sleep(1)
    assert answer.status_code == 200, answer.text[:500]
    live.api("PATCH", f"/dags/{TRAINING}/dagRuns/{run_id}", json={"note": "stopped by the live test after the data gate"})
    _wait_for(f"{run_id} to stop", lambda: not ({"running", "queued", "scheduled"}
                                                & set(_states(live, TRAINING, run_id).values())), live, 180)


def _upstream_versions(live, run: dict) -> list[str]:
    if run.get("start_date") is None:
        # Airflow 3.3 answers 500 for the upstream events of a run queued and not started yet (its
        # response model wants the run's start date: apache/airflow#71360); the next poll looks again.
        return []
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


def _published(live) -> tuple[set[str], int]:
    """The model versions in reco.user_recommendations and how many users have a list."""
    engine = sa.create_engine(live.database_url)
    try:
        with engine.connect() as conn:
            return (set(conn.execute(sa.text("select distinct model_version from reco.user_recommendations")).scalars()),
                    conn.execute(sa.text("select count(distinct user_id) from reco.user_recommendations")).scalar())
    finally:
        engine.dispose()


def _champion(live) -> dict:
    return live.mlflow("registered-models/alias", name="prismrec", alias="champion")["model_version"]


@pytest.fixture(scope="module")
def chromium():
    return ensure_chromium()


@pytest.fixture(scope="module")
def loaded(live):
    """`prismrec load movielens-100k` against the stack's Postgres, as the README's first step."""
    done = live.prismrec("load", "movielens-100k")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def unpaused(live, loaded):
    """Both DAGs unpaused through REST (the UI's toggle does the same); the scheduled run it starts."""
    for dag_id in (PUBLISHING, TRAINING):
        answer = live.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        assert answer.status_code == 200 and answer.json()["is_paused"] is False, answer.text[:500]
    return _wait_for("scheduled training run after unpausing", lambda: _runs_of(live, TRAINING, "scheduled"),
                     live, timeout_s=180)


@pytest.fixture(scope="module")
def trained(live, unpaused, chromium):
    """The one training run that goes all the way: triggered from the Airflow UI's form with Params
    (the REST API where no chromium can be had); returns it finished, with what the UI sent."""
    sent = None
    if chromium is not None:
        with browser_page(chromium) as page:
            screens = Screens(page, live.root / "screenshots")
            log_into_airflow(page, live.airflow_url, *ADMIN)
            sent = trigger_from_the_form(page, live.airflow_url, TRAINING, FORM_PARAMS, screens)
            assert sent["status"] == 200, sent
            screens.take("triggered")
        run_id = sent["run"]["dag_run_id"]
    else:
        answer = live.api("POST", f"/dags/{TRAINING}/dagRuns", json={"logical_date": None, "conf": FORM_PARAMS})
        assert answer.status_code == 200, answer.text[:1000]
        run_id = answer.json()["dag_run_id"]
    return {"run": live.wait_for_run(TRAINING, run_id, timeout_s=900), "sent": sent}


def test_the_load_records_its_replay(loaded):
    assert "loaded movielens-100k: 100,000 interactions, 943 users, 1,682 items" in loaded.stdout
    assert "replays history up to its last rating, 1998-04-22" in loaded.stdout


def test_unpausing_starts_no_doomed_run(live, unpaused):
    """Unpausing a weekly DAG makes the scheduler start the latest interval's run at once; on the
    loaded MovieLens (ratings end in 1998) it passes the freshness check instead of failing it."""
    assert len(unpaused) == 1 and unpaused[0]["logical_date"] > "2026"  # this week's interval
    _passes_the_data_gate_then_stop(live, unpaused[0]["dag_run_id"])


def test_a_rest_trigger_with_params_and_no_logical_date_passes_the_data_gate(live, unpaused):
    # Airflow 3's API wants the key; null means "no logical date: as of when it runs".
    missing = live.api("POST", f"/dags/{TRAINING}/dagRuns", json={"conf": REST_PARAMS})
    assert missing.status_code == 422 and "logical_date" in missing.text
    answer = live.api("POST", f"/dags/{TRAINING}/dagRuns", json={"logical_date": None, "conf": REST_PARAMS})
    assert answer.status_code == 200, answer.text[:1000]
    run = answer.json()
    assert run["logical_date"] is None and run["triggering_user_name"] == ADMIN[0]
    assert {key: run["conf"][key] for key in REST_PARAMS} == REST_PARAMS
    _passes_the_data_gate_then_stop(live, run["dag_run_id"])


def test_the_airflow_ui_triggers_training_with_params_and_shows_it_succeed(live, trained, chromium):
    if chromium is None:
        pytest.skip("no /usr/bin/chromium (make browser installs Debian's); the run was triggered through REST")
    request = trained["sent"]["request"]
    assert {key: request["conf"][key] for key in FORM_PARAMS} == FORM_PARAMS
    run_id = trained["run"]["dag_run_id"]
    with browser_page(chromium) as page:
        screens = Screens(page, live.root / "screenshots")
        log_into_airflow(page, live.airflow_url, *ADMIN)
        page.goto(f"{live.airflow_url}/dags/{TRAINING}/runs/{run_id}")
        wait_for_text(page, run_id, "success")
        screens.take("training-run-succeeded")
        page.goto(f"{live.airflow_url}/dags/{TRAINING}/runs/{run_id}/tasks/register")
        wait_for_text(page, "register", "verdict")  # the task's log: the gate's verdict line
        screens.take("register-task-log")


def test_the_run_succeeded_on_the_celery_workers_with_its_params(live, trained):
    run = trained["run"]
    assert run["state"] == "success", _states(live, TRAINING, run["dag_run_id"])
    assert run["run_type"] == "manual" and run["triggering_user_name"] == ADMIN[0]
    assert {key: run["conf"][key] for key in FORM_PARAMS} == FORM_PARAMS
    _assert_ran_on_the_workers(live, TRAINING, run["dag_run_id"])
    # The gate's verdict is the run's note, written by `register` through the REST API.
    version = _champion(live)["version"]
    assert (run["note"] or "").startswith(f"the gate passed v{version}: it is the champion") or \
        f"forced it: \"{REASON}\"; v{version} is the champion" in (run["note"] or ""), run["note"]


def test_the_mlflow_server_shows_the_run_and_its_version_as_champion(live, trained):
    champion = _champion(live)
    tags = {tag["key"]: tag["value"] for tag in champion.get("tags", [])}
    assert tags["airflow_run_id"] == trained["run"]["dag_run_id"]  # the forced run's model holds @champion
    run = live.mlflow("runs/get", run_id=champion["run_id"])["run"]
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    metrics = {m["key"] for m in run["data"].get("metrics", [])}
    assert run["info"]["status"] == "FINISHED"
    assert (params["train.epochs"], params["train.n_interests"], params["train.max_steps_per_epoch"]) == ("1", "2", "4")
    # The form's JSON overrides reached the training (the defaults are 2 and 0.1).
    assert (params["train.user_ffn"], params["train.new_item_head_share"]) == ("3", "0.2")
    assert "valid_ndcg_10" in metrics and any(name.startswith("system/") for name in metrics)


def test_the_champion_asset_event_publishes_through_recsys_materialize(live, trained):
    version = str(_champion(live)["version"])
    run = _publication_of(live, version, after=trained["run"]["run_after"])
    assert run["state"] == "success"
    _assert_ran_on_the_workers(live, PUBLISHING, run["dag_run_id"])
    assert _published(live) == ({version}, USERS)
    # Scored in two child processes the Celery task started (stack.TINY_TRAINING: from 0 users up).
    log = live.task_log(PUBLISHING, run["dag_run_id"], "materialize")
    assert "scoring in 2 process(es)" in log and "scorer 1: loaded the model and 943 users" in log, log[-3000:]


CLI_REASON = "live stack: promote by hand"


@pytest.fixture(scope="module")
def cli_env(live):
    """What a person sets so that `prismrec promote` tells this Airflow (a user's login, not a token)."""
    return {"PRISMREC_AIRFLOW_API_URL": live.airflow_url,
            "PRISMREC_AIRFLOW_USERNAME": ADMIN[0], "PRISMREC_AIRFLOW_PASSWORD": ADMIN[1]}


@pytest.fixture(scope="module")
def promoted(live, trained, cli_env):
    """A second version of the same model (registered over MLflow's REST API), promoted with the CLI."""
    first = _champion(live)
    body = {"name": "prismrec", "source": first["source"], "run_id": first["run_id"]}
    if first["source"].startswith("models:/"):  # MLflow 3's logged model: name it, or the source is refused
        body["model_id"] = first["source"].removeprefix("models:/")
    second = requests_post(live, "model-versions/create", body)["model_version"]
    before = live.dag_runs(PUBLISHING)[-1]["run_after"]
    done = live.prismrec("promote", str(second["version"]), "--reason", CLI_REASON, env=cli_env)
    return {"first": str(first["version"]), "second": str(second["version"]), "done": done, "before": before}


def requests_post(live, path: str, body: dict) -> dict:
    import requests

    answer = requests.post(f"{live.mlflow_url}/api/2.0/mlflow/{path}", json=body, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    return answer.json()


def test_cli_promote_reaches_this_airflow_and_publishes(live, promoted):
    """`prismrec promote` with PRISMREC_AIRFLOW_API_URL posts the asset event here; its recsys_materialize publishes."""
    done, second = promoted["done"], promoted["second"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"version {second} is the champion" in done.stdout
    assert f"fired on {live.airflow_url}" in done.stdout, done.stdout + done.stderr
    run = _publication_of(live, second, after=promoted["before"])
    assert run["state"] == "success" and _published(live) == ({second}, USERS)


def test_the_mlflow_ui_shows_champion_on_the_promoted_version(live, promoted, chromium):
    if chromium is None:
        pytest.skip("no /usr/bin/chromium (make browser installs Debian's)")
    with browser_page(chromium) as page:
        screens = Screens(page, live.root / "screenshots")
        page.goto(f"{live.mlflow_url}/#/models/prismrec")
        wait_for_text(page, f"Version {promoted['second']}", "champion")
        screens.take("mlflow-model-champion")
        rows = {version: page.get_by_role("row").filter(has_text=f"Version {version}").first.inner_text()
                for version in (promoted["first"], promoted["second"])}
        assert "champion" in rows[promoted["second"]] and "champion" not in rows[promoted["first"]], rows


def test_cli_rollback_reaches_this_airflow_and_publishes(live, promoted, cli_env):
    first = promoted["first"]
    before = live.dag_runs(PUBLISHING)[-1]["run_after"]
    done = live.prismrec("rollback", "--reason", "live stack: back again", env=cli_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"rolled back to version {first}" in done.stdout and f"fired on {live.airflow_url}" in done.stdout
    run = _publication_of(live, first, after=before)
    assert run["state"] == "success" and _published(live) == ({first}, USERS)

    events = live.get("/assets/events", order_by="-timestamp", limit=20)["asset_events"]
    sources = {((e.get("extra") or {}).get("source"), str((e.get("extra") or {}).get("version"))) for e in events}
    assert {("cli promote", promoted["second"]), ("cli rollback", first)} <= sources


# What the CLI's Airflow client says when the live api-server refuses it, and the lookups it relies
# on: wrong or missing credentials, an unknown asset, an unreachable server, a run note for a run
# that this Airflow does not know (an in-process `prismrec train`).

def test_asset_event_failures_say_what_went_wrong(live):
    url = live.airflow_url
    assert AirflowApi.from_env({}) is None
    with pytest.raises(AssetEventError, match="HTTP 401 .*PRISMREC_AIRFLOW_API_TOKEN"):
        fire_champion_changed(AirflowApi(base_url=url), "5", "cli promote")  # no credentials
    with pytest.raises(AssetEventError, match="HTTP 401"):
        auth_headers(AirflowApi(base_url=url, username=ADMIN[0], password="wrong"))

    api = AirflowApi(base_url=url, username=ADMIN[0], password=ADMIN[1])
    headers = auth_headers(api)
    # Airflow keeps the URI in its own normal form (with a trailing slash); the lookup finds it either way.
    assert asset_id(api, CHAMPION_URI, headers) == asset_id(api, CHAMPION_URI + "/", headers)
    with pytest.raises(AssetEventError, match="does not know the asset prismrec://champion-old"):
        asset_id(api, "prismrec://champion-old", headers)
    with pytest.raises(AssetEventError, match="cannot reach the Airflow API server at http://127.0.0.1:9"):
        fire_champion_changed(AirflowApi(base_url="http://127.0.0.1:9", timeout_s=2), "5", "cli promote")


def test_a_run_note_for_a_run_this_airflow_does_not_know_is_skipped(live):
    """`register` writes the gate's verdict as its run's note through REST; an in-process run
    (`prismrec train` with PRISMREC_AIRFLOW_API_URL set) is not this Airflow's: no note, no error."""
    api = AirflowApi(base_url=live.airflow_url, username=ADMIN[0], password=ADMIN[1])
    assert set_run_note(api, "recsys_training", "manual__2026-12-04T00:00:00+00:00", "the gate passed v1") is False
    with pytest.raises(AssetEventError, match="HTTP 401"):
        set_run_note(AirflowApi(base_url=live.airflow_url), "recsys_training", "manual__x", "note")
