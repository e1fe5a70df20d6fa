"""What every task of the DAGs shares: a user's error fails the task at once, without retries.

A PrismRecError (a bad setting or Param, bad source data, a refused snapshot, a missing
champion: tasks.errors) gives the same answer however often it runs, so `fail_fast` turns it
into Airflow's AirflowFailException with the same one-paragraph message the CLI prints: the
task ends failed on its first try instead of sitting in up_for_retry for the retry delays (and,
with max_active_runs=1, holding up the next run). Transient faults keep the task's retries: a
PrismRecError marked `transient` (Postgres did not answer) and every error that is not ours
(a dropped connection in the middle of a query, a killed process).

The DAG files import this module while Airflow parses them: Airflow is imported only when a
task fails, and nothing else here is heavy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tasks.errors import PrismRecError

log = logging.getLogger(__name__)

Task = TypeVar("Task", bound=Callable[..., Any])


def fail_fast(task_function: Task) -> Task:
    """Wrap a task's function (under `@task`): its non-transient PrismRecError fails the task without retry.

    The original error stays the AirflowFailException's `__cause__`, so an in-process run
    (tasks.airflow_runtime.run_dag) hands the project's own exception back to the CLI.
    """

    @functools.wraps(task_function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task_function(*args, **kwargs)
        except PrismRecError as exc:
            if exc.transient:
                raise
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc

    return run  # type: ignore[return-value]


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
