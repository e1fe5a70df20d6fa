"""One live stack (tests/live/stack.py) for every test in this folder, started once and always stopped.

A failed test's report ends with the tails of every service's log; the full logs stay in the
stack's folder under pytest's temporary directory.
"""

from __future__ import annotations

import pytest

from tests.live.stack import REDIS_URL, live_stack, redis_reachable


@pytest.fixture(scope="package")
def live(tmp_path_factory, database_url):
    """The running stack: Airflow services with two Celery workers, an MLflow server, fresh databases."""
    if not redis_reachable():
        pytest.skip(f"no Redis at {REDIS_URL} for the Celery broker (set PRISMREC_TEST_REDIS_URL)")
    with live_stack(tmp_path_factory.mktemp("live-stack"), database_url) as stack:
        yield stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    stack = getattr(item, "funcargs", {}).get("live")
    if report.failed and stack is not None:
        report.sections.append(("live stack: service log tails", stack.log_tails()))
