"""Decoupled interests, measured: K=1 vs K=4 ablation, disentanglement, cold-start items.

    python -m bench.interests [--epochs N] [--holdout 0.1] [--seed 0] [--sasrec-epochs N]

On MovieLens-100K, prepared by the pipeline's own functions (bench.quality.prepare, in its own
schema), PrismRec is trained with `launch_training` (the DAG's code) and scored with
`tasks.evaluation.scoring` on the LOO-full split:

1. Ablation: K=1 and K=4 interests, everything else equal; validation and test NDCG@10/HR@10.
2. Disentanglement (K=4, test histories): mean pairwise cosine between a user's interests (raw,
   and centred on the mean item vector, which is what ranks items), and how the top-10 list is
   shared out between interests (bench.interest_metrics).
3. Cold-start items: a seeded `--holdout` share of the items loses every interaction in the
   users' *training* parts (validation/test targets are untouched; the items keep their text
   and their place in the catalogue; users left with no training item are dropped). PrismRec
   (K=4), the id-only SASRec, zero-shot content similarity and popularity are trained on that
   and ranked on the test users whose target is a held-out item. PrismRec scores items with no
   training interactions by their text vector alone (tasks.model.recommender: their id
   embeddings were trained only as softmax negatives, which would push them down).

Trainings are capped (`--epochs`, default 15; the pipeline default is 40, early stopping on
validation either way): the figures compare variants under the same budget, they are not the
tuned model's numbers (bench.quality is). Interest 0 is the recent interest (the sequence
state), 1..K-1 the long-term ones: K=1 is the single-vector model with the same everything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.quality import machine, prepare, save

log = logging.getLogger("bench.interests")

DATASET = "ml-100k"
SCHEMA = "bench_interests_ml100k"  # its own schema: never races a concurrent bench-quality load
BATCH = 512


def train_prismrec(config, dataset_dir: Path, out_dir: Path, sequences) -> tuple[Path, dict]:
    from tasks.evaluation.scoring import evaluate_scorer, model_scorer
    from tasks.layout import ModelFiles
    from tasks.training.launcher import launch_training

    started = time.time()
    model_dir = launch_training(config, dataset_dir, out_dir)
    seconds = time.time() - started
    metrics = evaluate_scorer(model_scorer(model_dir, sequences), sequences)
    summary = json.loads(ModelFiles(Path(model_dir)).summary.read_text())
    return model_dir, {"valid": _short(metrics["valid"]), "test": _short(metrics["test"]),
                       "epochs_run": summary.get("epochs_run"), "train_seconds": round(seconds, 1)}


def _short(metrics: dict) -> dict:
    return {k: round(metrics[k], 4) for k in ("hr@10", "ndcg@10")}


def disentanglement(model_dir: Path, sequences) -> dict:
    """Interest cosine and top-10 interest usage on every user's test history."""
    from bench.interest_metrics import (
        interest_counts,
        interest_specific_share,
        interest_usage,
        pairwise_interest_cosine,
    )
    from tasks.model.network import pad_left
    from tasks.model.recommender import Recommender

    recommender = Recommender.load(model_dir)
    k = recommender.spec.n_interests
    histories = [sequences.item_ids[h] for h in sequences.histories(1)]
    # Every item vector shares a large common direction; it shifts all of an interest's cosine
    # scores alike, so the centred cosine (mean item vector removed) is the one that says whether
    # two interests prefer different items.
    centre = recommender.item_vectors[1:].mean(0)
    cosines, centred, long_term, specific, interest_ids = [], [], [], [], []
    for start in range(0, len(histories), BATCH):
        chunk = histories[start:start + BATCH]
        padded = pad_left([recommender.to_indices(h) for h in chunk], recommender.spec.max_history)
        _, _, interests, _ = recommender.net.score_last(padded, recommender.item_vectors)
        cosines.append(pairwise_interest_cosine(interests))
        centred.append(pairwise_interest_cosine(interests, centre))
        if k > 2:  # between the long-term interests only (interest 0 follows the recent sequence)
            long_term.append(pairwise_interest_cosine(interests[:, 1:], centre))
        specific.append(interest_specific_share(interests))
        interest_ids.append(recommender.recommend(chunk, 10).interest_ids)
    cosine, ids = np.concatenate(cosines), np.concatenate(interest_ids)
    counts, usage = interest_counts(ids, k), interest_usage(ids, k)
    # An example: the user whose top-10 is shared out most evenly between interests.
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    example = int(np.lexsort((shares.max(1), -(counts > 0).sum(1)))[0])
    return {
            "example_user": example_user(recommender, histories[example], int(sequences.user_ids[example])),
            "n_interests": k,
            "mean_pairwise_cosine": round(float(cosine.mean()), 6),
            "median_pairwise_cosine": round(float(np.median(cosine)), 6),
            "mean_pairwise_cosine_centred": round(float(np.concatenate(centred).mean()), 6),
            "mean_long_term_cosine_centred": round(float(np.concatenate(long_term).mean()), 6) if long_term else None,
            "mean_interest_specific_share": round(float(np.concatenate(specific).mean()), 6),
            "top10_share_by_interest": [round(x, 4) for x in usage["share_by_interest"]],
            "top10": usage}


