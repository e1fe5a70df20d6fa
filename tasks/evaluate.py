"""Evaluate: the candidate, the popularity baseline and the current champion, scored by the
same code on the same leave-one-out split, ranking every item (PROTOCOL.md, LOO-full).

Validation metrics select and gate; test metrics are reported once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from tasks.config import PipelineConfig
from tasks.metrics import evaluate_scores
from tasks.prepare import Sequences, load_dataset

log = logging.getLogger(__name__)

SPLITS = {"valid": 2, "test": 1}  # split -> items held out of the input history
BATCH_USERS = 512

# A scorer maps histories (index arrays of the split) to scores [B, N+1] over the split's items.
Scorer = Callable[[Sequence[np.ndarray]], torch.Tensor]


@dataclass
class Evaluation:
    candidate: dict
    baselines: dict = field(default_factory=dict)
    champion: dict | None = None
    champion_version: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def evaluate_scorer(scorer: Scorer, sequences: Sequences) -> dict[str, dict[str, float]]:
    """{"valid": metrics, "test": metrics} for one model on the split."""
    results = {}
    for split, holdout in SPLITS.items():
        histories = sequences.histories(holdout)
        targets = sequences.targets(split)

        def batches():
            for start in range(0, sequences.n_users, BATCH_USERS):
                chunk = histories[start:start + BATCH_USERS]
                yield scorer(chunk), chunk, targets[start:start + BATCH_USERS]

        results[split] = evaluate_scores(batches(), sequences.n_items)
    return results


def popularity_scorer(sequences: Sequences) -> Scorer:
    """Most-interacted items in the training histories first (the same for everyone)."""
    counts = np.bincount(np.concatenate(sequences.histories(2)), minlength=sequences.n_items + 1)
    scores = torch.as_tensor(counts, dtype=torch.float32)
    return lambda histories: scores.expand(len(histories), -1)


def model_scorer(model_dir: Path, sequences: Sequences) -> Scorer:
    """A trained PrismRec model (candidate or champion) scoring the split's items by app item id."""
    from tasks.model.recommender import Recommender

    recommender = Recommender.load(model_dir)
    universe = sequences.item_ids[1:]

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        app_histories = [sequences.item_ids[h] for h in histories]
        scores = recommender.score_items(app_histories, universe)
        return torch.cat([torch.full((len(histories), 1), float("-inf")), scores], dim=1)

    return score


def evaluate_run(config: PipelineConfig, dataset_dir: Path, model_dir: Path,
                 champion_model_dir: Path | None, champion_version: str | None = None) -> Evaluation:
    started = time.time()
    sequences, _ = load_dataset(dataset_dir)
    evaluation = Evaluation(candidate=evaluate_scorer(model_scorer(model_dir, sequences), sequences))
    evaluation.baselines["popularity"] = evaluate_scorer(popularity_scorer(sequences), sequences)
    if champion_model_dir is not None:
        evaluation.champion = evaluate_scorer(model_scorer(champion_model_dir, sequences), sequences)
        evaluation.champion_version = champion_version
    evaluation.seconds = time.time() - started
    for name, result in [("candidate", evaluation.candidate), ("popularity", evaluation.baselines["popularity"]),
                         ("champion", evaluation.champion)]:
        if result:
            log.info("%-10s valid NDCG@10 %.4f HR@10 %.4f | test NDCG@10 %.4f HR@10 %.4f", name,
                     result["valid"]["ndcg@10"], result["valid"]["hr@10"],
                     result["test"]["ndcg@10"], result["test"]["hr@10"])
    return evaluation
