"""User tower: a time-ordered history -> K decoupled interest vectors at every position.

A small causal transformer contextualises the history (SASRec-style); then K learned
interest queries attend over the causal prefix
(self-attentive multi-interest extraction, as in ComiRec-SA). An item's score is its
match with the best interest, and that interest's attention says which past items led
to the pick.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class InterestExtractor(nn.Module):
    def __init__(self, dim: int, n_interests: int, max_len: int, n_layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_interests = n_interests
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, n_heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True,
        )
        self.context = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.interest_queries = nn.Parameter(torch.randn(n_interests, dim) / math.sqrt(dim))
        self.keys = nn.Linear(dim, dim)
        self.values = nn.Linear(dim, dim)
        self.out = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, history: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history [B, L, d] item vectors (left-padded), pad [B, L] True at padding.

        Returns interests [B, L, K, d] (the K interests after each position) and
        attention [B, L, K, L] (how much each interest at t weighs each past item j <= t).
        """
        batch, length, dim = history.shape
        positions = torch.arange(length, device=history.device)
        x = self.dropout(history * math.sqrt(dim) + self.positions(positions))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=history.device), 1)
        # Left padding: a padded position may only see itself (a fully masked row would be NaN);
        # real positions never see padding.
        diagonal = torch.eye(length, dtype=torch.bool, device=history.device)
        blocked_context = causal[None] | (pad[:, None, :] & ~diagonal[None])  # [B, L, L]
        heads = self.context.layers[0].self_attn.num_heads
        state = self.context(x, mask=blocked_context.repeat_interleave(heads, 0))
        state = self.norm(state)
        queries = self.interest_queries[None, None].expand(batch, length, -1, -1)  # [B, L, K, d]
        keys = self.keys(state)  # [B, L, d]
        logits = torch.einsum("btkd,bjd->btkj", queries, keys) / math.sqrt(dim)
        blocked = causal[None, :, None, :] | pad[:, None, None, :]
        logits = logits.masked_fill(blocked, torch.finfo(logits.dtype).min)
        attention = logits.softmax(-1)
        pooled = torch.einsum("btkj,bjd->btkd", attention, self.values(state))
        interests = self.out(pooled + state[:, :, None])
        return interests, attention
