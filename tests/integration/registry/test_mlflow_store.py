"""The registry on a real SQLite MLflow store: runs, versions, aliases, promotion history.

Until mlflow/prismrec_model.py exists these tests log a tiny models-from-code pyfunc of
their own; the registry code path (log_model with artifacts, register, aliases) is the same.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tasks.errors import NoChampionError, RegistryError
from tasks.layout import ModelFiles, RunLayout

TOY_MODEL_CODE = '''
import json
from pathlib import Path

import mlflow
import pandas as pd


class ToyModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.scores = json.loads((Path(context.artifacts["model_dir"]) / "scores.json").read_text())

    def predict(self, context, model_input: pd.DataFrame, params=None):
        top_k = int((params or {}).get("top_k", 10))
        ranked = sorted(self.scores.items(), key=lambda kv: -kv[1])
        rows = []
        for user_id, history in zip(model_input["user_id"], model_input["history"]):
            seen = {int(i) for i in history}
            fresh = [(int(i), s) for i, s in ranked if int(i) not in seen][:top_k]
            rows += [(int(user_id), r, i, s, 0, "toy") for r, (i, s) in enumerate(fresh, 1)]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "interest_id", "explanation"])


mlflow.models.set_model(ToyModel())
'''


def _evaluation(ndcg: float, champion: float | None) -> dict:
    candidate = {"valid": {"ndcg@10": ndcg, "hr@10": 2 * ndcg}, "test": {"ndcg@10": ndcg - 0.01, "hr@10": 0.2}}
    popularity = {"valid": {"ndcg@10": 0.05, "hr@10": 0.1}, "test": {"ndcg@10": 0.04, "hr@10": 0.09}}
    return {
        "candidate": candidate,
        "slices": {"candidate": {"valid": {"history_short": {"users": 300, "ndcg@10": ndcg / 2}}}, "champion": None},
        "baselines": {"popularity": popularity},
        "champion": None if champion is None else {"valid": {"ndcg@10": champion}, "test": {"ndcg@10": champion}},
    }


def _model_dir(root: Path, tag: str) -> Path:
    model_dir = root / f"model-{tag}"
    model_dir.mkdir(parents=True)
    (model_dir / "scores.json").write_text(json.dumps({"10": 0.9, "20": 0.5, "30": 0.1}))
    (model_dir / "weights.bin").write_bytes(tag.encode() * 100)
    ModelFiles(model_dir).history.write_text(json.dumps([
        {"epoch": 1, "train_loss": 2.0, "valid_ndcg@10": 0.08},
        {"epoch": 2, "train_loss": 1.5, "valid_ndcg@10": 0.11},
    ]))
    return model_dir


def _run_dir(root: Path, tag: str) -> Path:
    run = RunLayout(root / f"run-{tag}")
    run.snapshot.root.mkdir(parents=True)
    run.snapshot.quality_report.write_text(json.dumps({
        "passed": True, "tag": tag,
        "drift": {"metrics": {"item_popularity_js": 0.125, "new_item_share": 0.25}, "breaches": []},
    }))
    return run.root


def _register(config, root: Path, code: Path, tag: str, passed: bool, champion: float | None):
    from tasks.registry.store import register_candidate

    return register_candidate(
        config,
        model_dir=_model_dir(root, tag),
        run_dir=_run_dir(root, tag),
        evaluation=_evaluation(0.12, champion),
        decision={"passed": passed, "reasons": [f"reason one for {tag}", "reason two"]},
        lineage={"run_key": f"manual__{tag}", "config_digest": "abc123"},
        model_code=code,
    )


@pytest.fixture(scope="module")
def registry_config(config):
    return dataclasses.replace(config, registry=dataclasses.replace(config.registry, model_name="registry_test"))


@pytest.fixture(scope="module")
def toy_code(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy-code") / "toy_model.py"
    path.write_text(TOY_MODEL_CODE)
    return path


@pytest.fixture(scope="module")
def versions(registry_config, toy_code, tmp_path_factory):
    """Three candidates: v1 passes (first champion), v2 is refused, v3 passes."""
    from mlflow import MlflowClient
    from tasks.registry.store import tracking_uri

    root = tmp_path_factory.mktemp("candidates")
    client = MlflowClient(tracking_uri(registry_config), registry_uri=tracking_uri(registry_config))
    first = _register(registry_config, root, toy_code, "v1", passed=True, champion=None)
    after_first = {a: str(client.get_model_version_by_alias("registry_test", a).version) for a in ("champion", "challenger")}
    second = _register(registry_config, root, toy_code, "v2", passed=False, champion=0.12)
    after_second = {a: str(client.get_model_version_by_alias("registry_test", a).version) for a in ("champion", "challenger")}
    third = _register(registry_config, root, toy_code, "v3", passed=True, champion=0.12)
    return {"registered": [first, second, third], "after_first": after_first, "after_second": after_second,
            "root": root, "client": client}


def test_tracking_uri_precedence(config, monkeypatch):
    from tasks.registry.store import tracking_uri

    assert tracking_uri(config) == config.registry.tracking_uri
    bare = dataclasses.replace(config, registry=dataclasses.replace(config.registry, tracking_uri=None))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(bare) == f"sqlite:///{config.paths.home / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri(bare) == "http://mlflow.internal:5000"


def test_aliases_move_only_when_the_gate_passed(versions, registry_config):
    from tasks.registry.store import champion_version

    assert [v.version for v in versions["registered"]] == ["1", "2", "3"]
    assert [v.promoted for v in versions["registered"]] == [True, False, True]
    assert versions["after_first"] == {"champion": "1", "challenger": "1"}
    assert versions["after_second"] == {"champion": "1", "challenger": "2"}
    client = versions["client"]
    assert str(client.get_model_version_by_alias("registry_test", "challenger").version) == "3"
    assert champion_version(registry_config) == "3"

    refused = client.get_model_version("registry_test", "2")
    assert refused.tags == {"gate_passed": "false", "run_key": "manual__v2"}  # only what people filter by
    run_tags = client.get_run(refused.run_id).data.tags  # the whole lineage stays on the run
    assert run_tags["gate_reasons"] == "reason one for v2; reason two" and run_tags["config_digest"] == "abc123"
    card = client.get_model_version("registry_test", "3").description
    assert "v3" in card and "test NDCG@10 0.1100" in card and "champion since registration (was v1)" in card
    assert "reason one for v3" in card and "prismrec promote 3" in card


def test_run_holds_params_metrics_curves_and_artifacts(versions, registry_config):
    client = versions["client"]
    run_id = versions["registered"][1].run_id
    run = client.get_run(run_id)
    assert run.data.params["registry.model_name"] == "registry_test"
    assert run.data.params["gate.metric"] == "ndcg@10"
    metrics = run.data.metrics
    assert metrics["valid_ndcg_10"] == pytest.approx(0.12)
    assert metrics["test_hr_10"] == pytest.approx(0.2)
    assert not any(k.startswith(("popularity", "champion")) for k in metrics)  # those are runs of their own
    assert metrics["slice/valid/history_short/ndcg_10"] == pytest.approx(0.06)  # per-slice metrics, grouped
    assert metrics["slice/valid/history_short/users"] == 300
    assert metrics["drift/item_popularity_js"] == pytest.approx(0.125)  # the data gate's drift report
    assert metrics["drift/new_item_share"] == pytest.approx(0.25)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "decision.json", "evaluation.json", "quality_report.json"} <= artifacts
    decision = json.loads(Path(client.download_artifacts(run_id, "decision.json")).read_text())
    assert decision == {"passed": False, "reasons": ["reason one for v2", "reason two"]}
    logged_config = json.loads(Path(client.download_artifacts(run_id, "config.json")).read_text())
    assert logged_config == registry_config.to_dict()
    # Artifacts of the local store live under the project home, next to mlflow.db.
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == registry_config.paths.mlflow_artifacts.as_uri()


def test_model_is_logged_with_pinned_requirements(versions):
    import mlflow

    model_info = mlflow.models.get_model_info("models:/registry_test/1")
    assert [p.name for p in model_info.signature.params.params] == ["top_k", "interest_balance", "max_new_items"]
    client = versions["client"]
    root = client.get_model_version_download_uri("registry_test", "1")
    requirements = Path(mlflow.artifacts.download_artifacts(f"{root}/requirements.txt")).read_text().split()
    assert {r.split("==")[0] for r in requirements} == {"torch", "transformers", "mlflow", "numpy", "pandas"}
    assert all("==" in r and "+" not in r for r in requirements)


def test_champion_model_dir_returns_the_champions_files(versions, registry_config):
    from tasks.registry.store import champion_model_dir

    version, folder = champion_model_dir(registry_config)
    assert version == "3"
    assert folder.is_relative_to(registry_config.paths.home)
    assert sorted(p.name for p in folder.iterdir()) == sorted([ModelFiles(folder).history.name, "scores.json", "weights.bin"])
    assert (folder / "weights.bin").read_bytes() == b"v3" * 100
    again = champion_model_dir(registry_config)
    assert again == (version, folder)


def test_load_champion_predicts(versions, registry_config):
    import pandas as pd

    from tasks.registry.store import load_champion

    version, model = load_champion(registry_config)
    assert version == "3"
    out = model.predict(pd.DataFrame({"user_id": [7], "history": [[10]]}), params={"top_k": 2})
    assert out["item_id"].tolist() == [20, 30]


def test_no_champion(config):
    from tasks.registry.store import (
        champion_model_dir,
        champion_version,
        load_champion,
        promote,
        rollback,
    )

    empty = dataclasses.replace(config, registry=dataclasses.replace(config.registry, model_name="never_trained"))
    assert champion_version(empty) is None
    assert champion_model_dir(empty) is None
    with pytest.raises(NoChampionError, match="prismrec train.*prismrec promote VERSION"):
        load_champion(empty)
    with pytest.raises(RegistryError, match="no versions"):
        promote(empty, "1")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(empty)


def test_a_retried_registration_reuses_its_version(versions, registry_config, toy_code):
    """The register task retries: the same run key must not create a second version."""
    from tasks.registry.store import register_candidate

    root = versions["root"]
    again = register_candidate(
        registry_config, model_dir=root / "model-v2", run_dir=root / "run-v2", evaluation=_evaluation(0.12, 0.12),
        decision={"passed": False, "reasons": ["retry"]}, lineage={"run_key": "manual__v2"}, model_code=toy_code,
    )
    assert again.version == "2" and again.run_id == versions["registered"][1].run_id and not again.promoted
    client = versions["client"]
    assert len(client.search_model_versions("name = 'registry_test'")) == 3
    assert str(client.get_model_version_by_alias("registry_test", "challenger").version) == "2"
    client.set_registered_model_alias("registry_test", "challenger", "3")  # as the later run left it


def test_lineage_of_a_real_run_folder(config, tmp_path):
    from tasks.registry.lineage import build_lineage, content_hash

    run = RunLayout(tmp_path / "run")
    files = run.snapshot
    snapshot_dir = files.root
    snapshot_dir.mkdir(parents=True)
    sha = {files.interactions.name: "aa", files.items.name: "bb", files.users.name: "cc"}
    # The data gate rewrote the interactions: the manifest (996 rows) wins over the XCom (1000).
    files.manifest.write_text(json.dumps({"counts": {"interactions": 996, "items": 50, "users": 20},
                                          "sha256": sha, "as_of": "1998-04-22T23:10:38+00:00"}))
    files.quality_report.write_text(json.dumps(
        {"summary": {"passed": True, "failed": 0, "rejected": {"interactions": 4}}}))
    model_dir = run.model.root
    model_dir.mkdir()
    run.model.summary.write_text(json.dumps({"train_seconds": 12.345, "epochs_run": 3}))
    xcom = {"path": str(snapshot_dir), "logical_date": "1998-04-22T23:59:59+00:00",
            "counts": {"interactions": 1000}, "sha256": {files.interactions.name: "stale"}}
    lineage = build_lineage(config, snapshot=xcom, model_dir=model_dir, run_dir=tmp_path / "run")
    commit = lineage.pop("git_commit")
    assert commit == "unknown" or len(commit.split("+")[0]) == 40
    assert lineage == {
        "snapshot_path": str(snapshot_dir),
        "snapshot_content_sha256": content_hash(sha),
        "snapshot_sha256": "aa",
        "logical_date": "1998-04-22T23:59:59+00:00",
        "data_as_of": "1998-04-22T23:10:38+00:00",  # a replay's end, earlier than the logical date
        "data_gate_passed": "true",
        "data_gate_rejected_rows": "4",
        "data_gate_failed_expectations": "0",
        "config_digest": config.digest(),
        "config_hash": lineage["config_hash"],
        "train_seconds": "12.3",
        "epochs_run": "3",
        "run_key": "run",
        "snapshot_rows_interactions": "996",
        "snapshot_rows_items": "50",
        "snapshot_rows_users": "20",
        "snapshot_interactions": "996",
    }
    assert len(lineage["config_hash"]) == 12
    assert content_hash(sha) == content_hash(dict(reversed(sha.items())))  # order-free


def test_promote_and_rollback_keep_history(versions, registry_config):
    """Runs last in this module: it moves the champion the other tests read."""
    from tasks.registry.store import champion_version, promote, rollback

    client = versions["client"]
    with pytest.raises(RegistryError, match="no version '99'; existing versions: 1, 2, 3"):
        promote(registry_config, "99")
    assert champion_version(registry_config) == "3"  # a refused promotion changes nothing

    assert promote(registry_config, "2", reason="hotfix for cold users") == "2"
    assert json.loads(client.get_registered_model("registry_test").tags["champion_history"])[-2:] == ["3", "2"]
    assert promote(registry_config, "2") == "2"  # already champion: no new history entry

    # A promotion made in the MLflow UI (alias moved directly) is rolled back just the same.
    client.set_registered_model_alias("registry_test", "champion", "1")
    assert rollback(registry_config) == "2"
    assert rollback(registry_config) == "3"
    assert rollback(registry_config) == "1"
    assert champion_version(registry_config) == "1"
    with pytest.raises(RegistryError, match="nothing to roll back to: version 1"):
        rollback(registry_config)
    assert champion_version(registry_config) == "1"
    assert str(client.get_model_version_by_alias("registry_test", "challenger").version) == "3"
