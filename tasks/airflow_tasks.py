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
from collections.abc import Callable
from typing import Any, TypeVar

from tasks.errors import PrismRecError

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
