"""Training speed: steps per second and validation time of the pipeline's training, per allocator.

    python -m bench.step_time [--dataset ml-1m] [--steps 40] [--allocators system,auto]

Each row is a real `launch_training` run (the DAG's code, under torchrun) on the quality
benchmark's split, cut to `--steps` training steps and one validation; the rates come from the
run's own training history (`steps_per_second`, `validation_seconds`). A full epoch's time is
estimated from them and the steps an uncut epoch has (the training summary's
`full_steps_per_epoch`). Writes bench/results/step-time.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import UTC, datetime

from bench.quality import DATASETS, machine, prepare, save

log = logging.getLogger("bench.step_time")

# (prepare.max_history, train.batch_size, train.n_interests): the defaults, and ML-1M's long histories
# with four interests and with one (its selected settings, bench.quality.DATASET_SETTINGS)
SETTINGS = ((50, 64, 4), (200, 16, 4), (200, 16, 1))


def resolved(allocator: str) -> str:
    """What train.allocator=`allocator` gives a training process on this machine."""
    from tasks.training.launcher import allocator_env

    env = allocator_env(allocator, dict(os.environ))
    preload = env.get("LD_PRELOAD", "")
    return ("jemalloc" if "jemalloc" in preload else "mimalloc" if "mimalloc" in preload
            else "glibc, huge pages" if "GLIBC_TUNABLES" in env else "glibc")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-1m")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--allocators", default="system,auto", help="train.allocator values, comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "mimalloc")):
        # train.allocator=system keeps the environment's allocator: its rows would be that one's too.
        raise SystemExit("bench.step_time compares allocators: run it without jemalloc or mimalloc in LD_PRELOAD")
    from tasks.config import load_config
    from tasks.layout import ModelFiles
    from tasks.training.launcher import launch_training

    base = {"database.app_schema": "bench_" + args.dataset.replace("-", ""), "train.epochs": 1,
            "train.max_steps_per_epoch": args.steps}
    config = load_config(base)
    work = config.paths.home / "bench" / args.dataset
    dataset_dir = prepare(config, args.dataset, work)
    rows = []
    for history, batch, k in SETTINGS:
        for allocator in args.allocators.split(","):
            config = load_config({**base, "prepare.max_history": history, "train.batch_size": batch,
                                  "train.n_interests": k, "train.allocator": allocator})
            model = ModelFiles(work / f"step-time-{history}-{k}-{allocator}")
            launch_training(config, dataset_dir, model.root)
            record = json.loads(model.history.read_text())[0]
            full = json.loads(model.summary.read_text())["full_steps_per_epoch"]
            rows.append({"max_history": history, "batch_size": batch, "n_interests": k, "allocator": allocator,
                         "resolved": resolved(allocator),
                         "steps_per_second": record["steps_per_second"],
                         "validation_seconds": record["validation_seconds"], "steps_per_epoch": full,
                         "epoch_seconds": full / record["steps_per_second"] + record["validation_seconds"]})
            log.info("%s", rows[-1])
    result = {"dataset": args.dataset, "steps": args.steps, "machine": machine(),
              "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "rows": rows}
    return save("step-time", result, markdown(result))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Training speed on {result['dataset']} ({result['steps']} steps and one validation per row)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, GPU: {m['gpu'] or 'none'}. "
             f"Generated {result['generated_at']}.", "",
             "| history | batch | K | allocator | steps/s | validation s | steps per epoch | epoch s (est.) |",
             "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        allocator = f"{r['allocator']} ({r['resolved']})" if "resolved" in r else r["allocator"]
        lines.append(f"| {r['max_history']} | {r['batch_size']} | {r['n_interests']} | {allocator} | "
                     f"{r['steps_per_second']:.2f} | {r['validation_seconds']:.0f} | {r['steps_per_epoch']} | "
                     f"{r['epoch_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
