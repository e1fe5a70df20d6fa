"""Which task failures keep their retries: transient faults do, a user's error does not.

Without Airflow: only the errors that keep their retries are raised here (the AirflowFailException
of the others is checked on a real DAG run in tests/dags/test_task_failures.py).
"""

from __future__ import annotations

import json
import logging

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


def test_task_log_paths_follow_the_deployments_log_filename_template(tmp_path):
    from types import SimpleNamespace

    from tasks.airflow_tasks import task_log_path

    ti = SimpleNamespace(dag_id="recsys_training", run_id="manual__1", task_id="train", map_index=-1, try_number=2)
    mapped = SimpleNamespace(**{**vars(ti), "map_index": 3})
    # Airflow's default layout (what the UI reads unless a deployment changes it); map_index only where mapped.
    assert task_log_path(tmp_path, ti) == tmp_path / "dag_id=recsys_training/run_id=manual__1/task_id=train/attempt=2.log"
    assert task_log_path(tmp_path, mapped).parent.name == "map_index=3"
    custom = "{{ ti.dag_id }}/{{ ts[:10] }}/{{ ti.task_id }}.{{ try_number }}.log"
    assert task_log_path(tmp_path, ti, custom, ts="1998-04-23T00:00:00+00:00") == (
        tmp_path / "recsys_training/1998-04-23/train.2.log")
    assert task_log_path(tmp_path, ti, "{dag_id}/{task_id}/{logical_date}/{try_number}.log", ts="1998-04-23") == (
        tmp_path / "recsys_training/train/1998-04-23/2.log")


def test_a_task_log_that_cannot_be_written_never_fails_the_task(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from tasks.airflow_tasks import TASK_LOG_FOLDER_ENV, TASK_LOG_TEMPLATE_ENV, task_log

    ti = SimpleNamespace(dag_id="recsys_training", run_id="manual__1", task_id="train", map_index=-1, try_number=1)
    monkeypatch.setenv(TASK_LOG_FOLDER_ENV, str(tmp_path))
    # A template that does not render: the log goes to Airflow's default layout, with a warning naming the fix.
    monkeypatch.setenv(TASK_LOG_TEMPLATE_ENV, "{{ ti.dag_id }/{{ nope(")
    with caplog.at_level("WARNING"), task_log(ti) as handler:
        assert handler is not None
        logging.getLogger("tasks.training").warning("a line")
    default = tmp_path / "dag_id=recsys_training/run_id=manual__1/task_id=train/attempt=1.log"
    assert json.loads(default.read_text().splitlines()[-1])["event"] == "a line"
    assert "does not render" in caplog.text and "log_filename_template" in caplog.text
    # A folder that cannot be written (a file stands where the log's folder goes): no file log, the task goes on.
    monkeypatch.delenv(TASK_LOG_TEMPLATE_ENV)
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    monkeypatch.setenv(TASK_LOG_FOLDER_ENV, str(blocked))
    caplog.clear()
    with caplog.at_level("WARNING"), task_log(ti) as handler:
        assert handler is None
    assert "cannot write the task log" in caplog.text
