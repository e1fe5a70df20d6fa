"""Cold-start benchmark: are the titles that entered the catalogue last found from their text on day one?

A time split of a MovieLens release (default ML-1M). The titles that entered the catalogue last, the
last `--cold-share` (10 %) of rated titles by first rating, are new: their first rating sets the
cut-off, and training sees only the ratings before it, through the pipeline's own prepare (which keeps
the new titles beside the 5-core universe, placed by their text). Two kinds of test case, each ranked
among the whole catalogue the product would publish from (5-core items and new items, history masked):

- **cold**: a user's first rating of a new title, after at least `--min-history` earlier ratings; the
  history is every rating before it (the user may have joined after the cut-off: histories are read
  at scoring time, as the published lists read them).
- **warm**: a user with `--min-history` ratings before the cut-off whose first rating from the cut-off on
  is of a trained (5-core) title; the history again is everything before it.

Models: PrismRec (the pipeline's training, the dataset's benchmark settings), the zero-shot text model
(MiniLM embeddings, bench.baselines.fit_content, its decay chosen on validation), popularity and SASRec
(bench.baselines.fit_sasrec). Popularity and SASRec score by ratings and cannot place a title they have
never seen: they rank it last. PrismRec's warm cases are ranked twice, with and without the new titles
among the candidates: the difference is what serving new titles costs the warm ones.

    python -m bench.cold_start snapshot [--dataset ml-1m] [--out DIR]   # pipeline load + extract (Postgres)
    python -m bench.cold_start run [--snapshot DIR] [--models prismrec,content,...] [--set K=V] [--out FILE]
    python -m bench.cold_start combine A.json B.json ...   # rows of several runs -> bench/results/cold-start-<dataset>.{json,md}

`run` without `--snapshot` makes one first (needs Postgres). The snapshot (two Parquet files, ~6 MB
for ML-1M) is what a GPU host needs beside MiniLM (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("bench.cold_start")

RESULTS = Path(__file__).resolve().parent / "results"
ASSETS = Path(__file__).resolve().parent / "gpu-assets"
MODELS = ("prismrec", "content", "popularity", "sasrec")
COLD_SHARE = 0.10
MIN_HISTORY = 5
SASREC_DROPOUT = {"ml-1m": 0.1}  # bench.quality.DATASET_BASELINES
# scores [B, C] of the candidates (app item ids) for app-id histories; -inf: the model cannot place it
CandidateScorer = Callable[[Sequence[np.ndarray]], "torch.Tensor"]  # noqa: F821


# --- the split -------------------------------------------------------------------------------------

def cold_cutoff(interactions: pd.DataFrame, cold_share: float) -> tuple[pd.Timestamp, np.ndarray]:
    """(cut-off, new titles): the last `cold_share` of rated titles by first rating; every title first
    rated at or after the first of them is new."""
    first = interactions.groupby("item_id")["occurred_at"].min().sort_values(kind="stable")
    if not 0 < cold_share < 1:
        raise ValueError(f"cold_share must be between 0 and 1, got {cold_share}")
    count = max(1, math.ceil(cold_share * len(first)))
    cutoff = first.iloc[-count]
    return cutoff, np.sort(first[first >= cutoff].index.to_numpy())


def ordered(interactions: pd.DataFrame) -> pd.DataFrame:
    """Ratings by user and time, ties in the snapshot's row order (as prepare orders them)."""
    return (interactions.assign(_order=np.arange(len(interactions)))
            .sort_values(["user_id", "occurred_at", "_order"], kind="stable").drop(columns="_order"))


