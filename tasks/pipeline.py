"""The glue between orchestration and the stages: one plain function per DAG task.

The DAGs and the CLI call exactly these. Each takes the run's config overrides (dotted keys,
from tasks.contracts.overrides_from_params) plus the small JSON values earlier tasks returned,
calls the stage function of the pipeline contract, and returns a small JSON-able dict for XCom:
paths, counts, versions, never data. A training run keeps everything in its run folder
`config.paths.runs / <run key>`, whose files tasks.layout.RunLayout names. Stage modules are
imported inside the functions so that importing this module stays light.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.config import load_config
from tasks.contracts import require_reason
from tasks.errors import ConfigError
from tasks.layout import ModelFiles, RunLayout

log = logging.getLogger(__name__)


def run_key_of(run_id: str) -> str:
    """A filesystem-safe folder name for an Airflow run_id (`manual__2024-01-01T00:00:00+00:00`)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._")
    return key or "run"


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def run_extract(overrides: Mapping[str, Any], run_key: str, logical_date: datetime) -> dict[str, Any]:
    """Snapshot `app` as of `logical_date` (or the end of the replay it holds) into `<run folder>/snapshot`."""
    from tasks.data.extract import extract_snapshot

    config = load_config(overrides)
    run = RunLayout.of(config.paths.runs, run_key_of(run_key))
    snapshot = extract_snapshot(config, logical_date, run.snapshot.root)
    log.info("snapshot of %s in %s", snapshot.counts, snapshot.path)
    purge_raw_events(config, run.key)
    return {**snapshot.to_dict(), "run_key": run.key, "run_dir": str(run.root)}


def purge_raw_events(config, current_run_key: str) -> list[str]:
    """Run-folder retention (tasks.data.retention), never the current run's or the champion's own folder."""
    from tasks.data.retention import purge_old_runs
    from tasks.registry.store import champion_version, version_tags

    protect = {current_run_key}
    try:
        champion = champion_version(config)
        if champion is not None:
            protect.add(version_tags(config, champion).get("run_key", ""))
    except Exception:  # the registry unreachable: the champion's folder cannot be told apart, so keep all
        log.warning("could not read the champion's run from the registry; retention skipped this time", exc_info=True)
        return []
    return purge_old_runs(config.paths.runs, config.paths.keep_runs, protect)


