"""User tower: a time-ordered history -> K decoupled interest vectors at every position.

Interest 0 is the *recent* interest: the state of a small causal transformer over the history
(SASRec-style), which follows what the user is watching now. Interests 1..K-1 are *long-term*
interests: each is a learned query that attends over the causal prefix (self-attentive
multi-interest extraction, ComiRec-SA), so an interest is literally a blend of past items; a
diversity penalty in training (train.interest_diversity) keeps the interests apart.

An item's score is its match with the best interest, and that interest's attention says which
past items led to the pick. The recent interest stays apart from the long-term ones: folded
into every interest, the sequence state makes them all alike, and without it validation
NDCG@10 drops by a third (see docs/experiments.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tasks.model.layers import Dropout, encoder_layer, padded_causal_mask


class InterestExtractor(nn.Module):
    """A history of item vectors -> the recent interest and K-1 long-term ones after each position."""

    def __init__(self, dim: int, n_interests: int, max_len: int, n_layers: int, n_heads: int, dropout: float,
                 ffn: int = 2):
        super().__init__()
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, n_heads, dim_feedforward=ffn * dim, dropout=dropout, batch_first=True, norm_first=True,
        )
        self.context = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        n_long = n_interests - 1
        # Unit-scale queries: distinct attention from the start (tiny ones attend uniformly, all alike).
        self.interest_queries = nn.Parameter(torch.randn(n_long, dim)) if n_long else None
        self.keys = nn.Linear(dim, dim) if n_long else None
        self.long_out = nn.Linear(dim, dim) if n_long else None
        if self.long_out is not None:
            with torch.no_grad():  # start as the plain attention-weighted mean of the attended items
                self.long_out.weight.copy_(torch.eye(dim))
                self.long_out.bias.zero_()
        self.dropout = Dropout(dropout)

    def _context(self, x: torch.Tensor, causal: torch.Tensor, pad: torch.Tensor, with_attention: bool,
                 last_attention: bool = False, last_state: bool = False):
        """Run the causal transformer (causal [L, L]: True where i may not see j; pad [B, L]: True
        at padding, which no real position sees); optionally return the last layer's self-attention
        [B, L, L]. last_attention / last_state: the last position's alone ([B, 1, L] / [B, 1, d]),
        so the top layer skips the other queries."""
        layers = self.context.layers
        if self.training:
            # Left padding: a padded position may only see itself (a fully masked row would be NaN).
            diagonal = torch.eye(len(causal), dtype=torch.bool, device=x.device)
            allowed = ~(causal[None] | (pad[:, None, :] & ~diagonal[None]))[:, None]  # [B, 1, L, L], every head
        else:  # additive, made once in the attention's dtype rather than by every layer's (~10 % of inference)
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
            allowed = padded_causal_mask(causal, pad, dtype)
        for layer in layers[:-1]:
            x, _ = encoder_layer(layer, x, allowed)
        rows = (1 if last_attention else x.shape[1]) if with_attention else 0
        return encoder_layer(layers[-1], x, allowed, last_only=last_state, weights=rows)

    def forward(self, history: torch.Tensor, pad: torch.Tensor, with_attention: bool = True, last_only: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """history [B, L, d] item vectors (left-padded), pad [B, L] True at padding.

        Returns interests [B, L, K, d] (the K interests after each position) and, when asked,
        attention [B, L, K, L] (how much each interest at t weighs each past item j <= t; for
        the recent interest, the transformer's last-layer attention averaged over heads).
        With last_only (inference) only the last position is pooled: L becomes 1 in both.
        """
        _, length, dim = history.shape
        # Positions count back from the newest item: a history padded to fewer than max_len places
        # (tasks.model.network.pad_history) gets the same positions, and so the same outputs.
        most = self.positions.num_embeddings
        positions = torch.arange(most - length, most, device=history.device)
        x = self.dropout(history * math.sqrt(dim) + self.positions(positions))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=history.device), 1)
        # At inference (last_only) the top layer computes the last position alone where nothing else
        # is read: its attention always, its state when there are no long-term interests (their keys
        # are the states at every position).
        state, recent_attention = self._context(x, causal, pad, with_attention, last_attention=last_only,
                                                last_state=last_only and self.interest_queries is None)
        state = self.norm(state)
        if last_only:
            # Everything after the transformer is per position: pool the last one alone (the last
            # position sees the whole history, so "causal" is just the padding mask).
            causal = causal[-1:]
            if recent_attention is not None:
                recent_attention = recent_attention[:, -1:]
            if self.interest_queries is None:
                state = state[:, -1:]
        if self.interest_queries is None:
            return state[:, :, None], (recent_attention[:, :, None] if with_attention else None)
        # Keys: the transformer state at each past item (what the user had watched up to it).
        logits = torch.einsum("kd,bjd->bkj", self.interest_queries, self.keys(state)) / math.sqrt(dim)  # [B, K-1, L]
        blocked = causal[None, :, None, :] | pad[:, None, None, :]  # [B, L(t), 1, L(j)]
        logits = logits[:, None].masked_fill(blocked, torch.finfo(logits.dtype).min)  # [B, L, K-1, L]
        attention = logits.softmax(-1)
        pooled = self.long_out(torch.einsum("btkj,bjd->btkd", attention, history))
        if last_only:
            state = state[:, -1:]
        interests = torch.cat([state[:, :, None], pooled], dim=2)
        if not with_attention:
            return interests, None
        return interests, torch.cat([recent_attention[:, :, None], attention], dim=2)
