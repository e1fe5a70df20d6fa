"""How much memory a training run holds, and the guard that stops it before the kernel would.

The launcher watches the whole `torchrun` process tree (the launcher process and its workers) and
adds up their proportional set sizes (Pss: shared pages such as the libraries count once). When
the sum passes train.max_memory_gb it stops the run and says so in one paragraph, instead of the
kernel's out-of-memory killer ending it with nothing in the log.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

log = logging.getLogger(__name__)

# train.max_memory_gb unset: this share of the machine's memory (or of the cgroup's limit, when a
# container has one), leaving the rest to the Airflow worker, Postgres and the page cache.
DEFAULT_SHARE = 0.75
GB = 1e9


def machine_memory_bytes() -> int:
    """Memory this process may use: MemTotal, or a cgroup v2/v1 limit when that is lower."""
    total = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE).group(1)) * 1024
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_limit_gb() -> float:
    """train.max_memory_gb when unset: DEFAULT_SHARE of machine_memory_bytes(), in GB."""
    return round(machine_memory_bytes() * DEFAULT_SHARE / GB, 1)


def descendants(root: int) -> list[int]:
    """The processes below `root` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after the name, which may hold spaces
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def started_at(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, /proc's field 22): with the pid, names one process even
    after the pid is reused. None once it has ended or is a zombie (ended, not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def command_line(pid: int) -> str:
    """The command line of `pid` ('' once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def status_mib(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of process `pid` in MiB, or None once it has ended."""
    try:
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE))
    except OSError:
        return None
    return (int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024) if len(fields) == 2 else None


def pss_bytes(pid: int) -> int:
    """The proportional set size of `pid` (0 once it has ended); its VmRSS where smaps_rollup is unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        return int(re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024
    except (OSError, AttributeError):
        reading = status_mib(pid)
        return int(reading[0] * 1024 * 1024) if reading else 0


def tree_bytes(root: int) -> int:
    """Memory held by `root` and every process below it (the sum of their Pss)."""
    return sum(pss_bytes(pid) for pid in [root, *descendants(root)])


class MemoryGuard:
    """While a training run goes on: reads its process tree's memory every `interval` seconds and
    calls `stop` once it passes `limit_gb` (then `tripped` holds the GB reached). `peak_gb` is the
    largest reading.

    If the root (torchrun) ends while processes it started live on (the kernel's out-of-memory killer
    took torchrun, say), the guard kills them: orphaned, a worker would train to its last epoch, holding
    its memory and the task's log open, for a run that has already failed. `orphans_stopped` lists them."""

    def __init__(self, root: int, limit_gb: float, stop: Callable[[], None], interval: float = 2.0):
        self.root, self.limit_gb, self._stop_run, self.interval = root, limit_gb, stop, interval
        self.peak_gb = 0.0
        self.tripped: float | None = None
        self.orphans_stopped: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="training memory guard", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        below: dict[int, str] = {}  # the root's descendants at the last reading, with their start times
        while not self._done.wait(self.interval):
            if started_at(self.root) is None:
                self._stop_orphans(below)
                return
            below = {pid: start for pid in descendants(self.root) if (start := started_at(pid)) is not None}
            used = sum(pss_bytes(pid) for pid in [self.root, *below]) / GB  # tree_bytes, from this one /proc scan
            self.peak_gb = max(self.peak_gb, used)
            if used > self.limit_gb and self.tripped is None:
                self.tripped = used
                log.error("training holds %.1f GB, over train.max_memory_gb = %.1f: stopping it", used, self.limit_gb)
                self._stop_run()
                return

    def _stop_orphans(self, below: dict[int, str]) -> None:
        alive = [pid for pid, start in below.items() if started_at(pid) == start]
        if not alive:
            return
        log.error("torchrun ended while %d of its processes still ran (pids %s): stopping them",
                  len(alive), ", ".join(map(str, alive)))
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            self.orphans_stopped.append(pid)
