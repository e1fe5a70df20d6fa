"""A real in-process DAG run through the CLI: fresh Airflow home, migrated SQLite metadata DB,
DAG.test(), and the task's project error coming back as the command's message."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_materialize_without_a_champion_fails_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRISMREC_", "AIRFLOW", "MLFLOW_"))}
    env["PRISMREC_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "tasks.cli", "materialize"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=500, check=False)

    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("prismrec materialize: error: model 'prismrec' has no champion yet")
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    # The run really went through Airflow: the project-local metadata DB records a failed task.
    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        states = db.execute(
            "select task_id, state from task_instance where dag_id = 'recsys_materialize'"
        ).fetchall()
    assert states == [("materialize", "failed")]
