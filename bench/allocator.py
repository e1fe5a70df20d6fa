"""Run a benchmark under the training processes' memory allocator, so its in-process baselines race fairly."""

from __future__ import annotations

import logging
import os
import sys

from tasks.training.launcher import allocator_env

log = logging.getLogger(__name__)


def reexec_under_allocator(choice: str, module: str, argv: list[str] | None) -> None:
    """Run `python -m module argv` again, in place of this process, under the training allocator.

    For the benchmarks: the baselines train and every model is scored in the benchmark's own
    process, so it gets the allocator PrismRec's training processes get, and the race is fair.
    Does nothing when called with explicit argv (from code, not the command line) or when this
    process already has it."""
    extra = allocator_env(choice, dict(os.environ)) if argv is None else {}
    if extra:
        log.info("re-running under %s", extra)
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], {**os.environ, **extra})

