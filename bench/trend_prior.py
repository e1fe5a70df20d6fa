"""How much a recent-popularity prior adds to trained PrismRec models on the LOO-full split (an analysis).

    python -m bench.trend_prior --dataset ml-1m MODEL_DIR [MODEL_DIR ...] [--results NAME]

Each model's scores get `weight * log(1 + n)`, where n counts the item's training interactions (every
user's history without its two held-out items) on the `window` days before the day of the user's last
history item: the items the catalogue was busy with when the user was last seen. Whole days before
that day only, so no interaction of the user's own day (their target's, often) is counted. The window
and weight are chosen on validation NDCG@10 per model over a small grid (weight 0 included), and test
is reported once at that choice, as the protocol asks (docs/protocol.md).

The models are folders that `python -m bench.quality` trained (its work folder keeps them: the
`prismrec` folder, or `seed-N/prismrec` with `--seeds`); the split and its interaction times come
from the same work folder, so run bench.quality for the dataset first. Nothing is trained here. The pipeline
fits the same prior itself with `train.trend_prior` (tasks.training.trend_fit, centred on the typical item,
which changes no ranking of the split); a model that holds one is scored here without it. This tool adds the
prior to the final scores, after an interest balance (K > 1) has turned each list's top into ranks, where the
pipeline adds it to each interest's scores before balancing: for balanced models it shows less than the pipeline
gets (docs/experiments.md, v80); for K=1 (ML-1M's setting) the two agree.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.machine import machine
from bench.quality import DATASETS, PROTOCOL, prepared_split, save
from tasks.model.trend import WEIGHTS, WINDOWS

HELD_OUT = {"valid": 2, "test": 1}  # split -> items left out of the input history


def split_counts(sequences):
    """The split's training interactions (held-out items left out) by day, in the split's own item indices:
    the pipeline's counts (tasks.model.trend.training_counts) for a model that holds every item of the split."""
    import pandas as pd

    from tasks.model.trend import training_counts

    return training_counts(sequences, pd.Series(np.arange(1, sequences.n_items + 1), index=sequences.item_ids[1:]))


def metrics(scores: np.ndarray, sequences, split: str) -> dict[str, float]:
    """NDCG@10 and HR@10 of scores [U, N+1] on `split`, ranked by the evaluation's own code (history masked)."""
    import torch

    from tasks.evaluation.metrics import rank_batches, ranking_metrics

    ranks, _ = rank_batches([(torch.as_tensor(scores), sequences.histories(HELD_OUT[split]), sequences.targets(split))])
    chosen = ranking_metrics(ranks)
    return {"ndcg@10": float(chosen["ndcg@10"]), "hr@10": float(chosen["hr@10"])}


def model_scores(model_dir: Path, sequences) -> dict[str, np.ndarray]:
    """The model's scores [U, N+1] of every item for every user, per split (the model loaded once)."""
    import torch

    from tasks.evaluation.scoring import BATCH_USERS, recommender_scorer
    from tasks.model.recommender import Recommender

    recommender = Recommender.load(model_dir)
    recommender.use_trend(None)  # the model alone: this grid adds the prior
    scorer = recommender_scorer(recommender, sequences)
    scores = {}
    for split, held_out in HELD_OUT.items():
        histories = sequences.histories(held_out)
        scores[split] = torch.cat([scorer(histories[i:i + BATCH_USERS])
                                   for i in range(0, len(histories), BATCH_USERS)]).numpy()
    return scores


def popularity_rows(sequences, counts) -> dict:
    """The priors alone as recommenders: all-time training popularity, and each window's recent popularity."""
    from tasks.evaluation.scoring import popularity_scorer

    everyone = popularity_scorer(sequences)(range(sequences.n_users))
    rows = {"all_time": {split: metrics(everyone, sequences, split) for split in HELD_OUT}}
    for window in WINDOWS:
        rows[f"{window}_days"] = {split: metrics(counts.before(sequences.as_of_days(held), window), sequences, split)
                                  for split, held in HELD_OUT.items()}
    return rows


