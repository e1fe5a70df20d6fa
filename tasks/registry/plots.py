"""The training run's pictures: matplotlib figures from its records (pure, no MLflow, no files).

Each function takes the run's own dicts (the epoch history, the evaluation, interest shares)
and returns a Figure; tasks.registry.tracking logs them as PNG artifacts. The Agg backend
draws without a display (Airflow workers, CI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # after the backend is chosen

from tasks.registry.run_metrics import HEADLINE

METRICS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr@10", "coverage@10")


def training_curves(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Training loss and validation NDCG@10 by epoch."""
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss, valid = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    loss.plot(epochs, [row.get("train_loss") for row in history], marker="o")
    loss.set(title="training loss", xlabel="epoch")
    valid.plot(epochs, [row.get(f"valid_{HEADLINE}") for row in history], marker="o", color="tab:green")
    valid.set(title=f"validation {HEADLINE.upper()}", xlabel="epoch")
    for axes in (loss, valid):
        axes.grid(alpha=0.3)
        axes.set_xticks(epochs if len(epochs) <= 20 else axes.get_xticks())
    return figure


def _models(evaluation: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    models = {"PrismRec (candidate)": evaluation["candidate"]}
    models |= {f"{name} (baseline)": splits for name, splits in (evaluation.get("baselines") or {}).items()}
    if evaluation.get("champion"):
        models[f"champion v{evaluation.get('champion_version') or '?'}"] = evaluation["champion"]
    return models


def model_vs_baselines(evaluation: Mapping[str, Any], split: str = "test") -> Figure:
    """Grouped bars: every metric of the candidate, the baselines and the champion on `split`."""
    models = _models(evaluation)
    names = [m for m in METRICS if m in models["PrismRec (candidate)"].get(split, {})]
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(models)
    for i, (label, splits) in enumerate(models.items()):
        values = [float(splits.get(split, {}).get(m, 0.0)) for m in names]
        axes.bar([x + i * width for x in range(len(names))], values, width, label=label)
    axes.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(names))], names)
    axes.set(title=f"candidate vs baselines and champion ({split} split, all items ranked)")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return figure


def slices(evaluation: Mapping[str, Any], split: str = "test") -> Figure:
    """Bars per slice (history length, head/tail/cold items): candidate, baselines and champion."""
    by_model = evaluation.get("slices") or {}
    models = {"PrismRec (candidate)": (by_model.get("candidate") or {}).get(split) or {}}
    models |= {f"{name} (baseline)": (s or {}).get(split) or {} for name, s in (by_model.get("baselines") or {}).items()}
    if by_model.get("champion"):
        models[f"champion v{evaluation.get('champion_version') or '?'}"] = by_model["champion"].get(split) or {}
    names = list(models["PrismRec (candidate)"])
    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(models)
    for i, (label, by_slice) in enumerate(models.items()):
        values = [float((by_slice.get(n) or {}).get(HEADLINE, 0.0)) for n in names]
        axes.bar([x + i * width for x in range(len(names))], values, width, label=label)
    users = models["PrismRec (candidate)"]
    axes.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(names))],
                    [f"{n}\n({int(users[n].get('users', 0)):,} users)" for n in names], fontsize="small")
    axes.set(title=f"{HEADLINE.upper()} by slice ({split} split)")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return figure


def interest_shares(shares: Mapping[str, float], title: str) -> Figure:
    """Horizontal bars: each interest's share of the recommended items."""
    figure = Figure(figsize=(6, 0.5 + 0.45 * max(len(shares), 1)), layout="constrained")
    axes = figure.subplots()
    labels = list(shares)
    axes.barh(labels, [100 * shares[k] for k in labels], color="tab:purple")
    axes.invert_yaxis()
    axes.set(title=title, xlabel="% of the picks")
    axes.grid(axis="x", alpha=0.3)
    return figure
