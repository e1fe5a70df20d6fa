"""Cold-start benchmark: are the titles that entered the catalogue last found from their text on day one?

A time split of a MovieLens release (default ML-1M). The titles that entered the catalogue last, the
last `--cold-share` (10 %) of rated titles by first rating, are new: their first rating sets the
cut-off, and training sees only the ratings before it, through the pipeline's own prepare (which keeps
the new titles beside the 5-core universe, placed by their text). Two kinds of test case, each ranked
among the whole catalogue the product would publish from (5-core items and new items, history masked):

- **cold**: a user's first rating of a new title, after at least `--min-history` earlier ratings; the
  history is every rating before it (the user may have joined after the cut-off: histories are read
  at scoring time, as the published lists read them).
- **warm**: a user's first rating of a trained (5-core) title from the cut-off on, again after at least
  `--min-history` earlier ratings, with everything before it as the history.

Models: PrismRec (the pipeline's training, the dataset's benchmark settings, and its new-item head
fitted as the train task fits it with `train.new_item_head`: tasks.training.rehearsal, at a cut-off
cut the same way from the training part; the head of the other `train.new_item_head_rehearsal` is
fitted beside it for comparison unless `--no-compare-rehearsals`), the zero-shot text model
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
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.training.rehearsal import cold_cutoff, split_cases

log = logging.getLogger("bench.cold_start")

RESULTS = Path(__file__).resolve().parent / "results"
ASSETS = Path(__file__).resolve().parent / "gpu-assets"
MODELS = ("prismrec", "content", "popularity", "sasrec")
COLD_SHARE = 0.10
MIN_HISTORY = 5
# scores [B, C] of the candidates (app item ids) for app-id histories; -inf: the model cannot place it
CandidateScorer = Callable[[Sequence[np.ndarray]], torch.Tensor]


# --- the split -------------------------------------------------------------------------------------

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


def build_split(interactions: pd.DataFrame, items: pd.DataFrame, work: Path, config, cold_share: float,
                min_history: int) -> dict:
    """Cut the ratings at the new titles' first rating, prepare the part before it with the pipeline's
    prepare, and find the test cases; returns the split's facts, dataset folder and cases."""
    from tasks.data.prepare import load_dataset, load_new_items, prepare_dataset
    from tasks.layout import RunLayout

    cutoff, new_titles = cold_cutoff(interactions, cold_share)
    run = RunLayout(work)
    run.snapshot.root.mkdir(parents=True, exist_ok=True)
    # The whole catalogue: the new titles are in it, with text and no ratings yet.
    items.to_parquet(run.snapshot.items, index=False)
    interactions[interactions["occurred_at"] < cutoff].to_parquet(run.snapshot.interactions, index=False)
    prepare_dataset(config, run.snapshot.root, run.dataset.root)
    sequences, _ = load_dataset(run.dataset.root)
    cases = split_cases(interactions, cutoff, new_titles, min_history)
    universe = sequences.item_ids[1:]
    # A warm case's target must be a trained title; a cold one is new by construction.
    cases = cases[(cases["kind"] == "cold") | cases["item_id"].isin(universe)].reset_index(drop=True)
    facts = {
        "cutoff": cutoff.isoformat(), "cold_share": cold_share, "min_history": min_history,
        "new_titles": len(new_titles), "rated_titles": int(interactions["item_id"].nunique()),
        "catalogue": len(items), "training_interactions": int((interactions["occurred_at"] < cutoff).sum()),
        "interactions": len(interactions), "universe_items": len(universe),
        "new_items_in_model": len(load_new_items(run.dataset.root)),
        "cases": {k: int(v) for k, v in cases["kind"].value_counts().items()},
    }
    log.info("split at %s: %d new titles; %d of %d ratings before it; cases %s", cutoff, len(new_titles),
             facts["training_interactions"], len(interactions), facts["cases"])
    return {"facts": facts, "dataset": run.dataset.root, "snapshot": run.snapshot.root, "cases": cases,
            "cutoff": cutoff}


