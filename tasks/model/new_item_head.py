"""The new-item head: how a new item's score from its text should compete with scores backed by ratings.

A new item's score (its text and the id row its text predicts, tasks.model.new_item_ids) says which
users it suits, but not how many will watch it, nor how it compares with a trained item's score. The
head re-scores new items only, from that score and what the catalogue knows on day one:

- how recent a release the item is: years behind the newest trained item (`year`), in buckets;
- how many interactions it gathered while in the catalogue (outside the 5-core: 1-4 say "available
  and hardly watched", 0 says "just added");
- the user's taste for recent releases: the share of their latest interactions that were recent
  releases, alone and with a recent-release item.

new score = scale * score + bias + age and interaction weights + share * (u0 + u1 * recent item).

It is fitted by softmax over the whole catalogue (trained items' scores fixed) on the cases of a
rehearsal (tasks.training.rehearsal): a model trained on the data before the last titles to appear,
ranking the first interactions with those titles and with trained ones after them, each kind weighted
alike. Starts as the identity; `scale` is kept positive, so the head never reorders one user's new
items among themselves by score alone. Measured on a time split of ML-1M (docs/experiments.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

RECENT_YEARS = 1  # an item at most this many years behind the newest trained item is a recent release
USER_WINDOW = 20  # the user's latest interactions the recent-release share is taken over
AGE_BUCKETS = ((0, 0), (1, 1), (2, 3), (4, 6))  # years behind; older or no year: the baseline
INTERACTION_BUCKETS = (0, 1, 2)  # a new item's interactions so far; more: the baseline
STEPS, LEARNING_RATE = 300, 0.05
MIN_SCALE = 1e-3


def item_ages(years: pd.Series, trained: np.ndarray) -> np.ndarray:
    """Years each item is behind the newest trained item (NaN: no year); `trained` marks trained items."""
    values = pd.to_numeric(years, errors="coerce").astype("float64").to_numpy()
    newest = np.nanmax(values[trained]) if np.isfinite(values[trained]).any() else np.nan
    return np.clip(newest - values, 0, None)


def item_features(ages: np.ndarray, interactions: np.ndarray) -> torch.Tensor:
    """[items, F] one-hot age and interaction buckets (the head reads them for new items only)."""
    ages, interactions = np.asarray(ages, dtype=np.float64), np.asarray(interactions, dtype=np.float64)
    columns = [(ages >= low) & (ages <= high) for low, high in AGE_BUCKETS]
    columns += [interactions == count for count in INTERACTION_BUCKETS]
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))


def recent_share(padded: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """[B] share of the latest USER_WINDOW items of left-padded histories [B, L] (0 = padding) that are
    recent releases (`recent` [rows] bool by item row)."""
    latest = padded[:, -USER_WINDOW:]
    held = (latest > 0).sum(1)
    return (recent[latest] & (latest > 0)).sum(1).float() / held.clamp(min=1)


class NewItemHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.item = torch.nn.Parameter(torch.zeros(len(AGE_BUCKETS) + len(INTERACTION_BUCKETS)))
        self.user = torch.nn.Parameter(torch.zeros(2))

    def lift(self, scores: torch.Tensor, features: torch.Tensor, recent: torch.Tensor,
             share: torch.Tensor) -> torch.Tensor:
        """New items' scores [B, ..., M] (features [M, F] or [B, M, F], recent [M] or [B, M], share [B])."""
        offset = features @ self.item  # [M] or [B, M]
        per_user = share.view(-1, *([1] * (scores.dim() - 1)))
        if offset.dim() == 2 and scores.dim() == 3:  # [B, M] beside [B, K, M]
            offset, recent = offset[:, None], recent[:, None]
        return (self.scale.clamp(min=MIN_SCALE) * scores + self.bias + offset
                + per_user * (self.user[0] + self.user[1] * recent.to(scores.dtype)))

    @torch.no_grad()
    def to_dict(self) -> dict:
        names = [f"age_{low}-{high}" for low, high in AGE_BUCKETS] + [f"interactions_{c}" for c in INTERACTION_BUCKETS]
        return {"scale": float(self.scale.clamp(min=MIN_SCALE)), "bias": float(self.bias),
                "items": dict(zip(names, map(float, self.item), strict=True)),
                "user_recent_share": float(self.user[0]), "user_recent_share_x_recent_item": float(self.user[1]),
                "recent_years": RECENT_YEARS, "user_window": USER_WINDOW}

    @classmethod
    def from_dict(cls, weights: dict) -> NewItemHead:
        head = cls()
        names = list(head.to_dict()["items"])
        missing = set(names) - set(weights.get("items", {}))
        if missing or weights.get("recent_years") != RECENT_YEARS or weights.get("user_window") != USER_WINDOW:
            raise ValueError(f"a new-item head of another layout (missing {sorted(missing)}, recent_years "
                             f"{weights.get('recent_years')}, user_window {weights.get('user_window')}): retrain the model")
        with torch.no_grad():
            head.scale.fill_(weights["scale"])
            head.bias.fill_(weights["bias"])
            head.item.copy_(torch.tensor([weights["items"][name] for name in names]))
            head.user.copy_(torch.tensor([weights["user_recent_share"], weights["user_recent_share_x_recent_item"]]))
        return head.requires_grad_(False)


