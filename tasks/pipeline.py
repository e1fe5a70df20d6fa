"""The glue between orchestration and the stages: one plain function per DAG task.

The DAGs and the CLI call exactly these. Each takes the run's config overrides (dotted keys)
plus the small JSON values earlier tasks returned, calls the stage function of the pipeline
contract, and returns a small JSON-able dict for XCom: paths, counts, versions, never data.
A training run keeps everything in its run folder `config.paths.runs / <run key>`:
`snapshot/`, `dataset/`, `model/`, `evaluation.json`, `decision.json`, `registered.json`.
Stage modules are imported inside the functions so that importing this module stays light.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from tasks.config import load_config

log = logging.getLogger(__name__)

# DAG Param name -> dotted config key. The CLI flags set the same Params, so one mapping
# serves both; the `overrides` Param carries any other dotted key as-is.
PARAM_OVERRIDES: dict[str, str] = {
    "epochs": "train.epochs",
    "n_interests": "train.n_interests",
    "nproc": "train.nproc",
    "max_users": "source.max_users",
}

SNAPSHOT, DATASET, MODEL = "snapshot", "dataset", "model"


def overrides_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from a DAG run's Params; unset (None) Params leave lower layers alone."""
    overrides = {str(k): v for k, v in dict(params.get("overrides") or {}).items()}
    for name, key in PARAM_OVERRIDES.items():
        if params.get(name) is not None:
            overrides[key] = params[name]
    return overrides


def run_key_of(run_id: str) -> str:
    """A filesystem-safe folder name for an Airflow run_id (`manual__2024-01-01T00:00:00+00:00`)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._")
    return key or "run"


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def run_extract(overrides: Mapping[str, Any], run_key: str, logical_date: datetime) -> dict[str, Any]:
    """Snapshot `app` as of `logical_date` into `<run folder>/snapshot`."""
    from tasks.extract import extract_snapshot

    config = load_config(overrides)
    run_dir = config.paths.runs / run_key_of(run_key)
    snapshot = extract_snapshot(config, logical_date, run_dir / SNAPSHOT)
    log.info("snapshot of %s in %s", snapshot.counts, snapshot.path)
    return {**snapshot.to_dict(), "run_key": run_dir.name, "run_dir": str(run_dir)}


def run_quality(overrides: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The data-quality gate on the snapshot; raises DataQualityError (the run stops there)."""
    from tasks.quality import check_snapshot

    config = load_config(overrides)
    report = check_snapshot(config, Path(snapshot["path"]), datetime.fromisoformat(snapshot["logical_date"]))
    log.info("%s", report.summary())
    return {"passed": report.passed, "summary": report.summary(), "report_path": str(report.report_path)}


def run_prepare(overrides: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """5-core filter, sequences and leave-one-out split into `<run folder>/dataset`."""
    from tasks.prepare import prepare_dataset

    config = load_config(overrides)
    run_dir = Path(snapshot["run_dir"])
    info = prepare_dataset(config, Path(snapshot["path"]), run_dir / DATASET)
    return {**info.to_dict(), "run_dir": str(run_dir)}


def run_train(overrides: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    """Fine-tune under torchrun into `<run folder>/model`; returns the model folder and epochs run."""
    from tasks.train import launch_training

    config = load_config(overrides)
    run_dir = Path(dataset["run_dir"])
    model_dir = launch_training(config, Path(dataset["path"]), run_dir / MODEL)
    history_path = model_dir / "history.json"
    epochs = len(json.loads(history_path.read_text())) if history_path.exists() else None
    return {"model_dir": str(model_dir), "run_dir": str(run_dir), "epochs": epochs}


def run_evaluate(
    overrides: Mapping[str, Any], dataset: Mapping[str, Any], trained: Mapping[str, Any]
) -> dict[str, Any]:
    """Score the candidate, the popularity baseline and the current champion on the same split."""
    from tasks.evaluate import evaluate_run
    from tasks.registry import champion_model_dir

    config = load_config(overrides)
    champion = champion_model_dir(config)
    version, champion_dir = champion if champion else (None, None)
    evaluation = evaluate_run(
        config, Path(dataset["path"]), Path(trained["model_dir"]), champion_dir, champion_version=version
    ).to_dict()
    path = Path(trained["run_dir"]) / "evaluation.json"
    _write_json(path, evaluation)
    return {"evaluation": evaluation, "champion_version": version, "path": str(path)}


def run_gate(
    overrides: Mapping[str, Any],
    evaluated: Mapping[str, Any],
    *,
    force_promote: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """Decide on VALIDATION metrics: candidate vs popularity baseline vs champion.

    `force_promote` (a human's call, with `reason`) lets a refused candidate through;
    both are recorded in the decision so the registry keeps why it happened.
    """
    from tasks.gate import decide

    config = load_config(overrides)
    evaluation = evaluated["evaluation"]
    champion = evaluation.get("champion")
    decision = decide(
        candidate=evaluation["candidate"]["valid"],
        baselines={name: splits["valid"] for name, splits in evaluation["baselines"].items()},
        champion=champion["valid"] if champion else None,
        config=config.gate,
    ).to_dict()
    decision |= {"split": "valid", "force_promote": bool(force_promote), "operator_reason": reason or None}
    if force_promote and not decision["passed"]:
        decision["passed"] = True
        decision["reasons"] = [*decision["reasons"], f"forced by operator: {reason or 'no reason given'}"]
    log.info("gate %s: %s", "PASSED" if decision["passed"] else "REFUSED", "; ".join(decision["reasons"]))
    _write_json(Path(evaluated["path"]).with_name("decision.json"), decision)
    return decision


def run_register(
    overrides: Mapping[str, Any],
    *,
    snapshot: Mapping[str, Any],
    trained: Mapping[str, Any],
    evaluated: Mapping[str, Any],
    decision: Mapping[str, Any],
    airflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Register the candidate in MLflow (`challenger`; `champion` if the gate passed), with lineage."""
    from tasks.registry import register_candidate

    config = load_config(overrides)
    run_dir = Path(trained["run_dir"])
    lineage = {
        "airflow_run_id": airflow_run_id or "",
        "run_key": run_dir.name,
        "logical_date": snapshot["logical_date"],
        "snapshot_path": snapshot["path"],
        "snapshot_interactions": snapshot.get("counts", {}).get("interactions", ""),
        "snapshot_sha256": (snapshot.get("sha256") or {}).get("interactions.parquet", ""),
        "config_digest": config.digest(),
        "champion_before": evaluated.get("champion_version") or "",
        "force_promote": str(bool(decision.get("force_promote"))).lower(),
        "operator_reason": decision.get("operator_reason") or "",
    }
    registered = register_candidate(
        config,
        model_dir=Path(trained["model_dir"]),
        run_dir=run_dir,
        evaluation=evaluated["evaluation"],
        decision=decision,
        lineage=lineage,
    ).to_dict()
    result = {
        **registered,
        "model_name": config.registry.model_name,
        "champion_before": evaluated.get("champion_version"),
        "champion_moved": bool(registered["promoted"]),
    }
    _write_json(run_dir / "registered.json", result)
    return result


def run_materialize(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Publish the champion's recommendations for every user into `reco` (one transaction)."""
    from tasks.materialize import materialize

    return materialize(load_config(overrides)).to_dict()

