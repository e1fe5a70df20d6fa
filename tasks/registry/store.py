"""The one module that talks to MLflow: candidate runs, the model registry and its aliases.

Versions are moved with the aliases `challenger` (every candidate) and `champion` (what gets
published), never with the deprecated stages. The champion's history is kept as a
registered-model tag so `rollback` can undo promotions, including ones made in the UI.
The default store is the project-local SQLite file that
`mlflow ui --backend-store-uri sqlite:///.prismrec/mlflow.db` shows.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.config import PROJECT_ROOT, PipelineConfig
from tasks.errors import NoChampionError, RegistryError
from tasks.layout import RunLayout
from tasks.redact import known_secrets, redact_text
from tasks.registry.model_card import model_card
from tasks.registry.run_metrics import candidate_metrics
from tasks.registry.run_metrics import drift_metrics as _drift_metrics

log = logging.getLogger(__name__)

MODEL_CODE = PROJECT_ROOT / "mlflow" / "prismrec_model.py"
CHAMPION = "champion"
CHALLENGER = "challenger"
# Registered-model tag: JSON list of versions that held `champion`, oldest first.
HISTORY_TAG = "champion_history"
_HISTORY_KEEP = 200  # tag values are capped at 5000 characters
_PARAM_MAX = 6000  # MLflow's limit on a param value
_TAG_MAX = 5000


def _tags(values: Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags as strings, cut to MLflow's limit, with no secret (a URL's password) in them."""
    secrets = known_secrets()
    return {str(k): redact_text(str(v), secrets)[:_TAG_MAX] for k, v in values.items()}


_SERVING_PACKAGES = ("torch", "transformers", "mlflow", "numpy", "pandas")
# The version tags people filter by; the rest of the lineage stays on the run.
VERSION_TAGS = ("run_key", "airflow_run_id", "data_as_of", "git_commit", "snapshot_content_sha256", "gate_passed")


@dataclass(frozen=True)
class RegisteredVersion:
    version: str
    run_id: str
    promoted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tracking_uri(config: PipelineConfig) -> str:
    """Where runs and the registry live: the config, else MLFLOW_TRACKING_URI, else local SQLite."""
    return (
        config.registry.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{config.paths.mlflow_db}"
    )


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _client(config: PipelineConfig):
    """Point MLflow (fluent API and client) at the configured store, quietly."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow import MlflowClient

    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _experiment_id(client, config: PipelineConfig) -> str:
    """The experiment's id, creating it with artifacts under the project home for local stores."""
    from mlflow.exceptions import MlflowException

    name = config.registry.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if _is_local_store(tracking_uri(config)):
        config.paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        location = config.paths.mlflow_artifacts.as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def open_client(config: PipelineConfig) -> tuple[Any, str]:
    """(an MlflowClient on the configured store, the id of the configured experiment)."""
    client = _client(config)
    return client, _experiment_id(client, config)


def _as_dict(value: Any) -> dict:
    return value.to_dict() if hasattr(value, "to_dict") else dict(value or {})


def evaluation_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The candidate's own metrics, overall and per slice (tasks.registry.run_metrics names them);
    the baselines and the champion get child runs of their own (tasks.registry.tracking)."""
    return candidate_metrics(evaluation)


def pip_requirements() -> list[str]:
    """Pinned serving requirements from the installed versions (local tags like +cpu dropped)."""
    pins = []
    for package in _SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            log.warning("%s is not installed; it is left out of the model's requirements", package)
    return pins


def _default_max_new_items() -> int:
    """The published tables' cap on new items per list, so a served list matches a published one."""
    from tasks.config import MaterializeConfig

    cap = MaterializeConfig().max_new_items
    return -1 if cap is None else cap


