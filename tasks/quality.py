"""The data-quality gate: run the GX suites of `expectations/` on a Parquet snapshot.

`check_snapshot` always writes `snapshot_dir/quality_report.json` (GX's validation results
plus a summary) and raises `DataQualityError` naming every failed expectation, with sample
offending values, when a blocking one fails; nothing downstream may run on such a snapshot.
GX is imported inside the function so that importing this module (e.g. while Airflow parses
a DAG) stays cheap.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import PipelineConfig
from tasks.errors import DataQualityError

logger = logging.getLogger(__name__)

TABLES = ("items", "users", "interactions")
REPORT_NAME = "quality_report.json"


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words a person can act on."""

    table: str
    expectation: str
    column: str | None
    severity: str
    unexpected_count: int | None = None
    element_count: int | None = None
    unexpected_percent: float | None = None
    sample: list[str] = field(default_factory=list)
    detail: str | None = None  # table-level observation or the exception GX caught

    @property
    def blocking(self) -> bool:
        return self.severity == "critical"

    def describe(self) -> str:
        """`interactions: expect_column_values_to_be_in_set(item_id) failed for 3 of 100,003 rows (0.003%), e.g. 999999`."""
        text = f"{self.table}: {self.expectation}" + (f"({self.column})" if self.column else "") + " failed"
        if self.unexpected_count is not None and self.element_count is not None:
            text += f" for {self.unexpected_count:,} of {self.element_count:,} rows"
            if self.unexpected_percent is not None:
                text += f" ({_percent(self.unexpected_percent)})"
        if self.sample:
            text += ", e.g. " + ", ".join(self.sample)
        if self.detail:
            text += f": {self.detail}"
        return text if self.blocking else text + f" [{self.severity}, not blocking]"


@dataclass(frozen=True)
class QualityReport:
    """Outcome of the gate; `to_dict()` is small enough for XCom."""

    passed: bool
    counts: dict[str, int]
    evaluated: int
    failures: list[Failure]
    seconds: float
    report_path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "counts": dict(self.counts),
            "evaluated": self.evaluated,
            "failed": len(self.failures),
            "failures": [asdict(f) | {"message": f.describe()} for f in self.failures],
            "seconds": round(self.seconds, 3),
            "report_path": str(self.report_path),
        }

    def summary(self) -> str:
        """One line: `data quality: 9/9 expectations passed on 100,000 interactions, ...`."""
        sizes = ", ".join(f"{self.counts.get(t, 0):,} {t}" for t in ("interactions", "items", "users"))
        ok = self.evaluated - len(self.failures)
        line = f"data quality: {ok}/{self.evaluated} expectations passed on {sizes}"
        if self.failures:
            blocking = sum(f.blocking for f in self.failures)
            line += f" ({blocking} blocking, {len(self.failures) - blocking} tolerated failures)"
        return line


def check_snapshot(config: PipelineConfig, snapshot_dir: Path, logical_date: datetime) -> QualityReport:
    """Validate items, users and interactions of `snapshot_dir`; raise DataQualityError on failure."""
    started = time.perf_counter()
    snapshot_dir = Path(snapshot_dir)
    report_path = snapshot_dir / REPORT_NAME
    missing = [t for t in TABLES if not (snapshot_dir / f"{t}.parquet").is_file()]
    if missing:
        failures = [Failure(t, "file_exists", None, "critical", detail=f"{t}.parquet is missing") for t in missing]
        report = QualityReport(False, {}, len(TABLES), failures, time.perf_counter() - started, report_path)
        _write_report(report, {}, snapshot_dir, logical_date)
        raise DataQualityError(
            f"snapshot {snapshot_dir} is incomplete: {', '.join(m + '.parquet' for m in missing)} missing; "
            "re-run the extract task for this logical date",
            report.to_dict()["failures"],
        )

    frames = {t: pd.read_parquet(snapshot_dir / f"{t}.parquet") for t in TABLES}
    validations = _validate(config, frames, logical_date)
    failures = [
        failure
        for table, validation in validations.items()
        for failure in _failures(table, validation, frames[table], config.quality.sample_size)
    ]
    results = {table: validation.to_json_dict() for table, validation in validations.items()}
    report = QualityReport(
        passed=not any(f.blocking for f in failures),
        counts={t: len(df) for t, df in frames.items()},
        evaluated=sum(len(r["results"]) for r in results.values()),
        failures=failures,
        seconds=time.perf_counter() - started,
        report_path=report_path,
    )
    _write_report(report, results, snapshot_dir, logical_date)
    for failure in failures:
        logger.warning("%s", failure.describe())
    if not report.passed:
        schema = config.database.app_schema
        raise DataQualityError(
            f"data-quality gate failed on snapshot {snapshot_dir} (logical date {logical_date:%Y-%m-%d}): "
            f"{sum(f.blocking for f in failures)} of {report.evaluated} expectations failed:\n"
            + "\n".join(f"  - {f.describe()}" for f in failures)
            + f"\nFix the offending rows in {schema}.items / {schema}.users / {schema}.interactions "
            f"(or the settings quality.* if the thresholds are wrong) and re-run; details in {report_path}",
            report.to_dict()["failures"],
        )
    logger.info("%s (%.2fs)", report.summary(), report.seconds)
    return report


