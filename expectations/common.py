"""Helpers shared by the per-table suites (kept out of __init__ so the package also imports as a namespace)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.expectations.metadata_types import FailureSeverity


class SuiteSettingError(ValueError):
    """A threshold handed to a suite cannot work; the pipeline reports it as a configuration error."""


class QualitySettings(Protocol):
    """The thresholds the suites read (the pipeline passes its `quality` settings)."""

    earliest_event: str
    min_interactions: int
    min_items: int
    min_users: int
    max_rejected_share: float
    max_duplicate_share: float
    volume_min_ratio: float
    volume_max_ratio: float
    max_event_age_days: int | None


# Blocking checks fail the run on any violation; tolerant ones carry GX's `mostly`: their
# offending rows are left out of the snapshot, and the run fails only past the threshold.
BLOCKING = FailureSeverity.CRITICAL
TOLERANT = FailureSeverity.WARNING

# A non-whitespace character anywhere: rejects "", "   " and "\t" but accepts any real text.
NOT_BLANK_REGEX = r"\S"

# Logical column types, checked on the pandas dtypes by `dtype_problems`: GX 1.24's
# expect_column_values_to_be_in_type_list does not recognise pandas 3's `str` dtype nor a
# tz-aware datetime, so this one check is plain pandas.
INTEGER, FLOAT, TEXT, TIMESTAMP = "integer", "float", "text", "UTC timestamp"
_DTYPE_CHECKS = {
    INTEGER: pd.api.types.is_integer_dtype,
    FLOAT: pd.api.types.is_float_dtype,
    TEXT: lambda dtype: pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype),
    TIMESTAMP: lambda dtype: isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC",
}


def rule(why: str, severity: FailureSeverity = BLOCKING) -> dict:
    """Keyword arguments shared by every blocking expectation: the reason and how bad a failure is."""
    return {"notes": why, "severity": severity, "meta": {"why": why}}


def tolerant(why: str, max_share: float) -> dict:
    """A tolerant expectation: up to `max_share` of the rows may violate it (they are rejected)."""
    if not 0.0 <= max_share < 1.0:
        raise SuiteSettingError(f"a tolerated share must be in [0, 1), got {max_share}; fix quality.max_*_share")
    return rule(why, TOLERANT) | {"mostly": 1.0 - max_share}


def columns_present(columns: Mapping[str, str], what: str) -> gxe.Expectation:
    """All contract columns present; extra columns are fine."""
    return gxe.ExpectTableColumnsToMatchSet(
        column_set=list(columns), exact_match=False, **rule(f"{what} reads these columns; extra columns are fine"),
    )


def dtype_problems(frame: pd.DataFrame, columns: Mapping[str, str]) -> dict[str, str]:
    """`{column: "int64, expected UTC timestamp"}` for each present column of the wrong type."""
    return {
        column: f"{frame[column].dtype}, expected {kind}"
        for column, kind in columns.items()
        if column in frame.columns and not _DTYPE_CHECKS[kind](frame[column].dtype)
    }


def row_count(table: str, config: QualitySettings, minimum: int, previous: int | None) -> gxe.Expectation:
    """At least `minimum` rows and, after a successful run, within the volume band around its count."""
    low, high = minimum, None
    why = f"so few {table} means the extraction, not the business, went wrong"
    if previous:
        low = max(minimum, int(previous * config.volume_min_ratio))
        high = int(previous * config.volume_max_ratio)
        why += (f"; the last successful snapshot had {previous:,}, and a jump outside "
                f"x{config.volume_min_ratio:g}..x{config.volume_max_ratio:g} means a broken extraction")
    kwargs = rule(why) | {"meta": {"why": why, "previous": previous}}
    return gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=high, **kwargs)


def utc(moment: datetime | str) -> datetime:
    """A plain tz-aware UTC datetime (naive input is taken as UTC; pendulum is unwrapped)."""
    try:
        stamp = pd.Timestamp(moment)
    except (TypeError, ValueError):
        raise SuiteSettingError(
            f"{moment!r} is not a date; set quality.earliest_event / the logical date as YYYY-MM-DD"
        ) from None
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()
