"""Fault injection: a publisher killed (SIGKILL) or cut off (pg_terminate_backend) at each phase, two at
once, a trainer killed mid-run, and bad input; after each, nothing published is lost or mixed.

A publisher is a real process (`materialize` on the test run's tiny model, 30 users), forked from a
process that has already imported what a publisher loads (torch, MLflow, pandas), and stopped at a
phase by the `PRISMREC_FAULT_PAUSE` point (tasks.publish.faults.fault_point): right after its
run row (`started`), after its first COPY batch (`copy`), after its indexes (`before_swap`), or
waiting for the swap's lock behind a held lock (`swap_lock`). Every outcome is written as a row of
the file `FAULTS_TABLE` names (default: `faults.md` in the test run's PrismRec home), the table
docs/reliability.md shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from tasks.publish.scoring import SCRATCH_PREFIX

pytestmark = pytest.mark.slow

APP, RECO, MODEL = "fault_app", "fault_reco", "fault_test"
USERS, TOP_K = 30, 5
D1 = datetime(2025, 1, 1, tzinfo=UTC)
# The fork server: one process imports a publisher's modules once, then forks a publisher for each request
# line ({"overrides", "date", "env", "log"}) and answers with its pid. A publisher writes its log to the file
# `log`; when it ends, the server writes its exit status (Popen's convention: -N for signal N) to `log`.exit.
FORK_SERVER = """
import json, logging, os, signal, sys, traceback
from datetime import datetime
import mlflow, torch  # noqa: F401  (what a publisher would otherwise import itself, ~4 s)
from tasks.config import load_config
from tasks.model.recommender import Recommender  # noqa: F401
from tasks.publish.materialize import materialize
logs = {}

def reap(*_):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        path = logs.pop(pid)
        with open(path + ".part", "w") as out:
            out.write(str(code))
        os.replace(path + ".part", path + ".exit")

signal.signal(signal.SIGCHLD, reap)
for line in sys.stdin:
    request = json.loads(line)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])  # the child's entry is in `logs` before it ends
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        os.environ.update(request["env"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)
        code = 0
        try:
            materialize(load_config(request["overrides"]), logical_date=datetime.fromisoformat(request["date"]))
        except BaseException:
            traceback.print_exc(file=sys.stdout)
            code = 1
        sys.stdout.flush()
        os._exit(code)
    logs[pid] = request["log"]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
    print(pid, flush=True)
"""
OUTCOMES: list[tuple[str, str]] = []
_dates = iter(D1 + timedelta(days=n) for n in range(1, 1000))


@pytest.fixture(scope="module")
def overrides(base_overrides) -> dict:
    return {**base_overrides, "database.app_schema": APP, "database.reco_schema": RECO, "registry.model_name": MODEL,
            "materialize.top_k": TOP_K, "materialize.batch_users": 10, "materialize.keep_runs": 2,
            "materialize.similar_top_k": 3}


class Publisher:
    """A publisher process forked by the fork server, used as a Popen: pid, poll, wait, its output."""

    def __init__(self, pid: int, log: Path):
        self.pid, self.log, self.returncode = pid, log, None

    def poll(self) -> int | None:
        done = self.log.with_name(self.log.name + ".exit")
        if self.returncode is None and done.exists():
            self.returncode = int(done.read_text())
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"publisher {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="module")
def publishers(tmp_path_factory):
    """start(overrides, logical_date, env) -> a running Publisher."""
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    logs = tmp_path_factory.mktemp("publishers")
    count = iter(range(1, 1000))

    def start(overrides: dict, logical_date: datetime, env: dict[str, str] | None = None) -> Publisher:
        log = logs / f"publisher-{next(count)}.log"
        server.stdin.write(json.dumps({"overrides": overrides, "date": logical_date.isoformat(),
                                       "env": env or {}, "log": str(log)}) + "\n")
        server.stdin.flush()
        answer = server.stdout.readline()
        assert answer.strip().isdigit(), f"the fork server answered {answer!r} (exit {server.poll()})"
        return Publisher(int(answer), log)

    yield start
    server.stdin.close()
    server.wait(timeout=60)


@pytest.fixture(scope="module")
def fault_config(overrides, base_overrides, engine, trained_model_dir, tmp_path_factory):
    """App data for USERS users, a registered champion, and a first published set."""
    from tasks.config import load_config
    from tasks.model.recommender import Recommender
    from tasks.publish.materialize import materialize
    from tasks.registry.store import register_candidate

    config = load_config(overrides)
    items = Recommender.load(trained_model_dir).item_ids
    rng = np.random.default_rng(11)
    start = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [{"u": u, "i": int(i), "t": start + timedelta(days=u, hours=n)}
            for u in range(1, USERS + 1) for n, i in enumerate(rng.choice(items, 6, replace=False))]
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {APP} cascade; create schema {APP}; "
                             f"drop schema if exists {RECO} cascade"))
        conn.execute(sa.text(f"create table {APP}.interactions (user_id bigint, item_id bigint, rating real, "
                             "occurred_at timestamptz)"))
        conn.execute(sa.text(f"insert into {APP}.interactions values (:u, :i, 4, :t)"), rows)
    register_candidate(config, model_dir=trained_model_dir, run_dir=tmp_path_factory.mktemp("fault-run") / "run",
                       evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}},
                       decision={"passed": True, "reasons": ["test"]}, lineage={"run_key": "faults"})
    materialize(config, logical_date=next(_dates))
    yield config
    results = Path(os.environ.get("FAULTS_TABLE") or Path(base_overrides["paths.home"]) / "faults.md")
    results.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| fault | outcome |", "| --- | --- |", *(f"| {fault} | {outcome} |" for fault, outcome in OUTCOMES)]
    results.write_text("\n".join(lines) + "\n")


def _published(engine) -> tuple[int, int, str]:
    """(current run, rows, a digest of every row): what a reader sees."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"select user_id, rank, item_id, materialization_id from {RECO}.user_recommendations "
                                    "order by user_id, rank")).all()
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:12]
    return (rows[0][3] if rows else None), len(rows), digest


