"""Promotion end to end with the test run's real tiny model: evaluate (with slices) -> gate -> register
(lineage, decisions) -> materialize; a champion moved by hand in the registry (as the MLflow UI
does) is what the next materialization publishes; the CLI refuses unknown versions and records
promotions and rollbacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.layout import RunLayout

pytestmark = pytest.mark.slow

MODEL, APP, RECO = "promotion_test", "promo_app", "promo_reco"


@pytest.fixture(scope="module")
def overrides(base_overrides, engine, trained_model_dir) -> dict:
    """Own model name and schemas; `promo_app` holds 12 real ML-100K users' histories."""
    interactions = pd.read_parquet(RunLayout(trained_model_dir.parent).snapshot.interactions)
    users = sorted(interactions["user_id"].unique())[:12]
    chosen = interactions[interactions["user_id"].isin(users)]
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {APP} cascade; drop schema if exists {RECO} cascade; "
                             f"create schema {APP}"))
        conn.execute(sa.text(f"create table {APP}.interactions "
                             "(user_id bigint, item_id bigint, rating real, occurred_at timestamptz)"))
        conn.execute(sa.text(f"insert into {APP}.interactions values (:user_id, :item_id, :rating, :occurred_at)"),
                     chosen[["user_id", "item_id", "rating", "occurred_at"]].to_dict("records"))
    return base_overrides | {
        "registry.model_name": MODEL, "database.app_schema": APP, "database.reco_schema": RECO,
        "materialize.top_k": 5, "materialize.similar_top_k": 3, "materialize.batch_users": 64,
    }


def _train_run(root: Path, tmp_path_factory, name: str) -> tuple[dict, dict, dict]:
    """XCom-like (snapshot, dataset, trained) for a run folder reusing the test run's model files."""
    run_dir, trained = tmp_path_factory.mktemp(name), RunLayout(root)
    snapshot = {"path": str(trained.snapshot.root), "logical_date": "1998-05-01T00:00:00+00:00",
                "run_dir": str(run_dir)}
    return snapshot, {"path": str(trained.dataset.root), "run_dir": str(run_dir)}, \
        {"model_dir": str(trained.model.root), "run_dir": str(run_dir)}


def _published_version(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"select distinct model_version from {RECO}.user_recommendations")).scalars())


def _decisions(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            f"select action, decided_by, candidate_version, champion_before, champion_after "
            f"from {RECO}.model_decisions where model_name = :m order by decision_id"), {"m": MODEL})]