def test_cases(interactions: pd.DataFrame, cutoff: pd.Timestamp, new_titles: np.ndarray,
               min_history: int) -> pd.DataFrame:
    """One row per case: user_id, item_id (the target), kind ("cold"/"warm"), history (app item ids,
    oldest first: every rating strictly before the target's time)."""
    rated = ordered(interactions)
    is_new = rated["item_id"].isin(new_titles)
    cold_first = rated[is_new].groupby("user_id", sort=True).head(1).assign(kind="cold")
    after = rated[rated["occurred_at"] >= cutoff].groupby("user_id", sort=True).head(1)
    warm_first = after[~after["item_id"].isin(new_titles)].assign(kind="warm")
    cases = pd.concat([cold_first, warm_first], ignore_index=True)
    by_user = {user: frame for user, frame in rated.groupby("user_id", sort=False)}
    histories, keep = [], []
    for user, when, kind in zip(cases["user_id"], cases["occurred_at"], cases["kind"], strict=True):
        before = by_user[user]
        before = before[before["occurred_at"] < when]
        enough = len(before) >= min_history
        if kind == "warm":  # warm cases: users the model met in training, with enough ratings before the cut-off
            enough = int((before["occurred_at"] < cutoff).sum()) >= min_history
        keep.append(enough)
        histories.append(before["item_id"].to_numpy(np.int64))
    cases = cases.assign(history=histories)[np.asarray(keep, dtype=bool)]
    return cases[["user_id", "item_id", "kind", "occurred_at", "history"]].reset_index(drop=True)


def write_snapshot(dataset: str, out: Path) -> Path:
    """The release through the pipeline's load and extract (bench.quality's schema and logical date)."""
    from bench.quality import DATASETS
    from tasks.config import load_config
    from tasks.data.extract import extract_snapshot
    from tasks.data.sources import load_movielens
    from tasks.layout import SnapshotFiles

    source, logical_date = DATASETS[dataset]
    config = load_config({"database.app_schema": "bench_" + dataset.replace("-", "")})
    load_movielens(config, source)
    extract_snapshot(config, logical_date, out)
    files = SnapshotFiles(out)
    log.info("snapshot of %s in %s: %.1f MB", dataset, out,
             sum(p.stat().st_size for p in (files.items, files.interactions)) / 1e6)
    return out


def build_split(snapshot: Path, work: Path, config, cold_share: float, min_history: int) -> dict:
    """Cut the snapshot at the new titles' first rating, prepare the training part with the pipeline's
    prepare, and find the test cases; returns the split's facts and paths."""
    from tasks.data.prepare import load_dataset, load_new_items, prepare_dataset
    from tasks.layout import RunLayout, SnapshotFiles

    files = SnapshotFiles(snapshot)
    interactions, items = pd.read_parquet(files.interactions), pd.read_parquet(files.items)
    cutoff, new_titles = cold_cutoff(interactions, cold_share)
    run = RunLayout(work)
    run.snapshot.root.mkdir(parents=True, exist_ok=True)
    items.to_parquet(run.snapshot.items, index=False)  # the whole catalogue: the new titles are in it, unrated
    interactions[interactions["occurred_at"] < cutoff].to_parquet(run.snapshot.interactions, index=False)
    prepare_dataset(config, run.snapshot.root, run.dataset.root)
    sequences, _ = load_dataset(run.dataset.root)
    cases = test_cases(interactions, cutoff, new_titles, min_history)
    universe = sequences.item_ids[1:]
    # A warm case's target must be a trained title; a cold one is new by construction.
    cases = cases[(cases["kind"] == "cold") | cases["item_id"].isin(universe)].reset_index(drop=True)
    new_items = load_new_items(run.dataset.root)
    facts = {
        "cutoff": cutoff.isoformat(), "cold_share": cold_share, "min_history": min_history,
        "new_titles": len(new_titles), "rated_titles": int(interactions["item_id"].nunique()),
        "catalogue": len(items), "training_interactions": int((interactions["occurred_at"] < cutoff).sum()),
        "interactions": len(interactions), "universe_items": len(universe),
        "new_items_in_model": len(new_items), "cases": {k: int(v) for k, v in cases["kind"].value_counts().items()},
    }
    log.info("split at %s: %d new titles; %d of %d ratings before it; cases %s", cutoff, len(new_titles),
             facts["training_interactions"], len(interactions), facts["cases"])
    return {"facts": facts, "dataset": run.dataset.root, "cases": cases}


# --- the models ------------------------------------------------------------------------------------