def evaluate(model_dir: Path, sequences, counts) -> dict:
    """The model alone, every (window, weight) on validation, and test at the one validation chose."""
    scores = model_scores(model_dir, sequences)
    grid = []
    for window in WINDOWS:
        prior = {split: np.log1p(counts.before(sequences.as_of_days(held), window).numpy())
                 for split, held in HELD_OUT.items()}
        for weight in WEIGHTS:
            row = {"window_days": window, "weight": weight,
                   "valid": metrics(scores["valid"] + weight * prior["valid"], sequences, "valid")}
            row["test"] = metrics(scores["test"] + weight * prior["test"], sequences, "test")
            grid.append(row)
    alone = next(r for r in grid if r["weight"] == 0)
    best = max(grid, key=lambda r: r["valid"]["ndcg@10"])  # on unrounded figures; exact ties: the first
    return {"model": model_dir.parent.name + "/" + model_dir.name, "alone": {s: alone[s] for s in HELD_OUT},
            "chosen": best, "grid": grid}


def markdown(result: dict) -> str:
    lines = [f"# A recent-popularity prior on {result['dataset']}'s trained models (LOO-full)", "",
             f"Machine: {result['machine']['cpu']}. Generated {result['generated_at']}. Window and weight chosen on "
             "validation NDCG@10; test reported at that choice.", "",
             "| model | valid alone | valid with prior | test NDCG@10 alone | test NDCG@10 with prior | "
             "test HR@10 alone | test HR@10 with prior | window (days) | weight |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["models"]:
        alone, chosen = row["alone"], row["chosen"]
        lines.append(f"| {row['model']} | {alone['valid']['ndcg@10']:.4f} | {chosen['valid']['ndcg@10']:.4f} | "
                     f"{alone['test']['ndcg@10']:.4f} | {chosen['test']['ndcg@10']:.4f} | {alone['test']['hr@10']:.4f} | "
                     f"{chosen['test']['hr@10']:.4f} | {chosen['window_days']} | {chosen['weight']} |")
    popular = result["popularity"]
    lines += ["", "The priors alone (test NDCG@10 / HR@10): all-time popularity "
              f"{popular['all_time']['test']['ndcg@10']:.4f} / {popular['all_time']['test']['hr@10']:.4f}; "
              + "; ".join(f"{w} days {popular[f'{w}_days']['test']['ndcg@10']:.4f} / "
                          f"{popular[f'{w}_days']['test']['hr@10']:.4f}" for w in WINDOWS) + "."]
    summary = result["summary"]
    lines += ["", f"Test NDCG@10 over the models: {summary['ndcg@10_alone']} alone, {summary['ndcg@10_with_prior']} with "
              f"the prior; HR@10 {summary['hr@10_alone']} alone, {summary['hr@10_with_prior']} with it (mean ± sd).", ""]
    return "\n".join(lines)


def mean_sd(values: list[float]) -> str:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {sd:.4f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-1m")
    parser.add_argument("models", nargs="+", type=Path, help="model folders trained by bench.quality")
    parser.add_argument("--results", default=None, help="bench/results/NAME.{json,md} (default: trend-prior-DATASET)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sequences = prepared_split(parser, args.dataset, args.models)
    if sequences.days is None:
        parser.error(f"the {args.dataset} split was prepared before interaction days were kept: run `python -m bench.quality "
                     f"--dataset {args.dataset} --only prismrec` again")
    counts = split_counts(sequences)
    rows = [evaluate(m, sequences, counts) for m in args.models]
    summary = {f"{k}_{which}": mean_sd([(r["alone"]["test"] if which == "alone" else r["chosen"]["test"])[k]
                                        for r in rows])
               for k in ("ndcg@10", "hr@10") for which in ("alone", "with_prior")}
    result = {"dataset": args.dataset, "protocol": PROTOCOL, "machine": machine(),
              "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "models": rows, "summary": summary,
              "popularity": popularity_rows(sequences, counts)}
    return save(args.results or f"trend-prior-{args.dataset}", result, markdown(result))


if __name__ == "__main__":
    main()