def _cli(args: list[str], overrides: dict, capsys) -> tuple[int, str, str]:
    from tasks.cli import main

    sets = [x for key in ("paths.home", "database.url", "registry.tracking_uri", "registry.model_name",
                          "database.reco_schema") for x in ("--set", f"{key}={overrides[key]}")]
    code = main([*args, *sets])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_gate_register_materialize_and_a_hand_moved_champion(overrides, engine, trained_model_dir,
                                                             tmp_path_factory, capsys):
    from mlflow import MlflowClient
    from tasks import pipeline
    from tasks.config import load_config
    from tasks.registry.store import tracking_uri

    config = load_config(overrides)
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    root = trained_model_dir.parent

    # Run 1: no champion yet. The 2-step model may lose to popularity: force it, with a reason.
    snapshot, dataset, trained = _train_run(root, tmp_path_factory, "promo-run-1")
    evaluated = pipeline.run_evaluate(overrides, dataset, trained)
    evaluation = evaluated["evaluation"]
    definitions = evaluation["slices"]["definitions"]["valid"]
    n_users = json.loads(RunLayout(root).dataset.info.read_text())["users"]
    assert sum(definitions[s]["users"] for s in ("history_short", "history_medium", "history_long")) == n_users
    assert definitions["items_head"]["users"] + definitions["items_tail"]["users"] == n_users
    assert set(evaluation["slices"]["candidate"]["valid"]) == set(definitions)
    assert evaluation["slices"]["baselines"]["popularity"]["test"]["items_head"]["users"] == \
        evaluation["slices"]["definitions"]["test"]["items_head"]["users"]
    first_decision = pipeline.run_gate(overrides, evaluated, force_promote=True, reason="bootstrap", user="dana")
    assert first_decision["passed"] and "no champion yet" in " ".join(first_decision["reasons"])
    first = pipeline.run_register(overrides, snapshot=snapshot, trained=trained, evaluated=evaluated,
                                  decision=first_decision, airflow_run_id="manual__promo-1")
    assert first["version"] == "1" and first["champion_moved"] is True

    version = client.get_model_version(MODEL, "1")
    tags = version.tags  # the few people filter by; the whole lineage is on the run
    assert len(tags["snapshot_content_sha256"]) == 64 and tags["git_commit"] and tags["data_as_of"]
    assert tags["last_decision_by"] == ("gate" if first_decision["gate_passed"] else "forced by dana: bootstrap")
    lineage = client.get_run(version.run_id).data.tags
    assert lineage["snapshot_path"] == str(RunLayout(root).snapshot.root)
    assert lineage["snapshot_rows_interactions"].isdigit()
    assert float(lineage["train_seconds"]) > 0 and lineage["config_hash"]

    # Run 2: the champion (v1, the same model) is re-scored on the same split; slices are compared.
    snapshot, dataset, trained = _train_run(root, tmp_path_factory, "promo-run-2")
    evaluated = pipeline.run_evaluate(overrides, dataset, trained)
    evaluation = evaluated["evaluation"]
    assert evaluated["champion_version"] == "1"
    assert evaluation["champion"]["valid"] == pytest.approx(evaluation["candidate"]["valid"])
    second_decision = pipeline.run_gate(overrides, evaluated)
    slice_checks = [c for c in second_decision["checks"] if c["name"].startswith("slice ")]
    assert len(slice_checks) == 8 and all(c["passed"] for c in slice_checks)  # 7 slices + items_new
    second = pipeline.run_register(overrides, snapshot=snapshot, trained=trained, evaluated=evaluated,
                                   decision=second_decision, airflow_run_id="manual__promo-2")
    assert second["version"] == "2"
    experiment = client.get_run(second["run_id"]).info.experiment_id
    compared = {c.info.run_name.split(" (")[0]: c for c in client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{second['run_id']}'")}  # the champion is a run to compare with
    assert compared["champion v1"].data.metrics["valid_ndcg_10"] == pytest.approx(evaluation["champion"]["valid"]["ndcg@10"])
    assert "| champion v1 |" in client.get_model_version(MODEL, "2").description
    champion = "2" if second_decision["passed"] else "1"
    assert second["champion_moved"] is second_decision["passed"]

    published = pipeline.run_materialize(overrides)
    assert published["model_version"] == champion and _published_version(engine) == {champion}

    # Someone moves the alias in the MLflow UI; the next materialization publishes that version.
    other = "1" if champion == "2" else "2"
    client.set_registered_model_alias(MODEL, "champion", other)
    published = pipeline.run_materialize(overrides, airflow_run_id="asset_triggered__x")
    assert published["model_version"] == other and _published_version(engine) == {other}

    # The CLI refuses an unknown version, naming the existing ones, and records what it does.
    code, out, err = _cli(["promote", "9", "--reason", "typo"], overrides, capsys)
    assert code == 1 and out == ""
    assert "model 'promotion_test' has no version '9'; existing versions: 1, 2" in err
    code, out, _ = _cli(["rollback", "--reason", "ui move was a mistake", "--no-publish"], overrides, capsys)
    assert code == 0 and f"rolled back to version {champion}" in out
    code, out, _ = _cli(["promote", other, "--reason", "checked by hand", "--no-publish"], overrides, capsys)
    assert code == 0 and f"version {other} is the champion" in out

    first_by = "gate" if first_decision["gate_passed"] else "forced by dana: bootstrap"
    second_row = ("gate", "gate", "2", "1", champion)
    assert _decisions(engine) == [
        ("gate" if first_decision["gate_passed"] else "force", first_by, "1", None, "1"),
        second_row,
        ("external", "mlflow-ui move detected", other, champion, other),
        ("rollback", "cli rollback", champion, other, champion),
        ("promote", "cli promote", other, champion, other),
    ]
