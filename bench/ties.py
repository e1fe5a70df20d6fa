"""How much of a split's order is the source's: items saved at one time, and what the transition prior reads.

    python -m bench.ties --dataset ml-1m [MODEL_DIR ...] [--weight W] [--results NAME]

MovieLens stores a rating's second; a user who rated a page of titles at once has several ratings with one
time, and the protocol keeps such ties in the source's order (docs/protocol.md). Leave-one-out then often
holds out the last of a page, with its page-mates as the history's latest items: what follows what inside
a page is the order of the source, not one the user chose, and no list a user is served can follow it.

The report, on the split bench.quality prepared (its work folder):
- the share of direct successions between items saved at one time, and of held-out targets saved at the time
  of the history's latest item ("tied" targets);
- a recommender of successions alone (tasks.model.transitions' lift at weight 1: the latest three items'
  successors) with each table: every pair in the source's order, or successions at a later time only (the
  pipeline's table since tied items were marked), test HR@10 / NDCG@10 on tied and other targets;
- for each MODEL_DIR (a model bench.quality trained; `seed-N/prismrec` with `--seeds`): its test figures with its trend prior and no transition prior, then with a transition prior over
  each table (at the weight its fit chose, or `--weight`), on tied and other targets. Nothing is trained here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.machine import machine
from bench.quality import DATASETS, PROTOCOL, prepared_split, save

TABLES = ("every pair", "later only")  # the transition table: the source's order of ties, or successions alone


def figures(ranks: np.ndarray, tied: np.ndarray) -> dict:
    """Test HR@10 / NDCG@10 of 0-based ranks over every target, the tied ones and the others."""
    from tasks.evaluation.metrics import ranking_metrics

    def of(chosen: np.ndarray) -> dict:
        found = ranking_metrics(chosen)
        return {"users": len(chosen), "hr@10": round(float(found["hr@10"]), 4),
                "ndcg@10": round(float(found["ndcg@10"]), 4)}

    return {"all": of(ranks), "tied": of(ranks[tied]), "other": of(ranks[~tied])}


def tied_targets(sequences) -> np.ndarray:
    """[U] whether each test target was saved at the time of the history's latest item."""
    return sequences.tied[sequences.indptr[1:] - 1]


def split_of(sequences, table: str):
    """The split whose successions build the table: the source's order of tied items counts, or not."""
    return dataclasses.replace(sequences, tied=None) if table == "every pair" else sequences


def successions_alone(sequences, tied: np.ndarray) -> dict:
    """A recommender of the latest three items' successors alone, per table."""
    import pandas as pd

    from tasks.evaluation.scoring import rank_splits
    from tasks.model.transitions import TransitionPrior, TransitionTable, successor_table

    index_of = pd.Series(np.arange(1, sequences.n_items + 1), index=sequences.item_ids[1:])
    rows = {}
    for table in TABLES:
        prior = TransitionPrior(1.0, *successor_table(split_of(sequences, table).successions(2), sequences.item_ids))
        lifted = TransitionTable(prior, index_of)
        ranks, _ = rank_splits(lambda histories, t=lifted: t.lift(histories, sequences.n_items + 1), sequences,
                               ("test",))["test"]
        rows[table] = figures(ranks, tied)
    return rows


def model_rows(model_dir: Path, sequences, tied: np.ndarray, weight: float | None = None) -> dict:
    """The model with its trend prior, without and with a transition prior over each table: at `weight`, or
    at the weight its own fit chose."""
    from tasks.evaluation.scoring import rank_splits, recommender_scorer
    from tasks.model.recommender import Recommender
    from tasks.model.transitions import TransitionPrior

    recommender = Recommender.load(model_dir)
    if weight is None and recommender.transitions is None:
        raise SystemExit(f"{model_dir} holds no transition prior (its fit chose weight 0, or it fitted none): "
                         "give the weight to score with, --weight W")
    prior = TransitionPrior(weight if weight is not None else recommender.transitions.weight)
    row = {"model": f"{model_dir.parent.name}/{model_dir.name}", "weight": prior.weight,
           "fitted_weight": 0.0 if recommender.transitions is None else recommender.transitions.weight}
    recommender.use_transitions(None)
    row["without"] = figures(rank_splits(recommender_scorer(recommender, sequences), sequences, ("test",))["test"][0], tied)
    for table in TABLES:
        recommender.use_transitions(prior)  # date_by rebuilds its table from the split's successions
        scored = rank_splits(recommender_scorer(recommender, split_of(sequences, table)), sequences,
                             ("test",))["test"][0]
        row[table] = figures(scored, tied)
    return row


def markdown(result: dict) -> str:
    facts = result["split"]
    lines = [f"# Items saved at one time in {result['dataset']}'s LOO-full split", "",
             f"Machine: {result['machine']['cpu']}. Generated {result['generated_at']}. "
             f"{facts['tied_successions']:.1%} of the direct successions are between items saved at one time; "
             f"{facts['tied_test_targets']:.1%} of the test targets ({facts['tied_users']} of {facts['users']}) "
             "were saved at the time of the history's latest item.", "",
             "| scores | table | HR@10 all | HR@10 tied | HR@10 other | NDCG@10 all | NDCG@10 tied | NDCG@10 other |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def line(name: str, table: str, row: dict) -> str:
        return (f"| {name} | {table} | " + " | ".join(f"{row[part]['hr@10']:.4f}" for part in ("all", "tied", "other"))
                + " | " + " | ".join(f"{row[part]['ndcg@10']:.4f}" for part in ("all", "tied", "other")) + " |")

    for table in TABLES:
        lines.append(line("successions alone", table, result["successions_alone"][table]))
    for model in result["models"]:
        lines.append(line(f"{model['model']} + trend prior", "none", model["without"]))
        for table in TABLES:
            lines.append(line(f"{model['model']} + trend + transitions x {model['weight']} (its fit: "
                              f"{model['fitted_weight']})", table, model[table]))
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-1m")
    parser.add_argument("models", nargs="*", type=Path, help="model folders trained by bench.quality")
    parser.add_argument("--results", default=None, help="bench/results/NAME.{json,md} (default: ties-DATASET)")
    parser.add_argument("--weight", type=float, default=None,
                        help="the transition prior's weight to score the models with (default: each one's fitted weight)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sequences = prepared_split(parser, args.dataset, args.models)
    if sequences.tied is None:
        parser.error(f"the {args.dataset} split was prepared before items saved at one time were marked: run `python -m "
                     f"bench.quality --dataset {args.dataset} --only prismrec` again")
    tied = tied_targets(sequences)
    result = {"dataset": args.dataset, "protocol": PROTOCOL, "machine": machine(),
              "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "split": {"users": sequences.n_users, "tied_users": int(tied.sum()),
                        "tied_test_targets": round(float(tied.mean()), 4),
                        "tied_successions": round(float(sequences.tied.sum() / (len(sequences.item_idx) - sequences.n_users)), 4)},
              "successions_alone": successions_alone(sequences, tied),
              "models": [model_rows(m, sequences, tied, args.weight) for m in args.models]}
    return save(args.results or f"ties-{args.dataset}", result, markdown(result))


if __name__ == "__main__":
    main()