# --- the models ------------------------------------------------------------------------------------

def prismrec_scorer(config, dataset_dir: Path, work: Path, candidates: np.ndarray, reuse: bool = False,
                    snapshot: Path | None = None) -> tuple[CandidateScorer, dict, object]:
    """A PrismRec model trained on the split (or, with `reuse`, the one an earlier run left in `work`),
    its new-item head fitted as the pipeline's train task fits it (tasks.training.rehearsal) on the split's
    `snapshot`, and its trend prior with train.trend_prior (as of the training part's end: publishing's view);
    the scorer, the training's facts and the Recommender (its `head` may be set to None)."""
    from bench.quality import model_settings
    from tasks.layout import ModelFiles
    from tasks.model.recommender import Recommender
    from tasks.training.launcher import launch_training
    from tasks.training.rehearsal import fit_new_item_head

    started = time.time()
    model_dir = work / "prismrec"
    if not (reuse and ModelFiles(model_dir).summary.exists()):
        model_dir = launch_training(config, dataset_dir, model_dir)
    seconds = time.time() - started
    from tasks.model.trend import TrendPrior

    if config.train.trend_prior and not (reuse and ModelFiles(Path(model_dir)).trend.exists()):
        from tasks.training.trend_fit import fit_trend

        fit_trend(config, dataset_dir, model_dir)  # before the head, as the pipeline's train task fits it
    if config.train.transition_prior and not (reuse and ModelFiles(Path(model_dir)).transitions.exists()):
        from tasks.training.transition_fit import fit_transitions

        fit_transitions(config, dataset_dir, model_dir)
    prior = TrendPrior.load(ModelFiles(Path(model_dir)).trend)
    trend_seconds = time.time() - started - seconds
    if snapshot is not None and not (reuse and ModelFiles(Path(model_dir)).new_item_head.exists()):
        fit_new_item_head(config, snapshot, work / "rehearsal", model_dir, trend=prior)
    head_seconds = time.time() - started - seconds - trend_seconds
    head_file = ModelFiles(Path(model_dir)).new_item_head
    if head_seconds < 1 and head_file.exists():  # a reused head: the rehearsal's own time
        head_seconds = json.loads(head_file.read_text()).get("fitted_on", {}).get("seconds", head_seconds)
    summary = json.loads(ModelFiles(Path(model_dir)).summary.read_text())
    recommender = Recommender.load(model_dir)

    columns = recommender.index_of.reindex(candidates).fillna(0).to_numpy(np.int64).copy()  # writable, for torch
    unknown = torch.from_numpy(columns == 0)
    columns = torch.from_numpy(columns)

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Each candidate's score under its best interest (the ranking score, before the published
        lists' interest balancing, which would turn the top scores into ranks)."""
        per_interest, *_ = recommender.score_indices([recommender.to_indices(h) for h in histories],
                                                     with_attention=False)
        scores = per_interest.amax(1)[:, columns]
        scores[:, unknown] = float("-inf")
        return scores

    # A reused model's training time is the one its summary recorded (the worker's, without start-up).
    trained_seconds = summary.get("train_seconds") if seconds < 1 and summary.get("train_seconds") else seconds
    return score, {"train_seconds": round(trained_seconds, 1), "head_seconds": round(head_seconds, 1),
                   "epochs_run": summary.get("epochs_run"),
                   "best_epoch": summary.get("best_epoch"), "stopped_by": summary.get("stopped_by"),
                   "best_valid_ndcg@10": summary.get("best_valid_ndcg@10"),
                   "settings": model_settings(config)}, recommender


