"""Run this project's Airflow DAGs in-process, on a fresh machine, with nothing but the venv.

Airflow reads its configuration (home, DAGs folder, metadata DB, logging) once, when
`airflow` is first imported, so `configure_airflow` sets the environment *before* that
import and must be the first thing that touches Airflow in a process. The metadata DB is a
project-local SQLite file (never a deployment's shared one, whose scheduler would run the
same DagRun too), migrated once and remembered with a stamp file so later runs start fast.

`run_dag` uses `DAG.test()`: the same scheduling loop and task runner as production, without
a scheduler or workers. An interactive run fails fast (task retries are turned off: the
production retry delay would make the command hang for minutes), and a failed run raises the
task's own project error (e.g. `DataQualityError`) so the CLI can print its message. A training
run's note is the model gate's verdict, so the UI shows a refusal on a run that is green. The
UI shows such a run as it happened: its real start (DAG.test() starts a run "at" its logical
date), the person who ran the command (triggered by the CLI, not "dag_test") and each task's log
(tasks.airflow_tasks.task_log).

`CeleryProfile` is the other way to run the same DAGs: Airflow as services (api-server,
scheduler, dag-processor, triggerer, Celery workers) sharing a Postgres metadata DB and a
broker, configured by `eval "$(python -m tasks.airflow_runtime --celery)"` (docs/live-stack.md).
The in-process runs above never use it: they keep their private SQLite file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.airflow_tasks import TASK_LOG_FOLDER_ENV, TASK_LOG_TEMPLATE_ENV, project_error
from tasks.config import PROJECT_ROOT, PipelineConfig, load_config
from tasks.errors import ConfigError, PrismRecError, first_cause, one_line
from tasks.redact import known_secrets, redact_text

log = logging.getLogger(__name__)

DAGS_FOLDER = PROJECT_ROOT / "dags"

# In-process runs show our own progress lines and Airflow's per-task start/end lines, not
# Airflow's internals. `task=CRITICAL` hides the task runner's traceback of a failed task:
# project errors are re-raised with their message, anything else is logged once, by us.
_QUIET_NAMESPACES = (
    "airflow=WARNING airflow.sdk.definitions.dag=INFO task=CRITICAL "
    "py.warnings=ERROR alembic=WARNING sqlalchemy=WARNING httpx=WARNING"
)

_configured_home: Path | None = None


@dataclasses.dataclass(frozen=True)
class DagRunResult:
    """What an in-process DAG run did: its identity, final state and each task's XCom value."""

    dag_id: str
    run_id: str
    state: str
    logical_date: datetime | None
    task_states: dict[str, str]
    xcoms: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["logical_date"] = self.logical_date.isoformat() if self.logical_date else None
        return out


def airflow_environment(config: PipelineConfig) -> dict[str, str]:
    """The environment variables that point Airflow at this project (also used by `make airflow-ui`)."""
    home = config.paths.airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Sized for a laptop (`make airflow-ui`): LocalExecutor forks `parallelism` workers at start,
        # 32 idle ones (1.7 GiB) by default; these DAGs run at most a few tasks at once.
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": os.environ.get(
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES", "1"),  # two DAG files
        # Always a private SQLite file: a DagRun that DAG.test() creates in a shared metadata DB
        # would also be picked up by that deployment's scheduler and run twice.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": os.environ.get(
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS", _QUIET_NAMESPACES
        ),
    }


PROFILE_ENV = {
    "metadata_url": "PRISMREC_AIRFLOW_DATABASE_URL",
    "broker_url": "PRISMREC_CELERY_BROKER_URL",
    "result_backend": "PRISMREC_CELERY_RESULT_BACKEND",
    "api_url": "PRISMREC_AIRFLOW_API_URL",
    "queue": "PRISMREC_CELERY_QUEUE",
}


