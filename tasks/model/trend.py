"""A recent-popularity prior: what the catalogue was busy with on the day a prediction is made for.

Catalogues drift: the items many people took in the weeks before a user's next visit are likelier to be
their next than the all-time favourites, and the model sees the order of a history, not its time. With
`train.trend_prior`, each trained item's score under every interest gets

    weight * (log(1 + n) - c)

where n counts the item's interactions on the `window_days` whole days before the day of the prediction
(that day left out, so nothing of the day a target was rated counts) and c is the median of log(1 + n) over
the trained items, so the typical item keeps its score; an item with no training interactions (a new title,
placed by its text and the new-item head) gets none, neither lift nor cut. Window and weight are fitted on
validation NDCG@10 after training (tasks.training.trend_fit; weight 0 included: a catalogue that does not
drift gets none) and saved with the model (`trend.json`).

The day of a prediction, and what n counts:
- evaluation (the gate, the benchmarks): each user's last history day, and only the split's training
  interactions (held-out targets never count), so a figure is what the prior knew before the target;
- publishing: the source's own last days, counted when it runs (tasks.publish.materialize.fresh_trend);
- the MLflow pyfunc: the counts saved with the model, over the window's last days of its data.

Measured in docs/experiments.md ("A recent-popularity prior on ML-1M").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

WINDOWS = (7, 14, 30, 60)  # days
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # logit units per log(1 + interactions); scores are ~20 x cosine
FIT_USERS = 20_000  # validation users the fit ranks at most (a fixed sample beyond that)
TREND_CANDIDATES = 256  # items the candidate index adds to every list's candidates: the most lifted


@dataclass(frozen=True)
class TrendPrior:
    """A fitted prior: its window and weight, and the counts it publishes with (as of the model's data end)."""

    window_days: int
    weight: float
    as_of_day: int  # the counts cover the window's days before this one (UTC days since 1970-01-01)
    item_ids: list[int] = field(default_factory=list)  # app ids of the items with interactions in that window
    counts: list[int] = field(default_factory=list)  # ... and how many each
    fit: dict = field(default_factory=dict)  # validation NDCG@10 per (window, weight), for the record

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> TrendPrior | None:
        """The prior saved at `path`, or None where training fitted none."""
        path = Path(path)
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def counts_of(self, item_ids: np.ndarray) -> np.ndarray:
        """The saved window counts of app `item_ids` (0 for an item with none)."""
        import pandas as pd

        counts = pd.Series(np.asarray(self.counts, dtype=np.float32), index=np.asarray(self.item_ids, dtype=np.int64))
        return counts.reindex(np.asarray(item_ids, dtype=np.int64)).fillna(0).to_numpy(np.float32)


class WindowCounts:
    """Interactions per item on the days before any day, from (item index, day) pairs: one sorted array,
    and a bincount per distinct day asked for (no days x items table, which a large catalogue cannot hold)."""

    def __init__(self, items: np.ndarray, days: np.ndarray, width: int):
        order = np.argsort(days, kind="stable")
        self.items, self.days, self.width = np.asarray(items)[order], np.asarray(days)[order], width

    def before(self, as_of: np.ndarray, window: int) -> torch.Tensor:
        """[B, width] float32: each item's interactions on the `window` days before each `as_of` day."""
        unique, inverse = np.unique(np.asarray(as_of), return_inverse=True)
        low = np.searchsorted(self.days, unique - window, side="left")
        high = np.searchsorted(self.days, unique, side="left")
        rows = np.zeros((len(unique), self.width), dtype=np.float32)
        for row, (a, b) in enumerate(zip(low, high, strict=True)):
            rows[row] = np.bincount(self.items[a:b], minlength=self.width)
        return torch.from_numpy(rows[inverse])


def lift(counts: torch.Tensor, trained: torch.Tensor, weight: float) -> torch.Tensor:
    """The prior's score shift [R, N+1] from window counts [R, N+1]: weight x (log(1 + n) - the trained items'
    median), 0 for items that are not `trained` [N+1] (padding, new items)."""
    logs = torch.log1p(counts)
    centre = logs[:, trained].median(dim=1, keepdim=True).values if trained.any() else 0.0
    return torch.where(trained, (logs - centre) * weight, torch.zeros(()))


def training_counts(sequences, index_of) -> WindowCounts:
    """The split's training interactions (its held-out targets left out) by day, as indices of a model
    whose `index_of` maps app item ids to them (items it does not hold are left out)."""
    lengths = np.diff(sequences.indptr)
    position = np.arange(len(sequences.item_idx)) - np.repeat(sequences.indptr[:-1], lengths)
    train = position < np.repeat(lengths, lengths) - 2
    model_index = index_of.reindex(sequences.item_ids[sequences.item_idx[train]]).fillna(0).to_numpy(np.int64)
    known = model_index > 0
    return WindowCounts(model_index[known], sequences.days[train][known], len(index_of) + 1)
