"""The really cold slice: items nobody had rated before the user's held-out part began.

Leave-one-out on the 5-core universe has no such targets (every item there has training ratings
or, rarely, only held-out ones), so `prepare` keeps them apart (`cold_targets`): pairs of a user
and an item outside the 5-core whose first rating by anyone falls in that user's held-out part.
Each is ranked among every item the catalogue offers that user (the 5-core items and the new
items, history masked), from the user's split history, as the published lists would rank it.
A model that does not hold the item (an older champion, or a baseline: it scores by ratings and
cannot place such an item at all) ranks it last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from tasks.data.prepare import Sequences
from tasks.evaluation.metrics import ranking_metrics
from tasks.evaluation.scoring import SPLITS

SLICE = "items_new"
DESCRIPTION = "a new item (outside the 5-core, first rated by anyone in this user's held-out part): placed by its text"

# app item ids of histories, app item ids of candidates, each history's day (None: the split has none)
# -> scores [B, C] (-inf: not held)
ItemScorer = Callable[[Sequence[np.ndarray], np.ndarray, np.ndarray | None], torch.Tensor]


def cold_ranks(score: ItemScorer, sequences: Sequences, targets: pd.DataFrame, new_item_ids: np.ndarray,
               holdout: int) -> np.ndarray:
    """0-based rank of each cold target among the user's unseen catalogue (5-core + new items)."""
    candidates = np.concatenate([sequences.item_ids[1:], np.asarray(new_item_ids, dtype=np.int64)])
    targets = targets[targets["item_id"].isin(candidates)]  # a target left out of the catalogue has nothing to rank
    if targets.empty:
        return np.zeros(0, dtype=np.int64)
    histories, days = sequences.histories(holdout), sequences.as_of_days(holdout)
    users = targets["user"].to_numpy()
    app_histories = [sequences.item_ids[histories[u]] for u in users]
    scores = score(app_histories, candidates, None if days is None else days[users])
    return target_ranks(scores, app_histories, candidates, targets["item_id"].to_numpy())


def target_ranks(scores: torch.Tensor, histories: Sequence[np.ndarray], candidates: np.ndarray,
                 targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target (app item id) among the candidates its history does not hold,
    from scores [B, C] over `candidates`; ties count in the target's favour, and a target the model
    cannot place (-inf) ranks below every item it placed."""
    scores = scores.clone()
    for row, history in enumerate(histories):
        scores[row, torch.from_numpy(np.isin(candidates, history))] = float("-inf")
    column = pd.Series(np.arange(len(candidates)), index=candidates).loc[targets].to_numpy().copy()
    mine = scores[torch.arange(len(column)), torch.from_numpy(column)]
    listed = torch.isfinite(scores).sum(1)
    ranks = torch.where(torch.isfinite(mine), (scores > mine[:, None]).sum(1), listed)
    return ranks.numpy().astype(np.int64)


def cold_metrics(score: ItemScorer, sequences: Sequences, targets: pd.DataFrame,
                 new_item_ids: np.ndarray) -> dict[str, dict[str, float]]:
    """{split: {"users": pairs, ranking metrics, "median_rank"}} of the really cold targets."""
    out = {}
    for split, holdout in SPLITS.items():
        ranks = cold_ranks(score, sequences, targets, new_item_ids, holdout)
        out[split] = {"users": len(ranks), **ranking_metrics(ranks)}
        if len(ranks):
            out[split]["median_rank"] = float(np.median(ranks) + 1)  # 1 = top
    return out
