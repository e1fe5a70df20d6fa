"""Seed ensembles of trained models: what averaging several runs' scores would give on the LOO split.

    python -m bench.ensemble --dataset ml-1m MODEL_DIR MODEL_DIR [MODEL_DIR ...] [--results NAME]

Each MODEL_DIR is a model bench.quality trained on the dataset's split (`seed-N/prismrec` with `--seeds`). Every
model scores the catalogue as it ranks alone (its trend and transition priors included); an ensemble ranks by the
mean of its members' scores (logits: the same order as the mean of their log-softmax, whose normaliser is one
constant per user and member). The report: validation and test HR@10 / NDCG@10 of each model alone, of every subset of two or more, and
the mean over the subsets of each size. Nothing is trained here; the pipeline serves one model (an ensemble would
mean as many trainings, scorings and networks in the registry's model), so this measures what that would buy.
"""

from __future__ import annotations

import argparse
import itertools
import os
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean

import numpy as np
import torch

from bench.machine import machine
from bench.quality import DATASETS, PROTOCOL, prepared_split, save

METRICS = ("hr@10", "ndcg@10")


def ensemble_scorer(members: list):
    """A dated scorer (tasks.evaluation.scoring's) ranking by the mean of `members`' scores over the items, each
    member given the histories' days; column 0 (padding) stays -inf."""

    def score(histories, days=None) -> torch.Tensor:
        total = None
        for member in members:
            scores = member(histories, days)[:, 1:].float()
            total = scores.clone() if total is None else total.add_(scores)
        return torch.cat([torch.full((len(histories), 1), float("-inf")), total.div_(len(members))], dim=1)

    score.dated = True
    return score


def figures(ranked: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """{"valid": {hr@10, ndcg@10}, "test": ...} of rank_splits' output, unrounded (the means per size are of
    these; the tables round)."""
    from tasks.evaluation.metrics import ranking_metrics

    return {split: {name: float(value) for name, value in ranking_metrics(ranks).items() if name in METRICS}
            for split, (ranks, _) in ranked.items()}


def subsets(names: list[str], rows: dict[str, dict]) -> list[dict]:
    """The mean figures over the subsets of each size (1 = the models alone)."""
    sizes = []
    for size in range(1, len(names) + 1):
        chosen = [rows[" + ".join(c)] for c in itertools.combinations(names, size)]
        sizes.append({"members": size, "subsets": len(chosen),
                      **{split: {m: round(mean(r[split][m] for r in chosen), 4) for m in METRICS}
                         for split in ("valid", "test")}})
    return sizes


def markdown(result: dict) -> str:
    lines = [f"# Seed ensembles on {result['dataset']} (LOO-full)", "",
             f"Machine: {result['machine']['cpu']}. Generated {result['generated_at']}. An ensemble ranks by the mean "
             "of its members' scores.", "",
             "| members | valid NDCG@10 | test NDCG@10 | test HR@10 |", "| --- | ---: | ---: | ---: |"]
    for name, row in result["ensembles"].items():
        lines.append(f"| {name} | {row['valid']['ndcg@10']:.4f} | {row['test']['ndcg@10']:.4f} | {row['test']['hr@10']:.4f} |")
    lines += ["", "| size | subsets | mean valid NDCG@10 | mean test NDCG@10 | mean test HR@10 |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for row in result["by_size"]:
        lines.append(f"| {row['members']} | {row['subsets']} | {row['valid']['ndcg@10']:.4f} | "
                     f"{row['test']['ndcg@10']:.4f} | {row['test']['hr@10']:.4f} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-1m")
    parser.add_argument("models", nargs="+", type=Path, help="two or more model folders trained by bench.quality")
    parser.add_argument("--results", default=None, help="bench/results/NAME.{json,md} (default: ensemble-DATASET)")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("an ensemble needs two model folders or more (e.g. seed-42/prismrec seed-43/prismrec)")
    if len({m.resolve() for m in args.models}) < len(args.models):
        parser.error(f"a model folder is given twice: {' '.join(map(str, args.models))}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sequences = prepared_split(parser, args.dataset, args.models)

    from tasks.evaluation.scoring import rank_splits, recommender_scorer
    from tasks.model.recommender import Recommender

    names = [f"{m.parent.name}/{m.name}" for m in args.models]
    if len(set(names)) < len(names):  # folders of other work folders that end alike: name them in full
        names = [str(m) for m in args.models]
    scorers = dict(zip(names, (recommender_scorer(Recommender.load(m), sequences) for m in args.models), strict=True))
    rows = {}
    for size in range(1, len(names) + 1):
        for chosen in itertools.combinations(names, size):
            scorer = scorers[chosen[0]] if size == 1 else ensemble_scorer([scorers[n] for n in chosen])
            rows[" + ".join(chosen)] = figures(rank_splits(scorer, sequences))
    result = {"dataset": args.dataset, "protocol": PROTOCOL, "machine": machine(),
              "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "models": [str(m) for m in args.models], "ensembles": rows, "by_size": subsets(names, rows)}
    return save(args.results or f"ensemble-{args.dataset}", result, markdown(result))


if __name__ == "__main__":
    main()
