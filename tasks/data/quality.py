"""The data-quality gate: run the GX suites of `expectations/` on a Parquet snapshot.

Blocking expectations fail the run on any violation. Tolerant ones (GX `mostly`) let a few
bad interactions or items (blank text) through the gate by leaving them out: the file is rewritten
without them, they are kept beside it (`SnapshotFiles.rejected_interactions`, `rejected_items`:
a left-out item takes its interactions with it), and the
manifest's counts and hashes are updated; the run fails only when their share passes the threshold. Row counts are
held within a band of the baseline's: the last snapshot of the same kind (source, window, user
slice) that passed the gate as of the same date or earlier (`quality_store`); drift against that
snapshot is measured by `tasks.data.drift`.

`check_snapshot` always writes the snapshot's quality report (GX's validation results, the
summary, the drift report) and raises DataQualityError naming every failed expectation
with counts and sample offending values. GX is imported inside functions so that importing
this module (e.g. while Airflow parses a DAG) stays cheap.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import PipelineConfig
from tasks.data import quality_store as history
from tasks.data.quality_format import describe_table_detail, exception_text, percent, sample_values
from tasks.errors import ConfigError, DataQualityError
from tasks.layout import SnapshotFiles

logger = logging.getLogger(__name__)

TABLES = SnapshotFiles.TABLES


@dataclass(frozen=True)
class Failure:
    """One expectation with offending rows, in words a person can act on.

    `blocking` failures stop the run; the others are tolerant expectations whose `rejected`
    rows were left out of the snapshot because their share stayed under `threshold`.
    """

    table: str
    expectation: str
    column: str | None
    severity: str
    unexpected_count: int | None = None
    element_count: int | None = None
    unexpected_percent: float | None = None
    sample: list[str] = field(default_factory=list)
    detail: str | None = None  # table-level observation or the exception GX caught
    blocking: bool = True
    rejected: int = 0
    threshold: float | None = None  # the tolerated share (1 - mostly), for tolerant expectations

    def describe(self) -> str:
        """`interactions: expect_column_values_to_be_in_set(item_id) failed for 3 of 100,003 rows (0.003%), e.g. 999999`."""
        text = f"{self.table}: {self.expectation}" + (f"({self.column})" if self.column else "") + " failed"
        if self.unexpected_count is not None and self.element_count is not None:
            text += f" for {self.unexpected_count:,} of {self.element_count:,} rows"
            if self.unexpected_percent is not None:
                text += f" ({percent(self.unexpected_percent)})"
        if self.sample:
            text += ", e.g. " + ", ".join(self.sample)
        if self.detail:
            text += f": {self.detail}"
        if self.threshold is None:
            return text
        limit = percent(100.0 * self.threshold)
        if self.blocking:
            return text + f" [more than the tolerated {limit}]"
        return text + f" [tolerated (up to {limit}): {self.rejected:,} rows left out of the snapshot]"


@dataclass(frozen=True)
class QualityReport:
    """Outcome of the gate; `to_dict()` is small enough for XCom."""

    passed: bool
    counts: dict[str, int]
    evaluated: int
    failures: list[Failure]
    seconds: float
    report_path: Path
    rejected: dict[str, int] = field(default_factory=dict)
    drift: dict[str, Any] | None = None

    @property
    def blocking(self) -> list[Failure]:
        return [f for f in self.failures if f.blocking]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "counts": dict(self.counts),
            "evaluated": self.evaluated,
            "failed": len(self.blocking),
            "failures": [asdict(f) | {"message": f.describe()} for f in self.failures],
            "rejected": dict(self.rejected),
            "drift": self.drift,
            "seconds": round(self.seconds, 3),
            "report_path": str(self.report_path),
        }

    def summary(self) -> str:
        """One line: `data quality: 9/9 expectations passed on 100,000 interactions, ...`."""
        sizes = ", ".join(f"{self.counts.get(t, 0):,} {t}" for t in ("interactions", "items", "users"))
        line = f"data quality: {self.evaluated - len(self.blocking)}/{self.evaluated} expectations passed on {sizes}"
        tolerated = len(self.failures) - len(self.blocking)
        if self.blocking:
            line += f" ({len(self.blocking)} blocking failures)"
        if tolerated:
            rows = sum(self.rejected.values())
            line += f"; {rows:,} rows left out by {tolerated} tolerant expectations"
        if self.drift and self.drift.get("breaches"):
            line += f"; drift {'FAILED' if self.drift.get('failed') else 'warning'}"
        return line


def check_snapshot(config: PipelineConfig, snapshot_dir: Path, logical_date: datetime, *,
                   record: bool = True) -> QualityReport:
    """Validate items, users and interactions of `snapshot_dir`; raise DataQualityError on failure.

    On success the snapshot holds only accepted rows, and (with `record`) its counts are
    recorded as the baseline for the next run's volume band and drift report.
    """
    from tasks.data.drift import drift_report

    started = time.perf_counter()
    snapshot_dir = Path(snapshot_dir)
    files = SnapshotFiles(snapshot_dir)
    report_path = files.quality_report
    missing = [t for t in TABLES if not files.table(t).is_file()]
    if missing:
        failures = [Failure(t, "file_exists", None, "critical", detail=f"{files.table(t).name} is missing")
                    for t in missing]
        report = QualityReport(False, {}, len(TABLES), failures, time.perf_counter() - started, report_path)
        _write_report(report, {}, snapshot_dir, logical_date)
        raise DataQualityError(
            f"snapshot {snapshot_dir} is incomplete: {', '.join(files.table(t).name for t in missing)} missing; "
            "re-run the extract task for this logical date",
            report.to_dict()["failures"],
        )

    frames = {t: pd.read_parquet(files.table(t)) for t in TABLES}
    source = history.source_key(snapshot_dir)
    previous = history.baseline(config, source, logical_date)
    _log_baseline(previous, snapshot_dir)
    validations = _validate(config, frames, logical_date, (previous or {}).get("counts", {}))
    failures, rejects, item_rejects = _dtype_failures(frames), pd.Series(dtype="str"), pd.Series(dtype="str")
    for table, validation in validations.items():
        found, rejected = _assess(table, validation, frames[table], config.quality.sample_size)
        failures += found
        if table == "interactions":
            rejects = rejected
        elif table == "items":
            item_rejects = rejected
    results = {table: validation.to_json_dict() for table, validation in validations.items()}
    counts = {t: len(df) for t, df in frames.items()}
    drift = None
    if not any(f.blocking for f in failures):  # a snapshot that fails anyway is left as extracted
        if len(item_rejects):
            rejects = _with_interactions_of(item_rejects, frames, rejects)
            _leave_out_items(snapshot_dir, frames["items"], item_rejects)
            counts["items"] -= len(item_rejects)
        if len(rejects):
            _leave_out(snapshot_dir, frames["interactions"], rejects)
            counts["interactions"] -= len(rejects)
        drift = drift_report(snapshot_dir, _drift_baseline(previous, snapshot_dir), config, enforce=False)
    left_out = {"interactions": len(rejects)} | ({"items": len(item_rejects)} if len(item_rejects) else {})
    report = QualityReport(
        passed=drift is not None and not drift.failed, counts=counts,
        evaluated=sum(len(r["results"]) for r in results.values()) + sum(map(len, _columns().values())),
        failures=failures, seconds=time.perf_counter() - started, report_path=report_path,
        rejected=left_out if drift is not None else {},
        drift=drift.to_dict() if drift is not None else None,
    )
    _write_report(report, results, snapshot_dir, logical_date)
    for failure in failures:
        logger.warning("%s", failure.describe())
    if not report.passed:
        blocking = report.blocking
        schema = config.database.app_schema
        lines = [f"  - {f.describe()}" for f in failures]
        if drift is not None and drift.failed:
            lines.append(f"  - {drift.summary()} [quality.drift_mode=fail]")
        if previous and any(f.expectation == "expect_table_row_count_to_be_between" for f in blocking):
            lines.append(_volume_hint(previous))
        raise DataQualityError(
            f"data-quality gate failed on snapshot {snapshot_dir} (as of {logical_date:%Y-%m-%d}): "
            f"{len(blocking)} of {report.evaluated} expectations failed"
            + (" and drift passed its threshold" if drift is not None and drift.failed else "") + ":\n"
            + "\n".join(lines)
            + f"\nFix the offending rows in {schema}.items / {schema}.users / {schema}.interactions "
            f"(or the settings quality.* if the thresholds are wrong) and re-run; details in {report_path}",
            report.to_dict()["failures"],
        )
    if record:
        history.record_success(config, source, logical_date, snapshot_dir, report.counts)
    logger.info("%s (%.2fs)", report.summary(), report.seconds)
    return report


def _log_baseline(previous: dict[str, Any] | None, snapshot_dir: Path) -> None:
    if previous is None:
        logger.info("no snapshot of this kind passed the gate as of this date or earlier: "
                    "no volume band and no drift measured for %s", snapshot_dir)
    else:
        logger.info("volume and drift baseline: the snapshot as of %s that passed the gate at %s (%s)",
                    previous["logical_date"], previous.get("recorded_at", "?"),
                    ", ".join(f"{n:,} {t}" for t, n in previous["counts"].items()))


def _drift_baseline(previous: dict[str, Any] | None, snapshot_dir: Path) -> Path | None:
    """The baseline's folder for drift; none when it is this very folder (a rerun of the same run
    rewrote it, so it holds this snapshot, not the baseline: its counts were kept in the record)."""
    if previous is None or Path(previous["snapshot_dir"]).resolve() == Path(snapshot_dir).resolve():
        return None
    return Path(previous["snapshot_dir"])


def _volume_hint(previous: dict[str, Any]) -> str:
    """Where a volume band came from, and how to accept a drop that is real."""
    return (f"The volume band is measured against the last snapshot of this source, window and user slice "
            f"that passed the gate: as of {previous['logical_date']}, checked at {previous.get('recorded_at', '?')}, "
            f"in {previous['snapshot_dir']}. If the rows really went (an erasure, a smaller source), accept the "
            "new volume with one run at a lower quality.volume_min_ratio (CLI --set, Airflow Param overrides).")


def _columns() -> dict[str, dict[str, str]]:
    from expectations import interactions, items, users

    return {"items": items.COLUMNS, "users": users.COLUMNS, "interactions": interactions.COLUMNS}


def _dtype_failures(frames: dict[str, pd.DataFrame]) -> list[Failure]:
    """Blocking failures for contract columns of the wrong type (one check per contract column)."""
    from expectations.common import dtype_problems

    return [
        Failure(table, "expect_column_dtype", column, "critical", detail=f"type is {problem}")
        for table, columns in _columns().items()
        for column, problem in dtype_problems(frames[table], columns).items()
    ]


def _validate(config: PipelineConfig, frames: dict[str, pd.DataFrame], logical_date: datetime,
              previous_counts: dict[str, int]) -> dict[str, Any]:
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
    from expectations.common import SuiteSettingError

    def ids(table: str, column: str) -> list[int]:
        df = frames[table]
        return df[column].dropna().unique().tolist() if column in df.columns else []

    try:
        suites = {
            "items": items.build_suite(config.quality, previous_counts.get("items")),
            "users": users.build_suite(config.quality, previous_counts.get("users")),
            "interactions": interactions.build_suite(
                config.quality, logical_date, item_ids=ids("items", "item_id"), user_ids=ids("users", "user_id"),
                previous_count=previous_counts.get("interactions"),
            ),
        }
    except SuiteSettingError as exc:
        raise ConfigError(str(exc)) from None
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )
    source = context.data_sources.add_pandas("snapshot")
    # COMPLETE lists every offending row's index, so tolerated rows can be left out exactly.
    result_format = {"result_format": "COMPLETE", "partial_unexpected_count": config.quality.sample_size}
    results: dict[str, Any] = {}
    for table in TABLES:
        batch_definition = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frames[table]})
        suite = context.suites.add(suites[table])
        results[table] = batch.validate(suite, result_format=result_format)
    return results


def _assess(table: str, validation: Any, frame: pd.DataFrame, sample_size: int) -> tuple[list[Failure], pd.Series]:
    """Failures of one table's validation, and the rows tolerant expectations reject (index -> reason).

    The raw result (not its JSON form) keeps values typed: NaN for nulls, Timestamps for times.
    """
    from expectations import interactions, items, users

    module = {"items": items, "users": users, "interactions": interactions}[table]
    failures, reasons = [], {}
    for outcome in validation.results:
        expectation = outcome.expectation_config
        result = outcome.result or {}
        unexpected, total = result.get("unexpected_count"), result.get("element_count")
        severity = getattr(expectation.severity, "value", str(expectation.severity))
        error = exception_text(outcome.exception_info or {})
        tolerant = severity != "critical" and error is None
        if outcome.success and not (tolerant and unexpected):
            continue
        kwargs = expectation.kwargs
        column = kwargs.get("column")
        name = f"{expectation.type}({column or ','.join(kwargs.get('column_list', []))})"
        rows = _offending_rows(expectation.type, kwargs, result, frame) if tolerant else []
        if outcome.success:
            for row in rows:
                reasons.setdefault(row, name)
        failures.append(Failure(
            table=table, expectation=expectation.type, column=column, severity=severity,
            unexpected_count=unexpected, element_count=total,
            # Of all rows, not GX's share of non-null rows, so "3 of 100,003" and the % agree.
            unexpected_percent=100.0 * unexpected / total if unexpected is not None and total else None,
            sample=sample_values(result, frame, column, module.IDENTIFYING_COLUMNS, sample_size),
            detail=error or describe_table_detail(
                expectation.type, kwargs | {"meta": expectation.meta or {}}, result),
            blocking=not outcome.success,
            rejected=len(rows) if outcome.success else 0,
            threshold=round(1.0 - kwargs["mostly"], 12) if tolerant and kwargs.get("mostly") is not None else None,
        ))
    return failures, pd.Series(reasons, dtype="str").sort_index()


def _offending_rows(expectation: str, kwargs: dict, result: dict, frame: pd.DataFrame) -> list[int]:
    """Row labels a tolerant expectation rejects; of duplicates, all copies but the first."""
    if expectation == "expect_compound_columns_to_be_unique":
        return frame.index[frame.duplicated(kwargs["column_list"], keep="first")].tolist()
    return list(result.get("unexpected_index_list") or [])


def _rewrite_without(frame: pd.DataFrame, rejects: pd.Series, path: Path, rejected_path: Path) -> tuple:
    """Rewrite `path` without the rejected rows and keep them (with a reason) in `rejected_path`, adding to
    what an earlier check of the same snapshot left out; returns (kept, all rejected)."""
    rejected = frame.loc[rejects.index].assign(reason=rejects.to_numpy())
    if rejected_path.is_file():  # a re-check of a cleaned snapshot must not lose the first check's rejects
        rejected = pd.concat([pd.read_parquet(rejected_path), rejected], ignore_index=True)
    kept = frame.drop(index=rejects.index).reset_index(drop=True)
    for target, rows in ((path, kept), (rejected_path, rejected)):
        tmp = target.with_name(f".{target.name}.tmp")
        rows.to_parquet(tmp, index=False, engine="pyarrow")
        tmp.replace(target)
    return kept, rejected


def _leave_out(snapshot_dir: Path, interactions: pd.DataFrame, rejects: pd.Series) -> None:
    """Rewrite the interactions without the rejected rows; keep them (with a reason) beside them."""
    files = SnapshotFiles(snapshot_dir)
    kept, rejected = _rewrite_without(interactions, rejects, files.interactions, files.rejected_interactions)
    history.update_manifest(snapshot_dir, kept, rejected=len(rejected))
    logger.warning("left %d interactions out of %s (kept in %s)", len(rejects), snapshot_dir,
                   files.rejected_interactions.name)


def _with_interactions_of(item_rejects: pd.Series, frames: dict[str, pd.DataFrame], rejects: pd.Series) -> pd.Series:
    """The interaction rejects plus every interaction of a left-out item (it has no text to place it by)."""
    items, interactions = frames["items"], frames["interactions"]
    reason_of = pd.Series(item_rejects.to_numpy(), index=items.loc[item_rejects.index, "item_id"].to_numpy())
    reason_of = reason_of[~reason_of.index.duplicated()]
    orphaned = interactions.index[interactions["item_id"].isin(reason_of.index) & ~interactions.index.isin(rejects.index)]
    reasons = ("its item was left out: " + interactions.loc[orphaned, "item_id"].map(reason_of).astype(str))
    return pd.concat([rejects, reasons.astype("str")]).sort_index()


def _leave_out_items(snapshot_dir: Path, items: pd.DataFrame, rejects: pd.Series) -> None:
    """Rewrite the catalogue without the rejected items; keep them (with a reason) beside it."""
    files = SnapshotFiles(snapshot_dir)
    kept, rejected = _rewrite_without(items, rejects, files.items, files.rejected_items)
    history.update_manifest_items(snapshot_dir, kept, rejected=len(rejected))
    logger.warning("left %d items with blank text out of %s (kept in %s), and their interactions",
                   len(rejects), snapshot_dir, files.rejected_items.name)


def _write_report(report: QualityReport, results: dict[str, dict], snapshot_dir: Path, logical_date: datetime) -> None:
    """Write the summary, the drift report and GX's results, with long id and row lists summarised."""
    for validation in results.values():
        for outcome in validation["results"]:
            kwargs = outcome["expectation_config"].get("kwargs", {})
            if isinstance(kwargs.get("value_set"), list) and len(kwargs["value_set"]) > 20:
                kwargs["value_set"] = f"<{len(kwargs['value_set']):,} ids of this snapshot>"
            result = outcome.get("result") or {}
            for key in ("unexpected_list", "unexpected_index_list"):
                if isinstance(result.get(key), list) and len(result[key]) > 20:
                    result[key] = f"<{len(result[key]):,} entries; see partial_{key}>"
    document = {"logical_date": str(logical_date), "summary": report.to_dict(), "drift": report.drift,
                "validation_results": results}
    tmp = report.report_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str))
    tmp.replace(report.report_path)
