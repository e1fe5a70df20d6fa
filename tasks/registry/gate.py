"""The promotion gate: may a freshly trained candidate become the champion?

Declarative, as in TFX's model validation: absolute floors, a strict win over the best
baseline, and no regression beyond a tolerance against the current champion re-scored on
the same split, overall and on every slice (tasks.evaluation.slices) large enough to judge. With no
champion yet, the floors and the baselines alone decide. Pure: the caller passes
validation-split metrics in, a decision comes out, and every check explains itself whether
it passed, failed or was skipped. A threshold or metric that cannot be checked is never a
silent pass: a missing metric raises ConfigError, missing slices fail their check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.config import GateConfig, parse_floors
from tasks.errors import ConfigError

SliceMetrics = Mapping[str, Mapping[str, float]]  # {slice name: {"users": n, metric: value}}


@dataclass(frozen=True)
class Check:
    """One rule of the gate and its outcome; a skipped check counts as passed and says why."""

    name: str
    passed: bool
    reason: str
    skipped: bool = False


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict, every check behind it, and the numbers it was based on."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metric: str = ""
    candidate_value: float = math.nan
    best_baseline_name: str = ""
    best_baseline_value: float = math.nan
    champion_value: float | None = None
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        verdict = "PASSED" if self.passed else "REFUSED"
        return f"gate {verdict}: " + "; ".join(self.reasons)


def _metric_of(metrics: Mapping[str, float], metric: str, whose: str) -> float:
    if metric not in metrics:
        available = ", ".join(sorted(metrics)) or "none"
        raise ConfigError(
            f"gate metric {metric!r} is missing from the {whose}'s metrics (has: {available}); "
            "set gate.metric / gate.floors to metrics the evaluation reports"
        )
    return float(metrics[metric])


def _floor_checks(candidate: Mapping[str, float], config: GateConfig) -> list[Check]:
    floors = {config.metric: config.min_metric} | parse_floors(config.floors)
    checks = []
    for metric, floor in floors.items():
        value = _metric_of(candidate, metric, "candidate")
        ok = value >= floor
        checks.append(Check(f"floor {metric}", ok,
                            f"{metric} {value:.4f} {'meets' if ok else 'is below'} the floor {floor:.4f}"))
    return checks


def _regression(name: str, label: str, value: float, reference: float, tolerance: float, metric: str) -> Check:
    holds = value >= reference - tolerance
    if holds:
        text = f"{label}{metric} {value:.4f} holds against champion {reference:.4f} (tolerance {tolerance:.4f})"
    else:
        text = (f"{label}{metric} {value:.4f} regresses from champion {reference:.4f} "
                f"by more than the tolerance {tolerance:.4f}")
    return Check(name, holds, text)


def _slice_checks(candidate_slices: SliceMetrics | None, champion_slices: SliceMetrics | None,
                  config: GateConfig) -> list[Check]:
    """The champion comparison on every slice; small slices are skipped, missing ones fail."""
    if candidate_slices is None or champion_slices is None:
        whose = "candidate" if candidate_slices is None else "champion"
        return [Check("slices", False, f"slice checks could not run: the {whose} has no per-slice metrics; "
                                       "re-evaluate the run (tasks.evaluation.evaluate reports slices)")]
    metric = config.metric
    checks = []
    for name in dict.fromkeys([*champion_slices, *candidate_slices]):
        if name not in candidate_slices or name not in champion_slices:
            whose = "candidate" if name not in candidate_slices else "champion"
            checks.append(Check(f"slice {name}", False, f"slice {name}: the {whose} has no metrics for it"))
            continue
        ours, theirs = candidate_slices[name], champion_slices[name]
        users = int(_metric_of(ours, "users", f"candidate slice {name}"))
        if users < config.min_slice_users:
            checks.append(Check(f"slice {name}", True, f"slice {name}: {users} users, fewer than "
                                f"gate.min_slice_users={config.min_slice_users}; check skipped", skipped=True))
            continue
        checks.append(_regression(
            f"slice {name}", f"slice {name} ({users} users): ",
            _metric_of(ours, metric, f"candidate slice {name}"), _metric_of(theirs, metric, f"champion slice {name}"),
            config.slice_tolerance, metric,
        ))
    return checks


def decide(
    candidate: Mapping[str, float],
    baselines: Mapping[str, Mapping[str, float]],
    champion: Mapping[str, float] | None,
    config: GateConfig,
    *,
    candidate_slices: SliceMetrics | None = None,
    champion_slices: SliceMetrics | None = None,
) -> GateDecision:
    """Judge `candidate` against the floors, the best baseline and (if any) the champion.

    All mappings hold the same split's values (validation, per docs/protocol.md); the slice
    mappings are `{slice: {"users": n, metric: value}}` of that split (tasks.evaluation.slices).
    """
    metric = config.metric
    value = _metric_of(candidate, metric, "candidate")
    if not baselines:
        raise ConfigError(
            "the gate got no baselines to compare against; evaluation must score at least one "
            "baseline (e.g. popularity) on the same split"
        )
    baseline_values = {name: _metric_of(m, metric, f"baseline {name}") for name, m in baselines.items()}
    # NaN sorts arbitrarily; rank it last so a broken baseline never hides a real one.
    best_name = max(baseline_values, key=lambda n: (not math.isnan(baseline_values[n]), baseline_values[n]))
    best_value = baseline_values[best_name]

    checks = _floor_checks(candidate, config)
    beats = value > best_value
    checks.append(Check("beats baseline", beats,
                        f"{metric} {value:.4f} {'beats' if beats else 'does not beat'} {best_name} {best_value:.4f}"))
    champion_value: float | None = None
    if champion is None:
        checks.append(Check("champion", True, "no champion yet: the first model is judged on the floor and "
                                              "baselines alone", skipped=True))
    else:
        champion_value = _metric_of(champion, metric, "champion")
        checks.append(_regression("champion", "", value, champion_value, config.champion_tolerance, metric))
        checks.extend(_slice_checks(candidate_slices, champion_slices, config))

    return GateDecision(
        passed=all(c.passed for c in checks),
        reasons=[c.reason for c in checks],
        metric=metric,
        candidate_value=value,
        best_baseline_name=best_name,
        best_baseline_value=best_value,
        champion_value=champion_value,
        checks=checks,
    )


def verdict(decision: Mapping[str, Any], *, version: str, champion_before: str | None, promoted: bool) -> str:
    """One sentence on what the gate decided about `version` and which version is live now.

    The run's note, the register task's log, `prismrec train` and the run report all say this.
    A refusal names only the checks that failed; a forced promotion says who overruled the gate.
    """
    failed = [c["reason"] for c in decision.get("checks") or [] if not c.get("passed")]
    refused_because = "; ".join(failed or decision.get("reasons") or ["no reason recorded"])
    if not promoted:
        stays = (f"the champion stays v{champion_before}" if champion_before
                 else "there is no champion yet, so nothing is published")
        return f"the gate refused v{version}: {refused_because}; {stays}"
    was = f" (was v{champion_before})" if champion_before and champion_before != version else ""
    if decision.get("force_promote") and not decision.get("gate_passed", True):
        return (f"the gate refused v{version} ({refused_because}), but {decision.get('forced_by') or 'an operator'} "
                f"forced it: \"{decision.get('operator_reason')}\"; v{version} is the champion{was}")
    return f"the gate passed v{version}: it is the champion{was}"
