"""The names of a training run's MLflow metrics, written once: pure functions of the run's records.

A candidate and the runs it is compared with (each baseline, the champion) share their names,
so MLflow's compare view puts them side by side:

    valid_ndcg_10, test_hr_10, ...          headline metrics, one per split and metric (no prefix)
    slice/valid/history_short/ndcg_10       per slice, grouped under `slice/` (a section in the UI)
    epoch/train_loss (step = epoch)         training curves, grouped under `epoch/`
    drift/item_popularity_js                the data gate's drift measures, grouped under `drift/`

MLflow's UI puts metrics without a `/` first and makes a section of each prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEADLINE = "ndcg@10"  # the metric the gate and the model card lead with


def metric_key(*parts: str) -> str:
    """`("test", "ndcg@10")` -> `test_ndcg_10` (MLflow allows no `@`)."""
    return "_".join(p.replace("@", "_").replace(" ", "_") for p in parts)


def headline_key(split: str = "test") -> str:
    return metric_key(split, HEADLINE)


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def split_metrics(splits: Mapping[str, Mapping[str, Any]] | None,
                  slices: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> dict[str, float]:
    """One model's metrics: `{split: {metric: v}}` and, optionally, `{split: {slice: {metric: v}}}`."""
    metrics = {metric_key(split, name): value for split, values in (splits or {}).items()
               for name, value in _numbers(values).items()}
    for split, by_slice in (slices or {}).items():
        for name, values in (by_slice or {}).items():
            metrics |= {f"slice/{split}/{name}/{metric_key(m)}": v for m, v in _numbers(values).items()}
    return metrics


def candidate_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The candidate's own metrics, overall and per slice."""
    return split_metrics(evaluation.get("candidate"), (evaluation.get("slices") or {}).get("candidate"))


def comparison_metrics(evaluation: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """`{"baseline: popularity": metrics, "champion v3": metrics}`: what the candidate was compared with,
    under the candidate's metric names."""
    slices = evaluation.get("slices") or {}
    runs = {f"baseline: {name}": split_metrics(splits, (slices.get("baselines") or {}).get(name))
            for name, splits in (evaluation.get("baselines") or {}).items()}
    if evaluation.get("champion"):
        label = f"champion v{evaluation['champion_version']}" if evaluation.get("champion_version") else "champion"
        runs[label] = split_metrics(evaluation["champion"], slices.get("champion"))
    return runs


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """One epoch of the training history (tasks.training.records.epoch_record) as `epoch/<name>`."""
    return {f"epoch/{metric_key(k)}": v for k, v in _numbers(record).items() if k != "epoch"}


def drift_metrics(drift: Mapping[str, Any] | None) -> dict[str, float]:
    """The data gate's drift measures (the quality report's ["drift"]) as `drift/<name>`."""
    return {f"drift/{metric_key(str(k))}": v for k, v in _numbers((drift or {}).get("metrics") or {}).items()}