@dataclasses.dataclass(frozen=True)
class CeleryProfile:
    """Airflow as services with CeleryExecutor: where the components meet (docs/live-stack.md).

    Every component (api-server, scheduler, dag-processor, triggerer, `airflow celery worker`)
    starts with the same `celery_environment`, so they share the metadata DB, the broker, the
    queue and the API server the workers' task runners report to.
    """

    # Airflow's own Postgres database (never the one holding app and reco): the scheduler and the
    # workers run at once, which SQLite cannot serve.
    metadata_url: str
    # The broker that hands queued tasks to the workers (the machine's Redis by default).
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Where Celery keeps task states; None: a `db+` URL of the metadata DB (nothing else to run).
    result_backend: str | None = None
    # The api-server: the UI and REST v2, and the Execution API the workers' task runners call.
    api_url: str = "http://127.0.0.1:8080"
    # The Celery queue every task goes to and every worker reads (a pool of GPU workers would read its own).
    queue: str = "default"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CeleryProfile:
        """The profile set by PRISMREC_AIRFLOW_DATABASE_URL (required) and the other PROFILE_ENV variables."""
        env = os.environ if environ is None else environ
        values = {field: env[name].strip() for field, name in PROFILE_ENV.items() if (env.get(name) or "").strip()}
        if "metadata_url" not in values:
            raise ConfigError(
                "the Celery profile needs Airflow's own Postgres database: set PRISMREC_AIRFLOW_DATABASE_URL, "
                "e.g. postgresql://postgres@127.0.0.1:5432/airflow (create the database first); "
                "see docs/live-stack.md")
        return cls(**values)

    def sql_alchemy_conn(self) -> str:
        url = self.metadata_url
        if url.startswith(("postgres://", "postgresql://")):
            url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        if not url.startswith("postgresql"):
            raise ConfigError("PRISMREC_AIRFLOW_DATABASE_URL must be a PostgreSQL URL: the Celery profile runs "
                              "the scheduler and the workers at once, which SQLite cannot serve")
        return url


def celery_environment(config: PipelineConfig, profile: CeleryProfile) -> dict[str, str]:
    """`airflow_environment` for Airflow as services: CeleryExecutor, Postgres metadata DB, the broker."""
    conn = profile.sql_alchemy_conn()
    # The services keep Airflow's own logging (full task tracebacks in the UI), not the quiet
    # levels of an in-process run.
    shared = {name: value for name, value in airflow_environment(config).items()
              if not name.startswith("AIRFLOW__LOGGING__")}
    return shared | {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
        "AIRFLOW__CELERY__BROKER_URL": profile.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": profile.result_backend or "db+" + conn,
        # One task at a time per worker: a training task takes every core of its machine; more
        # workers (or more machines) run more tasks at once.
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": os.environ.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", "1"),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": profile.queue,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": profile.api_url.rstrip("/") + "/execution/",
    }


