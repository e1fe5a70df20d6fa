"""How the quality gate quotes offending values: samples, numbers and table-level details."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd


def sample_values(result: dict, frame: pd.DataFrame, column: str | None, identifying: tuple[str, ...],
                  size: int) -> list[str]:
    """Distinct offending values; a null or blank value is shown with the keys of its row."""
    values = result.get("partial_unexpected_list") or []
    rows = result.get("partial_unexpected_index_list") or [None] * len(values)
    sample: list[str] = []
    for value, row in zip(values, rows):
        text = format_value(value)
        if _uninformative(value) and isinstance(row, (int, np.integer)) and row in frame.index:
            keys = [f"{c}={format_value(frame.at[row, c])}" for c in identifying if c != column and c in frame.columns]
            text += f" ({', '.join(keys) if keys else f'row {row}'})"
        if text not in sample:
            sample.append(text)
        if len(sample) >= size:
            break
    return sample


def _is_null(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _uninformative(value: Any) -> bool:
    return _is_null(value) or (isinstance(value, str) and not value.strip())


def format_value(value: Any) -> str:
    """A value as a person would type it back into a query: quoted text, ISO times, `null`."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):  # a compound key
        return "(" + ", ".join(f"{k}={format_value(v)}" for k, v in value.items()) + ")"
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if _is_null(value):
        return "null"
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if isinstance(value, str):
        return repr(value)
    return str(value)


def percent(value: float) -> str:
    """Two significant digits without scientific notation: 0.003%, 0.059%, 33%."""
    return np.format_float_positional(value, precision=2, unique=False, fractional=False, trim="-") + "%"


def exception_text(exception: dict) -> str | None:
    """GX's caught exception for an expectation it could not evaluate, or None."""
    if exception.get("raised_exception"):
        return f"GX could not evaluate it: {exception.get('exception_message')}"
    for info in exception.values():  # some GX versions key exceptions by metric id
        if isinstance(info, dict) and info.get("raised_exception"):
            return f"GX could not evaluate it: {info.get('exception_message')}"
    return None


def describe_table_detail(expectation: str, kwargs: dict, result: dict) -> str | None:
    """What a table-level expectation observed: a row count, a newest event, missing columns, a type."""
    observed = result.get("observed_value")
    if expectation == "expect_table_row_count_to_be_between":
        bounds = f"at least {kwargs.get('min_value'):,}"
        if kwargs.get("max_value") is not None:
            bounds = f"between {kwargs['min_value']:,} and {kwargs['max_value']:,}"
        text = f"{observed or 0:,} rows, expected {bounds}"
        previous = (kwargs.get("meta") or {}).get("previous")
        return text + (f" (the last successful snapshot had {previous:,})" if previous else "")
    if expectation == "expect_column_max_to_be_between":
        return (f"newest is {format_value(observed)}, expected no earlier than "
                f"{format_value(kwargs.get('min_value'))} (a stale source, or a logical date past the data: "
                "pass one just after the newest event, or raise quality.max_event_age_days)")
    if expectation == "expect_column_values_to_be_in_type_list":
        return f"type is {observed}, expected one of {', '.join(kwargs.get('type_list') or [])}"
    mismatched = (result.get("details") or {}).get("mismatched") or {}
    if mismatched.get("missing"):
        return f"missing columns {', '.join(mismatched['missing'])}"
    return None
