"""Drift between this snapshot's interactions and the last successful snapshot's.

Pure metrics on DataFrames (`compare_interactions`) plus a thin file layer (`drift_report`):
- item popularity: Jensen-Shannon divergence (base 2, in [0, 1]) of the items' interaction shares;
- user activity: the same divergence over users' activity levels (interactions per user, in
  powers-of-two buckets, so it compares how active people are, not who);
- the share of active items and users never seen in the previous snapshot.
Above `quality.drift_threshold` / `quality.drift_max_new_share` the report warns or, with
`quality.drift_mode = "fail"`, raises DataQualityError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import PipelineConfig, QualityConfig
from tasks.errors import ConfigError, DataQualityError
from tasks.layout import SnapshotFiles

logger = logging.getLogger(__name__)

MODES = ("warn", "fail")
DIVERGENCES = ("item_popularity_js", "user_activity_js")
NEW_SHARES = ("new_item_share", "new_user_share")


@dataclass(frozen=True)
class DriftReport:
    """Drift metrics, the ones past their threshold, and what the configured mode makes of them."""

    mode: str
    threshold: float
    max_new_share: float
    metrics: dict[str, float] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)
    previous: str | None = None  # the previous snapshot folder; None on a first run

    @property
    def failed(self) -> bool:
        return self.mode == "fail" and bool(self.breaches)

    def summary(self) -> str:
        if self.previous is None:
            return "drift: no previous successful snapshot to compare with"
        values = ", ".join(f"{k}={v:.3f}" for k, v in self.metrics.items())
        verdict = "ok" if not self.breaches else ("FAILED" if self.failed else "warning")
        return f"drift {verdict}: {values}" + (f" ({'; '.join(self.breaches)})" if self.breaches else "")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "threshold": self.threshold, "max_new_share": self.max_new_share,
                "previous": self.previous, "metrics": dict(self.metrics), "breaches": list(self.breaches),
                "failed": self.failed, "summary": self.summary()}


def js_divergence(p: pd.Series, q: pd.Series) -> float:
    """Jensen-Shannon divergence (base 2) of two non-negative weightings over (possibly different) keys."""
    p, q = p.align(q, fill_value=0.0)
    p, q = p.to_numpy(dtype=float), q.to_numpy(dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return float(min(1.0, max(0.0, (kl(p) + kl(q)) / 2)))


def _activity_levels(interactions: pd.DataFrame) -> pd.Series:
    """How many users fall in each activity bucket: 1, 2-3, 4-7, 8-15, ... interactions."""
    per_user = interactions.groupby("user_id").size()
    return np.floor(np.log2(per_user)).astype(int).value_counts()


def _new_share(current: pd.Series, previous: pd.Series) -> float:
    ids = current.unique()
    return float((~pd.Series(ids).isin(previous.unique())).mean()) if len(ids) else 0.0


def compare_interactions(current: pd.DataFrame, previous: pd.DataFrame | None, quality: QualityConfig,
                         previous_label: str | None = None) -> DriftReport:
    """Drift of `current` vs `previous` interactions (columns user_id, item_id); pure."""
    if quality.drift_mode not in MODES:
        raise ConfigError(f"quality.drift_mode={quality.drift_mode!r} is not one of {', '.join(MODES)}")
    settings = {"mode": quality.drift_mode, "threshold": quality.drift_threshold,
                "max_new_share": quality.drift_max_new_share}
    if previous is None:
        return DriftReport(**settings)
    metrics = {
        "item_popularity_js": js_divergence(current.groupby("item_id").size(), previous.groupby("item_id").size()),
        "user_activity_js": js_divergence(_activity_levels(current), _activity_levels(previous)),
        "new_item_share": _new_share(current["item_id"], previous["item_id"]),
        "new_user_share": _new_share(current["user_id"], previous["user_id"]),
    }
    metrics = {k: round(v, 6) for k, v in metrics.items()}
    breaches = [f"{k} {metrics[k]:.3f} > {quality.drift_threshold:g}" for k in DIVERGENCES
                if metrics[k] > quality.drift_threshold]
    breaches += [f"{k} {metrics[k]:.3f} > {quality.drift_max_new_share:g}" for k in NEW_SHARES
                 if metrics[k] > quality.drift_max_new_share]
    return DriftReport(**settings, metrics=metrics, breaches=breaches, previous=previous_label or "previous")


def drift_report(current_snapshot_dir: Path, previous_snapshot_dir: Path | None, config: PipelineConfig,
                 *, enforce: bool = True) -> DriftReport:
    """Compare two snapshots' interactions; with `enforce`, raise when the mode says fail.

    A previous snapshot that no longer exists on disk is treated as none (first-run behaviour).
    """
    columns = ["user_id", "item_id"]
    current = pd.read_parquet(SnapshotFiles(Path(current_snapshot_dir)).interactions, columns=columns)
    previous = None
    if previous_snapshot_dir is not None:
        path = SnapshotFiles(Path(previous_snapshot_dir)).interactions
        if path.is_file():
            previous = pd.read_parquet(path, columns=columns)
        else:
            logger.warning("previous snapshot %s is gone; drift not measured", previous_snapshot_dir)
    report = compare_interactions(current, previous, config.quality,
                                  str(previous_snapshot_dir) if previous is not None else None)
    (logger.warning if report.breaches else logger.info)("%s", report.summary())
    if enforce and report.failed:
        raise DataQualityError(
            f"data drift vs the last successful snapshot {report.previous}: {'; '.join(report.breaches)}. "
            "If the change is real (a new catalogue, a migration), re-run with quality.drift_mode=warn "
            "or a higher quality.drift_threshold / quality.drift_max_new_share.",
            [{"table": "interactions", "expectation": "drift", "breaches": report.breaches}],
        )
    return report