def _leftovers(engine, mid: int) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.text("select tablename from pg_tables where schemaname = :s and tablename ~ :p"),
                            {"s": RECO, "p": f"_m{mid}$"}).scalars().all()


def _run(engine, mid: int):
    with engine.connect() as conn:
        return conn.execute(sa.text(f"select * from {RECO}.runs where materialization_id = :m"), {"m": mid}).mappings().one()


def _start_paused(publishers, engine, overrides, phase: str, fault: str):
    """Start a publisher process and wait until it stops at `phase`; returns (process, run id, backend pid, blocker)."""
    blocker = None
    env = {}
    patient = dict(overrides)
    if phase == "swap_lock":  # hold a lock ATTACH needs; readers are not blocked by it
        blocker = engine.connect()
        blocker.execute(sa.text(f"lock table {RECO}.user_recommendations_history in share update exclusive mode"))
        patient["materialize.swap_lock_timeout_ms"] = 600_000
    else:
        env["PRISMREC_FAULT_PAUSE"] = phase
        if phase == "score":  # the point is in the scoring processes, which only large runs start
            patient["materialize.score_process_min_users"] = 0
        # Killed: it never wakes. Cut off: it wakes to a dead connection, as a real publisher would.
        env["PRISMREC_FAULT_PAUSE_S"] = "3600" if fault == "kill" else "3"
    process = publishers(patient, next(_dates), env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        with engine.connect() as conn:
            running = conn.execute(sa.text(
                f"select r.materialization_id, r.backend_pid, a.wait_event_type from {RECO}.runs r "
                "join pg_stat_activity a on a.pid = r.backend_pid where r.status = 'running'")).first()
        waiting = phase == "swap_lock" and running is not None and running.wait_event_type == "Lock"
        if running and (waiting or (phase != "swap_lock" and _paused(process, phase))):
            return process, running.materialization_id, running.backend_pid, blocker
        time.sleep(0.3)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    pytest.fail(f"the publisher never reached {phase}:\n{process.output()[-3000:]}")


def _paused(process: Publisher, phase: str) -> bool:
    return f"fault point: paused at {phase}" in process.output()


def _wait_gone(engine, pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if not conn.execute(sa.text("select 1 from pg_stat_activity where pid = :p"), {"p": pid}).scalar():
                return
        time.sleep(0.2)
    pytest.fail(f"backend {pid} is still there")


def _state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process (Linux /proc), None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]))


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*") if (_state(int(p.name)) or ("", 0))[1] == pid]


