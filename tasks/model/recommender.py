"""Inference: a trained PrismRec model folder -> scores, top-K lists, interests, explanations.

Used by evaluation (candidate and champion on the same split), by the MLflow pyfunc and by
materialization. Works in app item ids, so a model can score a split whose item indexing
differs from the one it was trained on (items it never saw score -inf).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from tasks.errors import RegistryError
from tasks.model.network import ModelSpec, PrismRecNet, pad_left

CHECKPOINT = "model.pt"
POPULARITY_FALLBACK = -1  # interest_id of items recommended by popularity, not by an interest


@dataclass
class Recommendations:
    item_ids: np.ndarray  # [U, k] app item ids, best first
    scores: np.ndarray  # [U, k]
    interest_ids: np.ndarray  # [U, k] which interest picked each item
    explanations: list[list[str]]  # [U][k] "because you watched A, B"


class Recommender:
    def __init__(self, net: PrismRecNet, item_text_vectors: torch.Tensor, items: pd.DataFrame, version_info: dict):
        self.net = net.eval()
        self.spec = net.spec
        with torch.no_grad():
            self.item_vectors = net.item_vectors(item_text_vectors)
        self.item_ids = items["item_id"].to_numpy()  # position i -> index i + 1
        self.titles = np.concatenate([[""], items["title"].astype(str).to_numpy()])
        self.index_of = pd.Series(np.arange(1, len(self.item_ids) + 1), index=self.item_ids)
        # Users with no known history get the most popular items (flagged with interest -1).
        counts = items["train_interactions"].to_numpy() if "train_interactions" in items else np.zeros(len(items))
        self.popularity = torch.as_tensor(np.concatenate([[-np.inf], counts]), dtype=torch.float32)
        self.info = version_info

    @classmethod
    def load(cls, model_dir: Path) -> "Recommender":
        model_dir = Path(model_dir)
        if not (model_dir / CHECKPOINT).exists():
            raise RegistryError(f"{model_dir} holds no {CHECKPOINT}; it is not a PrismRec model folder")
        checkpoint = torch.load(model_dir / CHECKPOINT, map_location="cpu", weights_only=False)
        spec = ModelSpec(**checkpoint["spec"])
        net = PrismRecNet(spec, encoder=None)
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("text_tower.")}
        net.load_state_dict(state)
        items = pd.read_parquet(model_dir / "items.parquet").sort_values("idx")
        summary = model_dir / "training.json"
        info = json.loads(summary.read_text()) if summary.exists() else {}
        return cls(net, checkpoint["item_text_vectors"], items, info)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def to_indices(self, history: Sequence[int]) -> np.ndarray:
        """App item ids -> this model's indices, dropping items it does not know."""
        found = self.index_of.reindex(np.asarray(history, dtype=np.int64)).dropna()
        return found.to_numpy(dtype=np.int64)

    def score_indices(self, histories: Sequence[np.ndarray]):
        """Histories in model indices -> (scores [B, N+1], best interest [B, N+1], attention [B, K, L], padded)."""
        padded = pad_left(histories, self.spec.max_history)
        scores, best, _, attention = self.net.score_last(padded, self.item_vectors)
        return scores, best, attention, padded

    def score_items(self, histories: Sequence[Sequence[int]], item_ids: np.ndarray) -> torch.Tensor:
        """Scores [B, len(item_ids)] for arbitrary app item ids; unknown items get -inf."""
        scores, *_ = self.score_indices([self.to_indices(h) for h in histories])
        columns = self.index_of.reindex(item_ids).fillna(0).to_numpy(dtype=np.int64)
        out = scores[:, torch.as_tensor(columns)]
        out[:, torch.as_tensor(columns == 0)] = float("-inf")
        return out

    def recommend(self, histories: Sequence[Sequence[int]], top_k: int, explain_items: int = 2) -> Recommendations:
        """Top-k unseen items per history, with the interest that picked each and why."""
        indexed = [self.to_indices(h) for h in histories]
        scores, best, attention, padded = self.score_indices(indexed)
        scores[:, 0] = float("-inf")
        rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(indexed)]) if indexed else []
        if len(rows):
            scores[torch.as_tensor(rows), torch.as_tensor(np.concatenate(indexed))] = float("-inf")
        cold = torch.as_tensor([len(h) == 0 for h in indexed], dtype=torch.bool)
        if cold.any():
            scores[cold] = self.popularity
            best[cold] = POPULARITY_FALLBACK
        k = min(top_k, self.n_items)
        top_scores, top_idx = scores.topk(k, dim=1)
        interest = best.gather(1, top_idx)
        # For each user and interest, the history items that interest attends to most.
        attended = attention.masked_fill(padded[:, None, :] == 0, -1.0).topk(
            min(explain_items, padded.shape[1]), dim=-1)
        because = padded.gather(1, attended.indices.flatten(1)).view(attended.indices.shape)  # [B, K, e]
        explanations = []
        for user in range(len(indexed)):
            if not len(indexed[user]):
                explanations.append(["popular overall (no viewing history yet)"] * k)
                continue
            per_interest = [
                "because you watched " + ", ".join(self.titles[i] for i in because[user, k_].tolist() if i > 0)
                for k_ in range(self.spec.n_interests)
            ]
            explanations.append([per_interest[i] for i in interest[user].tolist()])
        valid = torch.isfinite(top_scores)
        item_ids = np.where(valid.numpy(), self.item_ids[(top_idx - 1).clamp(min=0).numpy()], -1)
        return Recommendations(item_ids=item_ids, scores=top_scores.numpy().astype(np.float32),
                               interest_ids=interest.numpy().astype(np.int64), explanations=explanations)