def content_scorer(sequences, items: pd.DataFrame, catalogue: pd.DataFrame, candidates: np.ndarray
                   ) -> tuple[CandidateScorer, dict]:
    """Zero-shot text: MiniLM vectors of every candidate; the history's decayed mean, the decay chosen
    on the training part's validation targets (as bench.quality chooses it)."""
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
    counts = np.bincount(sequences.item_idx, minlength=sequences.n_items + 1)
    row = torch.full((len(candidates),), float("-inf"))
    index = pd.Series(np.arange(1, sequences.n_items + 1), index=sequences.item_ids[1:]).reindex(candidates)
    held = index.notna().to_numpy()
    row[torch.as_tensor(held)] = torch.as_tensor(counts[index[held].to_numpy(np.int64)], dtype=torch.float32)
    return (lambda histories: row.expand(len(histories), -1).clone()), {"train_seconds": 0.0}


def sasrec_scorer(sequences, items: pd.DataFrame, candidates: np.ndarray, dropout: float,
                  max_seconds: float | None, seed: int) -> tuple[CandidateScorer, dict]:
    from bench.baselines import fit_sasrec

    started = time.time()
    trained = fit_sasrec(sequences, items, dropout=dropout, max_seconds=max_seconds, seed=seed)
    index = pd.Series(np.arange(1, sequences.n_items + 1), index=sequences.item_ids[1:])
    columns = index.reindex(candidates)
    held = torch.from_numpy(columns.notna().to_numpy().copy())
    columns = torch.as_tensor(columns.fillna(0).to_numpy(np.int64))

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        indexed = [index.reindex(h).dropna().to_numpy(np.int64) for h in histories]
        scores = trained(indexed)[:, columns]
        scores[:, ~held] = float("-inf")
        return scores

    return score, {"train_seconds": round(time.time() - started, 1), "epochs_run": trained.epochs_run,
                   "stopped_by": trained.stopped_by, "hyper": {"dropout": dropout, "max_seconds": max_seconds}}


# --- ranking and figures ---------------------------------------------------------------------------

def score_matrix(score: CandidateScorer, cases: pd.DataFrame, batch: int = 256) -> torch.Tensor:
    """Raw scores [cases, candidates] of each case's history."""
    blocks = [score(list(cases["history"].iloc[start:start + batch])).float()
              for start in range(0, len(cases), batch)]
    return torch.cat(blocks) if blocks else torch.zeros(0)


def ranks_from(scores: torch.Tensor, cases: pd.DataFrame, candidates: np.ndarray) -> np.ndarray:
    """0-based rank of each case's target among the candidates the user has not rated
    (tasks.evaluation.cold.target_ranks, as the gate's cold slice ranks)."""
    from tasks.evaluation.cold import target_ranks

    if not len(cases):
        return np.zeros(0, dtype=np.int64)
    return target_ranks(scores, list(cases["history"]), candidates, cases["item_id"].to_numpy())


# New-item score policies: a text-only score is on another scale than one backed by ratings.
OFFSETS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)  # subtracted from new items' scores
LIST_CAP = 5  # materialize.max_new_items: a top-50 list's new items
CAPS = (1, 2, 3)  # the frontier with fewer new items a list


def with_policy(scores: torch.Tensor, new: np.ndarray, offset: float, cap: int | None = None):
    """Scores with `offset` taken off every new item's score and, given `cap`, only each row's `cap`
    best new items left (the rest -inf), as tasks.model.recommender ranks a published list."""
    out = scores.clone()
    columns = torch.as_tensor(np.flatnonzero(new))
    out[:, columns] -= offset
    if cap is not None and len(columns) > cap:
        part = out[:, columns]
        keep = torch.zeros_like(part, dtype=torch.bool).scatter_(1, part.topk(cap, dim=1).indices, True)
        out[:, columns] = part.masked_fill(~keep, float("-inf"))
    return out


