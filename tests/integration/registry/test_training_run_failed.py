"""A training run that fails after `train` (evaluate, gate or register) ends its MLflow run FAILED
instead of leaving it RUNNING forever (tasks.airflow_tasks.end_training_run, on a real MLflow store)."""

from __future__ import annotations

from tasks.config import load_config
from tasks.layout import RunLayout
from tasks.pipeline import fail_training_run
from tasks.registry.store import open_client
from tasks.registry.tracking import open_run


def test_a_failure_after_train_ends_the_training_run_failed_once(base_overrides, tmp_path):
    overrides = base_overrides | {"registry.experiment": "training_run_failed_test"}
    run = RunLayout(tmp_path / "manual__failed_after_train")
    run.root.mkdir(parents=True)
    run_id = open_run(load_config(overrides), run)  # what `train` does first
    client, _ = open_client(load_config(overrides))
    assert client.get_run(run_id).info.status == "RUNNING"

    trained = {"run_dir": str(run.root), "model_dir": str(run.model.root)}  # the id is found in the run folder
    assert fail_training_run(overrides, trained) is True
    assert client.get_run(run_id).info.status == "FAILED"
    assert fail_training_run(overrides, trained | {"mlflow_run_id": run_id}) is False  # ended already
    assert fail_training_run(overrides, None) is False  # train itself failed: nothing left open
