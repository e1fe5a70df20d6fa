"""Parse, structure and policy checks of the DAGs, each in a fresh interpreter.

Parsing runs in a subprocess so Airflow reads a throw-away home and so `sys.modules` shows
exactly what a scheduler's DAG processor would import. The metadata DB URL points at a
server that does not exist: any query during parsing would fail (and is counted too).
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

PARSE = textwrap.dedent("""
    import json, sys
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    activity = []
    event.listen(sa.engine.Engine, "before_cursor_execute",
                 lambda *a, **k: activity.append("query: " + str(a[2])[:80]))
    event.listen(Pool, "connect", lambda *a, **k: activity.append("connect"))

    # Airflow 3 resolves Variables/Connections through the task SDK, not SQL: record those too.
    from airflow.sdk import Connection, Variable

    def recorder(kind, original):
        def record(*args, **kwargs):
            activity.append(f"{kind}.get{args}")
            return original(*args, **kwargs)
        return staticmethod(record)

    Variable.get = recorder("Variable", Variable.get)
    Connection.get = recorder("Connection", Connection.get)

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=sys.argv[1])
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "file": dag.fileloc,
            "doc_md": dag.doc_md or "",
            "catchup": dag.catchup,
            "timetable": type(dag.timetable).__name__,
            "schedule_assets": repr(getattr(dag.timetable, "asset_condition", None)),
            "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "retries": t.retries,
                                  "outlets": [repr(o) for o in t.outlets], "queue": t.queue,
                                  "on_failure": [f"{c.__module__}.{c.__name__}" for c in t.on_failure_callback]}
                      for t in dag.tasks},
            "params": {name: dag.params.get_param(name).schema for name in dag.params},
            "param_descriptions": {name: dag.params.get_param(name).description for name in dag.params},
        }
    heavy = ["torch", "pandas", "mlflow", "great_expectations", "transformers", "numpy", "tasks.pipeline"]
    print(json.dumps({
        "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
        "dags": dags,
        "db_activity": activity,
        "heavy_modules": [m for m in heavy if m in sys.modules],
    }))
""")


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        # Port 9 (discard) on localhost: nothing answers, so a query would raise, not hang.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody:x@127.0.0.1:9/no_such_db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        # A deployment with GPU workers on Celery sends training to their queue.
        "PRISMREC_TRAIN_QUEUE": "gpu",
    }
    done = subprocess.run([sys.executable, "-c", PARSE, str(ROOT / "dags")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_both_dags_import_without_errors(parsed):
    assert parsed["import_errors"] == {}
    assert set(parsed["dags"]) == {"recsys_training", "recsys_materialize"}


def test_file_name_is_dag_id_and_docs_are_set(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert Path(dag["file"]).name == f"{dag_id}.py"
        assert dag_id in dag["doc_md"] and len(dag["doc_md"]) > 200
        assert dag["catchup"] is False


def test_parsing_makes_no_database_queries(parsed):
    assert parsed["db_activity"] == []


def test_parsing_imports_nothing_heavy(parsed):
    assert parsed["heavy_modules"] == []


def test_training_tasks_and_dependencies(parsed):
    tasks = parsed["dags"]["recsys_training"]["tasks"]
    assert {t: v["upstream"] for t, v in tasks.items()} == {
        "extract": [],
        "quality": ["extract"],
        "prepare": ["extract", "quality"],
        "train": ["prepare"],
        "evaluate": ["prepare", "train"],
        "gate": ["evaluate"],
        "register": ["evaluate", "extract", "gate", "train"],
    }
    assert tasks["train"]["retries"] == 0  # expensive: never retried behind the user's back
    assert tasks["extract"]["retries"] >= 1 and tasks["register"]["retries"] >= 1
    assert "prismrec_champion_moves" in tasks["register"]["outlets"][0]
    assert parsed["dags"]["recsys_training"]["timetable"] == "CronTriggerTimetable"
    # PRISMREC_TRAIN_QUEUE=gpu: training goes to the GPU workers' queue, everything else stays on the default.
    assert tasks["train"]["queue"] == "gpu"
    assert {v["queue"] for t, v in tasks.items() if t != "train"} == {"default"}
    # A task after train that fails for good ends the MLflow run train opened as FAILED.
    ended = {t for t, v in tasks.items() if "tasks.airflow_tasks.end_training_run" in v["on_failure"]}
    assert ended == {"evaluate", "gate", "register"}


def test_training_params_are_typed_and_described(parsed):
    dag = parsed["dags"]["recsys_training"]
    params, descriptions = dag["params"], dag["param_descriptions"]
    assert set(params) == {"epochs", "n_interests", "nproc", "nnodes", "rdzv_endpoint", "max_users",
                           "force_promote", "reason", "overrides"}
    for name in ("epochs", "n_interests", "nproc", "nnodes", "max_users"):
        assert params[name]["type"] == ["null", "integer"] and params[name]["minimum"] == 1
    assert params["rdzv_endpoint"]["type"] == ["null", "string"] and params["rdzv_endpoint"]["pattern"]
    assert params["force_promote"]["type"] == "boolean"
    assert params["overrides"]["type"] == "object"
    assert all(descriptions[name] for name in params)


def test_materialize_runs_on_the_champion_asset(parsed):
    dag = parsed["dags"]["recsys_materialize"]
    assert list(dag["tasks"]) == ["materialize"]
    assert dag["timetable"] == "AssetTriggeredTimetable"
    assert "uri='prismrec://champion" in dag["schedule_assets"]
    # A move of the MLflow alias outside PrismRec fires it too: the triggerer runs this watcher.
    assert ("watchers=[AssetWatcher(name='mlflow_champion_alias', "
            "trigger=<tasks.registry.champion_watch.ChampionMovedTrigger poll_interval=60.0>)]") in dag["schedule_assets"]