def _signature():
    """Input: user ids and their time-ordered item histories; output: ranked recommendations."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec("long", "user_id"), ColSpec(Array("long"), "history")]),
        outputs=Schema([
            ColSpec("long", "user_id"), ColSpec("long", "rank"), ColSpec("long", "item_id"),
            ColSpec("float", "score"), ColSpec("long", "interest_id"), ColSpec("string", "explanation"),
            ColSpec("boolean", "is_new_item"),
        ]),
        # interest_balance < 0: the balance the model was trained with (train.interest_balance);
        # max_new_items: new items a list may take, as the published tables (materialize.max_new_items); < 0: no cap.
        params=ParamSchema([ParamSpec("top_k", "long", 50), ParamSpec("interest_balance", "double", -1.0),
                            ParamSpec("max_new_items", "long", _default_max_new_items())]),
    )


def register_candidate(
    config: PipelineConfig,
    *,
    model_dir: Path,
    run_dir: Path,
    evaluation: Mapping[str, Any],
    decision: Mapping[str, Any],
    lineage: Mapping[str, Any],
    model_code: Path | None = None,
    run_id: str | None = None,
) -> RegisteredVersion:
    """Log a trained candidate's MLflow run and register it as a new model version.

    `run_id`: the run the `train` task opened (tasks.registry.tracking), resumed here and ended;
    without one a new run is started. The version always gets `challenger`; it gets `champion`
    only if the gate passed. Its description is the model card; its tags are the few people
    filter by (VERSION_TAGS), the whole lineage stays on the run. `model_code` overrides the
    models-from-code file (tests use a tiny one).
    """
    import mlflow

    model_dir, run = Path(model_dir), RunLayout(Path(run_dir))
    model_code = Path(model_code or MODEL_CODE)
    if not model_code.exists():
        raise RegistryError(f"the pyfunc model definition {model_code} is missing; restore it from git")
    evaluation, decision = _as_dict(evaluation), _as_dict(decision)
    client = _client(config)
    experiment_id = _experiment_id(client, config)
    name = config.registry.model_name
    passed = bool(decision.get("passed"))
    reasons = "; ".join(decision.get("reasons", []))[:_TAG_MAX]
    tags = _tags({**lineage, "gate_passed": str(passed).lower(), "gate_reasons": reasons})

    existing = _version_of_run_key(client, name, str(lineage.get("run_key") or ""))
    if existing is not None:  # a retried task: the version exists, only the aliases may be missing
        log.info("run %s is already registered as %s version %s", lineage.get("run_key"), name, existing.version)
        return _set_aliases(client, name, str(existing.version), existing.run_id, passed, reasons)

    started = {"run_id": run_id} if run_id else {"experiment_id": experiment_id, "run_name": run.key}
    with mlflow.start_run(**started, tags=tags) as mlflow_run:
        run_id = mlflow_run.info.run_id
        mlflow.log_params({k: str(v)[:_PARAM_MAX] for k, v in config.to_dict().items()})
        metrics = evaluation_metrics(evaluation) | drift_metrics(run.snapshot.quality_report)
        if metrics:
            mlflow.log_metrics(metrics)
        # The run folder's records keep their file names in MLflow; config and lineage exist only there.
        mlflow.log_dict(config.to_dict(), "config.json")
        mlflow.log_dict(decision, run.decision.name)
        mlflow.log_dict(evaluation, run.evaluation.name)
        mlflow.log_dict(_tags(lineage), "lineage.json")
        if run.snapshot.quality_report.exists():
            mlflow.log_artifact(str(run.snapshot.quality_report))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # type-hint / input-example nags
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(model_code),
                artifacts={"model_dir": str(model_dir)},
                pip_requirements=pip_requirements(),
                signature=_signature(),
            )
        _ensure_registered_model(client, name)
        version = str(client.create_model_version(
            name, source=info.model_uri, run_id=run_id, model_id=info.model_id,
            tags={key: tags[key] for key in VERSION_TAGS if tags.get(key)},
        ).version)
        champion_before = _champion(client, name)  # the aliases move after this
        client.update_model_version(name, version, description=model_card(
            model_name=name, version=version, evaluation=evaluation, decision=decision, lineage=tags,
            promoted=passed, champion_before=champion_before))

    log.info("registered %s version %s (run %s)", name, version, run_id)
    return _set_aliases(client, name, version, run_id, passed, reasons)


def log_refused_snapshot(config: PipelineConfig, *, run_dir: Path, message: str,
                         failures: list | None = None, lineage: Mapping[str, Any] | None = None) -> str:
    """Record a run the data gate stopped: an MLflow run (status FAILED) holding the quality
    report, so the UI shows why nothing was trained. Returns the MLflow run id."""
    import mlflow

    client = _client(config)
    experiment_id = _experiment_id(client, config)
    tags = _tags({**(lineage or {}), "stage": "data_gate", "data_gate_passed": "false", "data_gate_error": message})
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{Path(run_dir).name} (data gate refused)",
                          tags=tags) as run:
        mlflow.log_params({k: str(v)[:_PARAM_MAX] for k, v in config.to_dict().items()})
        failures = json.loads(json.dumps(failures or [], default=str))  # numpy scalars and the like
        mlflow.log_dict({"message": redact_text(message, known_secrets()), "failures": failures},
                        "data_gate_failure.json")
        quality_report = RunLayout(Path(run_dir)).snapshot.quality_report
        if quality_report.exists():
            mlflow.log_artifact(str(quality_report))
        run_id = run.info.run_id
    client.set_terminated(run_id, status="FAILED")
    log.info("data gate refusal recorded as MLflow run %s", run_id)
    return run_id


def _set_aliases(client, name: str, version: str, run_id: str, passed: bool, reasons: str) -> RegisteredVersion:
    """`challenger` always; `champion` if the gate passed (and it is not already there)."""
    client.set_registered_model_alias(name, CHALLENGER, version)
    if passed and _champion(client, name) != version:  # a retry may find it champion already
        _make_champion(client, name, version, reason=f"gate passed: {reasons}")
    log.info("%s version %s: %s", name, version, "now champion" if passed else "challenger only, gate refused")
    return RegisteredVersion(version=str(version), run_id=run_id, promoted=passed)


def _version_of_run_key(client, name: str, run_key: str):
    """The model version a training run already registered (tag `run_key`), or None."""
    from mlflow.exceptions import MlflowException

    if not run_key or "'" in run_key:
        return None
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.run_key = '{run_key}'")
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    return max(found, key=lambda mv: int(mv.version)) if found else None


def drift_metrics(quality_report: Path) -> dict[str, float]:
    """The data gate's drift measures (the quality report's ["drift"]["metrics"]) as `drift/<name>` metrics."""
    if not quality_report.exists():
        return {}
    return _drift_metrics(json.loads(quality_report.read_text()).get("drift"))


def tag_version(config: PipelineConfig, version: str, tags: Mapping[str, str]) -> None:
    """Set tags on one version of the configured model (decisions, lineage)."""
    client = _client(config)
    for key, value in _tags(tags).items():
        client.set_model_version_tag(config.registry.model_name, str(version), key, value)


def version_tags(config: PipelineConfig, version: str) -> dict[str, str]:
    """The tags of one version of the configured model."""
    return dict(_client(config).get_model_version(config.registry.model_name, str(version)).tags)


def version_metrics(config: PipelineConfig, version: str) -> dict[str, float]:
    """The metrics of the MLflow run that produced `version` ({} if it has none)."""
    client = _client(config)
    run_id = client.get_model_version(config.registry.model_name, str(version)).run_id
    return dict(client.get_run(run_id).data.metrics) if run_id else {}


def _ensure_registered_model(client, name: str) -> None:
    """Create the registered model on first use (the fluent register_model prints to stderr)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        try:
            client.create_registered_model(name, description="PrismRec multi-interest recommender")
        except MlflowException as again:
            if getattr(again, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise


def _champion(client, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    return None if version is None else str(version)


def champion_version(config: PipelineConfig) -> str | None:
    """The version that currently holds `champion`, or None."""
    return _champion(_client(config), config.registry.model_name)


def _history(client, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def _make_champion(client, name: str, version: str, reason: str | None) -> None:
    """Move `champion` to `version`, keeping who held it before in the champion history (when and
    why are recorded in reco.model_decisions by tasks.registry.decisions, not on the version)."""
    previous = _champion(client, name)
    history = _history(client, name)
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)  # promoted outside PrismRec (e.g. the MLflow UI)
    history.append(version)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-_HISTORY_KEEP:]))
    log.info("champion of %s: version %s (was %s): %s", name, version, previous or "none", reason or "no reason given")


