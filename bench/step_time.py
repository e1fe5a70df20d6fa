"""Training speed, before and after a change: steps per second and validation time of real training runs.

    python -m bench.step_time [--dataset ml-1m] [--steps 150] [--allocators auto] [--label NAME] [--fresh]

Each row is a real `launch_training` run (the DAG's code, under torchrun) on the quality
benchmark's split, cut to `--steps` training steps and one validation (of the live weights and of
their average), for two settings: the pipeline defaults, and the dataset's selected settings of
bench.quality (what its time-to-target column measures). The rates come from the run's own training
history (`steps_per_second`, `validation_seconds`); a full epoch's time is estimated from them and the
steps an uncut epoch has (the training summary's `full_steps_per_epoch`).

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


def measure(dataset: str, steps: int, allocators: list[str]) -> list[dict]:
    """One capped training run per setting and allocator; their rows."""
    from tasks.config import load_config
    from tasks.layout import ModelFiles
    from tasks.training.launcher import launch_training

    base = {"database.app_schema": "bench_" + dataset.replace("-", ""), "train.epochs": 1,
            "train.max_steps_per_epoch": steps}
    config = load_config(base)
    work = config.paths.home / "bench" / dataset
    dataset_dir = prepare(config, dataset, work)
    rows = []
    for name, settings in SETTINGS.items():
        settings = DATASET_SETTINGS.get(dataset, {}) if settings is None else settings
        for allocator in allocators:
            config = load_config({**base, **settings, "train.allocator": allocator})
            model = ModelFiles(work / f"step-time-{name.split()[0]}-{allocator}")
            launch_training(config, dataset_dir, model.root)
            record = json.loads(model.history.read_text())[0]
            full = json.loads(model.summary.read_text())["full_steps_per_epoch"]
            t = config.train
            rows.append({"setting": name, "max_history": config.prepare.max_history, "batch_size": t.batch_size,
                         "n_interests": t.n_interests, "lm_trainable_layers": t.lm_trainable_layers,
                         "allocator": allocator, "resolved": resolved(allocator),
                         "steps_per_second": record["steps_per_second"],
                         "validation_seconds": record["validation_seconds"], "steps_per_epoch": full,
                         "epoch_seconds": full / record["steps_per_second"] + record["validation_seconds"]})
            log.info("%s", rows[-1])
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
           "rows": measure(args.dataset, args.steps, args.allocators.split(","))}
    result = merge(previous, run, args.dataset, args.steps)
    return save("step-time", result, markdown(result))


def markdown(result: dict) -> str:
    """The latest run's rows after every earlier run's on the same CPU, with the speed-up over the first."""
    latest = result["runs"][-1]
    m = latest["machine"]
    same = [r for r in result["runs"][:-1] if r["machine"]["cpu"] == m["cpu"]]
    other = [r for r in result["runs"][:-1] if r["machine"]["cpu"] != m["cpu"]]
    lines = [f"# Training speed on {result['dataset']} ({result['steps']} steps and one validation per row)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, GPU: {m['gpu'] or 'none'}. "
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
                         f"{match['steps_per_second']:.2f} | {match['validation_seconds']:.1f} | "
                         f"{match['epoch_seconds']:.0f} | {speedup} |")
            setting = " |  |  |  | "
    lines += ["", "speed-up: the first kept run's estimated epoch time over the latest's (same CPU)."]
    if other:
        lines.append("Kept from other CPUs (not compared): " + "; ".join(
            f"`{r['label']}` on {r['machine']['cpu']} ({r['generated_at'][:10]})" for r in other) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