def configure_airflow(config: PipelineConfig | None = None) -> Path:
    """Point Airflow at `config.paths.airflow_home` and migrate its metadata DB; returns the home.

    Idempotent within a process. Raises ConfigError if Airflow was already imported with
    another home, because Airflow cannot be re-pointed once it has read its configuration.
    """
    global _configured_home
    config = config or load_config()
    env = airflow_environment(config)
    home = Path(env["AIRFLOW_HOME"])
    if _configured_home is not None:
        if _configured_home != home:
            raise ConfigError(
                f"Airflow is already set up in this process with home {_configured_home}; "
                f"cannot switch to {home}. Run one process per PrismRec home."
            )
        return home
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(home):
        raise ConfigError(
            f"Airflow was imported before PrismRec could point it at {home}; "
            "call tasks.airflow_runtime.configure_airflow() before importing airflow."
        )
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    # Airflow's log handler binds to sys.stdout when it is created; our logs belong on stderr.
    with contextlib.redirect_stdout(sys.stderr):
        import airflow
        import airflow.settings  # noqa: F401
    _apply_levels(env["AIRFLOW__LOGGING__NAMESPACE_LEVELS"])
    _migrate_once(home, env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    _configured_home = home
    return home


def _apply_levels(namespace_levels: str) -> None:
    """Airflow applies `namespace_levels` to its structlog loggers; do the same for stdlib ones."""
    for entry in namespace_levels.replace(",", " ").split():
        name, _, level = entry.partition("=")
        if name and level.upper() in logging.getLevelNamesMapping():
            logging.getLogger(name).setLevel(level.upper())


def _migrate_once(home: Path, db_url: str) -> None:
    """Create/upgrade the metadata DB unless this Airflow version already did it for this URL."""
    import airflow

    key = hashlib.sha256(f"{airflow.__version__} {db_url}".encode()).hexdigest()[:16]
    stamp = home / f".migrated-{key}"
    sqlite_file = Path(db_url.removeprefix("sqlite:///")) if db_url.startswith("sqlite:///") else None
    if stamp.exists() and (sqlite_file is None or sqlite_file.exists()):
        return
    with open(home / ".migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first runs at once must not migrate twice
        if stamp.exists() and (sqlite_file is None or sqlite_file.exists()):
            return
        from airflow.utils import db

        log.info("preparing the Airflow metadata DB in %s (first run only)", home)
        with contextlib.redirect_stdout(sys.stderr):
            db.initdb()
        stamp.touch()


def _load_dag(dag_id: str):
    """Parse only `dags/<dag_id>.py` (file name = dag_id) and return the DAG."""
    from airflow.dag_processing.dagbag import DagBag

    path = DAGS_FOLDER / f"{dag_id}.py"
    if not path.exists():
        known = sorted(p.stem for p in DAGS_FOLDER.glob("*.py"))
        raise ConfigError(f"no DAG {dag_id!r}; known DAGs: {', '.join(known)}")
    bag = DagBag(dag_folder=str(path))
    if bag.import_errors:
        raise PrismRecError(f"DAG file {path} does not import: {next(iter(bag.import_errors.values()))}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise PrismRecError(f"{path} does not define a DAG with dag_id {dag_id!r}")
    return dag


@contextlib.contextmanager
def _capture_failures(dag) -> Iterator[list[tuple[str, BaseException | None]]]:
    """Record (task_id, exception) of each failed task; disable retries for this in-process run."""
    failures: list[tuple[str, BaseException | None]] = []

    def on_failure(context: dict) -> None:
        raised = context.get("exception")
        exc = project_error(raised) or raised  # a task's PrismRecError arrives as its AirflowFailException
        task_id = context["ti"].task_id
        failures.append((task_id, exc))
        if exc is not None and not isinstance(exc, PrismRecError):  # the traceback only with --verbose/--debug
            log.error("task %s failed: %s", task_id, redact_text(one_line(first_cause(exc)), known_secrets()))
            log.debug("task %s failed", task_id, exc_info=exc)

    saved = {t.task_id: (list(t.on_failure_callback), t.retries) for t in dag.tasks}
    for t in dag.tasks:
        t.on_failure_callback = [*saved[t.task_id][0], on_failure]
        t.retries = 0
    try:
        yield failures
    finally:
        for t in dag.tasks:
            t.on_failure_callback, t.retries = saved[t.task_id]


def run_dag(
    dag_id: str,
    *,
    logical_date: datetime | None,
    conf: dict[str, Any] | None = None,
    config: PipelineConfig | None = None,
) -> DagRunResult:
    """Run DAG `dag_id` once, in this process, with run conf `conf` (the DAG's Params).

    `logical_date` None gives a manual run without one (the DAG falls back to `run_after`,
    i.e. now). Raises the failed task's PrismRecError, or a PrismRecError naming the task.
    """
    from tasks import run_lock

    with run_lock.hold(config or load_config(), dag_id):
        configure_airflow(config)
        dag = _load_dag(dag_id)
        log.info("running DAG %s in-process (logical date %s)", dag_id, logical_date or "none: now")
        started = datetime.now(UTC)
        with _capture_failures(dag) as failures, contextlib.redirect_stdout(sys.stderr), _task_logs():
            dag_run = dag.test(logical_date=logical_date, run_conf=conf or {})
        _show_as_cli_run(dag_run, started)
    result = _collect(dag_run)
    if not result.task_states:
        raise ConfigError(
            f"DAG {dag_id} created no tasks for logical date {logical_date}; "
            f"is it before the DAG's start_date ({dag.start_date:%Y-%m-%d})?"
        )
    if result.state != "success":
        for task_id, exc in failures:
            if isinstance(exc, PrismRecError):
                raise exc
        failed = failures[0] if failures else None
        if failed is not None:
            task_id, exc = failed
            detail = f": {redact_text(one_line(first_cause(exc)), known_secrets())}" if exc is not None else ""
            raise PrismRecError(f"DAG {dag_id} failed at task {task_id}{detail} (run {result.run_id})") from exc
        not_done = sorted(t for t, s in result.task_states.items() if s != "success")
        raise PrismRecError(
            f"DAG {dag_id} ended {result.state}; unfinished tasks: {', '.join(not_done) or 'none'} "
            f"(run {result.run_id})"
        )
    verdict = next((x["verdict"] for x in result.xcoms.values() if isinstance(x, dict) and x.get("verdict")), None)
    if verdict:
        _set_note(dag_run, verdict)
    log.info("DAG %s run %s finished: %s", dag_id, result.run_id, result.state)
    return result


@contextlib.contextmanager
def _task_logs() -> Iterator[None]:
    """Tasks of this in-process run write their logs where the UI reads them (Airflow's base_log_folder,
    under its log_filename_template)."""
    from airflow.configuration import conf

    settings = {TASK_LOG_FOLDER_ENV: conf.get("logging", "base_log_folder"),
                TASK_LOG_TEMPLATE_ENV: conf.get("logging", "log_filename_template")}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _show_as_cli_run(dag_run, started: datetime) -> None:
    """The run as the UI should show it: started when the command started it (DAG.test() uses the
    logical date, a bar of decades for a replay), triggered from the command line by this user."""
    import getpass

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType

    with create_session() as session:
        run = session.get(DagRun, dag_run.id)
        if run is not None:
            run.start_date = started
            run.triggered_by = DagRunTriggeredByType.CLI
            run.triggering_user_name = f"{getpass.getuser()} (prismrec CLI)"


def _set_note(dag_run, text: str) -> None:
    """Show `text` as the run's note in the Airflow UI (the model gate's verdict: a refused gate
    still ends in a green run). A task cannot set its own run's note in Airflow 3, so the
    in-process runner does it here, in the metadata DB the UI reads."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.get(DagRun, dag_run.id)
        if run is not None:
            run.note = text[:1000]  # the column's length


def _collect(dag_run) -> DagRunResult:
    """Task states and XCom return values of a finished run, read back from the metadata DB."""
    states: dict[str, str] = {}
    xcoms: dict[str, Any] = {}
    for ti in dag_run.get_task_instances():
        states[ti.task_id] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
        if states[ti.task_id] == "success":
            xcoms[ti.task_id] = ti.xcom_pull(task_ids=ti.task_id)
    state = dag_run.state
    return DagRunResult(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        state=str(state.value if hasattr(state, "value") else state),
        logical_date=dag_run.logical_date,
        task_states=states,
        xcoms=xcoms,
    )


def _print_shell_exports(celery: bool = False) -> None:
    """`eval "$(python -m tasks.airflow_runtime)"`: this project's Airflow settings, for `airflow` commands.

    With `--celery`, the services' settings (CeleryProfile from the environment); the metadata DB
    is then migrated by `airflow db migrate`, once, before the components start.
    """
    import shlex

    config = load_config()
    if celery:
        env = celery_environment(config, CeleryProfile.from_env())
    else:
        configure_airflow(config)  # the metadata DB must exist before `airflow standalone` reads it
        env = airflow_environment(config)
    for name, value in env.items():
        if name.startswith("AIRFLOW__LOGGING__"):
            continue  # the servers keep Airflow's own logging (full task tracebacks in the UI)
        sys.stdout.write(f"export {name}={shlex.quote(value)}\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        _print_shell_exports(celery="--celery" in sys.argv[1:])
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(1)
