"""Training speed, before and after a change: steps per second and validation time of real training runs.

    python -m bench.step_time [--dataset ml-1m] [--steps 150] [--repeats 3] [--allocators auto] [--label NAME]
                              [--fresh]

Each row is a real `launch_training` run (the DAG's code, under torchrun) on the quality
benchmark's split, cut to `--steps` training steps and one validation (of the live weights and of
their average), for two settings: the pipeline defaults, and the dataset's selected settings of
bench.quality (what its time-to-target column measures). The rates come from the run's own training
history (`steps_per_second`, `validation_seconds`); a full epoch's time is estimated from them and the
steps an uncut epoch has (the training summary's `full_steps_per_epoch`). Each row runs `--repeats`
times, one setting after the other, and keeps the median rates: the same run on a 2-core virtual
machine varies by ~10 % between processes.

A run is kept under its label (default: the checkout's commit, `+` when it has uncommitted changes) in
bench/results/step-time.json, beside the runs measured before it: measure, change the step, measure
again, and the table sets the two side by side with the speed-up. Runs made on another CPU are listed
but not compared. `--fresh` drops the kept runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from bench.quality import DATASET_SETTINGS, DATASETS, RESULTS, machine, prepare, save

log = logging.getLogger("bench.step_time")

# name -> settings over the pipeline defaults (None: the dataset's selected ones, bench.quality)
SETTINGS = {"pipeline defaults": {}, "benchmark settings": None}


def resolved(allocator: str) -> str:
    """What train.allocator=`allocator` gives a training process on this machine."""
    from tasks.training.launcher import allocator_env

    env = allocator_env(allocator, dict(os.environ))
    preload = env.get("LD_PRELOAD", "")
    return ("jemalloc" if "jemalloc" in preload else "mimalloc" if "mimalloc" in preload
            else "glibc, huge pages" if "GLIBC_TUNABLES" in env else "glibc")


def checkout_label() -> str:
    """The checkout's short commit, with `+` when tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "tasks"], cwd=root, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unversioned"
    return commit + ("+" if dirty else "")


def run_overrides(dataset: str, steps: int, settings: dict, allocator: str) -> dict:
    """A measured run's config overrides: the setting's, cut to one epoch of `steps` (the cut wins over a
    setting's epochs, e.g. ML-1M's 20)."""
    cut = {"database.app_schema": "bench_" + dataset.replace("-", ""), "train.epochs": 1,
           "train.max_steps_per_epoch": steps}
    return {**settings, **cut, "train.allocator": allocator}


def measure(dataset: str, steps: int, allocators: list[str], repeats: int) -> list[dict]:
    """`repeats` capped training runs per setting and allocator, in turns; a row each, with the median rates."""
    from tasks.config import load_config
    from tasks.layout import ModelFiles
    from tasks.training.launcher import launch_training

    config = load_config(run_overrides(dataset, steps, {}, "auto"))
    work = config.paths.home / "bench" / dataset
    dataset_dir = prepare(config, dataset, work)
    cases = [(name, allocator, DATASET_SETTINGS.get(dataset, {}) if settings is None else settings)
             for name, settings in SETTINGS.items() for allocator in allocators]
    records: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(repeats):
        for name, allocator, settings in cases:
            config = load_config(run_overrides(dataset, steps, settings, allocator))
            model = ModelFiles(work / f"step-time-{name.split()[0]}-{allocator}")
            launch_training(config, dataset_dir, model.root)
            record = json.loads(model.history.read_text())[0]
            record["full_steps_per_epoch"] = json.loads(model.summary.read_text())["full_steps_per_epoch"]
            records.setdefault((name, allocator), []).append(record)
            log.info("%s, %s, run %d: %.2f steps/s, validation %.1f s", name, allocator, repeat + 1,
                     record["steps_per_second"], record["validation_seconds"])
    rows = []
    for name, allocator, settings in cases:
        config, runs = load_config(run_overrides(dataset, steps, settings, allocator)), records[(name, allocator)]
        rate = statistics.median(r["steps_per_second"] for r in runs)
        validation = statistics.median(r["validation_seconds"] for r in runs)
        full, t = runs[0]["full_steps_per_epoch"], config.train
        rows.append({"setting": name, "max_history": config.prepare.max_history, "batch_size": t.batch_size,
                     "n_interests": t.n_interests, "lm_trainable_layers": t.lm_trainable_layers,
                     "allocator": allocator, "resolved": resolved(allocator), "steps_per_second": rate,
                     "validation_seconds": validation, "steps_per_epoch": full,
                     "epoch_seconds": full / rate + validation,
                     "runs": [{"steps_per_second": r["steps_per_second"],
                               "validation_seconds": r["validation_seconds"]} for r in runs]})
    return rows