def policy_curve(cold_scores, warm_scores, split: dict, candidates: np.ndarray, new: np.ndarray) -> list[dict]:
    """Cold and warm figures for every offset of OFFSETS."""
    curve = []
    for offset in OFFSETS:
        cold = figures(ranks_from(with_policy(cold_scores, new, offset), split["cold"], candidates))
        warm = figures(ranks_from(with_policy(warm_scores, new, offset), split["warm"], candidates))
        curve.append({"offset": offset, "cold": cold, "warm": warm,
                      "objective": round((cold["ndcg@10"] + warm["ndcg@10"]) / 2, 5)})
    return curve


def figures(ranks: np.ndarray) -> dict:
    """HR@10, NDCG@10 (tasks.evaluation.metrics, with standard errors over users), median rank (1 = top)
    and the user count."""
    from tasks.evaluation.metrics import hit_rate, ndcg

    n = len(ranks)

    def se(values: np.ndarray) -> float | None:
        return round(float(values.std(ddof=1) / math.sqrt(n)), 5) if n > 1 else None

    gains = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)  # ndcg's per-user terms, for the error
    return {"users": n, "hr@10": round(hit_rate(ranks, 10), 5), "hr@10_se": se((ranks < 10).astype(np.float64)),
            "ndcg@10": round(ndcg(ranks, 10), 5), "ndcg@10_se": se(gains),
            "median_rank": float(np.median(ranks) + 1) if n else None}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """HR@10 of `a` minus `b` on the same cases, with the standard error of the paired difference."""
    diff = (a < 10).astype(np.float64) - (b < 10).astype(np.float64)
    return {"hr@10_difference": round(float(diff.mean()), 5),
            "se": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 5) if len(diff) > 1 else None,
            "hr@10_ratio": round(float((a < 10).mean() / (b < 10).mean()), 3) if (b < 10).any() else None}


# --- the run ---------------------------------------------------------------------------------------

def load_split(split: dict, max_cases: int | None) -> dict:
    """The split's data for ranking: the model's universe and new items, the candidates (the whole
    catalogue as published: 5-core and new) and the cold and warm cases."""
    from tasks.data.prepare import load_dataset, load_new_items

    sequences, items = load_dataset(split["dataset"])
    new_items = load_new_items(split["dataset"])
    catalogue = pd.concat([items[["item_id", "description"]], new_items[["item_id", "description"]]],
                          ignore_index=True)
    cases = split["cases"]
    if max_cases:
        cases = cases.groupby("kind", group_keys=False).head(max_cases).reset_index(drop=True)
    return {**split, "sequences": sequences, "items": items, "catalogue": catalogue,
            "candidates": catalogue["item_id"].to_numpy(np.int64),
            "new": np.r_[np.zeros(len(items), dtype=bool), np.ones(len(new_items), dtype=bool)],
            "cold": cases[cases["kind"] == "cold"].reset_index(drop=True),
            "warm": cases[cases["kind"] == "warm"].reset_index(drop=True)}