def prismrec_scorer(config, dataset_dir: Path, work: Path, candidates: np.ndarray) -> tuple[CandidateScorer, dict]:
    import torch

    from tasks.layout import ModelFiles
    from tasks.model.recommender import Recommender
    from tasks.training.launcher import launch_training

    started = time.time()
    model_dir = launch_training(config, dataset_dir, work / "prismrec")
    seconds = time.time() - started
    summary = json.loads(ModelFiles(Path(model_dir)).summary.read_text())
    recommender = Recommender.load(model_dir)

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        return recommender.score_items(list(histories), candidates)

    return score, {"train_seconds": round(seconds, 1), "epochs_run": summary.get("epochs_run"),
                   "best_epoch": summary.get("best_epoch"), "stopped_by": summary.get("stopped_by"),
                   "best_valid_ndcg@10": summary.get("best_valid_ndcg@10"),
                   "settings": {k: v for k, v in config.to_dict().items()
                                if k.startswith("train.") or k == "prepare.max_history"}}


def content_scorer(sequences, items: pd.DataFrame, catalogue: pd.DataFrame, candidates: np.ndarray
                   ) -> tuple[CandidateScorer, dict]:
    """Zero-shot text: MiniLM vectors of every candidate; the history's decayed mean, the decay chosen
    on the training part's validation targets (as bench.quality chooses it)."""
    import torch

    from bench.baselines import GRIDS, fit_content, item_text_vectors
    from tasks.evaluation.baselines import search

    started = time.time()
    text = catalogue.set_index("item_id").loc[candidates, "description"].fillna("").tolist()
    vectors = item_text_vectors(text)
    column = pd.Series(np.arange(len(candidates)), index=candidates)
    universe_rows = torch.as_tensor(column.loc[items.sort_values("idx")["item_id"]].to_numpy())
    tuned = search("content", fit_content, GRIDS["content"], sequences, items, vectors=vectors[universe_rows])
    decay = tuned.hyper["decay"]

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        profiles = torch.zeros(len(histories), vectors.shape[1])
        for row, history in enumerate(histories):
            known = column.reindex(history).dropna().to_numpy(np.int64)
            if len(known):
                weights = torch.tensor(decay, dtype=torch.float64) ** torch.arange(len(known) - 1, -1, -1)
                profiles[row] = (weights.float()[:, None] * vectors[torch.as_tensor(known)]).sum(0)
        return torch.nn.functional.normalize(profiles, dim=-1) @ vectors.T

    return score, {"train_seconds": round(time.time() - started, 1), "hyper": tuned.hyper}


def popularity_scorer(sequences, candidates: np.ndarray) -> tuple[CandidateScorer, dict]:
    """Ratings before the cut-off per title; a title with none cannot be placed (-inf)."""
    import torch

    counts = np.bincount(sequences.item_idx, minlength=sequences.n_items + 1)
    row = torch.full((len(candidates),), float("-inf"))
    index = pd.Series(np.arange(1, sequences.n_items + 1), index=sequences.item_ids[1:]).reindex(candidates)
    held = index.notna().to_numpy()
    row[torch.as_tensor(held)] = torch.as_tensor(counts[index[held].to_numpy(np.int64)], dtype=torch.float32)
    return (lambda histories: row.expand(len(histories), -1).clone()), {"train_seconds": 0.0}


def sasrec_scorer(sequences, items: pd.DataFrame, candidates: np.ndarray, dropout: float,
                  max_seconds: float | None, seed: int) -> tuple[CandidateScorer, dict]:
    import torch

    from bench.baselines import fit_sasrec

    started = time.time()
    trained = fit_sasrec(sequences, items, dropout=dropout, max_seconds=max_seconds, seed=seed)
    index = pd.Series(np.arange(1, sequences.n_items + 1), index=sequences.item_ids[1:])
    columns = index.reindex(candidates)
    held = torch.as_tensor(columns.notna().to_numpy())
    columns = torch.as_tensor(columns.fillna(0).to_numpy(np.int64))

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        indexed = [index.reindex(h).dropna().to_numpy(np.int64) for h in histories]
        scores = trained(indexed)[:, columns]
        scores[:, ~held] = float("-inf")
        return scores

    return score, {"train_seconds": round(time.time() - started, 1), "epochs_run": trained.epochs_run,
                   "stopped_by": trained.stopped_by, "hyper": {"dropout": dropout, "max_seconds": max_seconds}}


