"""The run report after a refused gate: it states the verdict and never sends the reader to a
materialization that has nothing to publish (real Postgres, a `reco` schema with nothing in it)."""

from __future__ import annotations

import json

from tasks.config import GateConfig, load_config
from tasks.layout import RunLayout
from tasks.registry.gate import decide
from tasks.report import render_report

BASELINES = {"popularity": {"ndcg@10": 0.0452}, "ease": {"ndcg@10": 0.0861}}


def _refused_run(tmp_path, *, version: str, champion_before: str | None) -> RunLayout:
    run = RunLayout(tmp_path / f"manual__refused-v{version}")
    run.root.mkdir()
    champion = {"ndcg@10": 0.1346} if champion_before else None
    slices = {"history_long": {"users": 300, "ndcg@10": 0.15}}
    decision = decide({"ndcg@10": 0.0700}, BASELINES, champion, GateConfig(baselines="popularity,ease"),
                      candidate_slices=slices, champion_slices=slices)
    assert not decision.passed
    run.decision.write_text(json.dumps(decision.to_dict() | {"force_promote": False, "gate_passed": False}))
    run.registered.write_text(json.dumps({"version": version, "promoted": False, "champion_before": champion_before,
                                          "champion_moved": False, "run_id": "0123abcd"}))
    return run


def test_a_refusal_under_a_champion_says_the_champion_stays(base_overrides, engine, tmp_path):
    config = load_config(base_overrides | {"database.reco_schema": "report_reco_unpublished"})
    report = render_report(config, _refused_run(tmp_path, version="4", champion_before="3").root).splitlines()

    assert "6. Gate REFUSED:" in report
    assert "7. Registered prismrec version 4 as challenger (champion unchanged); MLflow run 0123abcd" in report
    assert ("   The gate refused v4: ndcg@10 0.0700 does not beat ease 0.0861; ndcg@10 0.0700 regresses from "
            "champion 0.1346 by more than the tolerance 0.0050; the champion stays v3") in report
    assert report[-1] == "8. Published: nothing yet (run `prismrec materialize` to publish the champion)"


def test_a_refused_first_model_is_not_sent_to_materialize(base_overrides, engine, tmp_path):
    config = load_config(base_overrides | {"database.reco_schema": "report_reco_unpublished"})
    report = render_report(config, _refused_run(tmp_path, version="1", champion_before=None).root).splitlines()

    assert ("   The gate refused v1: ndcg@10 0.0700 does not beat ease 0.0861; there is no champion yet, "
            "so nothing is published") in report
    assert report[-1] == ("8. Published: nothing, and `prismrec materialize` has no champion to publish; to "
                          "publish v1 anyway, overrule the gate: prismrec promote 1 --reason TEXT")


def test_the_cold_slices_are_reported_and_an_empty_one_says_so():
    from tasks.report import _unseen_line

    evaluation = {"slices": {"candidate": {"test": {
        "items_unseen": {"users": 0, "hr@10": 0.0},
        "items_new": {"users": 13, "hr@10": 0.0769, "median_rank": 93.0}}}}}
    assert _unseen_line(evaluation) == [
        "   targets unseen in training, test: no such users in this split",
        "   new items (placed by their text), test, 13 users: PrismRec HR@10 0.0769 (median rank 93)"]


def test_the_trend_prior_is_reported_with_what_validation_chose():
    from tasks.report import _trend_line

    assert _trend_line({}) == []
    fit = {"validation_users": 6040, "ndcg@10": {"none": 0.21224, "60 days x 0.3": 0.21512, "7 days x 0.1": 0.2125}}
    assert _trend_line({"window_days": 60, "weight": 0.3, "fit": fit}) == [
        "   trend prior: the last 60 days' interactions, weight 0.3: validation NDCG@10 0.2122 -> 0.2151 on 6,040 users"]
    assert _trend_line({"window_days": 0, "weight": 0.0, "fit": fit}) == [
        "   trend prior: none (no window and weight validated above the model alone, 0.2122, on 6,040 users)"]


def test_the_transition_prior_is_reported_with_what_validation_chose(tmp_path):
    from tasks.model.transitions import TransitionPrior
    from tasks.report import _transition_line

    assert _transition_line(tmp_path / "none.npz") == []
    fit = {"validation_users": 6040, "ndcg@10": {"0.0": 0.21524, "0.1": 0.2170, "0.2": 0.21931}}
    TransitionPrior(0.2, fit=fit).save(tmp_path / "chosen.npz")
    assert _transition_line(tmp_path / "chosen.npz") == [
        "   transition prior: weight 0.2: validation NDCG@10 0.2152 -> 0.2193 on 6,040 users"]
    TransitionPrior(0.0, fit=fit).save(tmp_path / "zero.npz")
    assert _transition_line(tmp_path / "zero.npz") == [
        "   transition prior: none (no weight validated above the model alone, 0.2152, on 6,040 users)"]


def test_a_fitted_new_item_head_is_reported_and_none_says_nothing():
    from tasks.report import _head_line

    assert _head_line({}) == []
    head = {"scale": 0.5076, "items": {"interactions_0": 3.216, "age_0-0": 0.657},
            "fitted_on": {"cutoff": "2000-06-06T21:58:09+00:00", "cases": {"cold": 692, "warm": 1090}, "seconds": 181.1}}
    assert _head_line(head) == [  # fitted before the rehearsal was named: a retrained model
        "   new-item head fitted on a rehearsal with a retrained model (titles from 2000-06-06 on new; 692 cold and "
        "1,090 warm cases, 181s): score x0.51, just added +3.22, newest year +0.66"]
    head["fitted_on"] |= {"rehearsal": "model", "seconds": 18.9}
    assert _head_line(head)[0].startswith("   new-item head fitted on a rehearsal with the run's model (titles from "
                                          "2000-06-06 on new; 692 cold and 1,090 warm cases, 19s)")
    skipped = {"fitted_on": {"cutoff": "2000-01-01T00:00:00+00:00", "rehearsal": "model",
                             "skipped": "too few interactions before the cut-off"}}
    assert _head_line(skipped) == [
        "   new-item head not fitted (too few interactions before the cut-off, titles from 2000-01-01 on new): "
        "new items scored by their text alone"]