def prismrec_row(config, test: dict, args, work: Path) -> tuple[dict, np.ndarray]:
    """PrismRec's row, as the pipeline publishes: the model, its new-item head fitted by the train task's
    rehearsal (a model trained on the ratings before the last titles of the training part appeared, which
    is a validation split cut the same way), at most `max_new_items` new items a list; beside it the same
    model without the head, capped or not, and with the new titles left out."""
    from tasks.config import REHEARSALS
    from tasks.layout import ModelFiles
    from tasks.model.new_item_head import load_head
    from tasks.model.trend import TrendPrior
    from tasks.training.rehearsal import fit_new_item_head

    score, info, recommender = prismrec_scorer(config, test["dataset"], work / "test", test["candidates"],
                                               args.reuse_models, snapshot=test["snapshot"])
    headed = {kind: score_matrix(score, test[kind]) for kind in ("cold", "warm")}
    head, recommender.head = recommender.head, None
    raw = {kind: score_matrix(score, test[kind]) for kind in ("cold", "warm")}
    recommender.head = head
    trend = recommender.trend
    if trend is not None:  # the same model without its trend prior, for what the prior costs or gains
        recommender.use_trend(None)
        untrended = {kind: score_matrix(score, test[kind]) for kind in ("cold", "warm")}
        recommender.use_trend(trend)
    new, candidates = test["new"], test["candidates"]

    def both(scores: dict, offset: float = 0.0, cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return tuple(ranks_from(with_policy(scores[kind], new, offset, cap), test[kind], candidates)
                     for kind in ("cold", "warm"))

    def row_of(ranks: tuple[np.ndarray, np.ndarray]) -> dict:
        return {**figures(ranks[0]), "warm": figures(ranks[1])}

    chosen, without_new = both(headed), both(raw, float("inf"))
    published, published_without_head = both(headed, cap=LIST_CAP), both(raw, cap=LIST_CAP)
    head_file = json.loads(ModelFiles(recommender.model_dir).new_item_head.read_text())
    others = {}
    for other in (r for r in REHEARSALS if r != config.train.new_item_head_rehearsal and args.compare_rehearsals):
        # The same model's head fitted on the other rehearsal, for comparison ("retrain" trains a second model).
        path = work / "test" / "heads" / f"{other}.json"
        if not (args.reuse_models and path.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
            fit_new_item_head(replace(config, train=replace(config.train, new_item_head_rehearsal=other)),
                              test["snapshot"], work / "test" / f"rehearsal-{other}", recommender.model_dir, path,
                              trend=TrendPrior.load(ModelFiles(recommender.model_dir).trend))
        recommender.head = load_head(path)
        scores = {kind: score_matrix(score, test[kind]) for kind in ("cold", "warm")}
        recommender.head = head
        fitted = json.loads(path.read_text())
        others[other] = {**row_of(both(scores)), f"capped_{LIST_CAP}": row_of(both(scores, cap=LIST_CAP)),
                         "cap_curve": [{"cap": cap, **row_of(both(scores, cap=cap))} for cap in CAPS],
                         "head": {k: v for k, v in fitted.items() if k != "fitted_on"},
                         "validation": fitted["fitted_on"]}
    row = {**row_of(chosen), "head": {k: v for k, v in head_file.items() if k != "fitted_on"},
           "without_head": row_of(both(raw)),
           f"capped_{LIST_CAP}": row_of(published),
           f"without_head_capped_{LIST_CAP}": row_of(both(raw, cap=LIST_CAP)),
           "warm_without_new_items": figures(without_new[1]),
           "warm_cost_of_new_items": paired(chosen[1], without_new[1]),
           # What the head changes in the published lists (at most LIST_CAP new items), case by case.
           "head_vs_no_head_as_published": {kind: paired(with_head, without)
                                            for kind, with_head, without in zip(("cold", "warm"), published,
                                                                                published_without_head, strict=True)},
           "test_curve": policy_curve(headed["cold"], headed["warm"], test, candidates, new),
           # At most `cap` new items among each list's candidates (so in its top 10).
           "cap_curve": [{"cap": cap, **row_of(both(headed, cap=cap))} for cap in CAPS],
           "validation": head_file["fitted_on"],
           "other_rehearsals": others,
           **info}
    saved = TrendPrior.load(ModelFiles(recommender.model_dir).trend)
    if saved is not None and trend is None:  # fitted, and weight 0 chose no prior
        row["trend_prior"] = {"window_days": saved.window_days, "weight": saved.weight, "validation": saved.fit}
    if trend is not None:
        plain = both(untrended, cap=LIST_CAP)
        row["trend_prior"] = {"window_days": trend.window_days, "weight": trend.weight,
                              "validation": trend.fit, "without_trend": row_of(both(untrended)),
                              f"without_trend_capped_{LIST_CAP}": row_of(plain),
                              "trend_vs_none_as_published": {kind: paired(with_trend, without) for kind, with_trend, without
                                                             in zip(("cold", "warm"), published, plain, strict=True)}}
    return row, chosen[0]


def run(args: argparse.Namespace) -> dict:
    from bench.gpu_ml1m import device_description, settings, use_carried_text_model
    from bench.quality import DATASET_BASELINES
    from tasks.config import load_config
    from tasks.layout import SnapshotFiles

    if args.snapshot is not None:
        given = SnapshotFiles(args.snapshot)
        missing = [f.name for f in (given.interactions, given.items) if not f.exists()]
        if missing:
            raise SystemExit(f"--snapshot {args.snapshot}: no {' or '.join(missing)} there. Make one with `python -m "
                             f"bench.cold_start snapshot --dataset {args.dataset} --out {args.snapshot}`, or leave "
                             "--snapshot out to make it in the run's work folder.")
    use_carried_text_model(args.assets, args.smoke)
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"prismrec-cold-{args.dataset}")
    snapshot = args.snapshot or write_snapshot(args.dataset, work / "source")
    extra = dict(pair.split("=", 1) for pair in args.set or [])
    chosen = settings(args.smoke, torch.cuda.device_count(), extra, dataset=args.dataset, max_minutes=None)
    config = load_config({"paths.home": str(work), **chosen})
    files = SnapshotFiles(Path(snapshot))
    interactions, items = pd.read_parquet(files.interactions), pd.read_parquet(files.items)
    test = load_split(build_split(interactions, items, work / "split", config, args.cold_share, args.min_history),
                      args.max_cases)
    candidates, new = test["candidates"], test["new"]

    rows: dict[str, dict] = {}
    cold_ranks: dict[str, np.ndarray] = {}
    for name in args.models:
        log.info("fitting %s", name)
        if name == "prismrec":
            name = args.name
            rows[name], cold_ranks[name] = prismrec_row(config, test, args, work)
        else:
            if name == "content":
                score, info = content_scorer(test["sequences"], test["items"], test["catalogue"], candidates)
            elif name == "popularity":
                score, info = popularity_scorer(test["sequences"], candidates)
            else:
                score, info = sasrec_scorer(test["sequences"], test["items"], candidates,
                                            DATASET_BASELINES.get(args.dataset, {}).get("sasrec", {}).get("dropout", 0.2), args.sasrec_seconds, args.seed)
            cold_ranks[name] = ranks_from(score_matrix(score, test["cold"]), test["cold"], candidates)
            warm = figures(ranks_from(score_matrix(score, test["warm"]), test["warm"], candidates))
            rows[name] = {**figures(cold_ranks[name]), "warm": warm, **info}
        log.info("%s: cold HR@10 %.4f NDCG@10 %.4f median rank %s | warm HR@10 %.4f", name, rows[name]["hr@10"],
                 rows[name]["ndcg@10"], rows[name]["median_rank"], rows[name]["warm"]["hr@10"])
    return {
        "dataset": args.dataset, "smoke": args.smoke, "protocol": PROTOCOL, "split": test["facts"],
        "machine": device_description(), "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": rows, "new_titles_in_candidates": int(new.sum()),
        "cold_ranks": {name: ranks.tolist() for name, ranks in cold_ranks.items()},
        "cold_cases": test["cold"][["user_id", "item_id"]].to_dict("list"),
    }


PROTOCOL = ("time split: the last 10 % of rated titles by first rating are new; training sees the ratings before "
            "the first of them; per user, a cold case is the first rating of a new title and a warm case the first "
            "rating of a trained title from the cut-off on, each with >= 5 ratings before it; each ranked among the "
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
    if "prismrec" in models and "content" in models and models["content"]["hr@10"] > 0:
        comparisons["prismrec_no_head_vs_content_hr@10_ratio"] = round(
            models["prismrec"]["without_head"]["hr@10"] / models["content"]["hr@10"], 3)
    if "prismrec" in models:
        warm = models["prismrec"]
        comparisons["prismrec_warm_cost_of_new_items"] = {
            "hr@10": round(warm["warm"]["hr@10"] - warm["warm_without_new_items"]["hr@10"], 5),
            "hr@10_se": (warm.get("warm_cost_of_new_items") or {}).get("se"),
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
    def line(label: str, row: dict) -> str:
        warm = row["warm"]
        cold = (f"{row['hr@10']:.4f} ± {row['hr@10_se'] or 0:.4f} | {row['ndcg@10']:.4f} | {row['median_rank']:.0f}"
                if "hr@10" in row else " | | ")
        return (f"| {label} | {cold} | {warm['hr@10']:.4f} ± {warm['hr@10_se'] or 0:.4f} | "
                f"{warm['ndcg@10']:.4f} |")

    notes = []
    for name, row in result["models"].items():
        if "head" not in row:
            lines.append(line(name, row))
            continue
        lines.append(line(f"{name}, new-item head", row))
        for point in row.get("cap_curve", []):
            lines.append(line(f"{name}, new-item head, at most {point['cap']} new item{'s' * (point['cap'] > 1)} a list",
                              point))
        lines.append(line(f"{name}, new-item head, at most {LIST_CAP} new items a list (as published)",
                          row[f"capped_{LIST_CAP}"]))
        lines.append(line(f"{name}, no head", row["without_head"]))
        lines.append(line(f"{name}, no head, at most {LIST_CAP} new items a list",
                          row[f"without_head_capped_{LIST_CAP}"]))
        lines.append(line(f"{name}, new titles left out", {"warm": row["warm_without_new_items"]}))
        if (trend := row.get("trend_prior")) and "without_trend" in trend:
            lines.append(line(f"{name}, no trend prior", trend["without_trend"]))
            lines.append(line(f"{name}, no trend prior, at most {LIST_CAP} new items a list",
                              trend[f"without_trend_capped_{LIST_CAP}"]))
        for rehearsal, other in row.get("other_rehearsals", {}).items():
            lines.append(line(f"{name}, head on the {rehearsal!r} rehearsal", other))
            for point in other["cap_curve"]:
                lines.append(line(f"{name}, head on the {rehearsal!r} rehearsal, at most {point['cap']} new "
                                  f"item{'s' * (point['cap'] > 1)} a list", point))
            lines.append(line(f"{name}, head on the {rehearsal!r} rehearsal, at most {LIST_CAP} new items a list",
                              other[f"capped_{LIST_CAP}"]))
        for label, fitted in [("new-item head", row), *((f"head on the {r!r} rehearsal", o)
                                                            for r, o in row.get("other_rehearsals", {}).items())]:
            valid = fitted["validation"]
            how = REHEARSAL_TEXT.get(valid.get("rehearsal", "retrain"), "")
            notes.append(f"{name}'s {label} was fitted as the pipeline's train task fits it (train.new_item_head, "
                         f"rehearsal {valid.get('rehearsal', 'retrain')!r}: {how}) at the cut-off where the last "
                         f"{valid['share']:.0%} of the training part's titles appeared ({valid['cutoff'][:10]}; "
                         f"{valid['cases'].get('cold', 0)} cold and {valid['cases'].get('warm', 0)} warm cases), "
                         f"{valid['seconds']:.0f} s. Weights: {json.dumps(rounded(fitted['head']))}.")
        if (change := row.get("head_vs_no_head_as_published")) and change["warm"].get("se") is not None:
            notes.append(f"As published (at most {LIST_CAP} new items a list), the head changes {name}'s cold HR@10 by "
                         f"{change['cold']['hr@10_difference']:+.4f} ± {change['cold']['se']:.4f} and its warm HR@10 by "
                         f"{change['warm']['hr@10_difference']:+.4f} ± {change['warm']['se']:.4f} (paired, against the "
                         "same lists without the head).")
        if trend := row.get("trend_prior"):
            change = trend.get("trend_vs_none_as_published")
            notes.append(f"{name}'s trend prior (train.trend_prior, fitted on validation before the head, which is "
                         "fitted with it on): "
                         + (f"the last {trend['window_days']} days before the cut-off, weight {trend['weight']}; as "
                            f"published it changes cold HR@10 by {change['cold']['hr@10_difference']:+.4f} ± "
                            f"{change['cold']['se'] or 0:.4f} and warm HR@10 by {change['warm']['hr@10_difference']:+.4f}"
                            f" ± {change['warm']['se'] or 0:.4f} (paired, against the same lists without it)."
                            if trend["weight"] else "none chosen (weight 0 validated best)."))
        if (cost := row.get("warm_cost_of_new_items")) and cost.get("se") is not None:
            notes.append(f"Serving new items through the head changes {name}'s warm HR@10 by "
                         f"{cost['hr@10_difference']:+.4f} ± {cost['se']:.4f} (paired, against the same model "
                         "with new titles left out).")
    lines += ["", "± is the standard error over cases.", *notes]
    if (pair := result["comparisons"].get("prismrec_vs_content")):
        lines.append(f"PrismRec minus the zero-shot text model on the cold cases: HR@10 "
                     f"{pair['hr@10_difference']:+.4f} ± {pair['se']:.4f} (paired), ratio {pair['hr@10_ratio']}.")
    if (ratio := result["comparisons"].get("prismrec_no_head_vs_content_hr@10_ratio")):
        lines.append(f"Without the head, PrismRec's cold HR@10 is {ratio}x the zero-shot text model's.")
    lines.append(f"A capped row's median rank counts a target left out of the list (not among the user's {LIST_CAP} "
                 "best new items) as ranked last.")
    machines = sorted({f"{m['device']} (torch {m['torch']})" for m in result["machines"].values()})
    lines.append("Measured on " + ", ".join(machines) + ".")
    return "\n".join(lines) + "\n"


REHEARSAL_TEXT = {"model": "the model itself, with the titles outside the 5-core of the ratings before the cut-off "
                            "made new again",
                  "retrain": "a second model trained on the ratings before the cut-off"}


def rounded(weights: dict) -> dict:
    """The head's weights to 3 decimals, for reading."""
    return {k: rounded(v) if isinstance(v, dict) else round(v, 3) if isinstance(v, float) else v
            for k, v in weights.items()}


def model_list(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    if not names or set(names) - set(MODELS):
        raise argparse.ArgumentTypeError(f"expected names from {','.join(MODELS)}, got {text!r}")
    return names


def share(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, got {text}")
    return value


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
    go.add_argument("--models", type=model_list, default=list(MODELS), help="comma-separated, from " + ",".join(MODELS))
    go.add_argument("--set", action="append", metavar="STAGE.FIELD=VALUE", help="a PrismRec setting")
    go.add_argument("--cold-share", type=share, default=COLD_SHARE, help="share of rated titles that are new (0-1)")
    go.add_argument("--min-history", type=int, default=MIN_HISTORY)
    go.add_argument("--sasrec-seconds", type=float, default=None, help="SASRec's wall-clock budget")
    go.add_argument("--seed", type=int, default=42, help="SASRec's seed")
    go.add_argument("--max-cases", type=int, help="at most this many cases of each kind (a quick check)")
    go.add_argument("--name", default="prismrec", help="PrismRec's row name (a variant: --name prismrec-ft --set ...)")
    go.add_argument("--smoke", action="store_true", help="a few PrismRec steps on the CPU")
    go.add_argument("--no-compare-rehearsals", dest="compare_rehearsals", action="store_false",
                    help="fit the new-item head on the configured rehearsal only (by default also on the other: "
                         "'retrain' trains a second model)")
    go.add_argument("--reuse-models", action="store_true",
                    help="score with the PrismRec models an earlier run left in --work instead of training")
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
