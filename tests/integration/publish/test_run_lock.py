"""One run per home and DAG: a second `prismrec materialize` in the same home is refused at once, in one
paragraph, with the holder's pid and start, and touches no database."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa


def test_a_second_run_in_the_same_home_is_refused_and_changes_nothing(config, base_overrides, engine, tmp_path):
    from tasks import run_lock

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PRISMREC_", "MLFLOW_", "AIRFLOW"))},
           "PRISMREC_HOME": base_overrides["paths.home"], "PRISMREC_DATABASE_URL": base_overrides["database.url"],
           "PRISMREC_DATABASE__RECO_SCHEMA": "lock_reco", "HF_HUB_OFFLINE": "1"}
    with run_lock.hold(config, "recsys_materialize"):
        done = subprocess.run([sys.executable, "-m", "tasks.cli", "materialize"], env=env, capture_output=True,
                              text=True, timeout=600, check=False)
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert "another recsys_materialize run is in progress" in message and f"pid {os.getpid()}" in message
    assert "since 20" in message and "Traceback" not in done.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("select to_regnamespace('lock_reco')")).scalar() is None
    with run_lock.hold(config, "recsys_materialize"):  # released: taken again at once
        pass


def test_the_lock_dies_with_its_process(config, tmp_path):
    """A holder killed with SIGKILL leaves no stale lock: the kernel drops the flock with the process."""
    from tasks import run_lock
    from tasks.errors import RunInProgressError

    code = ("import sys, time; from tasks.config import load_config; from tasks import run_lock; "
            f"c = load_config({{'paths.home': {str(config.paths.home)!r}}}); "
            "cm = run_lock.hold(c, 'recsys_training'); cm.__enter__(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        try:
            with run_lock.hold(config, "recsys_training"):
                raise AssertionError("the lock was free while its holder ran")
        except RunInProgressError as refused:
            assert f"pid {holder.pid}" in str(refused)
    finally:
        holder.kill()
        holder.wait()
    with run_lock.hold(config, "recsys_training"):
        pass
