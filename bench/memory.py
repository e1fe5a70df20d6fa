"""Training memory: peak resident memory of the training workers, epoch by epoch.

    python -m bench.memory [--datasets ml-100k,ml-1m] [--epochs 40] [--max-steps [DATASET=]N,...] [--interval 5]

Each row is a real `launch_training` run (the DAG's code, under torchrun) on the quality
benchmark's split: ML-100K with the pipeline's defaults, ML-1M with the benchmark's settings
(bench.quality.DATASET_SETTINGS["ml-1m"], less any the environment sets). Early stopping is
off (train.patience = --epochs) and there is no time budget, so every run reaches its last epoch.

An epoch's figure is the peak resident memory of the training run up to the end of that epoch
(VmHWM, the largest of torchrun's worker processes; model loading and the frozen text cache
count in epoch 1): the `peak_rss_mib` of each epoch's record in the run's history.json where the
worker writes it, else read from /proc by this process when the worker's epoch line reaches the
log. A thread samples the workers' VmRSS every --interval seconds meanwhile; the JSON keeps each
epoch's largest sample too, which shows memory that is returned between epochs.

Goal (issue 31): flat after the first epoch, the epoch-40 peak within 10 % of epoch 2's, and
under 4 GB for ML-100K-sized data. Writes bench/results/memory.{json,md}. A run of fewer than 40
epochs writes bench/results/memory-short.{json,md} instead and says so above its table: it shows
that the benchmark works, not how memory behaves over 40 epochs. --max-steps caps the steps of
every epoch (N) or of one dataset's (ml-1m=64): 40 full ML-1M epochs with their validations took
76 min on 2 AVX512-BF16 cores (over two hours on AVX2 ones, from their step rate). The table shows
each run's steps an epoch out of the full count.

On a GPU host (no Postgres there; docs/gpu.md), one dataset from a prepared split, on every GPU in bf16,
its row written to a file and added to memory.json back here:

    python -m bench.memory --datasets ml-1m --dataset-dir bench/gpu-assets/ml-1m --gpu --out ROW.json
    python -m bench.memory --add-run ROW.json

A GPU run records the device memory torch held too (`peak_gpu_mib`, each epoch's max_memory_reserved).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from bench.quality import DATASETS, RESULTS, dataset_settings, machine, prepare, save
from tasks.training.launcher import EPOCH_LINE
from tasks.training.memory import command_line, descendants, status_mib

log = logging.getLogger("bench.memory")

FULL_EPOCHS = 40
REPORTED = (1, 2, 10, 40)  # the epochs the table shows (issue 31)
FLAT = 0.10  # the last epoch's peak may exceed epoch 2's by at most this share
TAIL = 10  # epochs over which a run's last growth is shown: a bound being filled levels off, a leak does not


def tail_growth(peaks: list[float] | None, epochs: int = TAIL) -> float | None:
    """The peak's growth over the last `epochs` epochs (None for a shorter run)."""
    if not peaks or len(peaks) <= epochs or not peaks[-1 - epochs]:
        return None
    return peaks[-1] / peaks[-1 - epochs] - 1


def worker_pids(root: int) -> list[int]:
    """The training workers below process `root`: torchrun's children running tasks.training.worker
    (torchrun's own command line names the module too, so it is told apart by its own)."""
    return [pid for pid in descendants(root)
            if "tasks.training.worker" in (command := command_line(pid)) and "torch.distributed.run" not in command]