FAULTS = [("started", "kill"), ("score", "kill"), ("copy", "kill"), ("copy", "terminate"), ("before_swap", "kill"),
          ("before_swap", "terminate"), ("swap_lock", "kill"), ("swap_lock", "terminate")]


@pytest.mark.parametrize(("phase", "fault"), FAULTS)
def test_a_publisher_killed_at_any_phase_loses_and_mixes_nothing(fault_config, overrides, engine, publishers, phase,
                                                                  fault):
    from tasks.publish.materialize import materialize

    before = _published(engine)
    process, mid, pid, blocker = _start_paused(publishers, engine, overrides, phase, fault)
    scorers = _children(process.pid)
    assert (len(scorers) == 2) == (phase == "score")  # materialize.score_processes: 2 by default
    scratch = list(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}{process.pid}-*"))  # their users file
    assert len(scratch) == (phase == "score")
    try:
        if fault == "kill":
            os.kill(process.pid, signal.SIGKILL)
        else:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select pg_terminate_backend(:p)"), {"p": pid}).scalar()
        process.wait(timeout=120)
        during = _published(engine)
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()
    _wait_gone(engine, pid)
    deadline = time.monotonic() + 30
    while any(map(_state, scorers)) and time.monotonic() < deadline:
        time.sleep(0.1)  # its scoring processes die with it (PR_SET_PDEATHSIG), not score on for no one
    assert not [child for child in scorers if _state(child)]
    after = materialize(fault_config, logical_date=next(_dates))  # the next run reaps and publishes
    assert not any(folder.exists() for folder in scratch)  # and removes the dead publisher's scratch folder
    killed = _run(engine, mid)
    assert during == before  # readers saw the old set, whole, throughout
    assert killed["status"] == "failed" and not killed["is_current"] and not killed["output_kept"]
    if fault == "terminate":  # the first cause is kept, not the "connection already closed" that followed it
        assert killed["error"].startswith("OperationalError: ") and "already closed" not in killed["error"]
    assert _leftovers(engine, mid) == []
    assert _published(engine)[:2] == (after.materialization_id, USERS * TOP_K)
    how = "SIGKILL of the process" if fault == "kill" else "pg_terminate_backend of its connection"
    OUTCOMES.append((f"publisher: {how} at `{phase}`",
                     f"held: current set unchanged ({before[1]} rows, same digest); run {mid} marked failed "
                     f"({killed['error'][:48].rstrip()}...); no tables left; next run published"
                     + (f"; its {len(scorers)} scoring processes died with it" if scorers else "")))