def _versions(client, name: str) -> list[str]:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((str(mv.version) for mv in found), key=int)


def promote(config: PipelineConfig, version: str, reason: str | None = None) -> str:
    """Make `version` the champion (a human decision); returns the version."""
    client = _client(config)
    name = config.registry.model_name
    version = str(version).strip()
    existing = _versions(client, name)
    if not existing:
        raise RegistryError(f"no versions of model {name!r} are registered yet; run `prismrec train` first")
    if version not in existing:
        raise RegistryError(
            f"model {name!r} has no version {version!r}; existing versions: {', '.join(existing)}"
        )
    if _champion(client, name) == version:
        log.info("version %s of %s is already the champion", version, name)
        return version
    _make_champion(client, name, version, reason or "promoted by hand")
    log.info("promoted %s version %s to champion", name, version)
    return version


def rollback(config: PipelineConfig) -> str:
    """Give `champion` back to the version that held it before the current one; returns it."""
    client = _client(config)
    name = config.registry.model_name
    existing = set(_versions(client, name))
    current = _champion(client, name) if existing else None
    if current is None:
        raise RegistryError(f"model {name!r} has no champion, so there is nothing to roll back")
    history = _history(client, name)
    while history and history[-1] == current:
        history.pop()
    while history and history[-1] not in existing:  # a deleted version cannot come back
        history.pop()
    if not history:
        raise RegistryError(
            f"nothing to roll back to: version {current} of {name!r} is the first champion on record; "
            "use `prismrec promote VERSION` to pick another version"
        )
    target = history[-1]
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    log.info("rolled %s champion back from version %s to %s", name, current, target)
    return target