def _validate(config: PipelineConfig, frames: dict[str, pd.DataFrame], logical_date: datetime) -> dict[str, Any]:
    """Run each table's suite against its DataFrame in a throwaway, in-memory GX context."""
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:  # GX logs its import plumbing at INFO; keep task logs readable
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    from expectations import interactions, items, users

    def ids(table: str, column: str) -> list[int]:
        df = frames[table]
        return df[column].dropna().unique().tolist() if column in df.columns else []

    suites = {
        "items": items.build_suite(config),
        "users": users.build_suite(config),
        "interactions": interactions.build_suite(
            config, logical_date, item_ids=ids("items", "item_id"), user_ids=ids("users", "user_id")
        ),
    }
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )
    source = context.data_sources.add_pandas("snapshot")
    # SUMMARY keeps the first few unexpected values and their row labels, never full lists.
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": config.quality.sample_size}
    results: dict[str, Any] = {}
    for table in TABLES:
        batch_definition = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frames[table]})
        suite = context.suites.add(suites[table])
        results[table] = batch.validate(suite, result_format=result_format)
    return results


def _failures(table: str, validation: Any, frame: pd.DataFrame, sample_size: int) -> list[Failure]:
    """Turn GX's ExpectationSuiteValidationResult into Failures with sample offending values.

    The raw result (not its JSON form) keeps values typed: NaN for nulls, Timestamps for times.
    """
    from expectations import interactions, items, users

    identifying = {"items": items, "users": users, "interactions": interactions}[table].IDENTIFYING_COLUMNS
    failures = []
    for outcome in validation.results:
        if outcome.success:
            continue
        expectation = outcome.expectation_config
        kwargs = expectation.kwargs
        result = outcome.result or {}
        column = kwargs.get("column")
        unexpected, total = result.get("unexpected_count"), result.get("element_count")
        failures.append(Failure(
            table=table,
            expectation=expectation.type,
            column=column,
            severity=getattr(expectation.severity, "value", str(expectation.severity)),
            unexpected_count=unexpected,
            element_count=total,
            # Of all rows, not GX's share of non-null rows, so "3 of 100,003" and the % agree.
            unexpected_percent=100.0 * unexpected / total if unexpected is not None and total else None,
            sample=_sample(result, frame, column, identifying, sample_size),
            detail=_exception_text(outcome.exception_info or {})
            or _table_detail(expectation.type, kwargs, result),
        ))
    return failures


def _sample(result: dict, frame: pd.DataFrame, column: str | None, identifying: tuple[str, ...], size: int) -> list[str]:
    """Distinct offending values; a null or blank value is shown with the keys of its row."""
    values = result.get("partial_unexpected_list") or []
    rows = result.get("partial_unexpected_index_list") or [None] * len(values)
    sample: list[str] = []
    for value, row in zip(values, rows):
        text = _format(value)
        if _uninformative(value) and row is not None and row in frame.index:
            keys = [f"{c}={_format(frame.at[row, c])}" for c in identifying if c != column and c in frame.columns]
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


def _format(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if _is_null(value):
        return "null"
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _percent(value: float) -> str:
    """Two significant digits without scientific notation: 0.003%, 0.059%, 33%."""
    return np.format_float_positional(value, precision=2, unique=False, fractional=False, trim="-") + "%"


def _exception_text(exception: dict) -> str | None:
    if exception.get("raised_exception"):
        return f"GX could not evaluate it: {exception.get('exception_message')}"
    for info in exception.values():  # some GX versions key exceptions by metric id
        if isinstance(info, dict) and info.get("raised_exception"):
            return f"GX could not evaluate it: {info.get('exception_message')}"
    return None


def _table_detail(expectation: str, kwargs: dict, result: dict) -> str | None:
    if expectation == "expect_table_row_count_to_be_between":
        return f"{result.get('observed_value', 0):,} rows, expected at least {kwargs.get('min_value'):,}"
    mismatched = (result.get("details") or {}).get("mismatched") or {}
    if mismatched.get("missing"):
        return f"missing columns {', '.join(mismatched['missing'])}"
    return None


def _write_report(report: QualityReport, results: dict[str, dict], snapshot_dir: Path, logical_date: datetime) -> None:
    """Write the summary and GX's results; id lists in value_set are replaced by their size."""
    for validation in results.values():
        for outcome in validation["results"]:
            kwargs = outcome["expectation_config"].get("kwargs", {})
            if isinstance(kwargs.get("value_set"), list) and len(kwargs["value_set"]) > 20:
                kwargs["value_set"] = f"<{len(kwargs['value_set']):,} ids of this snapshot>"
    document = {"logical_date": str(logical_date), "summary": report.to_dict(), "validation_results": results}
    tmp = report.report_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str))
    tmp.replace(report.report_path)
