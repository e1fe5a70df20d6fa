"""Scoring as the catalogue grows: users/s and peak memory of `Recommender.recommend` (ranking the
whole catalogue, and from the candidate index) and `similar_items`, the parts of publishing that
grow with the number of items.

    python -m bench.scoring [--items 3706,37060,100000] [--users 3072]

A network with the pipeline's default settings (train.*, prepare.max_history) and random weights
scores random histories (5-120 items) against catalogues of the given sizes (37,060 items is the
cost curve's 10x size, 100,000 its 100x). Random weights cost what trained ones do: the work is
matrix products, masks and top-k over [users, interests, items], whatever the values. Each size runs
in its own process, so its peak resident memory (VmHWM) is its own; the batch is the one
`materialize` uses (materialize.batch_users, fewer where materialize.score_memory_mb says so).
Saves bench/results/scoring.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(n_items: int, n_users: int) -> dict:
    """One size, in this process: build the model, score n_users in materialize's batches."""
    import numpy as np
    import pandas as pd
    import torch

    from tasks.config import load_config
    from tasks.model.layers import use_bf16
    from tasks.model.network import ModelSpec, PrismRecNet
    from tasks.model.recommender import Recommender

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = load_config({})
    spec = ModelSpec.from_config(config.train, n_items, config.prepare.max_history)
    items = pd.DataFrame({"item_id": np.arange(10, n_items + 10), "title": [f"Item {i}" for i in range(n_items)],
                          # long-tailed popularity, 1 % of the catalogue new (no training interactions)
                          "train_interactions": rng.zipf(1.5, n_items).clip(0, 10_000) * (rng.random(n_items) > 0.01)})
    # The user tower in train.precision, as the pipeline's Recommender.load resolves it on this machine.
    bf16 = use_bf16(config.train.precision, torch.device("cpu"))
    recommender = Recommender(PrismRecNet(spec, encoder=None), torch.randn(n_items + 1, 384), items, bf16=bf16)
    histories = [rng.integers(10, n_items + 10, size=rng.integers(5, 121)) for _ in range(n_users)]
    histories.sort(key=len, reverse=True)  # materialize scores the longest histories first (pad_history)
    settings = config.materialize
    batch = recommender.users_per_batch(settings.score_memory_mb, settings.batch_users)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def users_per_second(**retrieval) -> float:
        recommender.recommend(histories[:64], settings.top_k, max_new_items=settings.max_new_items,
                              **retrieval)  # warm-up
        started = time.perf_counter()
        for start in range(0, n_users, batch):
            recommender.recommend(histories[start:start + batch], settings.top_k,
                                  max_new_items=settings.max_new_items, **retrieval)
        return n_users / (time.perf_counter() - started)

    exact = users_per_second()
    scoring_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    index = recommender.candidate_index(settings.index_lists, settings.index_probes)
    index_seconds = time.perf_counter() - started
    from_index = users_per_second(index=index, candidates=settings.index_candidates)
    started = time.perf_counter()
    recommender.similar_items(settings.similar_top_k, settings.score_memory_mb)
    similar_seconds = time.perf_counter() - started
    return {"items": n_items, "users": n_users, "batch_users": batch, "interests": spec.n_interests,
            "precision": "bf16" if bf16 else "fp32",
            "dim": spec.dim, "users_per_second": round(exact, 1),
            "index": {"lists": index.lists, "probes": index.probes, "candidates": settings.index_candidates,
                      "build_seconds": round(index_seconds, 1), "users_per_second": round(from_index, 1)},
            "model_mib": round(before), "scoring_peak_mib": round(scoring_peak),
            "similar_items_seconds": round(similar_seconds, 1),
            "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        "# Scoring as the catalogue grows (random weights, the pipeline's default model settings)", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads). Date {result['date']}. User tower in "
        f"{', '.join(sorted({row.get('precision', 'fp32') for row in result['sizes']}))} (train.precision, as "
        "publishing resolves it on this machine). Histories of 5-120 random items; "
        "top-50 lists with explanations, as `materialize` builds them, longest histories first. Users/s "
        "ranking the whole catalogue (exact) and ranking each interest's candidates from the inverted-file "
        "index (materialize.retrieval; its lists and probes, and the seconds to build it). Random weights "
        "say what the index costs, not what it misses: recall is measured on a trained model at every "
        "publish (reco.runs.retrieval_recall; bench/results/scale.md).", "",
        "| items | users | users a batch | users/s exact | users/s index | index lists / probes (build s) "
        "| memory before scoring (MiB) | peak while scoring (MiB) | similar items (s) | peak (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["sizes"]:
        index = row.get("index")
        from_index = f"{index['users_per_second']:,.0f}" if index else "—"
        index_shape = f"{index['lists']:,} / {index['probes']} ({index['build_seconds']})" if index else "—"
        lines.append(f"| {row['items']:,} | {row['users']:,} | {row['batch_users']:,} | {row['users_per_second']:,.0f} "
                     f"| {from_index} | {index_shape} "
                     f"| {row['model_mib']:,} | {row['scoring_peak_mib']:,} | {row['similar_items_seconds']} "
                     f"| {row['peak_mib']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="3706,37060,100000", help="comma-separated catalogue sizes")
    parser.add_argument("--users", type=int, default=3072, help="users scored at each size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size, JSON out
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.users)))
        return None
    try:
        sizes = [int(size) for size in args.items.split(",")]
    except ValueError:
        raise SystemExit(f"--items {args.items!r}: want comma-separated item counts, e.g. 3706,37060") from None
    if min(sizes) < 2 or args.users < 1:
        raise SystemExit("--items must be at least 2 and --users at least 1")
    from bench.quality import machine

    rows = []
    for size in sizes:
        done = subprocess.run([sys.executable, "-m", "bench.scoring", "--one", str(size), "--users", str(args.users)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    result = {"sizes": rows, "machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scoring.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "scoring.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
