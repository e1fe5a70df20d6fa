"""bench/gpu_ml1m.py's pure parts: the settings per device, and the time to the target NDCG@10."""

from bench.gpu_ml1m import TARGET_NDCG, report, settings, time_to_target
from bench.quality import DATASET_SETTINGS


def test_gpu_runs_take_the_ml1m_benchmark_settings_one_process_per_gpu_in_bf16():
    chosen = settings(smoke=False, gpus=8, extra={})
    assert {k: chosen[k] for k in DATASET_SETTINGS["ml-1m"]} == DATASET_SETTINGS["ml-1m"]
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