# --- ranking and figures ---------------------------------------------------------------------------

def case_ranks(score: CandidateScorer, cases: pd.DataFrame, candidates: np.ndarray,
               exclude: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
    """0-based rank of each case's target among the candidates the user has not rated (ties count in
    the target's favour); a target the model cannot place ranks below every placed item. `exclude`:
    candidates taken out of the lists (their columns -inf)."""
    import torch

    column = pd.Series(np.arange(len(candidates)), index=candidates)
    dropped = torch.as_tensor(np.isin(candidates, exclude)) if exclude is not None else None
    ranks = []
    for start in range(0, len(cases), batch):
        chunk = cases.iloc[start:start + batch]
        histories = list(chunk["history"])
        scores = score(histories).float().clone()
        if dropped is not None:
            scores[:, dropped] = float("-inf")
        for row, history in enumerate(histories):
            seen = column.reindex(history).dropna().to_numpy(np.int64)
            scores[row, torch.as_tensor(seen)] = float("-inf")
        target = torch.as_tensor(column.loc[chunk["item_id"]].to_numpy(np.int64))
        mine = scores[torch.arange(len(chunk)), target]
        listed = torch.isfinite(scores).sum(1)
        ranks.append(torch.where(torch.isfinite(mine), (scores > mine[:, None]).sum(1), listed).numpy())
    return np.concatenate(ranks).astype(np.int64) if ranks else np.zeros(0, dtype=np.int64)


def figures(ranks: np.ndarray) -> dict:
    """HR@10, NDCG@10 (with standard errors over users), median rank (1 = top) and the user count."""
    hits = (ranks < 10).astype(np.float64)
    gains = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)
    n = len(ranks)

    def se(values: np.ndarray) -> float | None:
        return round(float(values.std(ddof=1) / math.sqrt(n)), 5) if n > 1 else None

    return {"users": n, "hr@10": round(float(hits.mean()), 5) if n else 0.0, "hr@10_se": se(hits),
            "ndcg@10": round(float(gains.mean()), 5) if n else 0.0, "ndcg@10_se": se(gains),
            "median_rank": float(np.median(ranks) + 1) if n else None}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """HR@10 of `a` minus `b` on the same cases, with the standard error of the paired difference."""
    diff = (a < 10).astype(np.float64) - (b < 10).astype(np.float64)
    return {"hr@10_difference": round(float(diff.mean()), 5),
            "se": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 5) if len(diff) > 1 else None,
            "hr@10_ratio": round(float((a < 10).mean() / (b < 10).mean()), 3) if (b < 10).any() else None}


