"""Decisions on record: reco.model_decisions on real Postgres and tags on a real MLflow store.

Versions are registered with a tiny models-from-code pyfunc (the registry path is the real
one); the gate, forced, CLI and MLflow-UI decisions are recorded and read back.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import sqlalchemy as sa

from tasks.errors import ConfigError, RegistryError
from tasks.layout import RunLayout
from tests.builders import EMPTY_MODEL_CODE

MODEL, RECO = "decisions_test", "decisions_reco"

@pytest.fixture(scope="module")
def dconfig(config, engine):
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {RECO} cascade"))
    return dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, reco_schema=RECO),
        registry=dataclasses.replace(config.registry, model_name=MODEL),
    )


@pytest.fixture(scope="module")
def register(dconfig, tmp_path_factory):
    """register(tag, passed) -> version: a toy candidate registered through the real registry code."""
    from tasks.registry.store import register_candidate

    root = tmp_path_factory.mktemp("decision-candidates")
    code = root / "toy.py"
    code.write_text(EMPTY_MODEL_CODE)

    def _register(tag: str, passed: bool) -> str:
        model_dir = root / f"model-{tag}"
        model_dir.mkdir()
        (model_dir / "weights.bin").write_bytes(tag.encode())
        run_dir = root / f"run-{tag}"
        run_dir.mkdir()
        return register_candidate(
            dconfig, model_dir=model_dir, run_dir=run_dir, model_code=code,
            evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": passed, "reasons": [tag]},
            lineage={"run_key": f"decisions-{tag}"},
        ).version

    return _register


def _rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            f"select * from {RECO}.model_decisions where model_name = :m order by decision_id"), {"m": MODEL}).mappings()]


def _client(dconfig):
    from mlflow import MlflowClient
    from tasks.registry.store import tracking_uri

    return MlflowClient(tracking_uri(dconfig), registry_uri=tracking_uri(dconfig))


def test_decision_trail_gate_ui_move_cli_promote_and_rollback(dconfig, register, engine):
    from tasks.registry import decisions

    first = register("v1", passed=True)
    gate_id = decisions.record(dconfig, decisions.ModelDecision(
        model_name=MODEL, action="gate", decided_by="gate", actor="airflow run manual__1",
        candidate_version=first, champion_before=None, champion_after=first, passed=True,
        reasons=["ndcg@10 0.1000 meets the floor 0.0000", "ndcg@10 0.1000 beats popularity 0.0500"],
        metrics={"candidate": {"valid": {"ndcg@10": 0.123456}}},
        slices={"candidate": {"valid": {"history_short": {"users": 300, "ndcg@10": 0.0812345}}}},
        run_key="manual__1", decision_key=f"{MODEL}:manual__1",
    ))
    # A retried task records the same decision again: one row, updated in place.
    again = decisions.record(dconfig, decisions.ModelDecision(
        model_name=MODEL, action="gate", decided_by="gate", actor="airflow run manual__1",
        candidate_version=first, champion_before=None, champion_after=first, passed=True,
        reasons=["retried"], run_key="manual__1", decision_key=f"{MODEL}:manual__1",
    ))
    assert again == gate_id
    assert decisions.note_external_move(dconfig, "tester") is None  # the registry agrees with the record

    second = register("v2", passed=False)
    _client(dconfig).set_registered_model_alias(MODEL, "champion", second)  # as the MLflow UI does
    moved = decisions.note_external_move(dconfig, "tester")
    assert moved is not None
    assert decisions.note_external_move(dconfig, "tester") is None  # noticed once

    with pytest.raises(RegistryError, match="no version '7'; existing versions: 1, 2"):
        decisions.promote(dconfig, "7", reason="typo", actor="alice")
    assert decisions.rollback(dconfig, reason="v2 hurts cold users", actor="bob") == first
    assert decisions.promote(dconfig, second, reason="cold-start fix verified", actor="alice") == second

    rows = _rows(engine)
    assert [(r["action"], r["decided_by"], r["actor"], r["candidate_version"], r["champion_before"],
             r["champion_after"], r["passed"]) for r in rows] == [
        ("gate", "gate", "airflow run manual__1", "1", None, "1", True),
        ("external", "mlflow-ui move detected", "tester", "2", "1", "2", None),
        ("rollback", "cli rollback", "bob", "1", "2", "1", None),
        ("promote", "cli promote", "alice", "2", "1", "2", None),
    ]
    assert rows[0]["reasons"] == ["retried"]
    assert rows[2]["operator_reason"] == "v2 hurts cold users"
    assert rows[3]["reasons"] == ["cold-start fix verified (champion 1 -> 2)"]
    assert rows[3]["metrics"]["run"]["valid_ndcg_10"] == pytest.approx(0.1)  # the version's MLflow run metrics

    tags = _client(dconfig).get_model_version(MODEL, "2").tags
    promote_id = rows[3]["decision_id"]
    assert tags["last_decision_id"] == str(promote_id) and tags["last_decision_by"] == "cli promote"
    assert not any(k.startswith("decision_") for k in tags)  # the history is the table's, not the tags'
    first_tags = _client(dconfig).get_model_version(MODEL, "1").tags
    assert first_tags["last_decision_id"] == str(rows[2]["decision_id"]) and first_tags["last_decision_by"] == "cli rollback"

def test_table_and_columns_carry_comments(dconfig, engine, register):
    from tasks.registry import decisions

    with engine.begin() as conn:
        decisions.ensure_table(conn, dconfig)
        decisions.ensure_table(conn, dconfig)  # idempotent
        table_comment = conn.execute(sa.text("select obj_description(to_regclass(:t), 'pg_class')"),
                                     {"t": f"{RECO}.model_decisions"}).scalar()
        missing = conn.execute(sa.text(
            "select a.attname from pg_attribute a where a.attrelid = to_regclass(:t) and a.attnum > 0 "
            "and not a.attisdropped and col_description(a.attrelid, a.attnum) is null"),
            {"t": f"{RECO}.model_decisions"}).scalars().all()
    assert table_comment.startswith("Every decision about which model version is the champion")
    assert missing == []
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text(f"insert into {RECO}.model_decisions (model_name, action, decided_by, actor) "
                             "values ('x', 'vibes', 'me', 'me')"))


def test_force_without_reason_is_refused_before_anything_runs(tmp_path):
    from tasks.contracts import overrides_from_params
    from tasks.pipeline import run_gate

    with pytest.raises(ConfigError, match="force_promote needs a reason"):
        overrides_from_params({"force_promote": True, "reason": "  "})
    assert overrides_from_params({"force_promote": True, "reason": "new catalogue"}) == {}
    evaluated = {"evaluation": {"candidate": {"valid": {"ndcg@10": 0.01}}, "baselines": {"popularity": {"valid": {"ndcg@10": 0.02}}}},
                 "path": str(RunLayout(tmp_path).evaluation), "run_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="force_promote needs a reason"):
        run_gate({}, evaluated, force_promote=True, reason=None)
    assert not RunLayout(tmp_path).decision.exists()
    forced = run_gate({}, evaluated, force_promote=True, reason="new catalogue", user="carol")
    assert forced["passed"] and forced["gate_passed"] is False and forced["forced_by"] == "carol"
    assert json.loads(RunLayout(tmp_path).decision.read_text())["operator_reason"] == "new catalogue"
