"""Evaluate: the candidate, the gate's baselines and the current champion, scored by the
same code on the same leave-one-out split, ranking every item (docs/protocol.md, LOO-full).

Validation metrics select and gate; test metrics are reported once. Each model is also
summarised per slice (tasks.evaluation.slices: history length, head/tail/cold/unseen target items) from the
same per-user ranks, so the gate can refuse a model that regresses for one group of users; PrismRec
models also on the really cold targets (tasks.evaluation.cold: new items first rated in the held-out part).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tasks.config import PipelineConfig
from tasks.data.prepare import Sequences, load_dataset
from tasks.evaluation import cold
from tasks.evaluation.metrics import SELECTION_METRIC, summarize
from tasks.evaluation.scoring import SPLITS, Scorer, model_scorer, popularity_scorer, rank_splits
from tasks.evaluation.slices import Slice, define_slices, item_popularity, slice_metrics

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    candidate: dict
    baselines: dict = field(default_factory=dict)
    champion: dict | None = None
    champion_version: str | None = None
    seconds: float = 0.0
    # {"definitions": {split: {slice: {"description", "users"}}}, "candidate": {split: {slice: metrics}},
    #  "baselines": {name: {split: ...}}, "champion": {split: ...} | None}
    slices: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def split_slices(sequences: Sequences, config: PipelineConfig) -> dict[str, list[Slice]]:
    """The slices of each split; history lengths and popularity come from the training histories."""
    train = sequences.histories(2)
    lengths = np.array([len(h) for h in train], dtype=np.int64)
    popularity = item_popularity(train, sequences.n_items)
    return {split: define_slices(lengths, sequences.targets(split), popularity, config.gate) for split in SPLITS}


def _evaluate_with_slices(scorer: Scorer, sequences: Sequences, slices: dict[str, list[Slice]]) -> tuple[dict, dict]:
    """(overall metrics per split, slice metrics per split) from one scoring pass."""
    ranked = rank_splits(scorer, sequences)
    overall = {split: summarize(ranks, top10, sequences.n_items) for split, (ranks, top10) in ranked.items()}
    return overall, {split: slice_metrics(ranked[split][0], slices[split]) for split in ranked}


@dataclass(frozen=True)
class _ColdSlice:
    """The really cold targets of a dataset (tasks.evaluation.cold), added to a PrismRec model's slices."""

    sequences: Sequences
    targets: object  # DataFrame[user, item_id]
    new_item_ids: np.ndarray
    precision: str = "auto"  # train.precision: the user tower's, as publishing runs it

    def definition(self) -> dict:
        """The slice's entry in the evaluation's definitions (the same pairs in both splits)."""
        return {cold.SLICE: {"description": cold.DESCRIPTION, "users": len(self.targets)}}

    def add(self, model_slices: dict, model_dir: Path | None) -> None:
        """Score the slice with the PrismRec model in `model_dir`; None: a baseline, which scores by
        ratings and so cannot place an item outside the 5-core (it ranks each target last)."""
        if model_dir is None:
            known = torch.as_tensor(np.isin(np.concatenate([self.sequences.item_ids[1:], self.new_item_ids]),
                                            self.sequences.item_ids[1:]))
            row = torch.where(known, 0.0, float("-inf"))

            def score(histories, candidates, days):
                return row.expand(len(histories), -1)
        else:
            from tasks.model.recommender import Recommender

            recommender = Recommender.load(model_dir, self.precision)
            recommender.date_by(self.sequences)

            def score(histories, candidates, days):
                return recommender.score_items(histories, candidates, days=days)
        for split, metrics in cold.cold_metrics(score, self.sequences, self.targets, self.new_item_ids).items():
            model_slices[split][cold.SLICE] = metrics


def _cold_slice(dataset_dir: Path, sequences: Sequences, precision: str) -> _ColdSlice:
    from tasks.data.prepare import load_cold_targets, load_new_items

    return _ColdSlice(sequences, load_cold_targets(dataset_dir),
                      load_new_items(dataset_dir)["item_id"].to_numpy(np.int64), precision)


def baseline_scorer(name: str, sequences: Sequences, items) -> Scorer:
    """A gate baseline fitted on the split's training histories; item-kNN and EASE pick their
    hyper-parameters on validation NDCG@10 (tasks.evaluation.baselines.tune), which only makes the bar higher."""
    if name == "popularity":
        return popularity_scorer(sequences)
    from tasks.evaluation.baselines import tune

    tuned = tune(name, sequences, items)
    log.info("baseline %s: %s selected on validation (%.1fs)", name, tuned.hyper, tuned.seconds)
    return tuned.scorer


def evaluate_run(config: PipelineConfig, dataset_dir: Path, model_dir: Path,
                 champion_model_dir: Path | None, champion_version: str | None = None) -> Evaluation:
    started = time.time()
    sequences, items = load_dataset(dataset_dir)
    slices = split_slices(sequences, config)
    candidate, candidate_slices = _evaluate_with_slices(model_scorer(model_dir, sequences, config.train.precision), sequences, slices)
    evaluation = Evaluation(candidate=candidate)
    evaluation.slices = {
        "definitions": {split: {s.name: {"description": s.description, "users": int(s.mask.sum())} for s in pieces}
                        for split, pieces in slices.items()},
        "candidate": candidate_slices, "baselines": {}, "champion": None,
    }
    really_cold = _cold_slice(dataset_dir, sequences, config.train.precision)
    evaluation.slices["definitions"] = {split: {**pieces, **really_cold.definition()}
                                        for split, pieces in evaluation.slices["definitions"].items()}
    really_cold.add(evaluation.slices["candidate"], model_dir)
    for name in config.gate.baseline_names():
        evaluation.baselines[name], evaluation.slices["baselines"][name] = _evaluate_with_slices(
            baseline_scorer(name, sequences, items), sequences, slices)
        really_cold.add(evaluation.slices["baselines"][name], None)
    if champion_model_dir is not None:
        evaluation.champion, evaluation.slices["champion"] = _evaluate_with_slices(
            model_scorer(champion_model_dir, sequences, config.train.precision), sequences, slices)
        really_cold.add(evaluation.slices["champion"], champion_model_dir)
        evaluation.champion_version = champion_version
    evaluation.seconds = time.time() - started
    for name, result in [("candidate", evaluation.candidate), *evaluation.baselines.items(),
                         ("champion", evaluation.champion)]:
        if result:
            log.info("%-10s valid NDCG@10 %.4f HR@10 %.4f | test NDCG@10 %.4f HR@10 %.4f", name,
                     result["valid"]["ndcg@10"], result["valid"]["hr@10"],
                     result["test"]["ndcg@10"], result["test"]["hr@10"])
    log.info("candidate valid %s by slice: %s", SELECTION_METRIC, ", ".join(
        f"{name} {m[SELECTION_METRIC]:.4f} ({m['users']} users)" for name, m in candidate_slices["valid"].items()))
    return evaluation
