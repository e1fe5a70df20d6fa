"""The MLflow run of a real (tiny) training, from `train` to `register`, on the real SQLite store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

MODEL = "story_test"


@pytest.fixture(scope="module")
def story(ml100k, base_overrides):
    """The pipeline's own functions on ML-100K: 2 epochs of 2 steps (the trend prior, the transition prior, then the
    new-item head's rehearsal, as small), the run looked at before and after register."""
    from mlflow import MlflowClient
    from tasks import pipeline
    from tasks.config import load_config
    from tasks.registry.store import tracking_uri

    overrides = {**base_overrides, "train.epochs": 2, "train.max_steps_per_epoch": 2, "train.nproc": 1,
                 "train.patience": 5, "train.trend_prior": True, "train.transition_prior": True,
                 "registry.model_name": MODEL}
    config = load_config(overrides)
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    snapshot = pipeline.run_extract(overrides, "manual__story", datetime(1998, 5, 1, tzinfo=UTC))
    pipeline.run_quality(overrides, snapshot)
    dataset = pipeline.run_prepare(overrides, snapshot)
    trained = pipeline.run_train(overrides, dataset)
    run_id = trained["mlflow_run_id"]
    before = {"run": client.get_run(run_id),
              "curve": client.get_metric_history(run_id, "epoch/valid_ndcg_10")}
    evaluated = pipeline.run_evaluate(overrides, dataset, trained)
    decision = pipeline.run_gate(overrides, evaluated)
    registered = pipeline.run_register(overrides, snapshot=snapshot, trained=trained, evaluated=evaluated,
                                       decision=decision, airflow_run_id="manual__story")
    return {"client": client, "run_id": run_id, "before": before, "trained": trained,
            "registered": registered, "evaluation": evaluated["evaluation"]}