def run_quality(overrides: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The data-quality gate on the snapshot; raises DataQualityError (the run stops there)."""
    from tasks.data.quality import check_snapshot
    from tasks.errors import DataQualityError

    config = load_config(overrides)
    try:
        # The snapshot's own "now" (a replay's end, or the logical date): freshness is judged against it.
        report = check_snapshot(config, Path(snapshot["path"]), datetime.fromisoformat(snapshot["as_of"]))
    except DataQualityError as refused:
        _record_refusal(config, snapshot, refused)
        raise
    log.info("%s", report.summary())
    return {"passed": report.passed, "summary": report.summary(), "report_path": str(report.report_path)}


def _record_refusal(config, snapshot: Mapping[str, Any], refused: Exception) -> None:
    """Keep the refused snapshot's quality report in MLflow; never mask the refusal itself."""
    from tasks.registry.store import log_refused_snapshot

    try:
        log_refused_snapshot(config, run_dir=Path(snapshot["run_dir"]), message=str(refused),
                             failures=getattr(refused, "failures", None),
                             lineage={"run_key": snapshot.get("run_key", ""),
                                      "logical_date": snapshot.get("logical_date", ""),
                                      "snapshot_path": snapshot.get("path", "")})
    except Exception:
        log.warning("could not record the data-gate refusal in MLflow", exc_info=True)


def run_prepare(overrides: Mapping[str, Any], snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """5-core filter, sequences and leave-one-out split into `<run folder>/dataset`."""
    from tasks.data.prepare import prepare_dataset

    config = load_config(overrides)
    run = RunLayout(Path(snapshot["run_dir"]))
    info = prepare_dataset(config, Path(snapshot["path"]), run.dataset.root)
    return {**info.to_dict(), "run_dir": str(run.root)}


def run_train(overrides: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    """Fine-tune under torchrun into `<run folder>/model`, in an MLflow run opened now (epoch curves
    and system metrics while it trains); returns the model folder, epochs run and the MLflow run id."""
    from tasks.evaluation.baselines import check_baselines_fit
    from tasks.registry.tracking import training_run
    from tasks.training.launcher import launch_training
    from tasks.training.memory import DEFAULT_SHARE, machine_memory_bytes

    config = load_config(overrides)
    if config.train.node_rank != 0:
        raise ConfigError(f"train.node_rank is {config.train.node_rank}, but the pipeline's train task is node 0 of a "
                          "training: leave train.node_rank unset here, and start the other machines with "
                          "prismrec train-node --node-rank R")
    machine = machine_memory_bytes()
    check_baselines_fit(config.gate.baseline_names(), dataset["items"], DEFAULT_SHARE * machine, machine)
    run = RunLayout(Path(dataset["run_dir"]))
    with training_run(config, run) as (mlflow_run_id, on_epoch):
        model_dir = launch_training(config, Path(dataset["path"]), run.model.root, on_epoch=on_epoch)
        from tasks.training.transition_fit import fit_priors

        prior = fit_priors(config, Path(dataset["path"]), model_dir)  # first: the new-item head is fitted with them on
        if config.train.new_item_head:
            from tasks.training.rehearsal import fit_new_item_head

            fit_new_item_head(config, run.snapshot.root, run.root / "rehearsal", model_dir, trend=prior)
    history = ModelFiles(Path(model_dir)).history
    epochs = len(json.loads(history.read_text())) if history.exists() else None
    return {"model_dir": str(model_dir), "run_dir": str(run.root), "epochs": epochs, "mlflow_run_id": mlflow_run_id}


def fail_training_run(overrides: Mapping[str, Any], trained: Mapping[str, Any] | None) -> bool:
    """A task after `train` failed for good: end the MLflow run `train` opened as FAILED (True if it
    was still running). Nothing to do when `train` left no run (it failed itself: already FAILED)."""
    from tasks.registry.tracking import end_failed, run_id_of

    if not trained:
        return False
    run_id = trained.get("mlflow_run_id") or run_id_of(RunLayout(Path(trained["run_dir"])))
    return bool(run_id) and end_failed(load_config(overrides), run_id)


def run_evaluate(
    overrides: Mapping[str, Any], dataset: Mapping[str, Any], trained: Mapping[str, Any]
) -> dict[str, Any]:
    """Score the candidate, the gate's baselines and the current champion on the same split."""
    from tasks.evaluation.evaluate import evaluate_run
    from tasks.registry.store import champion_model_dir

    config = load_config(overrides)
    champion = champion_model_dir(config)
    version, champion_dir = champion if champion else (None, None)
    evaluation = evaluate_run(
        config, Path(dataset["path"]), Path(trained["model_dir"]), champion_dir, champion_version=version
    ).to_dict()
    run = RunLayout(Path(trained["run_dir"]))
    _write_json(run.evaluation, evaluation)
    return {"evaluation": evaluation, "champion_version": version, "path": str(run.evaluation),
            "run_dir": str(run.root)}


def run_gate(
    overrides: Mapping[str, Any],
    evaluated: Mapping[str, Any],
    *,
    force_promote: bool = False,
    reason: str | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """Decide on VALIDATION metrics: candidate vs baselines vs champion, overall and per slice.

    `force_promote` (a human's call, with a required `reason`; `user` who asked, default
    the OS user) lets a refused candidate through; all three are recorded in the decision.
    """
    from tasks.registry.decisions import current_user
    from tasks.registry.gate import decide

    require_reason(force_promote, reason)
    config = load_config(overrides)
    evaluation = evaluated["evaluation"]
    champion = evaluation.get("champion")
    slices = evaluation.get("slices") or {}
    decision = decide(
        candidate=evaluation["candidate"]["valid"],
        baselines={name: splits["valid"] for name, splits in evaluation["baselines"].items()},
        champion=champion["valid"] if champion else None,
        config=config.gate,
        candidate_slices=(slices.get("candidate") or {}).get("valid"),
        champion_slices=(slices.get("champion") or {}).get("valid"),
    ).to_dict()
    decision |= {"split": "valid", "force_promote": bool(force_promote), "operator_reason": reason or None,
                 "gate_passed": decision["passed"], "forced_by": (user or current_user()) if force_promote else None}
    if force_promote and not decision["passed"]:
        decision["passed"] = True
        decision["reasons"] = [*decision["reasons"], f"forced by operator: {reason or 'no reason given'}"]
    log.info("gate %s: %s", "PASSED" if decision["passed"] else "REFUSED", "; ".join(decision["reasons"]))
    _write_json(RunLayout(Path(evaluated["run_dir"])).decision, decision)
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
    """Register the candidate in MLflow (`challenger`; `champion` if the gate passed), with lineage,
    and record the decision in reco.model_decisions and on the new version's tags."""
    from tasks.registry import decisions
    from tasks.registry.gate import verdict
    from tasks.registry.lineage import build_lineage
    from tasks.registry.store import champion_version, register_candidate
    from tasks.registry.tracking import log_story, open_run, run_id_of

    config = load_config(overrides)
    run_dir = Path(trained["run_dir"])
    # The run `train` opened (a run folder from before it did gets one now).
    mlflow_run_id = trained.get("mlflow_run_id") or run_id_of(RunLayout(run_dir)) or open_run(config, RunLayout(run_dir))
    log_story(config, mlflow_run_id, RunLayout(run_dir), evaluation=evaluated["evaluation"],
              model_dir=Path(trained["model_dir"]))
    actor = f"airflow run {airflow_run_id}" if airflow_run_id else decisions.current_user()
    lineage = build_lineage(config, snapshot=snapshot, model_dir=Path(trained["model_dir"]), run_dir=run_dir)
    lineage |= {
        "airflow_run_id": airflow_run_id or "",
        "champion_evaluated": evaluated.get("champion_version") or "",
        "force_promote": str(bool(decision.get("force_promote"))).lower(),
        "operator_reason": decision.get("operator_reason") or "",
    }
    # The alias moves and the decision is recorded under the champion lock: the champion
    # watcher never takes this run's promotion for a person's.
    with decisions.champion_lock(config):
        decisions.note_external_move(config, actor, own_run_key=run_dir.name)
        champion_before = champion_version(config)
        registered = register_candidate(
            config,
            model_dir=Path(trained["model_dir"]),
            run_dir=run_dir,
            evaluation=evaluated["evaluation"],
            decision=decision,
            lineage=lineage | {"champion_before": champion_before or ""},
            run_id=mlflow_run_id,
        ).to_dict()
        if champion_before == registered["version"]:  # a retried task: this run had promoted it already
            champion_before = evaluated.get("champion_version")
        _record_gate_decision(config, registered, evaluated["evaluation"], decision,
                              champion_before=champion_before, run_key=run_dir.name, actor=actor)
    result = {
        **registered,
        "model_name": config.registry.model_name,
        "champion_before": champion_before,
        "champion_moved": bool(registered["promoted"]) and champion_before != registered["version"],
        "verdict": verdict(decision, version=str(registered["version"]), champion_before=champion_before,
                           promoted=bool(registered["promoted"])),
    }
    # The line to look for in the task log; a run from `prismrec train` also carries it as its note.
    log.log(logging.INFO if registered["promoted"] else logging.WARNING, "verdict: %s", result["verdict"])
    _write_json(RunLayout(run_dir).registered, result)
    return result


def _record_gate_decision(config, registered: Mapping[str, Any], evaluation: Mapping[str, Any],
                          decision: Mapping[str, Any], *, champion_before: str | None, run_key: str,
                          actor: str) -> int:
    """The gate's (or a forced) verdict on the new version, in reco.model_decisions and its tags."""
    from tasks.registry.decisions import ModelDecision, record

    forced = bool(decision.get("force_promote")) and not decision.get("gate_passed", decision.get("passed"))
    decided_by = f"forced by {decision.get('forced_by')}: {decision.get('operator_reason')}" if forced else "gate"
    return record(config, ModelDecision(
        model_name=config.registry.model_name, action="force" if forced else "gate", decided_by=decided_by,
        actor=actor, candidate_version=registered["version"], champion_before=champion_before,
        champion_after=registered["version"] if registered["promoted"] else champion_before,
        passed=bool(decision.get("passed")), reasons=list(decision.get("reasons", [])),
        operator_reason=decision.get("operator_reason"),
        metrics={k: evaluation.get(k) for k in ("candidate", "baselines", "champion", "champion_version")},
        slices=dict(evaluation.get("slices") or {}), run_key=run_key,
        decision_key=f"{config.registry.model_name}:{run_key}",
    ))


def run_materialize(overrides: Mapping[str, Any], airflow_run_id: str | None = None,
                    logical_date: datetime | None = None) -> dict[str, Any]:
    """Publish the champion's recommendations for every user into `reco` (one transaction).

    A champion moved by hand in the MLflow UI since the last recorded decision is recorded first.
    A retry of the same Airflow run (same champion, same logical date) republishes its own
    output instead of scoring again.
    """
    from tasks.publish.materialize import check_source, materialize
    from tasks.registry.decisions import champion_lock, current_user, note_external_move
    from tasks.registry.store import champion_version

    config = load_config(overrides)
    # A run that cannot publish records nothing, not even a champion's move: without a champion
    # materialize() fails before touching Postgres; without a source, this check does.
    if champion_version(config) is not None:
        check_source(config)
    with champion_lock(config):
        note_external_move(config, f"airflow run {airflow_run_id}" if airflow_run_id else current_user())
    run_key = run_key_of(airflow_run_id) if airflow_run_id else None
    return materialize(config, logical_date=logical_date, run_key=run_key).to_dict()