# --- the run ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    from tasks.model.text_tower import MODEL_DIR_ENV

    text_model = args.assets / "minilm"
    if (text_model / "model.safetensors").exists():
        os.environ[MODEL_DIR_ENV] = str(text_model)
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from bench.gpu_ml1m import device_description
    from bench.quality import DATASET_SETTINGS
    from tasks.config import load_config
    from tasks.data.prepare import load_dataset, load_new_items

    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"prismrec-cold-{args.dataset}")
    snapshot = args.snapshot or write_snapshot(args.dataset, work / "source")
    gpus = torch.cuda.device_count()
    chosen = {**DATASET_SETTINGS.get(args.dataset, {}), "train.patience": 3,
              "train.nproc": max(gpus, 1) if gpus else None, "train.precision": "bf16" if gpus else "auto"}
    if args.smoke:
        chosen |= {"train.epochs": 1, "train.max_steps_per_epoch": 3, "train.nproc": 1,
                   "prepare.max_history": 50, "train.max_text_tokens": 16}
    chosen |= dict(pair.split("=", 1) for pair in args.set or [])
    config = load_config({"paths.home": str(work), **{k: v for k, v in chosen.items() if v is not None}})
    split = build_split(Path(snapshot), work / "split", config, args.cold_share, args.min_history)
    sequences, items = load_dataset(split["dataset"])
    new_items = load_new_items(split["dataset"])
    catalogue = pd.concat([items[["item_id", "description"]], new_items[["item_id", "description"]]],
                          ignore_index=True)
    candidates = catalogue["item_id"].to_numpy(np.int64)
    cases = split["cases"]
    if args.max_cases:
        cases = cases.groupby("kind", group_keys=False).head(args.max_cases).reset_index(drop=True)
    cold, warm = cases[cases["kind"] == "cold"], cases[cases["kind"] == "warm"]
    new_ids = new_items["item_id"].to_numpy(np.int64)

    rows: dict[str, dict] = {}
    cold_ranks: dict[str, np.ndarray] = {}
    for name in args.models:
        log.info("fitting %s", name)
        if name == "prismrec":
            score, info = prismrec_scorer(config, split["dataset"], work, candidates)
        elif name == "content":
            score, info = content_scorer(sequences, items, catalogue, candidates)
        elif name == "popularity":
            score, info = popularity_scorer(sequences, candidates)
        else:
            score, info = sasrec_scorer(sequences, items, candidates, SASREC_DROPOUT.get(args.dataset, 0.2),
                                        args.sasrec_seconds, args.seed)
        if name == "prismrec":
            name = args.name
        cold_ranks[name] = case_ranks(score, cold, candidates)
        rows[name] = {**figures(cold_ranks[name]), "warm": figures(case_ranks(score, warm, candidates)), **info}
        if "settings" in info:  # PrismRec: what serving new titles costs the warm cases
            rows[name]["warm_without_new_items"] = figures(case_ranks(score, warm, candidates, exclude=new_ids))
        log.info("%s: cold HR@10 %.4f NDCG@10 %.4f median rank %s | warm HR@10 %.4f", name, rows[name]["hr@10"],
                 rows[name]["ndcg@10"], rows[name]["median_rank"], rows[name]["warm"]["hr@10"])
    result = {
        "dataset": args.dataset, "smoke": args.smoke, "protocol": PROTOCOL, "split": split["facts"],
        "machine": device_description(), "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": rows,
        "cold_ranks": {name: ranks.tolist() for name, ranks in cold_ranks.items()},
        "cold_cases": cold[["user_id", "item_id"]].to_dict("list"),
    }
    return result


PROTOCOL = ("time split: the last 10 % of rated titles by first rating are new; training sees the ratings before "
            "the first of them; a cold case is a user's first rating of a new title (after >= 5 ratings), a warm "
            "case a returning user's first rating from the cut-off on, of a trained title; each ranked among the "
            "whole catalogue (5-core + new titles), history masked (bench/cold_start.py)")


def combine(results: list[dict]) -> dict:
    """Several runs on the same split (e.g. the models run on different processes) as one table; the
    paired comparison of PrismRec with the zero-shot text model where both ran."""
    first = results[0]
    for other in results[1:]:
        if other["split"] != first["split"] or other["cold_cases"] != first["cold_cases"]:
            raise SystemExit("the runs were made on different splits: combine runs of one split only")
    models, ranks, machines = {}, {}, {}
    for result in results:
        for name, row in result["models"].items():
            models[name] = row
            ranks[name] = np.asarray(result["cold_ranks"][name])
            machines[name] = {**result["machine"], "at": result["measured_at"]}
    comparisons = {}
    if "prismrec" in ranks and "content" in ranks:
        comparisons["prismrec_vs_content"] = paired(ranks["prismrec"], ranks["content"])
    if "prismrec" in models:
        warm = models["prismrec"]
        comparisons["prismrec_warm_cost_of_new_items"] = {
            "hr@10": round(warm["warm"]["hr@10"] - warm["warm_without_new_items"]["hr@10"], 5),
            "ndcg@10": round(warm["warm"]["ndcg@10"] - warm["warm_without_new_items"]["ndcg@10"], 5)}
    return {"dataset": first["dataset"], "protocol": first["protocol"], "split": first["split"],
            "machines": machines, "models": {n: models[n] for n in [*MODELS, *sorted(set(models) - set(MODELS))]
                                             if n in models},
            "comparisons": comparisons}


