"""The promotion gate, on hand-made numbers: every rule, passing, failing or skipped, explains itself."""

from __future__ import annotations

import math

import pytest

from tasks.config import GateConfig, parse_floors
from tasks.errors import ConfigError
from tasks.registry.gate import decide

GATE = GateConfig(metric="ndcg@10", min_metric=0.05, champion_tolerance=0.005)
BASELINES = {"popularity": {"ndcg@10": 0.0567, "hr@10": 0.11}, "random": {"ndcg@10": 0.0061}}


def _slices(**ndcg_and_users: tuple[float, int]) -> dict:
    return {name: {"users": users, "ndcg@10": value, "hr@10": 2 * value} for name, (value, users) in ndcg_and_users.items()}


# The champion's slices; candidates below differ from these in one slice at a time.
CHAMPION_SLICES = _slices(history_short=(0.08, 300), history_long=(0.15, 300), items_cold=(0.01, 12))


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
        "checks": [
            {"name": "floor ndcg@10", "passed": True, "reason": decision.reasons[0], "skipped": False},
            {"name": "beats baseline", "passed": True, "reason": decision.reasons[1], "skipped": False},
            {"name": "champion", "passed": True, "reason": decision.reasons[2], "skipped": True},
        ],
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
    slices = {"candidate_slices": CHAMPION_SLICES, "champion_slices": CHAMPION_SLICES}
    slightly_worse = decide({"ndcg@10": 0.1270}, BASELINES, champion, GATE, **slices)
    assert slightly_worse.passed
    assert slightly_worse.champion_value == pytest.approx(0.13)
    assert slightly_worse.reasons[2] == "ndcg@10 0.1270 holds against champion 0.1300 (tolerance 0.0050)"

    regressed = decide({"ndcg@10": 0.1200}, BASELINES, champion, GATE, **slices)
    assert not regressed.passed
    assert regressed.reasons[2] == (
        "ndcg@10 0.1200 regresses from champion 0.1300 by more than the tolerance 0.0050"
    )
    better = decide({"ndcg@10": 0.1500}, BASELINES, champion, GATE, **slices)
    assert better.passed


def test_uses_the_configured_metric():
    gate = GateConfig(metric="hr@10", min_metric=0.0, champion_tolerance=0.0)
    decision = decide({"ndcg@10": 0.01, "hr@10": 0.2}, {"popularity": {"hr@10": 0.11}}, {"hr@10": 0.2}, gate,
                      candidate_slices=CHAMPION_SLICES, champion_slices=CHAMPION_SLICES)
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


def test_extra_floors_are_checked_and_a_missing_one_never_passes():
    gate = GateConfig(metric="ndcg@10", min_metric=0.05, floors="hr@10=0.25, mrr@10=0.01")
    decision = decide({"ndcg@10": 0.1234, "hr@10": 0.2, "mrr@10": 0.05}, BASELINES, None, gate)
    assert not decision.passed
    assert decision.reasons[:3] == [
        "ndcg@10 0.1234 meets the floor 0.0500",
        "hr@10 0.2000 is below the floor 0.2500",
        "mrr@10 0.0500 meets the floor 0.0100",
    ]
    assert [c.name for c in decision.checks if not c.passed] == ["floor hr@10"]
    with pytest.raises(ConfigError, match="'mrr@10' is missing from the candidate's metrics"):
        decide({"ndcg@10": 0.1234, "hr@10": 0.3}, BASELINES, None, gate)


@pytest.mark.parametrize("text", ["hr@10", "hr@10=abc", "=0.1", "hr@10=nan"])
def test_malformed_floors_are_config_errors_when_the_config_is_built(text):
    with pytest.raises(ConfigError, match="gate.floors entry"):
        GateConfig(floors=text)


def test_parse_floors():
    assert parse_floors("") == {}
    assert parse_floors(" hr@10=0.05 ,ndcg@20=1e-2,") == {"hr@10": 0.05, "ndcg@20": 0.01}


def test_slice_regression_fails_even_when_the_overall_metric_holds():
    candidate_slices = _slices(history_short=(0.05, 300), history_long=(0.16, 300), items_cold=(0.0, 12))
    decision = decide({"ndcg@10": 0.14}, BASELINES, {"ndcg@10": 0.13}, GATE,
                      candidate_slices=candidate_slices, champion_slices=CHAMPION_SLICES)
    assert not decision.passed
    assert decision.reasons[3:] == [
        "slice history_short (300 users): ndcg@10 0.0500 regresses from champion 0.0800 by more than the tolerance 0.0200",
        "slice history_long (300 users): ndcg@10 0.1600 holds against champion 0.1500 (tolerance 0.0200)",
        "slice items_cold: 12 users, fewer than gate.min_slice_users=50; check skipped",
    ]
    assert [(c.name, c.passed, c.skipped) for c in decision.checks[3:]] == [
        ("slice history_short", False, False), ("slice history_long", True, False), ("slice items_cold", True, True),
    ]
    # Within the slice tolerance (0.02) the same short-history drop passes.
    mild = _slices(history_short=(0.065, 300), history_long=(0.15, 300), items_cold=(0.0, 12))
    assert decide({"ndcg@10": 0.14}, BASELINES, {"ndcg@10": 0.13}, GATE,
                  candidate_slices=mild, champion_slices=CHAMPION_SLICES).passed


