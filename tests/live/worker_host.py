"""The hostname a Celery worker of the test stack gives Airflow (`[core] hostname_callable`).

Both workers run on one machine, so the machine's name would not tell them apart; each is
started with PRISMREC_TEST_WORKER_NAME, which task instances then show as their host.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("PRISMREC_TEST_WORKER_NAME") or socket.getfqdn()
