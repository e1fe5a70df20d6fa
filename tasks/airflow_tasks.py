"""What every task of the DAGs shares: a user's error fails the task at once, without retries.

A PrismRecError (a bad setting or Param, bad source data, a refused snapshot, a missing
champion: tasks.errors) gives the same answer however often it runs, so `fail_fast` turns it
into Airflow's AirflowFailException with the same one-paragraph message the CLI prints: the
task ends failed on its first try instead of sitting in up_for_retry for the retry delays (and,
with max_active_runs=1, holding up the next run). Transient faults keep the task's retries: a
PrismRecError marked `transient` (Postgres did not answer) and every error that is not ours
(a dropped connection in the middle of a query, a killed process).

An in-process run (`prismrec train`, tasks.airflow_runtime.run_dag) has no task supervisor to
write the task logs the Airflow UI shows, so there `fail_fast` also writes each task's log lines
(the project's progress, and the failure's message) into Airflow's log folder, in the file and
JSON-lines form the UI reads (TASK_LOG_FOLDER_ENV names the folder and TASK_LOG_TEMPLATE_ENV the
deployment's log_filename_template; services leave them unset).

The DAG files import this module while Airflow parses them: Airflow is imported only inside a
running task (a failure, an in-process run's log path), and nothing else here is heavy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tasks.errors import PrismRecError

log = logging.getLogger(__name__)

Task = TypeVar("Task", bound=Callable[..., Any])

TASK_LOG_FOLDER_ENV = "PRISMREC_TASK_LOG_FOLDER"  # set by in-process runs: Airflow's base_log_folder
TASK_LOG_TEMPLATE_ENV = "PRISMREC_TASK_LOG_TEMPLATE"  # and its log_filename_template


def fail_fast(task_function: Task) -> Task:
    """Wrap a task's function (under `@task`): its non-transient PrismRecError fails the task without retry.

    The original error stays the AirflowFailException's `__cause__`, so an in-process run
    (tasks.airflow_runtime.run_dag) hands the project's own exception back to the CLI.
    """

    @functools.wraps(task_function)
    def run(*args: Any, **kwargs: Any) -> Any:
        with task_log(kwargs.get("ti"), kwargs.get("ts") or "") as file_log:
            try:
                return task_function(*args, **kwargs)
            except PrismRecError as exc:
                if file_log is not None:  # the console gets the message once, from the CLI
                    file_log.line("error", str(exc), log.name)
                if exc.transient:
                    raise
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(str(exc)) from exc

    return run  # type: ignore[return-value]


def task_log_path(folder: Path, ti: Any, template: str | None = None, ts: str = "") -> Path:
    """Where the Airflow UI reads a task try's log: `template` ([logging] log_filename_template, which a
    deployment may customise; None: this process's Airflow setting) rendered as Airflow renders it, with
    the task instance, the run's logical date (`ts`, ISO) and the try number."""
    from airflow.utils.helpers import parse_template_string, render_template

    if template is None:
        from airflow.configuration import conf

        template = conf.get("logging", "log_filename_template")
    text, jinja = parse_template_string(template)
    if jinja is not None:
        name = render_template(jinja, {"ti": ti, "ts": ts, "try_number": ti.try_number}, native=False)
    else:  # a str.format template, as Airflow 1 wrote them
        name = text.format(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, logical_date=ts,
                           try_number=ti.try_number, data_interval_start="", data_interval_end="")
    return folder / name


class _JsonLines(logging.Handler):
    """Log records as the JSON lines Airflow 3's task logs hold (timestamp, level, event, logger)."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = path.open("a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.line(record.levelname.lower(), record.getMessage(), record.name, record.created)
        except (OSError, ValueError, TypeError):  # a log line must never fail the task
            self.handleError(record)

    def line(self, level: str, event: str, logger: str, created: float | None = None) -> None:
        stamp = datetime.fromtimestamp(created, UTC) if created is not None else datetime.now(UTC)
        self.stream.write(json.dumps({"timestamp": stamp.isoformat(), "level": level, "event": event,
                                      "logger": logger}) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()
        super().close()


def _open_task_log(folder: Path, ti: Any, template: str | None, ts: str) -> _JsonLines | None:
    """The task's log file, opened for appending. A log file never fails a task: a template that does not
    render falls back to Airflow's default layout, and a file that cannot be opened means no file log
    (the run's own output still has every line); either is logged as a warning saying what to fix."""
    import jinja2
    from airflow.configuration import conf

    if template is None:
        template = conf.get("logging", "log_filename_template")
    try:
        path = task_log_path(folder, ti, template, ts)
    except (jinja2.TemplateError, KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        default = conf.get_default_value("logging", "log_filename_template")
        log.warning("[logging] log_filename_template %r does not render (%s: %s); this task's log goes to "
                    "Airflow's default layout instead: fix the template in airflow.cfg or "
                    "AIRFLOW__LOGGING__LOG_FILENAME_TEMPLATE", template, type(exc).__name__, exc)
        path = task_log_path(folder, ti, default, ts)
    try:
        return _JsonLines(path)
    except OSError as exc:
        log.warning("cannot write the task log %s (%s); the Airflow UI will show no log for this try: make the "
                    "log folder writable by this user", path, exc)
        return None


@contextlib.contextmanager
def task_log(ti: Any, ts: str = "") -> Iterator[_JsonLines | None]:
    """In an in-process run, the task's log records also go to its Airflow log file (yielded; None elsewhere)."""
    folder = os.environ.get(TASK_LOG_FOLDER_ENV)
    if not folder or ti is None:
        yield None
        return
    handler = _open_task_log(Path(folder), ti, os.environ.get(TASK_LOG_TEMPLATE_ENV), ts)
    if handler is None:
        yield None
        return
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()


def project_error(exc: BaseException | None) -> PrismRecError | None:
    """The PrismRecError behind a task's failure (itself, or the cause `fail_fast` kept), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, PrismRecError):
            return exc
        exc, seen = exc.__cause__, seen + 1
    return None


def end_training_run(context: dict) -> None:
    """on_failure_callback of the tasks after `train` (evaluate, gate, register): the MLflow run that
    `train` opened ends FAILED instead of showing RUNNING forever. Runs after the last try only; a
    fault here is logged, never raised (the task has failed already, with its own message)."""
    try:
        trained = context["ti"].xcom_pull(task_ids="train")
        if trained:
            from tasks import pipeline
            from tasks.contracts import overrides_from_params

            pipeline.fail_training_run(overrides_from_params(context["params"]), trained)
    except Exception:  # a callback must not hide the task's own failure
        log.warning("could not end the training's MLflow run as FAILED", exc_info=True)


def note_verdict(context: dict, verdict: str | None) -> None:
    """Show the model gate's verdict as the run's note in the UI (a refused gate still ends in a
    green run), for runs the scheduler started: through the REST API of PRISMREC_AIRFLOW_API_URL
    (tasks run on workers that must not write Airflow's metadata DB). In-process runs (`prismrec
    train`) get their note from tasks.airflow_runtime.run_dag; a failure here is logged, not raised."""
    from tasks.registry.champion_events import AirflowApi, set_run_note

    api = AirflowApi.from_env()
    if not verdict or api is None:
        return
    try:
        if set_run_note(api, context["dag_run"].dag_id, context["run_id"], verdict):
            log.info("run note: %s", verdict)
    except Exception:  # the note is a courtesy; the registered version is what matters
        log.warning("could not write the gate's verdict as the run's note on %s", api.base_url, exc_info=True)
