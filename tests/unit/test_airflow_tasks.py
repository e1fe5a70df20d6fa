"""Which task failures keep their retries: transient faults do, a user's error does not.

Without Airflow: only the errors that keep their retries are raised here (the AirflowFailException
of the others is checked on a real DAG run in tests/dags/test_task_failures.py).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tasks.airflow_tasks import fail_fast, project_error
from tasks.errors import ConfigError, DataQualityError, PrismRecError, ServiceUnavailableError


def failing(exc: BaseException):
    @fail_fast
    def extract(**context) -> dict:
        raise exc

    return extract


def test_transient_faults_keep_their_retries():
    down = ServiceUnavailableError("cannot connect to Postgres at postgresql://db/app")
    with pytest.raises(ServiceUnavailableError) as raised:
        failing(down)(params={})
    assert raised.value is down
    dropped = sa.exc.OperationalError("select 1", {}, Exception("server closed the connection"))
    with pytest.raises(sa.exc.OperationalError):
        failing(dropped)()


def test_only_transient_project_errors_are_marked_so():
    assert ServiceUnavailableError.transient and issubclass(ServiceUnavailableError, ConfigError)
    assert not any(kind.transient for kind in (PrismRecError, ConfigError, DataQualityError))


def test_a_wrapped_task_keeps_its_name_and_result():
    @fail_fast
    def register(snapshot: dict, **context) -> dict:
        """Record the candidate."""
        return {"version": "3", **snapshot}

    assert (register.__name__, register.__doc__) == ("register", "Record the candidate.")
    assert register({"run_key": "r"}, params={}) == {"version": "3", "run_key": "r"}


def test_the_project_error_is_found_behind_its_wrapper():
    refused = DataQualityError("data-quality gate failed")
    try:
        raise RuntimeError(str(refused)) from refused
    except RuntimeError as wrapper:
        assert project_error(wrapper) is refused
    assert project_error(refused) is refused
    assert project_error(KeyError("x")) is None and project_error(None) is None
