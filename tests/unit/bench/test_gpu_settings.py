"""bench/gpu_ml1m.py's pure parts: the settings per device, and the time to the target NDCG@10."""

from bench.gpu_ml1m import TARGET_NDCG, report, settings, time_to_target
from bench.quality import DATASET_SETTINGS


def test_gpu_runs_take_the_ml1m_benchmark_settings_one_process_per_gpu_in_bf16():
    chosen = settings(smoke=False, gpus=8, extra={})
    model = {k: v for k, v in DATASET_SETTINGS["ml-1m"].items() if k != "train.epochs"}
    assert {k: chosen[k] for k in model} == model
    # seconds an epoch on a GPU: up to 40 epochs with early stopping, not the CPU setting's fixed 20
    assert (chosen["train.epochs"], chosen["train.patience"]) == (40, 3) != (DATASET_SETTINGS["ml-1m"]["train.epochs"], 3)
    assert (chosen["train.nproc"], chosen["train.precision"]) == (8, "bf16")
    assert chosen["train.max_minutes"] < 10  # one device command is at most 10 minutes
    smoke = settings(smoke=True, gpus=0, extra={"train.batch_size": "8"})
    assert (smoke["train.epochs"], smoke["train.max_steps_per_epoch"], smoke["train.nproc"]) == (1, 3, 1)
    assert smoke["train.batch_size"] == "8"


def test_time_to_target_adds_the_epochs_up_to_the_first_that_reaches_it():
    history = [{"epoch": 1, "seconds": 30.0, "valid_ndcg@10": 0.15}, {"epoch": 2, "seconds": 31.5, "valid_ndcg@10": 0.201},
               {"epoch": 3, "seconds": 29.0, "valid_ndcg@10": 0.21}]
    assert time_to_target(history, TARGET_NDCG) == {"epoch": 2, "seconds": 61.5, "valid_ndcg@10": 0.201}
    assert time_to_target(history[:1], TARGET_NDCG) is None
    figures = {name: 0.1 for name in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10", "coverage@10")}
    text = report({"dataset": "ml-1m", "machine": {"device": "NVIDIA H200"}, "target_valid_ndcg@10": 0.2,
                   "time_to_target": None, "epochs_run": 1, "wall_seconds": 5.0, "stopped_by": "epochs",
                   "valid": figures, "test": figures})
    assert "not reached" in text and "test  hr@10 0.1000" in text


def test_a_smoke_run_saves_only_the_copy_it_is_asked_for(tmp_path, monkeypatch):
    import json

    from bench import gpu_ml1m

    monkeypatch.setattr(gpu_ml1m, "RESULTS", tmp_path / "results")
    gpu_ml1m.save({"smoke": True, "figures": 1}, tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "gpu-ml1m.json").read_text())["figures"] == 1
    assert not (tmp_path / "results").exists()
    gpu_ml1m.save({"smoke": False, "figures": 2}, None)
    assert json.loads((tmp_path / "results" / "gpu-ml1m.json").read_text())["figures"] == 2


def test_combine_reports_each_seed_and_the_mean_and_sd_and_refuses_other_settings(tmp_path):
    import json

    import pytest

    from bench.gpu_ml1m import combine, combined_table

    def run_file(seed: int, ndcg: float, seconds: float | None, **settings) -> object:
        figures = {name: ndcg for name in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10", "coverage@10")}
        result = {"smoke": False, "machine": {"device": "NVIDIA H200", "torch": "2.11", "cuda": "13.0"},
                  "measured_at": "2026-12-04T12:00:00+00:00", "target_valid_ndcg@10": TARGET_NDCG,
                  "settings": {"train.seed": seed, "train.batch_size": 16, "train.max_minutes": 6.0, **settings},
                  "time_to_target": None if seconds is None else {"epoch": 8, "seconds": seconds},
                  "wall_seconds": 200.0, "epochs_run": 20, "stopped_by": "early stopping", "valid": figures,
                  "test": figures}
        path = tmp_path / f"run{seed}-{len(settings)}.json"
        path.write_text(json.dumps(result))
        return path

    files = [run_file(44, 0.20, 60.0, **{"train.max_minutes": 5.0}), run_file(42, 0.21, 70.0), run_file(43, 0.22, None)]
    result = combine(files, note="three seeds")
    assert [run["seed"] for run in result["runs"]] == [42, 43, 44]
    assert result["test"]["ndcg@10"] == {"mean": 0.21, "sd": 0.01}
    assert result["seconds_to_target"] == {"mean": 65.0, "sd": 7.0711} and result["reached_target"] == "2/3"
    assert result["runs"][2]["resources"]["train.max_minutes"] == 5.0  # a limit, not a model setting
    assert "| 43 | not reached |" in combined_table(result) and "0.2100 ± 0.0100" in combined_table(result)
    unreached = combine([files[2]], note=None)  # no run reached the target: the table says so
    assert unreached["seconds_to_target"] is None and "| mean ± sd | not reached |" in combined_table(unreached)
    with pytest.raises(SystemExit, match="differ"):
        combine([files[1], run_file(45, 0.2, 60.0, **{"train.batch_size": 64})], note=None)