def test_two_publishers_at_once_leave_one_complete_set(fault_config, overrides, engine, publishers):
    date = next(_dates)
    processes = [publishers(overrides, date + timedelta(hours=h)) for h in (0, 1)]
    codes = [p.wait(timeout=600) for p in processes]
    outputs = [p.output() for p in processes]
    current, rows, _ = _published(engine)
    with engine.connect() as conn:
        newest = conn.execute(sa.text(f"select materialization_id from {RECO}.runs where logical_date = :d"),
                              {"d": date + timedelta(hours=1)}).scalar()
    assert codes[1] == 0, outputs[1][-2000:]
    assert codes[0] == 0 or "SupersededError" in outputs[0], outputs[0][-2000:]
    assert current == newest and rows == USERS * TOP_K
    OUTCOMES.append(("two publishers at once (logical dates 1 h apart)",
                     f"held: one complete set ({rows} rows) from the newer run; the older "
                     + ("published first, then was replaced" if codes[0] == 0 else "was refused as superseded")))


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--max-users", "-5"], "must be at least 1"),
    (["promote", "1", "--reason", "x" * 600], "at most 500 characters"),
    (["forget", "not-a-number"], "invalid int value"),
    (["forget", "1", "--set", "database.url=postgresql://u:p@ss@localhost/db"], "does not parse"),
    (["materialize", "--set", f"database.reco_schema={RECO}; drop table x"], "lower-case SQL identifier"),
])
def test_bad_input_gets_one_paragraph_and_changes_nothing(fault_config, base_overrides, engine, args, expected):
    before = _published(engine)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PRISMREC_", "MLFLOW_", "AIRFLOW"))},
           "PRISMREC_HOME": base_overrides["paths.home"], "PRISMREC_DATABASE_URL": base_overrides["database.url"],
           "PRISMREC_DATABASE__RECO_SCHEMA": RECO, "PRISMREC_DATABASE__APP_SCHEMA": APP, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode != 0 and expected in done.stderr and "Traceback" not in done.stderr
    assert "p@ss" not in done.stderr
    assert _published(engine) == before
    shown = " ".join(a if len(a) < 40 else a[:20] + "..." for a in args)
    OUTCOMES.append((f"bad input: `prismrec {shown}`", f"held: exit {done.returncode}, one paragraph "
                     f"(\"...{expected}...\"), no traceback, nothing changed"))


def _trainers(out: Path, target: str | None) -> list:
    """The live processes of the training writing into `out`: its torchrun workers (`worker`), torchrun
    itself (`torchrun`), or both (None)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        command = process.info["cmdline"] or []
        if "tasks.training.worker" not in command or str(out) not in command:
            continue
        if process.info["status"] != psutil.STATUS_ZOMBIE and (
                target is None or ("torch.distributed.run" in command) == (target == "torchrun")):
            found.append(process)
    return found


def _kill_trainer(out: Path, target: str, phase: str, killed: list[int]) -> None:
    """SIGKILL the training writing into `out` (its torchrun `worker`, or `torchrun` itself) as soon as
    it runs (`starting`) or once it has saved a checkpoint (`after_a_checkpoint`), as the kernel's
    out-of-memory killer would."""
    from tasks.layout import ModelFiles

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        workers = _trainers(out, target)
        if workers and (phase == "starting" or ModelFiles(out).checkpoint.exists()):
            for worker in workers:
                worker.send_signal(signal.SIGKILL)
                killed.append(worker.pid)
            return
        time.sleep(0.1)


@pytest.mark.parametrize(("target", "phase"), [("worker", "starting"), ("worker", "after_a_checkpoint"),
                                               ("torchrun", "after_a_checkpoint")])
def test_a_trainer_killed_mid_run_fails_it_with_the_cause_and_hands_on_no_model(
        fault_config, base_overrides, engine, trained_model_dir, tmp_path, target, phase):
    from tasks.config import load_config
    from tasks.errors import TrainingError
    from tasks.layout import RunLayout
    from tasks.training.launcher import launch_training

    before = _published(engine)
    config = load_config({**base_overrides, "train.nproc": 1, "train.epochs": 3, "train.max_steps_per_epoch": 4,
                          "train.batch_size": 16, "train.patience": 5})
    out, killed = tmp_path / "model", []
    killer = threading.Thread(target=_kill_trainer, args=(out, target, phase, killed))
    killer.start()
    with pytest.raises(TrainingError) as failure:  # the train task fails: evaluate, gate and register never run
        launch_training(config, RunLayout(trained_model_dir.parent).dataset.root, out)
    killer.join()
    assert killed, "the worker was never seen"
    assert _trainers(out, target=None) == []  # torchrun killed: its orphaned worker was stopped, not left training
    message = str(failure.value)
    assert "killed with SIGKILL" in message and "train.max_memory_gb" in message
    assert _published(engine) == before
    who = "the torchrun worker" if target == "worker" else "torchrun itself"
    orphan = "" if target == "worker" else "its orphaned worker stopped by the launcher's guard, not left training; "
    OUTCOMES.append((f"trainer: SIGKILL of {who} at `{phase}`",
                     f"held: {orphan}training fails naming SIGKILL (the out-of-memory killer's signal) and what to "
                     "set; no model handed on, nothing registered, current set unchanged"))
