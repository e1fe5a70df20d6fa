"""The platform as a team runs it, started natively for tests: Airflow 3 as services with Celery
workers, an MLflow tracking server on Postgres, and the `prismrec` command line pointed at them.

`live_stack()` starts, in a temporary folder, what docs/live-stack.md tells a person to start:

- Postgres databases (on the test run's server) for Airflow's metadata, MLflow's store and
  PrismRec's `app`/`reco`; every one is new and dropped afterwards;
- `mlflow server` (backend store on Postgres, artifacts served from a temporary folder);
- `airflow db migrate`, then `airflow api-server`, `scheduler`, `dag-processor`, `triggerer` and
  two `airflow celery worker`s on the machine's Redis, all with `tasks.airflow_runtime`'s Celery
  profile (the settings a user gets from `python -m tasks.airflow_runtime --celery`).

It waits for each service's health, keeps each one's output in `logs/<service>.log` (their tails
go into a failed test's report), and always stops every process group and drops the databases.
The two workers tell themselves apart by the hostname they give Airflow (worker_host.py), as two
machines would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
import sqlalchemy as sa

from tests.builders import shared_cache_env

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ADMIN = ("admin", "admin-pass")  # SimpleAuthManager's user in the stack (role admin)
WORKERS = ("celery-worker-1", "celery-worker-2")
REDIS_URL = os.environ.get("PRISMREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
# Tiny training for every run the stack starts (scheduled ones too): a deployment's environment
# sets its stages' settings the same way (defaults < environment < Params).
TINY_TRAINING = {
    "PRISMREC_TRAIN__EPOCHS": "1",
    "PRISMREC_TRAIN__MAX_STEPS_PER_EPOCH": "4",
    "PRISMREC_TRAIN__NPROC": "1",
    "PRISMREC_TRAIN__EMA_EPOCHS": "0",  # one validation an epoch, not two (the averaging is test_training's)
    "PRISMREC_GATE__BASELINES": "popularity",
    "PRISMREC_MATERIALIZE__TOP_K": "10",
    "PRISMREC_MATERIALIZE__SIMILAR_TOP_K": "5",
    # Every publication scores in child processes, as a large one does (from 20,000 users by default).
    "PRISMREC_MATERIALIZE__SCORE_PROCESS_MIN_USERS": "0",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_reachable(url: str = REDIS_URL) -> bool:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Service:
    """One long-running process of the stack, in its own process group, its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def tail(self, chars: int = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-chars:]


@dataclass
class LiveStack:
    """The running stack: URLs, the environment the services share, and helpers for tests."""

    root: Path
    airflow_url: str
    mlflow_url: str
    database_url: str  # PrismRec's app/reco database
    env: dict[str, str]  # what every service (and the command line) runs with
    services: list[Service] = field(default_factory=list)
    _token: str | None = None

    # --- Airflow REST API v2 -------------------------------------------------------------------
    def token(self) -> str:
        """A JWT from POST /auth/token (SimpleAuthManager's login)."""
        if self._token is None:
            answer = requests.post(f"{self.airflow_url}/auth/token", timeout=30,
                                   json={"username": ADMIN[0], "password": ADMIN[1]})
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.airflow_url}/api/v2{path}", timeout=60,
                                headers={"Authorization": f"Bearer {self.token()}", **(headers or {})}, **kwargs)

    def get(self, path: str, **params) -> dict:
        answer = self.api("GET", path, params=params)
        assert answer.status_code == 200, f"GET {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json()

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", order_by="run_after", limit=100)["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 600) -> dict:
        """Poll a DAG run until it ends; a failed run's report carries its task states."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            self.check_alive()
            assert time.monotonic() < deadline, f"{dag_id} run {run_id} still {run['state']} after {timeout_s:.0f} s"
            time.sleep(3)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """The text of a task instance's log (its last try) as the UI shows it."""
        instance = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        answer = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/"
                                 f"{instance['try_number']}", params={"full_content": True},
                          headers={"Accept": "application/json"})
        assert answer.status_code == 200, f"log of {task_id}: {answer.status_code} {answer.text[:500]}"
        content = answer.json()["content"]
        return "\n".join(line.get("event", "") if isinstance(line, dict) else str(line) for line in content)

    # --- MLflow REST API ------------------------------------------------------------------------
    def mlflow(self, path: str, **params) -> dict:
        answer = requests.get(f"{self.mlflow_url}/api/2.0/mlflow/{path}", params=params, timeout=30)
        assert answer.status_code == 200, f"MLflow {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json()

    # --- the command line -----------------------------------------------------------------------
    def prismrec(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """`prismrec ARGS` in a process of its own, with the stack's settings (plus `env`)."""
        return subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=self.env | (env or {}), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)

    # --- health and diagnostics -----------------------------------------------------------------
    def check_alive(self) -> None:
        dead = [s.name for s in self.services if not s.alive()]
        assert not dead, f"stack service(s) exited: {', '.join(dead)}"

    def log_tails(self, chars: int = 2500) -> str:
        return "\n".join(f"----- {s.name} ({s.log_path}) -----\n{s.tail(chars)}" for s in self.services)


