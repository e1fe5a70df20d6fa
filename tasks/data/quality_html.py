"""The data gate's report as one readable HTML page (pure: the report's JSON in, a string out).

The JSON (tasks.layout.SnapshotFiles.quality_report) holds the verdict, the failures in words,
the drift measures and Great Expectations' raw results; the page shows them as tables, one row
per expectation, so a person can read the verdict in the MLflow UI's artifact view.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0 1.5em}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}"
          "th{background:#f3f3f3}.pass{color:#1a7f37}.fail{color:#c62828;font-weight:bold}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list[Any]], raw: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{v if i in raw else _cell(v)}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(passed: bool | None) -> str:
    return {True: '<span class="pass">passed</span>', False: '<span class="fail">FAILED</span>'}.get(passed, "?")


def expectation_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """[table, expectation, column, passed, unexpected, of rows, unexpected %] per expectation run."""
    rows = []
    for table, validation in (report.get("validation_results") or {}).items():
        for outcome in (validation or {}).get("results") or []:
            config = outcome.get("expectation_config") or {}
            kwargs = config.get("kwargs") or {}
            result = outcome.get("result") or {}
            rows.append([table, config.get("type") or config.get("expectation_type", "?"),
                         kwargs.get("column") or ", ".join(kwargs.get("column_list") or []),
                         outcome.get("success"), result.get("unexpected_count"), result.get("element_count"),
                         result.get("unexpected_percent")])
    return rows


def render(report: Mapping[str, Any], title: str = "Data quality report") -> str:
    """The whole report as an HTML page."""
    summary = report.get("summary") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"]
    parts.append(_table(["verdict", "expectations", "blocking failures", "rows left out", "as of"],
                        [[_verdict(summary.get("passed")), summary.get("evaluated"), summary.get("failed"),
                          sum(int(v) for v in (summary.get("rejected") or {}).values()),
                          report.get("logical_date")]], raw={0}))
    counts = summary.get("counts") or {}
    if counts:
        parts.append("<h2>Rows checked</h2>" + _table(["table", "rows"], [[t, n] for t, n in counts.items()]))
    failures = summary.get("failures") or []
    if failures:
        parts.append("<h2>Failures</h2>" + _table(
            ["blocking", "what failed"],
            [[bool(f.get("blocking", True)), f.get("message") or f.get("expectation")] for f in failures]))
    rows = expectation_rows(report)
    if rows:
        shown = [[*row[:3], _verdict(row[3]), *row[4:]] for row in rows]
        parts.append("<h2>Expectations</h2>" + _table(
            ["table", "expectation", "column", "result", "unexpected", "of rows", "unexpected %"], shown, raw={3}))
    drift = report.get("drift") or {}
    if drift.get("metrics"):
        parts.append("<h2>Drift against the previous good snapshot</h2>" + _table(
            ["measure", "value"], [[k, v] for k, v in drift["metrics"].items()]))
        if drift.get("breaches"):
            parts.append("<p class='fail'>" + escape("; ".join(map(str, drift["breaches"]))) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