def test_train_opens_the_run_and_logs_epochs_as_they_end(story):
    before = story["before"]
    assert before["run"].info.status == "RUNNING"  # still open: register ends it
    assert sorted(m.step for m in before["curve"]) == [1, 2]
    assert "epoch/train_loss" in before["run"].data.metrics
    inputs = before["run"].inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name.startswith("app.interactions as of 1998-04-22") and len(dataset.digest) == 16
    assert json.loads(dataset.source)["uri"].endswith("manual__story/snapshot")
    profile = json.loads(dataset.profile)  # from the Parquet footer: the rows are never loaded to log it
    assert profile["num_rows"] > 90_000 and profile["num_elements"] == profile["num_rows"] * 4
    columns = {c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    assert columns == {"user_id", "item_id", "rating", "occurred_at"}


def test_register_resumes_the_same_run_and_ends_it(story):
    client, run_id = story["client"], story["run_id"]
    run = client.get_run(run_id)
    assert story["registered"]["run_id"] == run_id
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_ndcg_10"] == pytest.approx(story["evaluation"]["candidate"]["test"]["ndcg@10"])
    assert any(k.startswith("slice/test/") for k in run.data.metrics)
    assert len(client.get_metric_history(run_id, "epoch/train_loss")) == 2  # not logged twice
    assert any(k.startswith("system/") for k in run.data.metrics)  # psutil is installed with the project


def test_baselines_are_child_runs_under_the_candidates_metric_names(story):
    client, run_id = story["client"], story["run_id"]
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {"baseline: popularity (manual__story)", "baseline: ease (manual__story)"}
    ease = by_name["baseline: ease (manual__story)"]
    assert ease.data.metrics["test_ndcg_10"] == pytest.approx(story["evaluation"]["baselines"]["ease"]["test"]["ndcg@10"])
    assert {k for k in ease.data.metrics} == {k for k in run.data.metrics
                                              if not k.startswith(("epoch/", "system/", "drift/"))}


def test_plots_report_and_samples_are_artifacts(story):
    client, run_id = story["client"], story["run_id"]

    def listed(folder: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, folder)}

    assert listed("plots") == {f"plots/{n}.png" for n in
                               ("training_curves", "model_vs_baselines", "slices", "interest_shares")}
    html = Path(client.download_artifacts(run_id, "data_quality/report.html")).read_text()
    assert "<table>" in html and "expect_column_values_to_not_be_null" in html and "passed" in html
    table = json.loads(Path(client.download_artifacts(run_id, "samples/recommendations.json")).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len({r["user_id"] for r in rows}) == 10 and max(r["rank"] for r in rows) == 10
    assert all(r["title"] and r["explanation"] for r in rows)


def test_the_version_has_a_model_card_and_few_tags(story):
    client = story["client"]
    version = client.get_model_version(MODEL, story["registered"]["version"])
    test_ndcg = story["evaluation"]["candidate"]["test"]["ndcg@10"]
    assert f"test NDCG@10 {test_ndcg:.4f}" in version.description
    assert "ease (baseline)" in version.description and "prismrec promote" in version.description
    assert len(version.tags) <= 8
    assert {"run_key", "gate_passed", "data_as_of", "git_commit", "last_decision_by"} <= set(version.tags)


def test_the_new_item_head_the_train_task_fitted_is_in_the_run_and_in_the_registered_model(story):
    """train.new_item_head (on by default) through the pipeline's train task: the head, fitted on the run's own
    model as of the rehearsal's cut-off (no second training), is saved with the model, told in the run (file
    and the rehearsal as params), and packaged in the version the registry serves."""
    from mlflow.pyfunc import load_model

    client, run_id = story["client"], story["run_id"]
    saved = json.loads((Path(story["trained"]["model_dir"]) / "new_item_head.json").read_text())
    assert saved["fitted_on"]["cases"]["cold"] > 0 and saved["fitted_on"]["cases"]["warm"] > 0
    assert saved["fitted_on"]["rehearsal"] == "model"
    assert not (Path(story["trained"]["run_dir"]) / "rehearsal" / "model").exists()
    logged = json.loads(Path(client.download_artifacts(run_id, "new_item_head.json")).read_text())
    assert logged == saved
    params = client.get_run(run_id).data.params
    assert params["new_item_head.cutoff"] == saved["fitted_on"]["cutoff"]
    assert json.loads(params["new_item_head.cases"]) == saved["fitted_on"]["cases"]
    assert params["new_item_head.rehearsal"] == "model"
    served = load_model(f"models:/{MODEL}/{story['registered']['version']}").unwrap_python_model()
    assert served.recommender.head is not None
    assert served.recommender.head.to_dict()["scale"] == pytest.approx(saved["scale"])


def test_the_trend_prior_the_train_task_fitted_is_in_the_run_the_gate_s_figure_and_the_served_model(story):
    """train.trend_prior through the pipeline's train task: fitted on validation before the new-item head (whose
    rehearsal then scores with it), told in the run (params and its grid), measured by the gate as the fit chose,
    and packaged in the version the registry serves."""
    from mlflow.pyfunc import load_model

    from tasks.model.transitions import TransitionPrior

    client, run_id = story["client"], story["run_id"]
    saved = json.loads((Path(story["trained"]["model_dir"]) / "trend.json").read_text())
    grid = saved["fit"]["ndcg@10"]
    chosen = f"{saved['window_days']} days x {saved['weight']}" if saved["weight"] else "none"
    assert grid[chosen] == max(grid.values())
    # The transition prior is fitted next, on the model with this one on: its weight 0 is this figure.
    transitions = TransitionPrior.load(Path(story["trained"]["model_dir"]) / "transitions.npz")
    assert transitions.fit["ndcg@10"]["0.0"] == pytest.approx(grid[chosen], abs=1e-4)
    params = client.get_run(run_id).data.params
    assert (params["trend_prior.window_days"], params["trend_prior.weight"]) == (str(saved["window_days"]),
                                                                                 str(saved["weight"]))
    assert json.loads(Path(client.download_artifacts(run_id, "trend_prior_fit.json")).read_text()) == saved["fit"]
    head = json.loads((Path(story["trained"]["model_dir"]) / "new_item_head.json").read_text())
    assert ("trend_prior" in head["fitted_on"]) == (saved["weight"] > 0)  # the head was fitted with it on
    served = load_model(f"models:/{MODEL}/{story['registered']['version']}").unwrap_python_model()
    assert (served.recommender.trend is not None) == (saved["weight"] > 0)


def test_the_transition_prior_the_train_task_fitted_is_in_the_run_the_gate_s_figure_and_the_served_model(story):
    """train.transition_prior through the pipeline's train task: fitted on validation after the trend prior and
    before the new-item head (whose rehearsal then scores with it), told in the run, measured by the gate as the
    fit chose, and packaged in the version the registry serves."""
    from mlflow.pyfunc import load_model

    from tasks.model.transitions import TransitionPrior

    client, run_id = story["client"], story["run_id"]
    saved = TransitionPrior.load(Path(story["trained"]["model_dir"]) / "transitions.npz")
    grid = saved.fit["ndcg@10"]
    assert grid[str(saved.weight)] == max(grid.values())
    assert story["evaluation"]["candidate"]["valid"]["ndcg@10"] == pytest.approx(grid[str(saved.weight)], abs=1e-4)
    assert client.get_run(run_id).data.params["transition_prior.weight"] == str(saved.weight)
    assert json.loads(Path(client.download_artifacts(run_id, "transition_prior_fit.json")).read_text()) == saved.fit
    head = json.loads((Path(story["trained"]["model_dir"]) / "new_item_head.json").read_text())
    assert ("transition_prior" in head["fitted_on"]) == (saved.weight > 0)
    served = load_model(f"models:/{MODEL}/{story['registered']['version']}").unwrap_python_model()
    assert (served.recommender.transitions is not None) == (saved.weight > 0)