def balance_sweep(model_dir: Path, sequences, balances: list[float]) -> dict:
    """The same trained model ranked with each interest balance (ComiRec's controllable
    aggregation, no retraining): accuracy on both splits and how the top-10 is shared out."""
    from bench.interest_metrics import interest_usage
    from tasks.evaluation.scoring import evaluate_scorer, recommender_scorer
    from tasks.model.recommender import Recommender

    recommender = Recommender.load(model_dir)
    k = recommender.spec.n_interests
    histories = [sequences.item_ids[h] for h in sequences.histories(1)]
    rows = {}
    for balance in balances:
        recommender.interest_balance = balance
        metrics = evaluate_scorer(recommender_scorer(recommender, sequences), sequences)
        ids = np.concatenate([recommender.recommend(histories[start:start + BATCH], 10).interest_ids
                              for start in range(0, len(histories), BATCH)])
        usage = interest_usage(ids, k)
        rows[str(balance)] = {"valid": _short(metrics["valid"]), "test": _short(metrics["test"]),
                              "coverage@10": round(metrics["test"]["coverage@10"], 4),
                              "top10_share_by_interest": [round(x, 4) for x in usage["share_by_interest"]],
                              "top10": usage}
        log.info("balance %s: %s", balance, rows[str(balance)])
    return rows


def example_user(recommender, history: np.ndarray, user_id: int, top_k: int = 10) -> dict:
    """One user's top-k, grouped by the interest that picked each item, with the reasons."""
    recs = recommender.recommend([history], top_k)

    def titles(ids) -> list[str]:
        return [str(recommender.titles[recommender.index_of[i]]) for i in ids if i >= 0]

    interests: dict[str, dict] = {}
    for item, interest, because in zip(recs.item_ids[0], recs.interest_ids[0], recs.because_item_ids[0]):
        entry = interests.setdefault(str(int(interest)), {"picks": [], "because": []})
        entry["picks"] += titles([item])
        entry["because"] += [t for t in titles(because) if t not in entry["because"]]
    return {"user_id": user_id, "latest_watched": titles(history[-5:][::-1]), "interests": interests}


def cold_rows(scorer, sequences, held: np.ndarray) -> dict:
    """Test HR@10/NDCG@10 over users whose test target is held out, and over everyone."""
    from tasks.evaluation.metrics import hit_rate, ndcg
    from tasks.evaluation.scoring import rank_splits

    ranks, _ = rank_splits(scorer, sequences, ("test",))["test"]
    cold = np.isin(sequences.targets("test"), held)
    return {"cold_targets": {"users": int(cold.sum()), "hr@10": round(hit_rate(ranks[cold], 10), 4),
                             "ndcg@10": round(ndcg(ranks[cold], 10), 4),
                             "median_rank": float(np.median(ranks[cold])) + 1 if cold.any() else None},
            "all_targets": {"users": len(ranks), "hr@10": round(hit_rate(ranks, 10), 4),
                            "ndcg@10": round(ndcg(ranks, 10), 4)}}