class WorkerMemory(logging.Handler):
    """While launch_training runs: samples its workers' resident memory in a thread, and reads
    their high-water mark when an epoch's line comes through the launcher's log."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self.pids: list[int] = []
        self.samples: list[tuple[float, float]] = []  # (time, VmRSS MiB, the largest worker's)
        self.epochs: dict[int, tuple[float, float]] = {}  # epoch -> (time of its line, VmHWM MiB)
        # not `self.lock`: logging.Handler holds that one while it calls emit(), which reads too
        self.reading = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench.memory sampler", daemon=True)

    def __enter__(self) -> Self:
        logging.getLogger("tasks.training.launcher").addHandler(self)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        logging.getLogger("tasks.training.launcher").removeHandler(self)

    def read(self) -> tuple[float, float] | None:
        """(VmRSS, VmHWM) of the largest worker now, recorded as a sample; None before the workers start."""
        with self.reading:
            readings = [m for m in map(status_mib, self.pids) if m is not None]
            if not readings:
                self.pids = worker_pids(os.getpid())
                readings = [m for m in map(status_mib, self.pids) if m is not None]
            if not readings:
                return None
            now = (max(rss for rss, _ in readings), max(hwm for _, hwm in readings))
            self.samples.append((time.monotonic(), now[0]))
            return now

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.read()

    def emit(self, record: logging.LogRecord) -> None:
        match = EPOCH_LINE.search(record.getMessage())
        if match and (now := self.read()) is not None:  # the line comes after the epoch's validation
            self.epochs[int(match.group(1))] = (time.monotonic(), now[1])

    def peaks(self) -> list[float]:
        """VmHWM at the end of each epoch seen, in order."""
        return [round(self.epochs[epoch][1], 1) for epoch in sorted(self.epochs)]

    def sampled(self) -> list[float]:
        """Each epoch's largest VmRSS sample (taken every `interval` seconds and at its end)."""
        out, since = [], float("-inf")
        for epoch in sorted(self.epochs):
            end = self.epochs[epoch][0]
            out.append(round(max((rss for at, rss in self.samples if since < at <= end), default=0.0), 1))
            since = end
        return out


def run(dataset: str, epochs: int, max_steps: int | None, interval: float, dataset_dir: Path | None = None,
        gpu: bool = False) -> dict:
    """One training run of `epochs` epochs on `dataset` (prepared through the pipeline unless
    `dataset_dir` is a prepared split), on the CPU or, with `gpu`, on every CUDA device in bf16."""
    from bench.gpu_ml1m import device_description
    from bench.step_time import resolved
    from tasks.config import load_config
    from tasks.layout import ModelFiles
    from tasks.training.launcher import launch_training

    settings = dataset_settings(dataset)
    device = device_description()
    if gpu and "gpus" not in device:
        raise SystemExit("--gpu: torch sees no CUDA device here")
    placement = {"train.nproc": device["gpus"], "train.precision": "bf16"} if gpu else {}
    # "none", not None (which load_config skips): no time budget and no cap unless --max-steps,
    # whatever the environment says.
    bench = {"train.epochs": epochs, "train.patience": epochs, "train.max_minutes": "none",
             "train.max_steps_per_epoch": max_steps if max_steps is not None else "none"}
    config = load_config({**settings, **placement, "database.app_schema": "bench_" + dataset.replace("-", ""),
                          **bench})
    work = config.paths.home / "bench" / dataset
    dataset_dir = dataset_dir or prepare(config, dataset, work)
    model = ModelFiles(work / "memory")
    log.info("%s: %d epochs%s, %s", dataset, epochs, f" of at most {max_steps} steps" if max_steps else "",
             f"settings {settings}" if settings else "the pipeline's defaults")
    started = time.time()
    with WorkerMemory(interval) as sampler:
        launch_training(config, dataset_dir, model.root)
    seconds = time.time() - started
    history = json.loads(model.history.read_text())
    summary = json.loads(model.summary.read_text())
    if history and all(record.get("peak_rss_mib") is not None for record in history):
        peaks, source = [round(float(record["peak_rss_mib"]), 1) for record in history], "history.json peak_rss_mib"
    else:
        peaks, source = sampler.peaks(), "the workers' VmHWM read from /proc at each epoch's log line"
    if len(peaks) != len(history):
        log.warning("%s: a peak for %d epochs, history.json has %d", dataset, len(peaks), len(history))
    rates = [record["steps_per_second"] for record in history if "steps_per_second" in record]
    second, last = (peaks[1], peaks[-1]) if len(peaks) > 1 else (None, None)
    full_steps = summary["full_steps_per_epoch"]
    gpu_peaks = [record.get("peak_gpu_mib") for record in history]
    on_gpu = {"peak_gpu_mib": {str(e): (gpu_peaks[e - 1] if e <= len(gpu_peaks) else None) for e in REPORTED},
              "peak_gpu_mib_per_epoch": gpu_peaks} if gpu and all(p is not None for p in gpu_peaks) else {}
    return {
        "dataset": dataset,
        "settings": "bench.quality DATASET_SETTINGS" if settings else "pipeline defaults",
        "device": (f"{device['gpus']} x {device['device']}, bf16" if gpu else "CPU"),
        "machine": machine() | {"torch": device["torch"]},
        "setting_values": settings | placement,
        "bench_overrides": bench,
        "allocator": f"{config.train.allocator} ({resolved(config.train.allocator)})",
        "epochs_run": len(history),
        "steps_per_epoch": min(max_steps or full_steps, full_steps),
        "full_steps_per_epoch": full_steps,
        "peak_mib": {str(e): (peaks[e - 1] if e <= len(peaks) else None) for e in REPORTED},
        "peak_mib_per_epoch": peaks,
        "peak_source": source,
        "sampled_rss_mib_per_epoch": sampler.sampled(),
        "sample_interval_s": interval,
        "last_vs_epoch_2": round(last / second - 1, 4) if second else None,
        "flat": last <= second * (1 + FLAT) if second else None,
        "steps_per_second": round(statistics.median(rates), 3) if rates else None,
        "seconds": round(seconds, 1),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    } | on_gpu