def table(result: dict) -> str:
    split = result["split"]
    lines = [f"# Cold start on {result['dataset']}: new titles on day one", "",
             f"Cut-off {split['cutoff'][:10]}: {split['new_titles']} new titles (the last "
             f"{split['cold_share']:.0%} of {split['rated_titles']} rated titles to appear); training on the "
             f"{split['training_interactions']:,} ratings before it. Cases: {split['cases'].get('cold', 0)} cold, "
             f"{split['cases'].get('warm', 0)} warm. {result['protocol']}.", "",
             "| model | cold HR@10 | cold NDCG@10 | cold median rank | warm HR@10 | warm NDCG@10 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in result["models"].items():
        warm = row["warm"]
        lines.append(f"| {name} | {row['hr@10']:.4f} ± {row['hr@10_se'] or 0:.4f} | {row['ndcg@10']:.4f} | "
                     f"{row['median_rank']:.0f} | {warm['hr@10']:.4f} ± {warm['hr@10_se'] or 0:.4f} | "
                     f"{warm['ndcg@10']:.4f} |")
    if (without := result["models"].get("prismrec", {}).get("warm_without_new_items")):
        lines.append(f"| prismrec, new titles left out of the lists | | | | {without['hr@10']:.4f} | "
                     f"{without['ndcg@10']:.4f} |")
    lines += ["", "± is the standard error over cases."]
    if (pair := result["comparisons"].get("prismrec_vs_content")):
        lines.append(f"PrismRec minus the zero-shot text model on the cold cases: HR@10 "
                     f"{pair['hr@10_difference']:+.4f} ± {pair['se']:.4f} (paired), ratio {pair['hr@10_ratio']}.")
    machines = sorted({f"{m['device']} (torch {m['torch']})" for m in result["machines"].values()})
    lines.append("Measured on " + ", ".join(machines) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    snap = steps.add_parser("snapshot", help="load and extract the release through the pipeline (Postgres)")
    snap.add_argument("--dataset", choices=("ml-100k", "ml-1m"), default="ml-1m")
    snap.add_argument("--out", type=Path, help="default: bench/gpu-assets/snapshot-<dataset>")
    go = steps.add_parser("run", help="split, fit the models, rank the cases")
    go.add_argument("--dataset", choices=("ml-100k", "ml-1m"), default="ml-1m")
    go.add_argument("--snapshot", type=Path, help="a snapshot folder (default: make one through the pipeline)")
    go.add_argument("--assets", type=Path, default=ASSETS, help="where minilm/ (fp16) may lie")
    go.add_argument("--models", type=lambda text: text.split(","), default=list(MODELS),
                    help="comma-separated, from " + ",".join(MODELS))
    go.add_argument("--set", action="append", metavar="STAGE.FIELD=VALUE", help="a PrismRec setting")
    go.add_argument("--cold-share", type=float, default=COLD_SHARE)
    go.add_argument("--min-history", type=int, default=MIN_HISTORY)
    go.add_argument("--sasrec-seconds", type=float, default=None, help="SASRec's wall-clock budget")
    go.add_argument("--seed", type=int, default=42, help="SASRec's seed")
    go.add_argument("--max-cases", type=int, help="at most this many cases of each kind (a quick check)")
    go.add_argument("--name", default="prismrec", help="PrismRec's row name (a variant: --name prismrec-ft --set ...)")
    go.add_argument("--smoke", action="store_true", help="a few PrismRec steps on the CPU")
    go.add_argument("--work", help="the run's files (default $TMPDIR/prismrec-cold-<dataset>)")
    go.add_argument("--out", type=Path, required=True, help="the run's JSON (bench/results via combine)")
    together = steps.add_parser("combine", help="runs of one split -> bench/results/cold-start-<dataset>.{json,md}")
    together.add_argument("files", nargs="+", type=Path)
    together.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.step == "snapshot":
        write_snapshot(args.dataset, args.out or ASSETS / f"snapshot-{args.dataset}")
        return None
    if args.step == "combine":
        loaded = [json.loads(f.read_text()) for f in args.files]
        if any(r["smoke"] for r in loaded):
            raise SystemExit("a smoke run has no figures to keep: combine full runs")
        result = combine(loaded)
        stem = f"cold-start-{result['dataset']}"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(text := table(result))
        print(text)
        return result
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result))
    print(table(combine([result])))
    return result


if __name__ == "__main__":
    main()
