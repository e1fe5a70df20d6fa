"""The training run's MLflow run, from the first epoch to the registered version: the run's story.

`training_run` opens the run when the `train` task starts, with the snapshot as its dataset
input and the machine's system metrics (`system/...`, while training runs), and logs each
epoch's numbers (`epoch/...`, step = epoch) as the worker reports them. Its id is kept in the
run folder (tasks.layout.RunLayout.mlflow_run) and in the task's XCom; `register` resumes it:
`log_story` adds the runs the candidate was compared with (one child run per baseline and the
champion, under the candidate's metric names), the plots, the data-quality report as HTML and
sample explained recommendations; tasks.registry.store.register_candidate then logs the model
and ends the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks.config import PipelineConfig
from tasks.layout import ModelFiles, RunLayout, SnapshotFiles
from tasks.registry import plots
from tasks.registry.lineage import content_hash
from tasks.registry.run_metrics import comparison_metrics, epoch_metrics
from tasks.registry.store import open_client, tracking_uri

log = logging.getLogger(__name__)

ROLE_TAG = "prismrec.role"  # candidate, baseline or champion: filter the compare view by it
SYSTEM_METRICS_SECONDS = 10  # how often the machine's CPU, memory, disk and network are sampled


def _read(path: Path) -> dict[str, Any] | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_id_of(run: RunLayout) -> str | None:
    """The MLflow run the `train` task opened for this run folder, if any."""
    return _read(run.mlflow_run).get("run_id") if run.mlflow_run.exists() else None


def end_failed(config: PipelineConfig, run_id: str) -> bool:
    """End the training's MLflow run FAILED when a task after `train` failed for good (evaluate,
    gate or register), so the UI does not show it RUNNING forever; True if it was still running."""
    client, _ = open_client(config)
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_terminated(run_id, status="FAILED")
    log.info("MLflow run %s ended FAILED: the training run failed after train", run_id)
    return True


def open_run(config: PipelineConfig, run: RunLayout) -> str:
    """A new MLflow run for the training run in `run`, with its snapshot as the dataset input."""
    client, experiment_id = open_client(config)
    mlflow_run = client.create_run(experiment_id, run_name=run.key,
                                   tags={"run_key": run.key, ROLE_TAG: "candidate"})
    run_id = mlflow_run.info.run_id
    run.mlflow_run.write_text(json.dumps({"run_id": run_id}) + "\n")
    try:
        log_snapshot_input(client, run_id, run.snapshot)
    except Exception:  # the run's story is worth less than the run itself
        log.warning("could not log the snapshot %s as the run's dataset", run.snapshot.root, exc_info=True)
    log.info("MLflow run %s (experiment %s) for %s", run_id, config.registry.experiment, run.key)
    return run_id


def log_snapshot_input(client, run_id: str, snapshot: SnapshotFiles) -> None:
    """The snapshot's interactions as the run's training dataset: source = the snapshot folder,
    name and digest from its manifest (the digest is the snapshot's content hash)."""
    import pyarrow.parquet as pq
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.models import infer_signature
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    manifest = _read(snapshot.manifest)
    as_of = str(manifest.get("as_of") or manifest.get("logical_date") or "")[:10]
    name = f"{manifest.get('schema', 'app')}.interactions as of {as_of}" if as_of else "interactions"
    digest = content_hash(manifest["sha256"])[:16] if manifest.get("sha256") else None
    # The row count from the Parquet footer and the schema from the first rows: loading the table
    # as a pandas dataset would hold every row (~8 GB and 4 minutes at 100M events).
    parquet = pq.ParquetFile(snapshot.interactions)
    sample = next(parquet.iter_batches(batch_size=1000), None)
    schema = infer_signature(sample.to_pandas()).inputs if sample is not None else None
    dataset = snapshot_dataset(resolve_dataset_source(str(snapshot.root)), name=name, digest=digest, schema=schema,
                               rows=parquet.metadata.num_rows, columns=parquet.metadata.num_columns)
    client.log_inputs(run_id, datasets=[DatasetInput(
        dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])


def snapshot_dataset(source, *, name: str, digest: str | None, schema, rows: int, columns: int):
    """An MLflow dataset known by its source, name, digest, schema and size (no rows held), with the
    profile a pandas dataset shows (num_rows, num_elements)."""
    from mlflow.data.meta_dataset import MetaDataset

    class SnapshotDataset(MetaDataset):
        @property
        def profile(self) -> dict[str, int]:
            return {"num_rows": int(rows), "num_elements": int(rows) * int(columns)}

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(self.profile)}

    return SnapshotDataset(source, name=name, digest=digest, schema=schema)


class EpochLogger:
    """Logs each epoch record of the training history once, as `epoch/<name>` at step = epoch."""

    def __init__(self, client, run_id: str, logged: set[int] | None = None):
        self.client, self.run_id, self.logged = client, run_id, set(logged or ())

    def __call__(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        epoch = int(record["epoch"])
        if epoch in self.logged:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, epoch) for key, value in epoch_metrics(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.logged.add(epoch)


def _system_metrics(config: PipelineConfig, run_id: str):
    """Start sampling the machine's CPU, memory, disk and network into the run; None without psutil."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        log.info("psutil is not installed: the run gets no system metrics")
        return None
    seconds = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", SYSTEM_METRICS_SECONDS))
    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, tracking_uri=tracking_uri(config))
    monitor.start()
    return monitor


@contextlib.contextmanager
def training_run(config: PipelineConfig, run: RunLayout) -> Iterator[tuple[str, Callable[[Mapping], None]]]:
    """Open the run's MLflow run for the length of training; yields (run id, the epoch callback).

    The run stays RUNNING when training succeeds (`register` ends it) and is marked FAILED when it fails.
    """
    client, _ = open_client(config)
    run_id = open_run(config, run)
    monitor = _system_metrics(config, run_id)
    on_epoch = EpochLogger(client, run_id)
    try:
        yield run_id, on_epoch
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    finally:
        if monitor is not None:
            monitor.finish()


def _children(client, experiment_id: str, run_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")


def log_comparisons(client, experiment_id: str, run_id: str, run_key: str, evaluation: Mapping[str, Any]) -> None:
    """One finished child run per baseline and for the champion, with the candidate's metric names."""
    for label, metrics in comparison_metrics(evaluation).items():
        child = client.create_run(experiment_id, run_name=f"{label} ({run_key})", tags={
            "mlflow.parentRunId": run_id, ROLE_TAG: label.split(" ")[0].rstrip(":"), "compared_in": run_key})
        client.log_batch(child.info.run_id, metrics=_metrics(metrics))
        client.set_terminated(child.info.run_id)


def _metrics(values: Mapping[str, float]) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, 0) for key, value in values.items()]


