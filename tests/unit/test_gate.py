"""The promotion gate, on hand-made numbers: every rule, passing and failing, explains itself."""

from __future__ import annotations

import math

import pytest

from tasks.config import GateConfig
from tasks.errors import ConfigError
from tasks.gate import decide

GATE = GateConfig(metric="ndcg@10", min_metric=0.05, champion_tolerance=0.005)
BASELINES = {"popularity": {"ndcg@10": 0.0567, "hr@10": 0.11}, "random": {"ndcg@10": 0.0061}}


def test_first_model_passes_on_floor_and_baselines_alone():
    decision = decide({"ndcg@10": 0.1234}, BASELINES, None, GATE)
    assert decision.passed
    assert decision.reasons == [
        "ndcg@10 0.1234 meets the floor 0.0500",
        "ndcg@10 0.1234 beats popularity 0.0567",
        "no champion yet: the first model is judged on the floor and baselines alone",
    ]
    assert decision.best_baseline_name == "popularity"
    assert decision.best_baseline_value == pytest.approx(0.0567)
    assert decision.champion_value is None
    assert decision.to_dict() == {
        "passed": True,
        "reasons": decision.reasons,
        "metric": "ndcg@10",
        "candidate_value": 0.1234,
        "best_baseline_name": "popularity",
        "best_baseline_value": 0.0567,
        "champion_value": None,
    }


def test_below_floor_fails_even_when_beating_baselines():
    gate = GateConfig(metric="ndcg@10", min_metric=0.2, champion_tolerance=0.005)
    decision = decide({"ndcg@10": 0.1234}, BASELINES, None, gate)
    assert not decision.passed
    assert decision.reasons[0] == "ndcg@10 0.1234 is below the floor 0.2000"
    assert decision.reasons[1] == "ndcg@10 0.1234 beats popularity 0.0567"
    assert decision.summary().startswith("gate REFUSED: ndcg@10 0.1234 is below the floor")


def test_must_beat_the_best_baseline_strictly():
    tie = decide({"ndcg@10": 0.0567}, BASELINES, None, GATE)
    assert not tie.passed
    assert tie.reasons[1] == "ndcg@10 0.0567 does not beat popularity 0.0567"
    worse = decide({"ndcg@10": 0.03}, {"random": {"ndcg@10": 0.01}, "popularity": {"ndcg@10": 0.04}},
                   None, GateConfig(min_metric=0.0))
    assert not worse.passed
    assert worse.best_baseline_name == "popularity"


def test_champion_within_tolerance_passes_and_beyond_fails():
    champion = {"ndcg@10": 0.1300}
    slightly_worse = decide({"ndcg@10": 0.1270}, BASELINES, champion, GATE)
    assert slightly_worse.passed
    assert slightly_worse.champion_value == pytest.approx(0.13)
    assert slightly_worse.reasons[2] == "ndcg@10 0.1270 holds against champion 0.1300 (tolerance 0.0050)"

    regressed = decide({"ndcg@10": 0.1200}, BASELINES, champion, GATE)
    assert not regressed.passed
    assert regressed.reasons[2] == (
        "ndcg@10 0.1200 regresses from champion 0.1300 by more than the tolerance 0.0050"
    )
    better = decide({"ndcg@10": 0.1500}, BASELINES, champion, GATE)
    assert better.passed


def test_uses_the_configured_metric():
    gate = GateConfig(metric="hr@10", min_metric=0.0, champion_tolerance=0.0)
    decision = decide({"ndcg@10": 0.01, "hr@10": 0.2}, {"popularity": {"hr@10": 0.11}}, {"hr@10": 0.2}, gate)
    assert decision.passed
    assert decision.reasons[1] == "hr@10 0.2000 beats popularity 0.1100"


@pytest.mark.parametrize(
    "candidate, baselines, champion, missing",
    [
        ({"hr@10": 0.2}, BASELINES, None, "candidate"),
        ({"ndcg@10": 0.2}, {"popularity": {"hr@10": 0.1}}, None, "baseline popularity"),
        ({"ndcg@10": 0.2}, BASELINES, {"hr@10": 0.1}, "champion"),
    ],
)
def test_missing_metric_is_a_config_error_never_a_pass(candidate, baselines, champion, missing):
    with pytest.raises(ConfigError, match=f"missing from the {missing}'s metrics"):
        decide(candidate, baselines, champion, GATE)


def test_no_baselines_is_a_config_error():
    with pytest.raises(ConfigError, match="no baselines"):
        decide({"ndcg@10": 0.2}, {}, None, GATE)


def test_nan_candidate_never_passes():
    decision = decide({"ndcg@10": math.nan}, BASELINES, None, GateConfig(min_metric=0.0))
    assert not decision.passed
    assert "nan" in decision.reasons[0]