def test_slice_size_minimum_is_configurable():
    champion_slices = _slices(items_cold=(0.05, 12))
    candidate_slices = _slices(items_cold=(0.0, 12))
    skipped = decide({"ndcg@10": 0.14}, BASELINES, {"ndcg@10": 0.13}, GATE,
                     candidate_slices=candidate_slices, champion_slices=champion_slices)
    assert skipped.passed
    judged = decide({"ndcg@10": 0.14}, BASELINES, {"ndcg@10": 0.13}, GateConfig(min_metric=0.05, min_slice_users=10),
                    candidate_slices=candidate_slices, champion_slices=champion_slices)
    assert not judged.passed
    assert judged.reasons[-1] == ("slice items_cold (12 users): ndcg@10 0.0000 regresses from champion 0.0500 "
                                  "by more than the tolerance 0.0200")


def test_missing_slices_fail_instead_of_passing_silently():
    no_slices = decide({"ndcg@10": 0.14}, BASELINES, {"ndcg@10": 0.13}, GATE)
    assert not no_slices.passed
    assert no_slices.reasons[-1].startswith("slice checks could not run: the candidate has no per-slice metrics")
    partial = decide({"ndcg@10": 0.14}, BASELINES, {"ndcg@10": 0.13}, GATE,
                     candidate_slices=_slices(history_short=(0.08, 300)), champion_slices=CHAMPION_SLICES)
    assert not partial.passed
    assert "slice history_long: the candidate has no metrics for it" in partial.reasons
    with pytest.raises(ConfigError, match="missing from the champion slice history_short's metrics"):
        decide({"ndcg@10": 0.14}, BASELINES, {"ndcg@10": 0.13}, GATE,
               candidate_slices=CHAMPION_SLICES, champion_slices={"history_short": {"users": 300}})


def test_first_model_ignores_slices():
    decision = decide({"ndcg@10": 0.1234}, BASELINES, None, GATE, candidate_slices=CHAMPION_SLICES)
    assert decision.passed and len(decision.checks) == 3


def test_gate_baselines_are_checked_when_the_config_loads():
    from tasks.config import load_config
    from tasks.errors import ConfigError

    assert load_config({"gate.baselines": " popularity , itemknn,ease"}).gate.baseline_names() == [
        "popularity", "itemknn", "ease"]
    with pytest.raises(ConfigError, match="unknown: sasrec"):
        load_config({"gate.baselines": "popularity,sasrec"})
    with pytest.raises(ConfigError, match="comma-separated list"):
        load_config({"gate.baselines": ""})


def test_the_verdict_names_the_failed_checks_and_what_stays_live():
    from tasks.registry.gate import verdict

    slices = {"candidate_slices": CHAMPION_SLICES, "champion_slices": CHAMPION_SLICES}
    refused = decide({"ndcg@10": 0.1000}, BASELINES, {"ndcg@10": 0.1200}, GATE, **slices).to_dict()
    regressed = "ndcg@10 0.1000 regresses from champion 0.1200 by more than the tolerance 0.0050"
    assert verdict(refused, version="3", champion_before="2", promoted=False) == (
        f"the gate refused v3: {regressed}; the champion stays v2")  # only the failed check is named
    first = decide({"ndcg@10": 0.0400}, BASELINES, None, GATE).to_dict()
    assert verdict(first, version="1", champion_before=None, promoted=False) == (
        "the gate refused v1: ndcg@10 0.0400 is below the floor 0.0500; ndcg@10 0.0400 does not beat "
        "popularity 0.0567; there is no champion yet, so nothing is published")

    passed = decide({"ndcg@10": 0.1234}, BASELINES, {"ndcg@10": 0.1200}, GATE, **slices).to_dict()
    assert verdict(passed, version="3", champion_before="2", promoted=True) == (
        "the gate passed v3: it is the champion (was v2)")
    forced = refused | {"force_promote": True, "gate_passed": False, "forced_by": "dana",
                        "operator_reason": "fixes the cold-start bug"}
    assert verdict(forced, version="3", champion_before="2", promoted=True) == (
        f"the gate refused v3 ({regressed}), but dana forced it: \"fixes the cold-start bug\"; "
        "v3 is the champion (was v2)")