def cold_start(config, dataset_dir: Path, work: Path, holdout: float, seed: int, sasrec_epochs: int) -> dict:
    from bench.baselines import fit_content, fit_sasrec
    from bench.interest_metrics import hold_out_items
    from tasks.data.prepare import load_dataset
    from tasks.evaluation.scoring import model_scorer, popularity_scorer
    from tasks.layout import DatasetFiles

    sequences, items = load_dataset(dataset_dir)
    cold, held, removed = hold_out_items(sequences, holdout, seed)
    cold_files = DatasetFiles(work / "cold-dataset")
    cold_dir = cold_files.root
    cold_dir.mkdir(parents=True, exist_ok=True)
    cold.save(cold_files.sequences)
    shutil.copy(DatasetFiles(Path(dataset_dir)).items, cold_files.items)  # same catalogue, same text
    split = {"held_out_items": len(held), "items": int(cold.n_items), "training_interactions_removed": removed,
             "users": int(cold.n_users), "users_dropped": int(sequences.n_users - cold.n_users),
             "held_out_items_as_test_target": int(np.isin(cold.targets("test"), held).sum())}
    cold_files.info.write_text(json.dumps(split, indent=2))
    log.info("cold-start split: %s", split)

    rows = {}
    started = time.time()
    model_dir = work / "cold-prismrec"
    from tasks.training.launcher import launch_training

    launch_training(config, cold_dir, model_dir)
    rows["prismrec"] = {**cold_rows(model_scorer(model_dir, cold), cold, held),
                        "train_seconds": round(time.time() - started, 1)}
    started = time.time()
    sasrec = fit_sasrec(cold, items, max_epochs=sasrec_epochs, patience=5)
    rows["sasrec"] = {**cold_rows(sasrec, cold, held), "train_seconds": round(time.time() - started, 1),
                      "max_epochs": sasrec_epochs}
    started = time.time()
    rows["content"] = {**cold_rows(fit_content(cold, items), cold, held), "train_seconds": round(time.time() - started, 1)}
    rows["popularity"] = {**cold_rows(popularity_scorer(cold), cold, held), "train_seconds": 0.0}
    for name, row in rows.items():
        log.info("cold-start %s: %s", name, row)
    return {"split": split, "models": rows}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Decoupled interests on {result['dataset']} (LOO-full)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, torch threads "
             f"{m['torch_threads']}, GPU: {m['gpu'] or 'none'}. Generated {result['generated_at']}.",
             f"PrismRec trained with train.epochs={result['epochs']} (a short run: not the tuned model; "
             "early stopping on validation NDCG@10 within those epochs).", "",
             "## Ablation: K=1 vs K=4", "",
             "| K | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | epochs | train s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, row in result["ablation"].items():
        lines.append(f"| {k} | {row['valid']['hr@10']:.4f} | {row['valid']['ndcg@10']:.4f} | "
                     f"{row['test']['hr@10']:.4f} | {row['test']['ndcg@10']:.4f} | {row['epochs_run']} | "
                     f"{row['train_seconds']:.0f} |")
    d = result["disentanglement"]
    u = d["top10"]
    lines += ["", f"## Disentanglement (K={d['n_interests']}, test histories, {u['users']} users)", "",
              "| figure | value |", "| --- | ---: |",
              f"| mean pairwise cosine between a user's interests (1 = collapsed, 0 = orthogonal) | "
              f"{d['mean_pairwise_cosine']:.4f} |",
              f"| median pairwise cosine | {d['median_pairwise_cosine']:.4f} |",
              f"| mean pairwise cosine, centred (mean item vector removed: what ranks items) | "
              f"{d['mean_pairwise_cosine_centred']:.4f} |",
              f"| mean pairwise cosine between long-term interests 1..{d['n_interests'] - 1}, centred | "
              f"{d['mean_long_term_cosine_centred'] if d['mean_long_term_cosine_centred'] is not None else float('nan'):.4f} |",
              "| share of all top-10 picks by interest (0 = recent) | "
              + " / ".join(f"{x:.3f}" for x in d["top10_share_by_interest"]) + " |",
              f"| interest-specific share of the interest vectors (0 = identical, {(d['n_interests'] - 1) / d['n_interests']:.2f} "
              f"= orthogonal) | {d['mean_interest_specific_share']:.5f} |",
              f"| distinct interests in a top-10 (mean, 1..{d['n_interests']}) | {u['mean_distinct_interests']:.2f} |",
              f"| share of the top-10 from the dominant interest (mean) | {u['mean_dominant_share']:.3f} |",
              f"| normalised entropy of interest shares (0 = one interest, 1 = even) | "
              f"{u['mean_normalised_entropy']:.3f} |",
              f"| users whose top-10 comes from a single interest | {u['single_interest_users']:.3f} |",
              "| mean share by interest rank | " + " / ".join(f"{x:.3f}" for x in u["share_by_rank"]) + " |"]
    b = result.get("interest_balance")
    if b:
        lines += ["", f"## Sharing the list out: interest balance (K={d['n_interests']} model, no retraining)", "",
                  "ComiRec's controllable aggregation (`train.interest_balance`, configured: "
                  f"{b['configured']}): each pick an interest already has lowers the scores (logits) of its "
                  "next candidates by the balance. The rows above (ablation, disentanglement) use the "
                  "configured value.", "",
                  "| balance | valid NDCG@10 | test NDCG@10 | test HR@10 | coverage@10 | distinct interests in a top-10 "
                  "| dominant share | single-interest users | share of picks by interest |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for balance, row in b["rows"].items():
            u = row["top10"]
            lines.append(f"| {balance} | {row['valid']['ndcg@10']:.4f} | {row['test']['ndcg@10']:.4f} | "
                         f"{row['test']['hr@10']:.4f} | {row['coverage@10']:.4f} | {u['mean_distinct_interests']:.2f} | "
                         f"{u['mean_dominant_share']:.3f} | {u['single_interest_users']:.3f} | "
                         + " / ".join(f"{x:.3f}" for x in row["top10_share_by_interest"]) + " |")
    e = d.get("example_user")
    if e:
        lines += ["", f"### Example: user {e['user_id']} (latest watched: {', '.join(e['latest_watched'])})", "",
                  "| interest | picks in the top-10 | because the user watched |", "| --- | --- | --- |"]
        for interest, entry in sorted(e["interests"].items(), key=lambda kv: int(kv[0])):
            name = "0 (recent)" if interest == "0" else f"{interest} (long-term)"
            lines.append(f"| {name} | {'; '.join(entry['picks'])} | {'; '.join(entry['because'][:4])} |")
    c = result["cold_start"]
    s = c["split"]
    lines += ["", f"## Cold-start items ({s['held_out_items']} of {s['items']} items held out of training, "
              f"seed {result['seed']})", "",
              f"{s['training_interactions_removed']} training interactions removed, {s['users_dropped']} users "
              f"dropped; {s['held_out_items_as_test_target']} test users have a held-out item as target.", "",
              "PrismRec scores items with no training interactions by their text vector alone (their id "
              "embeddings only ever saw softmax-negative gradient). `content`: zero-shot MiniLM "
              "similarity to the history (bench.baselines.fit_content, default decay), a text-only reference.", "",
              "| model | cold HR@10 | cold NDCG@10 | cold median rank | all HR@10 | all NDCG@10 | train s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in c["models"].items():
        cold, every = row["cold_targets"], row["all_targets"]
        lines.append(f"| {name} | {cold['hr@10']:.4f} | {cold['ndcg@10']:.4f} | {cold['median_rank']:.0f} | "
                     f"{every['hr@10']:.4f} | {every['ndcg@10']:.4f} | {row['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="PrismRec train.epochs for every run (default 15)")
    parser.add_argument("--holdout", type=float, default=0.1, help="share of items held out for cold start")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out item draw")
    parser.add_argument("--sasrec-epochs", type=int, default=30, help="max epochs of the cold-start SASRec")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in this process")
    parser.add_argument("--max-steps", type=int, help="train.max_steps_per_epoch (quick checks of the script only)")
    parser.add_argument("--balances", default="0,0.1,0.25,0.5,1,2",
                        help="interest balances to rank the K=4 model with, comma-separated (the configured "
                             "train.interest_balance is always added)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from tasks.config import load_config
    from tasks.data.prepare import load_dataset

    torch.set_num_threads(args.threads)
    base = {"database.app_schema": SCHEMA, "train.epochs": args.epochs, "train.max_steps_per_epoch": args.max_steps}
    config = load_config(base)
    from bench.allocator import reexec_under_allocator

    reexec_under_allocator(config.train.allocator, "bench.interests", argv)  # the baselines' race is fair
    work = config.paths.home / "bench" / f"interests-{DATASET}"
    dataset_dir = prepare(config, DATASET, work)
    sequences, _ = load_dataset(dataset_dir)

    ablation, model_dirs = {}, {}
    for k in (1, 4):
        model_dirs[k], ablation[str(k)] = train_prismrec(load_config({**base, "train.n_interests": k}), dataset_dir,
                                                         work / f"prismrec-k{k}", sequences)
        log.info("K=%d: %s", k, ablation[str(k)])
    result = {
        "dataset": DATASET,
        "protocol": "LOO-full (docs/protocol.md); validation selects the epoch, test reported",
        "epochs": args.epochs,
        "seed": args.seed,
        "machine": machine(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "ablation": ablation,
        "disentanglement": disentanglement(model_dirs[4], sequences),
        "interest_balance": {"configured": config.train.interest_balance,
                             "rows": balance_sweep(model_dirs[4], sequences, sorted(
                                 {float(b) for b in args.balances.split(",") if b.strip()}
                                 | {config.train.interest_balance}))},
        "cold_start": cold_start(load_config({**base, "train.n_interests": 4}), dataset_dir, work,
                                 args.holdout, args.seed, args.sasrec_epochs),
    }
    return save(f"interests-{DATASET}", result, markdown(result))


if __name__ == "__main__":
    main()
