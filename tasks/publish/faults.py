"""Fault points: where the fault-injection suite (tests/integration/publish/test_faults.py) stops a publisher."""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

FAULT_PAUSE = "PRISMREC_FAULT_PAUSE"  # a phase name: the fault-injection tests stop a publisher there


def fault_point(phase: str) -> None:
    """With PRISMREC_FAULT_PAUSE set to `phase`, log it and wait PRISMREC_FAULT_PAUSE_S seconds (an hour:
    until killed), then go on. Phases: started, score (in a scoring process), copy, before_swap."""
    if os.environ.get(FAULT_PAUSE) == phase:
        log.warning("fault point: paused at %s (%s is set)", phase, FAULT_PAUSE)
        time.sleep(float(os.environ.get(f"{FAULT_PAUSE}_S", "3600")))
