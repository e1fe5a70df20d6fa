"""bench.memory's table and the adding of a GPU host's run to memory.json (no training here)."""

import json

import pytest

from bench import memory, quality

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "ram_gib": 23.5, "gpu": None}


def row(dataset: str, device: str = "CPU", peaks=(1000.0, 1100.0, 1105.0, 1110.0), **extra) -> dict:
    return {"dataset": dataset, "settings": "bench.quality DATASET_SETTINGS", "device": device,
            "allocator": "auto (jemalloc)", "epochs_run": 40, "steps_per_epoch": 640, "full_steps_per_epoch": 640,
            "peak_mib": dict(zip(("1", "2", "10", "40"), peaks, strict=True)), "peak_source": "history.json peak_rss_mib",
            "last_vs_epoch_2": round(peaks[-1] / peaks[1] - 1, 4), "steps_per_second": 80.0, **extra}


def result(runs: list[dict], epochs: int = 40) -> dict:
    return {"runs": runs, "epochs": epochs, "max_steps_per_epoch": {}, "short": epochs < 40, "goal": "flat",
            "machine": MACHINE, "date": "2026-12-04T00:00:00+00:00"}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "RESULTS", tmp_path)
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    (tmp_path / "memory.json").write_text(json.dumps(result([row("ml-100k"), row("ml-1m")])))
    return tmp_path


def test_a_gpu_run_is_added_beside_the_cpu_rows_and_replaces_its_own_older_row(results, tmp_path):
    gpu = row("ml-1m", "1 x NVIDIA H200, bf16", peaks=(2400.0, 2410.0, 2412.0, 2413.0),
              machine={"cpu": "Intel Xeon", "cores": 16, "ram_gib": 128.0, "gpu": "NVIDIA H200", "torch": "2.11"},
              peak_gpu_mib={"1": 900.0, "2": 950.0, "10": 950.0, "40": 950.0})
    added = tmp_path / "row.json"
    added.write_text(json.dumps(result([gpu])))
    memory.main(["--add-run", str(added)])
    memory.main(["--add-run", str(added)])  # again: replaced, not doubled
    saved = json.loads((results / "memory.json").read_text())
    assert [(r["dataset"], r["device"]) for r in saved["runs"]] == [
        ("ml-100k", "CPU"), ("ml-1m", "CPU"), ("ml-1m", "1 x NVIDIA H200, bf16")]
    table = (results / "memory.md").read_text()
    assert "| ml-1m | bench.quality DATASET_SETTINGS | 1 x NVIDIA H200, bf16 | auto (jemalloc) | 640 |" in table
    assert "measured on Intel Xeon, 16 cores" in table and "950 / 950 / 950 MiB" in table


def test_a_full_epoch_cpu_run_replaces_the_capped_one_and_its_cap(results, tmp_path):
    capped = result([row("ml-100k"), row("ml-1m", steps_per_epoch=64)])
    capped["max_steps_per_epoch"] = {"ml-1m": 64}
    (results / "memory.json").write_text(json.dumps(capped))
    full = tmp_path / "full.json"
    full.write_text(json.dumps(result([row("ml-1m", peaks=(2240.0, 2241.0, 2281.0, 2281.0), machine=MACHINE,
                                           measured_at="2026-12-05T00:09:08+00:00")])))
    memory.main(["--add-run", str(full)])
    saved = json.loads((results / "memory.json").read_text())
    assert [(r["dataset"], r["steps_per_epoch"]) for r in saved["runs"]] == [("ml-100k", 640), ("ml-1m", 640)]
    assert saved["max_steps_per_epoch"] == {}
    assert "| ml-1m | bench.quality DATASET_SETTINGS | CPU | auto (jemalloc) | 640 | 2,240 | 2,241 | 2,281 | 2,281 | +1.8% (epoch 40)" \
        in (results / "memory.md").read_text()
    assert "- ml-1m on CPU: measured 2026-12-05T00:09:08+00:00 on a machine of the same kind" \
        in (results / "memory.md").read_text()


def test_a_short_or_unreadable_run_is_refused_and_memory_json_stays(results, tmp_path):
    before = (results / "memory.json").read_text()
    short = tmp_path / "short.json"
    short.write_text(json.dumps(result([row("ml-1m")], epochs=3)))
    with pytest.raises(SystemExit, match="a run of 3 epochs"):
        memory.main(["--add-run", str(short)])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="not a bench.memory result"):
        memory.main(["--add-run", str(tmp_path / "bad.json")])
    assert (results / "memory.json").read_text() == before


def test_a_dataset_folder_needs_one_dataset_and_a_prepared_split(tmp_path):
    with pytest.raises(SystemExit, match="needs one dataset"):
        memory.main(["--datasets", "ml-100k,ml-1m", "--dataset-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="prepared split"):
        memory.main(["--datasets", "ml-1m", "--dataset-dir", str(tmp_path)])


def test_a_row_measured_on_the_table_machine_gets_no_machine_note():
    same = row("ml-100k", machine=MACHINE | {"torch": "2.13.0"})
    other = row("ml-1m", machine=MACHINE | {"cpu": "Intel Xeon"})
    table = memory.markdown(result([same, other]))
    assert "ml-100k on CPU: measured on" not in table and "ml-1m on CPU: measured on Intel Xeon" in table


def test_the_table_shows_the_growth_over_the_last_ten_epochs(results, tmp_path):
    """A peak that fills a bound and levels off fails the goal against epoch 2 but not over the last epochs."""
    filling = [1000.0 + min(e, 25) * 10.0 for e in range(1, 41)]  # +10 MiB an epoch up to epoch 25, then flat
    leaking = [1000.0 + e * 10.0 for e in range(1, 41)]
    assert memory.tail_growth(filling) == 0.0 and memory.tail_growth(leaking) == pytest.approx(1400 / 1300 - 1)
    assert memory.tail_growth(filling[:10]) is None and memory.tail_growth(None) is None
    runs = [row("ml-100k", peaks=(1010.0, 1020.0, 1100.0, 1250.0), peak_mib_per_epoch=filling),
            row("ml-1m", peaks=(1010.0, 1020.0, 1100.0, 1400.0), peak_mib_per_epoch=leaking)]
    (results / "memory.json").write_text(json.dumps(result([])))
    added = tmp_path / "rows.json"
    added.write_text(json.dumps(result(runs)))
    memory.main(["--add-run", str(added)])
    table = (results / "memory.md").read_text()
    assert "| last vs epoch 2 | last 10 epochs | steps/s |" in table
    assert "| 1,250 | +22.6% (epoch 40) | +0.0% | 80.00 |" in table
    assert "| 1,400 | +37.2% (epoch 40) | +7.7% | 80.00 |" in table
