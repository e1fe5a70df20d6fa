"""A user's error fails its task at once, on a real DAG run with the DAG's own retries.

`recsys_training` is run with `DAG.test()` in a fresh interpreter (its own Airflow home and
metadata DB), its tasks' retries left as the DAG file sets them and the retry delay cut to
zero: a task that Airflow would retry shows a second try at once. A forced promotion without a
reason is a ConfigError raised by the first task, the same one the scheduler would run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUN = textwrap.dedent("""
    import json, sqlite3
    from datetime import timedelta

    from tasks.airflow_runtime import _load_dag, _set_note, configure_airflow, run_dag
    from tasks.errors import ConfigError

    home = configure_airflow()
    dag = _load_dag("recsys_training")
    retries = {t.task_id: t.retries for t in dag.tasks}
    failures = []
    for t in dag.tasks:
        t.retry_delay = timedelta(0)
        t.on_failure_callback = [lambda context: failures.append(
            [context["ti"].task_id, type(context["exception"]).__name__, str(context["exception"])])]
    run = dag.test(run_conf={"force_promote": True})
    _set_note(run, "the gate refused v3: ...; the champion stays v2")  # what a training run's verdict does
    with sqlite3.connect(home / "airflow.db") as db:
        tries = db.execute("select task_id, state, try_number from task_instance where run_id = ?",
                           (run.run_id,)).fetchall()
        note = db.execute("select content from dag_run_note n join dag_run r on r.id = n.dag_run_id "
                          "where r.run_id = ?", (run.run_id,)).fetchall()

    # The command line's path through the same DAG hands back the project's own error; a replay's
    # run (a logical date in 1998) shows in the UI as started now, by this user, with its task log.
    from datetime import UTC, datetime
    from pathlib import Path

    before = datetime.now(UTC)
    try:
        run_dag("recsys_training", logical_date=datetime(1998, 4, 23, tzinfo=UTC), conf={"force_promote": True})
        cli = None
    except ConfigError as exc:
        cli = [type(exc).__name__, str(exc)]
    with sqlite3.connect(home / "airflow.db") as db:
        cli_run = db.execute("select run_id, start_date, end_date, triggered_by, triggering_user_name from dag_run "
                             "where logical_date like '1998-04-23%'").fetchall()
    logs = {str(p.relative_to(home / "logs")): p.read_text() for p in (home / "logs").rglob("*.log")}

    # Where the UI reads the failed task's log: Airflow's own renderer, with the run's log template.
    from airflow.models import TaskInstance
    from airflow.utils.log.file_task_handler import FileTaskHandler
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as db:
        ti = db.scalars(select(TaskInstance).where(TaskInstance.run_id == cli_run[0][0],
                                                   TaskInstance.task_id == "extract")).one()
        ui_log = FileTaskHandler(base_log_folder=str(home / "logs"))._render_filename(ti, ti.try_number, session=db)
    print(json.dumps({"retries": retries, "failures": failures, "tries": tries, "state": str(run.state),
                      "cli": cli, "note": note, "cli_run": cli_run, "before": before.isoformat(), "logs": logs,
                      "ui_log": ui_log}))
""")


@pytest.mark.slow
def test_a_config_error_fails_the_task_on_its_first_try_with_its_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRISMREC_", "AIRFLOW", "MLFLOW_"))}
    env["PRISMREC_HOME"] = str(tmp_path)
    env["AIRFLOW__LOGGING__NAMESPACE_LEVELS"] = "airflow=WARNING"  # keep the task log on stderr
    # A deployment's own log file layout: the command's task logs follow it, where the UI reads them.
    env["AIRFLOW__LOGGING__LOG_FILENAME_TEMPLATE"] = "{{ ti.dag_id }}/{{ ti.run_id }}/{{ ti.task_id }}--try-{{ try_number }}.log"
    done = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])

    assert outcome["retries"]["extract"] >= 1  # the task would be retried, were this a transient fault
    assert outcome["state"] == "failed"
    tries = {task_id: (state, try_number) for task_id, state, try_number in outcome["tries"]}
    assert tries["extract"] == ("failed", 1)  # not up_for_retry, no second try
    assert {state for task_id, (state, _) in tries.items() if task_id != "extract"} == {"upstream_failed"}
    (task_id, kind, message), = outcome["failures"]
    assert (task_id, kind) == ("extract", "AirflowFailException")
    assert message.startswith("force_promote needs a reason: set the `reason` Param")
    # The task log says why, once, as the failure's message.
    assert "AirflowFailException: force_promote needs a reason" in done.stderr
    assert outcome["cli"] == ["ConfigError", message]
    # The note an in-process run leaves for the UI (a training run's gate verdict) is where the UI reads it.
    assert outcome["note"] == [["the gate refused v3: ...; the champion stays v2"]]

    # The UI shows the command's run as it happened: started when the command ran (not in 1998),
    # ended after that, triggered from the CLI by this machine's user; its failed task has a log
    # (JSON lines, as Airflow's own) where the UI reads it (the deployment's log_filename_template, as
    # Airflow renders it), ending with the failure's message.
    (run_id, start, end, triggered_by, user), = outcome["cli_run"]
    assert outcome["before"][:19].replace("T", " ") <= start[:19].replace("T", " ") <= end[:19].replace("T", " ")
    assert triggered_by == "CLI" and user.endswith("(prismrec CLI)")
    assert outcome["ui_log"] == f"recsys_training/{run_id}/extract--try-1.log"
    log_lines = [json.loads(line) for line in outcome["logs"][outcome["ui_log"]].splitlines()]
    assert log_lines[-1]["level"] == "error" and log_lines[-1]["event"].startswith("force_promote needs a reason")
