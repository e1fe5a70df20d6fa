"""Quality rows from several seeds (bench.quality --seeds / --merge-runs): means, sd and the runs."""

from __future__ import annotations

import json

import pytest

from bench.quality import markdown, runs_from_file, seeded_row
from tasks.evaluation.metrics import METRIC_NAMES


def run(seed: int, ndcg: float, to_target: float | None) -> dict:
    metrics = {name: 0.1 for name in METRIC_NAMES} | {"ndcg@10": ndcg, "hr@10": 2 * ndcg}
    return {**metrics, "seed": seed, "valid": dict(metrics), "train_seconds": 100.0 + seed, "epochs_run": 20,
            "stopped_by": "early stopping", "seconds_to_target": to_target, "hyper": {"train.seed": seed, "train.dim": 64}}


def test_a_seeded_row_holds_the_means_the_sd_and_every_run():
    row = seeded_row([run(44, 0.20, None), run(42, 0.22, 60.0), run(43, 0.21, 80.0)])
    assert row["ndcg@10"] == pytest.approx(0.21)
    assert row["ndcg@10_sd"] == pytest.approx(0.01)
    assert row["hr@10"] == pytest.approx(0.42) and row["hr@10_sd"] == pytest.approx(0.02)
    assert [r["seed"] for r in row["runs"]] == [42, 43, 44]
    assert [r["seconds_to_target"] for r in row["runs"]] == [60.0, 80.0, None]
    assert row["hyper"] == {"train.dim": 64}  # the seed is not a setting of the row
    table = markdown({"dataset": "ml-1m", "generated_at": "now", "machine": {
        "cpu": "cpu", "cores": 2, "ram_gib": 1, "torch_threads": 2, "gpu": None}, "models": {"prismrec": row}})
    assert "| prismrec (3 seeds) | " in table and "0.2100 ± 0.0100" in table
    assert table.splitlines()[4].endswith("| s to valid 0.20 |")
    assert table.splitlines()[6].endswith("| 70 ± 14 (2/3) |")


def test_seed_runs_kept_by_a_gpu_host_read_as_rows(tmp_path):
    metrics = {name: 0.3 for name in METRIC_NAMES}
    gpu = {"machine": {"device": "NVIDIA H200"}, "settings": {"train.dim": 128},
           "runs": [{"seed": 42, "test": metrics, "valid": metrics, "wall_seconds": 190.0, "epochs_run": 21,
                     "stopped_by": "early stopping", "seconds_to_target": 67.5}]}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(gpu))
    rows, machine = runs_from_file(path)
    assert machine == {"device": "NVIDIA H200"}
    assert rows[0]["train_seconds"] == 190.0 and rows[0]["seconds_to_target"] == 67.5
    assert rows[0]["ndcg@10"] == 0.3 and rows[0]["hyper"] == {"train.dim": 128}
    path.write_text(json.dumps({"machine": {}}))
    with pytest.raises(SystemExit, match="no `runs`"):
        runs_from_file(path)


def test_a_results_name_with_a_folder_is_refused_before_any_work(capsys):
    from bench import quality

    with pytest.raises(SystemExit):
        quality.main(["--results", "../elsewhere"])
    assert "a file name without a folder or suffix" in capsys.readouterr().err


def test_a_seeded_row_of_another_quality_result_replaces_the_main_table_s_row(tmp_path, monkeypatch):
    from bench import quality

    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    machine = {"cpu": "cpu", "cores": 2, "ram_gib": 1, "torch_threads": 2, "gpu": None}
    main = {"dataset": "ml-1m", "generated_at": "then", "machine": machine,
            "models": {"ease": run(0, 0.05, None), "prismrec": run(0, 0.20, None)}}
    (tmp_path / "quality-ml-1m.json").write_text(json.dumps(main))
    seeded = seeded_row([run(42, 0.21, 400.0), run(43, 0.22, 500.0)]) | {"measured": {"machine": machine, "at": "now"}}
    other = tmp_path / "ml1m-seeds.json"
    other.write_text(json.dumps({"dataset": "ml-1m", "models": {"prismrec": seeded}}))
    quality.merge_runs("ml-1m", [f"prismrec={other}"])
    merged = json.loads((tmp_path / "quality-ml-1m.json").read_text())["models"]
    assert merged["prismrec"]["ndcg@10"] == pytest.approx(0.215) and len(merged["prismrec"]["runs"]) == 2
    assert merged["prismrec"]["measured"] == {"machine": machine, "at": "now", "from": str(other)}
    assert merged["ease"] == main["models"]["ease"]  # the other rows stay
    other.write_text(json.dumps({"dataset": "ml-100k", "models": {"prismrec": seeded}}))
    with pytest.raises(SystemExit, match="no seeded prismrec row of ml-1m"):
        quality.merge_runs("ml-1m", [f"prismrec={other}"])