def merge(previous: dict | None, run: dict, dataset: str, steps: int) -> dict:
    """The kept runs of the same dataset and step count, with `run` replacing any of its label, last."""
    kept = []
    if previous and previous.get("dataset") == dataset and previous.get("steps") == steps:
        kept = [r for r in previous.get("runs", []) if r["label"] != run["label"]]
    return {"dataset": dataset, "steps": steps, "runs": [*kept, run]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-1m")
    parser.add_argument("--steps", type=int, default=150, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (the median is kept)")
    parser.add_argument("--allocators", default="auto", help="train.allocator values, comma-separated")
    parser.add_argument("--label", default=None, help="name of this run (default: the checkout's commit)")
    parser.add_argument("--fresh", action="store_true", help="drop the runs kept in step-time.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "mimalloc")):
        # train.allocator=system keeps the environment's allocator: its rows would be that one's too.
        raise SystemExit("bench.step_time compares allocators: run it without jemalloc or mimalloc in LD_PRELOAD")
    path = RESULTS / "step-time.json"
    previous = None if args.fresh or not path.exists() else json.loads(path.read_text())
    run = {"label": args.label or checkout_label(), "machine": machine(),
           "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "rows": measure(args.dataset, args.steps, args.allocators.split(","), args.repeats)}
    result = merge(previous, run, args.dataset, args.steps)
    return save("step-time", result, markdown(result))


def spread(row: dict, key: str) -> str:
    """" (lowest-highest)" of a row's runs, when it has several."""
    values = [r[key] for r in row.get("runs", [])]
    if len(values) < 2:
        return ""
    digits = 1 if key == "validation_seconds" else 2
    return f" ({min(values):.{digits}f}-{max(values):.{digits}f})"


def cpu_kind(machine: dict) -> str:
    """The CPU's model name with its matmul instruction set (bench.machine), what runs are compared by:
    "AMD EPYC (AVX2)" and "AMD EPYC (AVX512-BF16)" are different machines."""
    return f"{machine['cpu']} ({machine['isa']})" if machine.get("isa") else machine["cpu"]


def markdown(result: dict) -> str:
    """The latest run's rows after every earlier run's on the same CPU, with the speed-up over the first."""
    latest = result["runs"][-1]
    m = latest["machine"]
    same = [r for r in result["runs"][:-1] if cpu_kind(r["machine"]) == cpu_kind(m)]
    other = [r for r in result["runs"][:-1] if cpu_kind(r["machine"]) != cpu_kind(m)]
    lines = [f"# Training speed on {result['dataset']} ({result['steps']} steps and one validation per row)", "",
             f"Machine: {cpu_kind(m)}, {m['cores']} cores, {m['ram_gib']} GiB RAM, GPU: {m['gpu'] or 'none'}. "
             f"Latest run `{latest['label']}`, {latest['generated_at']}.", "",
             "| setting | history | batch | K | allocator | run | steps/s | validation s | epoch s (est.) | speed-up |",
             "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for row in latest["rows"]:
        key = (row["setting"], row["allocator"])
        setting = (f"{row['setting']} | {row['max_history']} | {row['batch_size']} | {row['n_interests']} | "
                   f"{row['allocator']} ({row['resolved']})")
        matches = [(run, match) for run in [*same, latest]
                   for match in run["rows"] if (match["setting"], match["allocator"]) == key]
        first_run, first = matches[0]
        for run, match in matches:
            speedup = (f"{first['epoch_seconds'] / row['epoch_seconds']:.2f}x vs `{first_run['label']}`"
                       if run is latest and first_run is not latest else "")
            lines.append(f"| {setting} | `{run['label']}` ({run['generated_at'][:10]}) | "
                         f"{match['steps_per_second']:.2f}{spread(match, 'steps_per_second')} | "
                         f"{match['validation_seconds']:.1f}{spread(match, 'validation_seconds')} | "
                         f"{match['epoch_seconds']:.0f} | {speedup} |")
            setting = " |  |  |  | "
    lines += ["", "Rates are the median of the row's runs (lowest-highest in brackets); speed-up: the first kept "
              "run's estimated epoch time over the latest's (same CPU)."]
    if other:
        lines.append("Kept from other CPUs (not compared): " + "; ".join(
            f"`{r['label']}` on {cpu_kind(r['machine'])} ({r['generated_at'][:10]})" for r in other) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
