"""One in-process run per PrismRec home and DAG at a time: a second `prismrec materialize` (or train) is refused.

Two in-process runs of the same DAG in one home share Airflow's SQLite metadata database, the
run folders and the champion; they used to break each other with pages of tracebacks. The lock
is an exclusive `flock` on `<home>/locks/<dag_id>.lock`, which the kernel releases when its
process ends however it ends (kill -9 included), so a stale lock cannot outlive its run. The
file says who holds it (pid, since when) for the refusal's message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tasks.config import PipelineConfig
from tasks.errors import RunInProgressError


def lock_path(config: PipelineConfig, dag_id: str) -> Path:
    return config.paths.home / "locks" / f"{dag_id}.lock"


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    return f"since {holder.get('since', 'an unknown time')}, pid {holder.get('pid', 'unknown')}"


@contextlib.contextmanager
def hold(config: PipelineConfig, dag_id: str) -> Iterator[None]:
    """Hold the lock of `dag_id` in this home while the block runs; RunInProgressError at once if taken."""
    path = lock_path(config, dag_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgressError(
                f"another {dag_id} run is in progress in {config.paths.home} ({_holder(path)}); wait for it to "
                f"finish, or stop that process, then run this again; nothing was changed") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(),
                                  "since": datetime.now(UTC).isoformat(timespec="seconds")}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