def champion_model_dir(config: PipelineConfig) -> tuple[str, Path] | None:
    """(version, local folder holding the champion's `model_dir` files), or None without a champion.

    Downloads once per version into <home>/cache/champion/ (keyed by run id too, so a reset
    store that reuses version numbers never serves stale files).
    """
    from mlflow.models import Model

    import mlflow

    client = _client(config)
    name = config.registry.model_name
    version = _champion(client, name)
    if version is None:
        return None
    model_version = client.get_model_version(name, version)
    target = config.paths.home / "cache" / "champion" / f"{name}-v{version}-{(model_version.run_id or 'x')[:8]}"
    if target.exists():
        return version, target
    root = client.get_model_version_download_uri(name, version).rstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        model_meta = Model.load(mlflow.artifacts.download_artifacts(f"{root}/MLmodel", dst_path=str(staging)))
        subpath = model_meta.flavors["python_function"]["artifacts"]["model_dir"]["path"]
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{subpath}", dst_path=str(staging)))
        os.replace(local, target)  # atomic: a half-downloaded folder is never served
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("champion %s version %s files in %s", name, version, target)
    return version, target


def load_champion(config: PipelineConfig):
    """(version, pyfunc model) of the current champion; NoChampionError if there is none.

    Loads by version number after resolving the alias once, so a promotion in between
    cannot mix two versions in one publication.
    """
    import mlflow

    version = champion_version(config)
    if version is None:
        name = config.registry.model_name
        raise NoChampionError(
            f"model {name!r} has no champion yet; run `prismrec train` (a candidate that passes the gate "
            "becomes champion) or `prismrec promote VERSION` to choose one"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = mlflow.pyfunc.load_model(f"models:/{config.registry.model_name}/{version}")
    return version, model