@dataclass
class Cases:
    """One kind of rehearsal case, reduced to what the head can change. The head re-scores new items
    alone, so each case keeps its new candidates' best-interest scores [B, M] and history mask [B, M]
    (True: seen, never a target), and folds every trained candidate into one number, `trained` [B]: the
    log-sum-exp of the unseen trained candidates' scores. `targets` [B] is the target's column among
    the new candidates, or -1 for a trained target, whose score is `target_scores` [B]; `share` [B] the
    users' recent shares. The softmax over the whole catalogue is exactly the one over these, in
    memory of the new candidates alone (tasks.training.rehearsal builds them in batches)."""

    scores: torch.Tensor
    seen: torch.Tensor
    trained: torch.Tensor
    targets: torch.Tensor
    target_scores: torch.Tensor
    share: torch.Tensor

    @classmethod
    def of(cls, scores: torch.Tensor, seen: torch.Tensor, targets: torch.Tensor, share: torch.Tensor,
           new: torch.Tensor) -> Cases:
        """Cases of scores and history masks [B, C] over all candidates, targets [B] (candidate columns);
        `new` [C] marks the candidates the head re-scores."""
        columns = torch.nonzero(new).flatten()
        position = torch.full((len(new),), -1, dtype=torch.long)
        position[columns] = torch.arange(len(columns))
        trained = scores[:, ~new].masked_fill(seen[:, ~new], float("-inf")).logsumexp(1)
        return cls(scores[:, columns], seen[:, columns], trained, position[targets],
                   scores.gather(1, targets[:, None])[:, 0], share)

    @classmethod
    def join(cls, parts: Sequence[Cases]) -> Cases:
        return cls(*(torch.cat([getattr(part, name) for part in parts]) for name in cls.__dataclass_fields__))

    def loss(self, head: NewItemHead, features: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the targets over the whole catalogue with the new candidates lifted
        (`features` [M, F], `recent` [M] theirs)."""
        lifted = head.lift(self.scores, features, recent, self.share).masked_fill(self.seen, float("-inf"))
        normaliser = torch.cat([self.trained[:, None], lifted], 1).logsumexp(1)
        picked = lifted.gather(1, self.targets.clamp(min=0)[:, None])[:, 0]
        return (normaliser - torch.where(self.targets >= 0, picked, self.target_scores)).mean()


def fit_head(kinds: Sequence[Cases], features: torch.Tensor, recent: torch.Tensor) -> NewItemHead:
    """The head maximising the likelihood of each kind's targets (kinds weighted alike) over all
    candidates; `features` [M, F] and `recent` [M] are those of the new candidates the cases hold."""
    head = NewItemHead()
    kinds = [kind for kind in kinds if len(kind.targets)]
    if not kinds or not len(features):
        return head.requires_grad_(False)
    optimiser = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    with torch.enable_grad():
        for _ in range(STEPS):
            loss = sum(kind.loss(head, features, recent) for kind in kinds) / len(kinds)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return head.requires_grad_(False)


def save_head(head: NewItemHead, path: Path, facts: dict) -> None:
    path.write_text(json.dumps({**head.to_dict(), "fitted_on": facts}, indent=2))


def load_head(path: Path) -> NewItemHead | None:
    return NewItemHead.from_dict(json.loads(path.read_text())) if path.exists() else None