def _with_database(url: str, name: str) -> str:
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def _databases(server_url: str, names: list[str]) -> Iterator[None]:
    """Create fresh databases on the test run's Postgres server; drop them (closing their connections) after."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'create database "{name}"'))
        yield
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def _wait(what: str, ready, services: list[Service], timeout_s: float) -> None:
    """Poll `ready()` until true; fail naming `what` if a service dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(requests.RequestException, OSError):
            if ready():
                return
        dead = [s for s in services if not s.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited while waiting for {what}:\n{dead[0].tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout_s:.0f} s")
        time.sleep(1)


def _health_ok(url: str) -> bool:
    return requests.get(url, timeout=3).status_code == 200


def _airflow_components_healthy(url: str) -> bool:
    health = requests.get(f"{url}/api/v2/monitor/health", timeout=3).json()
    return all((health.get(part) or {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))


def _workers_ready(services: list[Service]) -> bool:
    return all(" ready." in s.tail(20000) for s in services if s.name.startswith("celery-worker"))


@contextlib.contextmanager
def live_stack(root: Path, server_url: str, *, extra_env: dict[str, str] | None = None) -> Iterator[LiveStack]:
    """Start the whole stack under `root` on the Postgres server of `server_url`; stop it on exit."""
    from tasks.airflow_runtime import CeleryProfile, celery_environment
    from tasks.config import load_config

    prefix = f"live_{uuid.uuid4().hex[:8]}"
    names = {"airflow": f"{prefix}_airflow", "mlflow": f"{prefix}_mlflow", "prismrec": f"{prefix}_prismrec"}
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    home = root / "prismrec-home"
    api_port, mlflow_port = free_port(), free_port()
    airflow_url, mlflow_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{mlflow_port}"
    database_url = _with_database(server_url, names["prismrec"])

    passwords = root / "airflow-passwords.json"
    passwords.write_text(json.dumps({ADMIN[0]: ADMIN[1]}))
    # The queue is this stack's own, so workers of another stack on the same Redis never take its tasks.
    profile = CeleryProfile(metadata_url=_with_database(server_url, names["airflow"]), broker_url=REDIS_URL,
                            api_url=airflow_url, queue=prefix)
    config = load_config({"paths.home": str(home)}, environ={})
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PRISMREC_", "MLFLOW_"))}
    env = kept | shared_cache_env() | celery_environment(config, profile) | TINY_TRAINING | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PRISMREC_HOME": str(home),
        "PRISMREC_DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "PRISMREC_AIRFLOW_DATABASE_URL": profile.metadata_url,
        "PRISMREC_CELERY_BROKER_URL": profile.broker_url,
        "PRISMREC_CELERY_QUEUE": profile.queue,
        # The workers' way back to the REST API (the run's note with the gate's verdict).
        "PRISMREC_AIRFLOW_API_URL": airflow_url,
        "PRISMREC_AIRFLOW_USERNAME": ADMIN[0],
        "PRISMREC_AIRFLOW_PASSWORD": ADMIN[1],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN[0]}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": airflow_url,
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # A DAG file edited during the tests is parsed again within seconds, not minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        # The MLflow server's job runner (seven huey consumers) serves GenAI evaluation jobs PrismRec never sends.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    } | (extra_env or {})

    airflow = [str(BIN / "airflow")]
    services = [
        Service("mlflow-server", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                                  "--workers", "1", "--backend-store-uri", _with_database(server_url, names["mlflow"]),
                                  "--artifacts-destination", str(root / "mlartifacts"), "--serve-artifacts"],
                logs / "mlflow-server.log"),
        Service("api-server", [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(api_port)],
                logs / "api-server.log"),
        Service("scheduler", [*airflow, "scheduler"], logs / "scheduler.log"),
        Service("dag-processor", [*airflow, "dag-processor"], logs / "dag-processor.log"),
        Service("triggerer", [*airflow, "triggerer"], logs / "triggerer.log"),
    ]
    worker_env: dict[str, dict[str, str]] = {}
    for name in WORKERS:
        services.append(Service(name, [*airflow, "celery", "worker", "--celery-hostname", f"{name}@%h",
                                       "--queues", profile.queue, "--concurrency", "1"], logs / f"{name}.log"))
        worker_env[name] = {
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.live.worker_host.hostname",
            "PRISMREC_TEST_WORKER_NAME": name,
        }
    stack = LiveStack(root=root, airflow_url=airflow_url, mlflow_url=mlflow_url, database_url=database_url,
                      env=env, services=services)

    with _databases(server_url, list(names.values())):
        try:
            services[0].start(env)  # MLflow migrates its store while Airflow migrates its own
            migrate = subprocess.run([*airflow, "db", "migrate"], env=env, cwd=ROOT, capture_output=True,
                                     text=True, timeout=600, check=False)
            (logs / "airflow-db-migrate.log").write_text(migrate.stdout + migrate.stderr)
            if migrate.returncode != 0:
                raise RuntimeError(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
            for service in services[1:]:
                service.start(env | worker_env.get(service.name, {}))
            _wait("the Airflow api-server", lambda: _health_ok(f"{airflow_url}/api/v2/monitor/health"), services, 240)
            _wait("the MLflow server", lambda: _health_ok(f"{mlflow_url}/health"), services, 240)
            _wait("scheduler, triggerer and dag-processor", lambda: _airflow_components_healthy(airflow_url),
                  services, 240)
            _wait("the DAGs in the metadata DB", lambda: all(
                stack.api("GET", f"/dags/{dag}").status_code == 200 for dag in ("recsys_training", "recsys_materialize")),
                services, 240)
            _wait("both Celery workers", lambda: _workers_ready(services), services, 240)
            yield stack
        except BaseException:
            log.error("live stack failed; service logs:\n%s", stack.log_tails())
            raise
        finally:
            _stop(services)
            _forget_queue(profile.queue)


def _stop(services: list[Service], grace_s: float = 10) -> None:
    """SIGTERM every process group, then SIGKILL what is left after the grace period."""
    for service in services:
        service.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for service in services:
        if service.process is None:
            continue
        try:
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        service.signal(signal.SIGKILL)  # the group: a worker's forked task runners too
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=10)


def _forget_queue(queue: str) -> None:
    """Remove this stack's queue and its bindings from Redis (another stack's keys stay)."""
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        keys = [k for k in client.scan_iter(match=f"*{queue}*")]
        if keys:
            client.delete(*keys)
