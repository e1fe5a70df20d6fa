"""Helpers shared by the per-table suites (kept out of __init__ so the package also imports as a namespace)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
from great_expectations.expectations.metadata_types import FailureSeverity

from tasks.errors import ConfigError

# Severity is GX's own field; tolerant checks later become WARNING (often with `mostly`).
BLOCKING = FailureSeverity.CRITICAL
TOLERANT = FailureSeverity.WARNING

# A non-whitespace character anywhere: rejects "", "   " and "\t" but accepts any real text.
NOT_BLANK_REGEX = r"\S"


def rule(why: str, severity: FailureSeverity = BLOCKING) -> dict:
    """Keyword arguments shared by every expectation: the reason and how bad a failure is."""
    return {"notes": why, "severity": severity, "meta": {"why": why}}


def utc(moment: datetime | str) -> datetime:
    """A plain tz-aware UTC datetime (naive input is taken as UTC; pendulum is unwrapped)."""
    try:
        stamp = pd.Timestamp(moment)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{moment!r} is not a date; set quality.earliest_event / the logical date as YYYY-MM-DD"
        ) from None
    stamp = stamp.tz_localize(timezone.utc) if stamp.tzinfo is None else stamp.tz_convert(timezone.utc)
    return stamp.to_pydatetime()
