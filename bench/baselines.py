"""The quality benchmark's baselines beyond the gate's: zero-shot text similarity and SASRec.

The gate's baselines (popularity, item-kNN, EASE) live in tasks.evaluation.baselines; these two
only serve the benchmarks (bench.quality, bench.interests), which compare PrismRec with a
text-only reference and with the id-only sequential model it competes with. Both follow the
same rules: fitted on the training histories only, scored by the pipeline's evaluation code,
hyper-parameters picked on validation NDCG@10.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tasks.data.prepare import Sequences
from tasks.evaluation import baselines as gate_baselines
from tasks.evaluation.baselines import FitFunction, Tuned, search, validation_ndcg
from tasks.evaluation.scoring import Scorer
from tasks.model.layers import Dropout, encoder_layer

log = logging.getLogger(__name__)


@torch.no_grad()
def item_text_vectors(texts: list[str], batch_size: int = 256, max_tokens: int = 64) -> torch.Tensor:
    """Pretrained MiniLM sentence embeddings (mean pooling, L2-normalised): [len(texts), 384]."""
    from tasks.model.text_tower import load_language_model

    tokenizer, encoder = load_language_model()
    encoder.eval()
    vectors = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                           max_length=max_tokens, return_tensors="pt")
        hidden = encoder(**tokens).last_hidden_state
        weights = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        vectors.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))
    return nn.functional.normalize(torch.cat(vectors), dim=-1)


def fit_content(sequences: Sequences, items: pd.DataFrame, decay: float = 1.0,
                vectors: torch.Tensor | None = None) -> Scorer:
    """Zero-shot: cosine between each item's text embedding and the history's weighted mean.

    The t-th most recent history item weighs `decay ** t` (1.0 = plain mean). Nothing is
    trained; `vectors` ([n_items, 384], idx order) may be passed to reuse an encoding.
    """
    if vectors is None:
        vectors = item_text_vectors(items.sort_values("idx")["description"].tolist())
    table = torch.cat([torch.zeros(1, vectors.shape[1]), vectors])  # row 0 = padding

    def score(histories: Sequence[np.ndarray]) -> torch.Tensor:
        profiles = torch.zeros(len(histories), table.shape[1])
        for row, history in enumerate(histories):
            if len(history):
                weights = torch.tensor(decay, dtype=torch.float64) ** torch.arange(len(history) - 1, -1, -1)
                profiles[row] = (weights.float()[:, None] * table[torch.as_tensor(history)]).sum(0)
        scores = nn.functional.normalize(profiles, dim=-1) @ table.T
        scores[:, 0] = float("-inf")
        return scores

    return score


class SASRec(nn.Module):
    """Id-only SASRec: item + learned position embeddings, causal pre-LN transformer, tied output."""

    def __init__(self, n_items: int, max_len: int, dim: int, blocks: int, heads: int, dropout: float):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        self.dropout = Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, sequence: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, L] left-padded item indices -> [B, L, dim] hidden states (position t sees <= t);
        [B, 1, dim] with last_only (inference: the top block computes the last position alone)."""
        length = sequence.shape[1]
        real = sequence > 0
        hidden = self.items(sequence) * math.sqrt(self.items.embedding_dim) + self.positions.weight[:length]
        hidden = self.dropout(hidden) * real.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=sequence.device).tril()
        # Visible: earlier real items, and always oneself (padding rows would otherwise see nothing).
        allowed = causal & (real[:, None, :] | torch.eye(length, dtype=torch.bool, device=sequence.device))
        top = len(self.blocks.layers) - 1
        for i, layer in enumerate(self.blocks.layers):  # nn.TransformerEncoderLayer's forward, with the cheap dropout
            hidden, _ = encoder_layer(layer, hidden, allowed[:, None], last_only=last_only and i == top)
        return self.norm(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.items.weight.T


@dataclass
class TrainedScorer:
    """A scorer from an epoch-trained baseline, with how its training ended (the benchmark reports it)."""

    score: Scorer
    epochs_run: int
    stopped_by: str  # "epochs", "early stopping" or "time budget"

    def __call__(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        return self.score(histories)


def fit_sasrec(sequences: Sequences, items: pd.DataFrame, dim: int = 64, blocks: int = 2, heads: int = 1,
               dropout: float = 0.2, max_len: int = 200, lr: float = 2e-3, batch_size: int = 128,
               max_epochs: int = 200, patience: int = 20, seed: int = 42,
               device: str | None = None, max_seconds: float | None = None,
               precision: str = "auto") -> TrainedScorer:
    """SASRec+ (Klenitskiy & Vasilev 2023): next-item prediction at every position with full
    softmax cross-entropy over the catalogue; early stopping on validation NDCG@10, or a
    wall-clock budget (`max_seconds`, checked after each epoch). bf16 autocast where the
    hardware does it natively, exactly as PrismRec's training (tasks.model.layers.use_bf16)."""
    from tasks.model.layers import use_bf16
    from tasks.model.network import pad_left

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = use_bf16(precision, device)
    torch.manual_seed(seed)
    histories = sequences.histories(2)
    trainable = [h[-(max_len + 1):] for h in histories if len(h) >= 2]
    inputs = pad_left([h[:-1] for h in trainable], max_len)
    targets = pad_left([h[1:] for h in trainable], max_len)
    net = SASRec(sequences.n_items, max_len, dim, blocks, heads, dropout).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def score(batch_histories: Sequence[np.ndarray]) -> torch.Tensor:
        net.eval()
        hidden = net(pad_left(batch_histories, max_len).to(device), last_only=True)[:, -1]
        return net.logits(hidden).float().cpu()

    best, best_state, stale, started, stopped_by = -1.0, None, 0, time.time(), "epochs"
    for epoch in range(1, max_epochs + 1):
        net.train()
        total = 0.0
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            x, y = inputs[chosen].to(device), targets[chosen].to(device)
            keep = y > 0
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net.logits(net(x)[keep])
            loss = nn.functional.cross_entropy(logits.float(), y[keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(chosen)
        ndcg = validation_ndcg(score, sequences)
        if ndcg > best:
            best, best_state, stale = ndcg, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
        log.info("sasrec epoch %d: loss %.4f, valid NDCG@10 %.4f (best %.4f, %.0fs)", epoch,
                 total / len(inputs), ndcg, best, time.time() - started)
        if stale >= patience:
            stopped_by = "early stopping"
            break
        if max_seconds is not None and time.time() - started > max_seconds and epoch < max_epochs:
            log.info("sasrec: time budget of %.0fs spent after epoch %d", max_seconds, epoch)
            stopped_by = "time budget"
            break
    net.load_state_dict(best_state)
    return TrainedScorer(score, epoch, stopped_by)


# The gate's baselines and the benchmark's own, by the names the benchmark's rows use.
BASELINES: dict[str, FitFunction] = {**gate_baselines.BASELINES, "content": fit_content, "sasrec": fit_sasrec}

# Small grids searched on validation NDCG@10 (SASRec selects its epoch by early stopping instead).
GRIDS: dict[str, dict[str, list[Any]]] = {
    **gate_baselines.GRIDS,
    "content": {"decay": [1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.0]},
    "sasrec": {},
}


def tune(name: str, sequences: Sequences, items: pd.DataFrame, grid: dict[str, list[Any]] | None = None) -> Tuned:
    """Fit `name` for every point of its grid (or `grid`); keep the best on validation NDCG@10."""
    shared: dict[str, Any] = {}
    if name == "content":  # encode the item texts once for the whole grid
        shared["vectors"] = item_text_vectors(items.sort_values("idx")["description"].tolist())
    return search(name, BASELINES[name], GRIDS[name] if grid is None else grid, sequences, items, **shared)
