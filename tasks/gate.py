"""The promotion gate: may a freshly trained candidate become the champion?

Declarative, as in TFX's model validation: an absolute floor, a strict win over the best
baseline, and no regression beyond a tolerance against the current champion (skipped when
there is none). Pure: the caller passes validation-split metrics in, a decision comes out,
and every rule explains itself whether it passed or not, so a refusal is never a mystery.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from tasks.config import GateConfig
from tasks.errors import ConfigError


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and the numbers it was based on."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metric: str = ""
    candidate_value: float = math.nan
    best_baseline_name: str = ""
    best_baseline_value: float = math.nan
    champion_value: float | None = None

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
            "set gate.metric to one the evaluation reports"
        )
    return float(metrics[metric])


def decide(
    candidate: Mapping[str, float],
    baselines: Mapping[str, Mapping[str, float]],
    champion: Mapping[str, float] | None,
    config: GateConfig,
) -> GateDecision:
    """Judge `candidate` against the floor, the best baseline and (if any) the champion.

    All metric mappings hold the same split's values (validation, per PROTOCOL.md). A
    missing metric raises ConfigError rather than letting a model through unexamined.
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

    rules: list[tuple[bool, str]] = []
    floor_ok = value >= config.min_metric
    rules.append((
        floor_ok,
        f"{metric} {value:.4f} {'meets' if floor_ok else 'is below'} the floor {config.min_metric:.4f}",
    ))
    beats = value > best_value
    rules.append((
        beats,
        f"{metric} {value:.4f} {'beats' if beats else 'does not beat'} {best_name} {best_value:.4f}",
    ))
    champion_value: float | None = None
    if champion is None:
        rules.append((True, "no champion yet: the first model is judged on the floor and baselines alone"))
    else:
        champion_value = _metric_of(champion, metric, "champion")
        threshold = champion_value - config.champion_tolerance
        holds = value >= threshold
        if holds:
            text = (f"{metric} {value:.4f} holds against champion {champion_value:.4f} "
                    f"(tolerance {config.champion_tolerance:.4f})")
        else:
            text = (f"{metric} {value:.4f} regresses from champion {champion_value:.4f} "
                    f"by more than the tolerance {config.champion_tolerance:.4f}")
        rules.append((holds, text))

    return GateDecision(
        passed=all(ok for ok, _ in rules),
        reasons=[text for _, text in rules],
        metric=metric,
        candidate_value=value,
        best_baseline_name=best_name,
        best_baseline_value=best_value,
        champion_value=champion_value,
    )
