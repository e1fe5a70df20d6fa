"""A model version's card: its description in the registry, in Markdown (pure: records in, text out).

What a model owner needs before moving `champion`: which data, the metrics beside the baselines
and the champion, the gate's verdict and reasons, and how to promote or roll back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.registry.run_metrics import HEADLINE

COLUMNS = (("valid", HEADLINE), ("test", HEADLINE), ("test", "hr@10"), ("test", "coverage@10"))


def _row(label: str, splits: Mapping[str, Any] | None) -> str:
    cells = [f"{float(v):.4f}" if isinstance(v := (splits or {}).get(split, {}).get(name), (int, float)) else "–"
             for split, name in COLUMNS]
    return f"| {label} | " + " | ".join(cells) + " |"


def metrics_table(evaluation: Mapping[str, Any]) -> list[str]:
    """The candidate, each baseline and the champion, one row each, on the card's columns."""
    lines = ["| model | " + " | ".join(f"{split} {name}" for split, name in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS), _row("**this version**", evaluation.get("candidate"))]
    lines += [_row(f"{name} (baseline)", splits) for name, splits in (evaluation.get("baselines") or {}).items()]
    if evaluation.get("champion"):
        lines.append(_row(f"champion v{evaluation.get('champion_version') or '?'}", evaluation["champion"]))
    return lines


def model_card(*, model_name: str, version: str, evaluation: Mapping[str, Any], decision: Mapping[str, Any],
               lineage: Mapping[str, Any], promoted: bool, champion_before: str | None) -> str:
    """The Markdown description of `model_name` version `version`."""
    passed = bool(decision.get("passed"))
    forced = bool(decision.get("force_promote")) and not decision.get("gate_passed", passed)
    verdict = "FORCED through" if forced else ("PASSED" if passed else "REFUSED")
    test = (evaluation.get("candidate") or {}).get("test", {}).get(HEADLINE)
    headline = f"test {HEADLINE.upper()} {float(test):.4f}" if isinstance(test, (int, float)) else "no test metrics"
    rows = ", ".join(f"{int(v):,} {k.removeprefix('snapshot_rows_')}" for k, v in lineage.items()
                     if k.startswith("snapshot_rows_") and str(v).isdigit())
    lines = [
        f"**PrismRec {model_name} v{version}**: {headline}; model gate {verdict}"
        + (f"; champion since registration (was v{champion_before})" if promoted and champion_before
           else "; champion since registration" if promoted else f"; the champion stays v{champion_before}"
           if champion_before else ""),
        "",
        "### Data",
        f"- snapshot as of {lineage.get('data_as_of') or lineage.get('logical_date') or '?'}"
        + (f": {rows}" if rows else ""),
        f"- data gate: {'passed' if lineage.get('data_gate_passed') == 'true' else lineage.get('data_gate_passed', '?')}, "
        f"{lineage.get('data_gate_rejected_rows', '0')} rows left out; content sha256 "
        f"`{str(lineage.get('snapshot_content_sha256', '?'))[:16]}`",
        "",
        "### Training",
        f"- {lineage.get('epochs_run', '?')} epochs in {lineage.get('train_seconds', '?')} s; run `{lineage.get('run_key', '?')}`",
        f"- code `{lineage.get('git_commit', '?')}`, config `{lineage.get('config_hash', '?')}`",
        "",
        "### Metrics (all items ranked, history masked)",
        *metrics_table(evaluation),
        "",
        f"### Model gate: {verdict}",
        *[f"- {reason}" for reason in decision.get("reasons", [])],
        "",
        "### Promote or roll back",
        f"- `prismrec promote {version} --reason \"...\"`, or move the alias `champion` to v{version} here: "
        "within a minute the version is published and the move recorded in `reco.model_decisions`",
        "- `prismrec rollback --reason \"...\"` gives `champion` back to the version that held it before",
    ]
    return "\n".join(lines)