def step_caps(text: str) -> dict[str, int]:
    """--max-steps: "64" (every dataset, key "*") or "ml-1m=64,ml-100k=100"."""
    caps = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        dataset, _, value = part.rpartition("=")
        try:
            caps[dataset or "*"] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--max-steps {text!r}: want N or DATASET=N[,DATASET=N]") from None
    return caps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,ml-1m",
                        help="comma-separated, from " + ", ".join(sorted(DATASETS)))
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS,
                        help=f"epochs per run (train.epochs, early stopping off; below {FULL_EPOCHS}: a short run)")
    parser.add_argument("--max-steps", type=step_caps, default={},
                        help="at most this many steps an epoch (train.max_steps_per_epoch): N for every dataset, "
                             "or DATASET=N[,DATASET=N]")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between resident-memory samples")
    parser.add_argument("--dataset-dir", type=Path, help="a prepared split of the one dataset in --datasets "
                        "(e.g. bench/gpu-assets/ml-1m), instead of loading it through the pipeline")
    parser.add_argument("--gpu", action="store_true", help="train on every CUDA device, bf16 (a GPU host)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here instead of bench/results/memory.*")
    parser.add_argument("--add-run", type=Path, metavar="FILE",
                        help="no training: add the runs of FILE (an --out of a GPU host) to bench/results/memory.json")
    args = parser.parse_args(argv)
    if args.add_run:
        return add_runs(args.add_run)
    datasets = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown or not datasets:
        raise SystemExit(f"--datasets {args.datasets!r}: choose from {', '.join(sorted(DATASETS))}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if args.epochs < 1 or any(cap < 1 for cap in args.max_steps.values()) or args.interval <= 0:
        raise SystemExit("--epochs and --max-steps must be at least 1, --interval positive")
    if args.dataset_dir and (len(datasets) != 1 or not (args.dataset_dir / "dataset.json").exists()):
        raise SystemExit(f"--dataset-dir {args.dataset_dir}: needs one dataset in --datasets and a prepared split "
                         "there (dataset.json; python -m bench.gpu_ml1m prepare writes one)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.gpu:
        from bench.gpu_ml1m import ASSETS, use_carried_text_model

        use_carried_text_model(ASSETS, smoke=False)
    short = args.epochs < FULL_EPOCHS
    if short:
        log.info("a short run (--epochs %d): results go to bench/results/memory-short.{json,md}", args.epochs)
    caps = {dataset: args.max_steps.get(dataset, args.max_steps.get("*")) for dataset in datasets}
    runs = [run(dataset, args.epochs, caps[dataset], args.interval, args.dataset_dir, args.gpu) for dataset in datasets]
    result = {
        "runs": runs,
        "epochs": args.epochs,
        "max_steps_per_epoch": {dataset: cap for dataset, cap in caps.items() if cap is not None},
        "short": short,
        "goal": f"epoch {FULL_EPOCHS}'s peak within {FLAT:.0%} of epoch 2's; under 4 GB for ML-100K-sized data",
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(markdown(result))
        return result
    return save("memory-short" if short else "memory", result, markdown(result))


def add_runs(path: Path) -> dict:
    """Add the runs of an --out file to bench/results/memory.json; a run of the same dataset, settings
    and device is replaced (a CPU run at full epochs replaces a capped one). Runs of fewer epochs than
    memory.json's are refused; the file's step caps are the rows' own."""
    try:
        added = json.loads(path.read_text())
        runs = added["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--add-run {path}: not a bench.memory result ({error})") from None
    if added.get("short") or added.get("epochs") != FULL_EPOCHS:
        raise SystemExit(f"--add-run {path}: a run of {added.get('epochs')} epochs; memory.json holds "
                         f"{FULL_EPOCHS}-epoch runs")
    result = json.loads((RESULTS / "memory.json").read_text())

    def key(row: dict) -> tuple:
        return row["dataset"], row["settings"], row.get("device", "CPU")

    replaced = {key(r) for r in runs}
    result["runs"] = [r for r in result["runs"] if key(r) not in replaced] + runs  # each row says its own steps
    result["max_steps_per_epoch"] = {r["dataset"]: r["steps_per_epoch"] for r in result["runs"]
                                     if r["steps_per_epoch"] < r["full_steps_per_epoch"]}
    return save("memory", result, markdown(result))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Training memory: peak resident MiB by epoch ({result['epochs']} epochs, early stopping off)", ""]
    if result["short"]:
        lines += [f"**Short run** (--epochs {result['epochs']}): it shows that the benchmark works, "
                  f"not how memory behaves over {FULL_EPOCHS} epochs.", ""]
    lines += [f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, GPU: {m['gpu'] or 'none'}. "
              f"Date {result['date']}. Goal: {result['goal']}. A steps/epoch of \"N of M\" ran N of the epoch's "
              "M training steps (--max-steps), validation in full.", "",
              "| dataset | settings | device | allocator | steps/epoch | "
              + " | ".join(f"epoch {e}" for e in REPORTED) + f" | last vs epoch 2 | last {TAIL} epochs | steps/s |",
              "| --- | --- | --- | --- | ---: | " + " | ".join("---:" for _ in REPORTED) + " | ---: | ---: | ---: |"]
    notes = []
    for r in result["runs"]:
        peaks = [f"{r['peak_mib'][str(e)]:,.0f}" if r["peak_mib"][str(e)] is not None else "–" for e in REPORTED]
        steps = str(r["steps_per_epoch"]) + (f" of {r['full_steps_per_epoch']}"
                                             if r["steps_per_epoch"] < r["full_steps_per_epoch"] else "")
        growth = (f"{r['last_vs_epoch_2']:+.1%} (epoch {r['epochs_run']})" if r["last_vs_epoch_2"] is not None
                  else "–")
        rate = f"{r['steps_per_second']:.2f}" if r["steps_per_second"] is not None else "–"
        tail = f"{tail:+.1%}" if (tail := tail_growth(r.get("peak_mib_per_epoch"))) is not None else "–"
        lines.append(f"| {r['dataset']} | {r['settings']} | {r.get('device', 'CPU')} | {r['allocator']} | {steps} | "
                     + " | ".join(peaks) + f" | {growth} | {tail} | {rate} |")
        if (own := r.get("machine")) and any(own.get(k) != m.get(k) for k in ("cpu", "cores", "ram_gib", "gpu")):
            notes.append(f"- {r['dataset']} on {r.get('device', 'CPU')}: measured on {own['cpu']}, {own['cores']} "
                         f"cores, {own['ram_gib']} GiB RAM (torch {own.get('torch', '?')}), {r.get('measured_at', '')}"
                         .rstrip(", "))
        elif (at := r.get("measured_at")) and at[:10] != result["date"][:10]:
            notes.append(f"- {r['dataset']} on {r.get('device', 'CPU')}: measured {at} on a machine of the same kind")
        if gpu := r.get("peak_gpu_mib"):
            notes.append(f"- {r['dataset']} on {r['device']}: device memory held by torch (max_memory_reserved) "
                         "after epochs " + " / ".join(map(str, REPORTED)) + ": "
                         + " / ".join(f"{gpu[str(e)]:,.0f}" if gpu[str(e)] is not None else "–" for e in REPORTED)
                         + " MiB")
    lines += ["", "Peak: the run's resident high-water mark (VmHWM) up to the end of the epoch, from "
              + "; ".join(sorted({r["peak_source"] for r in result["runs"]})) + f". Last {TAIL} epochs: the peak's "
              f"growth from epoch {FULL_EPOCHS - TAIL} to the last; a bounded cache or allocator that is still "
              "filling at epoch 2 fails the goal and levels off here, a leak grows here too."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