def log_story(config: PipelineConfig, run_id: str, run: RunLayout, *, evaluation: Mapping[str, Any],
              model_dir: Path) -> None:
    """What `register` adds to the run before the model: the curves training could not stream, the
    comparison runs, the plots, the data-quality report as HTML and sample recommendations.
    Logged once: a retried `register` finds the comparison runs and leaves the run as it is."""
    client, experiment_id = open_client(config)
    if _children(client, experiment_id, run_id):
        log.info("MLflow run %s already tells its story (a retried register)", run_id)
        return
    history = _read(ModelFiles(Path(model_dir)).history) or []
    logged = {m.step for m in client.get_metric_history(run_id, "epoch/train_loss")}
    missed = EpochLogger(client, run_id, logged)
    for record in history:
        missed(record)
    log_comparisons(client, experiment_id, run_id, run.key, evaluation)
    parts: list[tuple[str, Callable[[], None]]] = [
        ("training curves", lambda: client.log_figure(run_id, plots.training_curves(history), "plots/training_curves.png")),
        ("model vs baselines", lambda: client.log_figure(run_id, plots.model_vs_baselines(evaluation),
                                                         "plots/model_vs_baselines.png")),
        ("slices", lambda: client.log_figure(run_id, plots.slices(evaluation), "plots/slices.png")),
        ("data-quality report", lambda: _log_quality_report(client, run_id, run.snapshot)),
        ("sample recommendations", lambda: _log_samples(client, run_id, run.snapshot, Path(model_dir))),
        ("new-item head", lambda: _log_head(client, run_id, Path(model_dir))),
        ("trend prior", lambda: _log_trend(client, run_id, Path(model_dir))),
        ("transition prior", lambda: _log_transitions(client, run_id, Path(model_dir))),
    ]
    for what, part in parts:
        try:
            part()
        except Exception:  # a missing picture must not keep a model out of the registry
            log.warning("could not log the %s to MLflow run %s", what, run_id, exc_info=True)


def _log_quality_report(client, run_id: str, snapshot: SnapshotFiles) -> None:
    from tasks.data.quality_html import render

    if snapshot.quality_report.exists():
        report = _read(snapshot.quality_report)
        client.log_text(run_id, render(report, f"Data quality: {snapshot.root.parent.name}"),
                        "data_quality/report.html")


def _log_head(client, run_id: str, model_dir: Path) -> None:
    """The new-item head (train.new_item_head), when training fitted one: its file, and its rehearsal as params."""
    head = _read(ModelFiles(model_dir).new_item_head)
    if not head:
        return
    client.log_dict(run_id, head, "new_item_head.json")
    fitted = head.get("fitted_on", {})
    params = {"new_item_head.cutoff": fitted.get("cutoff"), "new_item_head.share": fitted.get("share"),
              "new_item_head.cases": json.dumps(fitted.get("cases", {})),
              "new_item_head.rehearsal": fitted.get("rehearsal", "retrain"),
              "new_item_head.rehearsal_seconds": fitted.get("seconds")}
    for key, value in params.items():
        client.log_param(run_id, key, value)


def _log_trend(client, run_id: str, model_dir: Path) -> None:
    """The trend prior (train.trend_prior), when training fitted one: its window and weight as params, its
    validation grid as a file."""
    trend = _read(ModelFiles(model_dir).trend)
    if not trend:
        return
    client.log_dict(run_id, trend.get("fit", {}), "trend_prior_fit.json")
    for key in ("window_days", "weight"):
        client.log_param(run_id, f"trend_prior.{key}", trend.get(key))


def _log_transitions(client, run_id: str, model_dir: Path) -> None:
    """The transition prior (train.transition_prior), when training fitted one: its weight as a param, its
    validation grid as a file."""
    from tasks.model.transitions import TransitionPrior

    prior = TransitionPrior.load(ModelFiles(model_dir).transitions)
    if prior is None:
        return
    client.log_dict(run_id, prior.fit, "transition_prior_fit.json")
    client.log_param(run_id, "transition_prior.weight", prior.weight)


def _log_samples(client, run_id: str, snapshot: SnapshotFiles, model_dir: Path) -> None:
    import pandas as pd

    from tasks.registry.samples import sample_recommendations

    if not ModelFiles(model_dir).checkpoint.exists():
        log.info("%s holds no checkpoint: no sample recommendations", model_dir)
        return
    interactions = pd.read_parquet(snapshot.interactions, columns=["user_id", "item_id", "occurred_at"])
    table, shares = sample_recommendations(model_dir, interactions)
    client.log_table(run_id, table, "samples/recommendations.json")
    client.log_figure(run_id, plots.interest_shares(shares, "interests' share of 200 users' top-10"),
                      "plots/interest_shares.png")
