"""bench.step_time keeps runs by label and compares only runs made on the same CPU."""

from bench.quality import DATASET_SETTINGS
from bench.step_time import markdown, merge, run_overrides
from tasks.config import load_config

CPU_A = {"cpu": "AMD EPYC", "cores": 2, "ram_gib": 23.5, "gpu": None}
CPU_B = {"cpu": "Intel Xeon", "cores": 2, "ram_gib": 23.5, "gpu": None}


def run(label: str, cpu: dict, steps_per_second: float, validation: float = 10.0) -> dict:
    row = {"setting": "benchmark settings", "max_history": 200, "batch_size": 16, "n_interests": 1,
           "allocator": "auto", "resolved": "jemalloc", "steps_per_second": steps_per_second,
           "validation_seconds": validation, "steps_per_epoch": 640,
           "epoch_seconds": 640 / steps_per_second + validation}
    return {"label": label, "machine": cpu, "generated_at": "2026-12-05T05:00:00+00:00", "rows": [row]}


def test_a_label_measured_again_replaces_its_run_and_goes_last():
    kept = merge(None, run("before", CPU_A, 10.0), "ml-1m", 150)
    kept = merge(kept, run("after", CPU_A, 12.0), "ml-1m", 150)
    kept = merge(kept, run("before", CPU_A, 10.5), "ml-1m", 150)
    assert [r["label"] for r in kept["runs"]] == ["after", "before"]
    assert kept["runs"][-1]["rows"][0]["steps_per_second"] == 10.5


def test_runs_of_another_dataset_or_step_count_are_not_kept():
    kept = merge(None, run("before", CPU_A, 10.0), "ml-1m", 150)
    assert [r["label"] for r in merge(kept, run("after", CPU_A, 12.0), "ml-1m", 40)["runs"]] == ["after"]
    assert [r["label"] for r in merge(kept, run("after", CPU_A, 12.0), "ml-100k", 150)["runs"]] == ["after"]


def test_the_table_sets_runs_on_the_same_cpu_side_by_side_with_the_speed_up():
    kept = merge(None, run("before", CPU_A, 10.0), "ml-1m", 150)
    kept = merge(kept, run("elsewhere", CPU_B, 5.0), "ml-1m", 150)
    kept = merge(kept, run("after", CPU_A, 12.8), "ml-1m", 150)
    table = markdown(kept)
    # before: 640 / 10 + 10 = 74 s an epoch; after: 640 / 12.8 + 10 = 60 s
    before = next(line for line in table.splitlines() if "`before`" in line)
    after = next(line for line in table.splitlines() if "`after` (" in line)
    assert before.endswith("| 74 |  |")
    assert after.endswith("| 60 | 1.23x vs `before` |")
    assert "`elsewhere`" not in table.split("speed-up:")[0]
    assert "`elsewhere` on Intel Xeon" in table


def test_one_cpu_model_with_and_without_bf16_units_is_two_machines():
    """Cloud machines of one model name differ by instruction set (and ~2x in speed): never compared."""
    from bench.machine import cpu_isa

    assert cpu_isa({"avx2", "avx512f", "avx512_bf16"}) == "AVX512-BF16"
    assert cpu_isa({"avx2", "amx_bf16", "avx512_bf16"}) == "AMX-BF16"
    assert cpu_isa({"fma", "avx2"}) == "AVX2" and cpu_isa({"sse4_2"}) is None
    bf16, fp32 = {**CPU_A, "isa": "AVX512-BF16"}, {**CPU_A, "isa": "AVX2"}
    kept = merge(None, run("bf16 units", bf16, 10.0), "ml-1m", 150)
    kept = merge(kept, run("avx2 only", fp32, 5.0), "ml-1m", 150)
    table = markdown(kept)
    assert "Machine: AMD EPYC (AVX2)" in table and "vs `bf16 units`" not in table
    assert "`bf16 units` on AMD EPYC (AVX512-BF16)" in table


def test_a_measured_run_is_one_epoch_of_the_steps_whatever_the_setting_trains():
    config = load_config(run_overrides("ml-1m", 150, DATASET_SETTINGS["ml-1m"], "system"), environ={})
    assert (config.train.epochs, config.train.max_steps_per_epoch) == (1, 150)
    assert (config.train.user_layers, config.train.allocator, config.database.app_schema) == (4, "system", "bench_ml1m")
