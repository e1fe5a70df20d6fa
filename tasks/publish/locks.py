"""Taking the publisher's locks without making readers wait: a lock timeout, a few tries, a clear failure.

The swap needs ACCESS EXCLUSIVE on `reco.runs` for a few milliseconds, but it waits for every
reader already inside `reco` (a 90 s BI report holds its lock to the end), and every reader
that arrives meanwhile queues behind the swap. So each try waits at most
`materialize.swap_lock_timeout_ms` (which bounds a reader's wait too), gives way, and tries
again after 1, 2, 4 ... s; after `materialize.swap_attempts` tries the run fails with a
transient error naming who held the lock, the current set untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa

from tasks.config import MaterializeConfig
from tasks.db import quote_ident
from tasks.errors import PublishBlockedError

log = logging.getLogger(__name__)

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a statement cancelled by lock_timeout
MAX_BACKOFF_S = 30.0


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE


def backoff_seconds(attempt: int) -> float:
    """Pause after failed try `attempt` (1-based): 1, 2, 4 ... s, at most MAX_BACKOFF_S."""
    return min(2.0 ** (attempt - 1), MAX_BACKOFF_S)


def with_lock_timeout(conn: sa.Connection, settings: MaterializeConfig, schema: str, what: str,
                      action: Callable[[], None]) -> None:
    """Run `action` (statements on `conn`'s open transaction) in a savepoint under a lock timeout.

    A try that times out is rolled back to the savepoint, which releases the locks it took, so
    readers go on; the rest of the transaction (the run's new partitions) is kept for the next try.
    """
    timeout_ms = int(settings.swap_lock_timeout_ms)
    for attempt in range(1, settings.swap_attempts + 1):
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.text(f"set local lock_timeout = {timeout_ms}"))
            action()
        except sa.exc.OperationalError as exc:
            if not is_lock_timeout(exc):
                raise
            savepoint.rollback()
            holders, pids = lock_holders(conn, schema)
            if attempt == settings.swap_attempts:
                waited = sum(backoff_seconds(a) for a in range(1, attempt)) + attempt * timeout_ms / 1000
                raise PublishBlockedError(
                    f"{what} gave way to readers {attempt} times (waiting at most {timeout_ms} ms each, "
                    f"{waited:.0f} s in all) and stopped; the current set is untouched. "
                    f"{holders or 'Nobody held a lock on the published tables any more.'} Let that query finish "
                    f"or end it (select pg_cancel_backend({pids[0] if pids else '<pid>'})), then publish again "
                    f"(`prismrec materialize`); "
                    f"materialize.swap_attempts and materialize.swap_lock_timeout_ms set the patience"
                ) from None
            pause = backoff_seconds(attempt)
            log.warning("%s waited %d ms for a lock and gave way to readers (try %d of %d; %s); trying again in "
                        "%.0f s", what, timeout_ms, attempt, settings.swap_attempts, holders or "holder gone", pause)
            time.sleep(pause)
        else:
            savepoint.commit()
            return


def lock_holders(conn: sa.Connection, schema: str) -> tuple[str, list[int]]:
    """Who holds locks on the published tables (pid, application, user, for how long; '' if nobody), and their pids."""
    s = quote_ident(schema)
    rows = conn.execute(sa.text(f"""
        select a.pid, coalesce(nullif(a.application_name, ''), 'unnamed') as application, a.usename,
               extract(epoch from clock_timestamp() - a.xact_start)::int as seconds
        from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.granted and l.locktype = 'relation' and l.pid <> pg_backend_pid()
          and l.relation in (select c.oid from pg_class c where c.relnamespace = '{s}'::regnamespace)
        group by a.pid, a.application_name, a.usename, a.xact_start
        order by a.xact_start nulls last limit 3""")).all()
    if not rows:
        return "", []
    described = "; ".join(
        f"pid {r.pid} (application {r.application!r}, user {r.usename or 'hidden'}"
        + (f", in its transaction for {r.seconds} s)" if r.seconds is not None else ")") for r in rows)
    return f"Holding locks on {schema}: {described}.", [r.pid for r in rows]
