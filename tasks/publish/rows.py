"""Model outputs -> the rows published in `reco` (pure, vectorised: arrays in, Arrow tables out).

No per-user Python loop: every step is a numpy gather, reshape or element-wise string
operation over the whole batch, so publishing 600k rows costs a few seconds on top of
scoring. Arrow tables go straight to `tasks.db.copy_arrow`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.titles import display_titles

if TYPE_CHECKING:  # the model (torch) loads only where a champion is scored, not where a run is refused
    from tasks.model.recommender import Recommendations

FALLBACK_INTEREST = -1  # interest_id of popularity fallback rows (users with no usable history)
FALLBACK_LABEL = "popular overall (no usable viewing history yet)"
LABEL_GENRES = 2  # genres named in an interest's label
LABEL_TITLES = 2  # most-attended titles named in an interest's label


@dataclass(frozen=True)
class Catalogue:
    """The champion's items: app id -> position (0 = unknown), titles and a genre multi-hot matrix."""

    index_of: pd.Series  # app item id -> position 1..N
    titles: np.ndarray  # [N+1] object display titles ("The Piano", as in explanations), "" at 0
    genre_names: np.ndarray  # [G] object
    genres: np.ndarray  # [N+1, G] int32, zeros at 0

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> Catalogue:
        """Build from a model's `items` frame (item_id, title, genres pipe-separated)."""
        items = items.reset_index(drop=True)
        dummies = items["genres"].fillna("").astype(str).str.get_dummies(sep="|")
        dummies = dummies.loc[:, [c for c in dummies.columns if c.strip() and c != "(no genres listed)"]]
        genres = np.vstack([np.zeros((1, dummies.shape[1]), np.int32), dummies.to_numpy(np.int32)])
        return cls(
            index_of=pd.Series(np.arange(1, len(items) + 1), index=items["item_id"].to_numpy(np.int64)),
            titles=np.concatenate([[""], display_titles(items["title"])]).astype(object),
            genre_names=np.asarray(dummies.columns, dtype=object),
            genres=genres,
        )

    def positions(self, item_ids: np.ndarray) -> np.ndarray:
        """App item ids (any shape; -1 = none) -> positions (0 for none or unknown)."""
        flat = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        found = self.index_of.reindex(flat).fillna(0).to_numpy(np.int64)
        return found.reshape(np.shape(item_ids))


def _join(parts: np.ndarray, separator: str) -> np.ndarray:
    """Join the last axis of an object array of strings, skipping empty strings."""
    out = parts[..., 0].copy()
    for position in range(1, parts.shape[-1]):  # a handful of slots, never users
        part = parts[..., position]
        glue = np.where((out != "") & (part != ""), separator, "")
        out = out + glue + part
    return out


def recommendation_table(user_ids: np.ndarray, recs: Recommendations, catalogue: Catalogue) -> pa.Table:
    """One row per (user, rank): user_id, rank, item_id, title, score, interest_id, explanation, is_new_item."""
    users, k = recs.item_ids.shape
    valid = (recs.item_ids >= 0).reshape(-1)  # -1 only at the tail of a list, so ranks stay 1..n
    item_ids = recs.item_ids.reshape(-1)[valid]
    return pa.table({
        "user_id": pa.array(np.repeat(np.asarray(user_ids, np.int64), k)[valid]),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), users)[valid]),
        "item_id": pa.array(item_ids),
        "title": pa.array(catalogue.titles[catalogue.positions(item_ids)], pa.string()),
        "score": pa.array(recs.scores.reshape(-1)[valid].astype(np.float32)),
        "interest_id": pa.array(recs.interest_ids.reshape(-1)[valid].astype(np.int32)),
        "explanation": pa.array(np.asarray(recs.explanations, dtype=object).reshape(-1)[valid], pa.string()),
        "is_new_item": pa.array(_is_new(recs).reshape(-1)[valid]),
    })


def _is_new(recs: Recommendations) -> np.ndarray:
    """[U, k] bool: the pick had no training interactions (a model without the flag has none)."""
    return np.zeros(recs.item_ids.shape, bool) if recs.is_new is None else np.asarray(recs.is_new, bool)


def interest_table(user_ids: np.ndarray, recs: Recommendations, catalogue: Catalogue, n_interests: int) -> pa.Table:
    """The interests behind each user's list: weight (share of the list) and a readable label.

    Derived from the same `recommend` call as the lists (no second forward pass). An
    interest's label names the genres dominating the items it recommended and the history
    titles it attends to most; users on the popularity fallback get one flagged row.
    """
    user_ids = np.asarray(user_ids, np.int64)
    interest = recs.interest_ids  # [U, k]
    listed = recs.item_ids >= 0
    picked = (interest[..., None] == np.arange(n_interests)) & listed[..., None]  # [U, k, K]
    counts = picked.sum(1)  # [U, K]
    weights = counts / np.maximum(listed.sum(1, keepdims=True), 1)
    # Genres of what each interest recommended: [U, K, G]
    item_genres = catalogue.genres[catalogue.positions(recs.item_ids)]  # [U, k, G]
    genre_counts = np.einsum("ukK,ukg->uKg", picked.astype(np.int32), item_genres)
    order = np.argsort(-genre_counts, axis=-1, kind="stable")[..., :LABEL_GENRES]
    top_counts = np.take_along_axis(genre_counts, order, -1)
    genre_text = _join(np.where(top_counts > 0, catalogue.genre_names[order], ""), ", ")
    # History titles the interest attends to, read at its best-ranked item: [U, K, e]
    first = picked.argmax(1)  # [U, K]
    because = np.take_along_axis(recs.because_item_ids, first[..., None], 1)  # [U, K, e]
    title_text = _join(catalogue.titles[catalogue.positions(because[..., :LABEL_TITLES])], ", ")
    label = np.where(title_text != "", genre_text + np.where(genre_text != "", " — like ", "like ") + title_text,
                     genre_text)
    if n_interests > 1:  # interest 0 follows what the user watches now; the others are long-term tastes
        label = np.where(np.arange(n_interests) == 0, "recent: ", "long-term: ").astype(object) + label

    keep = counts > 0
    fallback = (interest == FALLBACK_INTEREST).any(1) & ~keep.any(1)
    rows_user = np.concatenate([np.repeat(user_ids[:, None], n_interests, 1)[keep], user_ids[fallback]])
    rows_interest = np.concatenate([np.broadcast_to(np.arange(n_interests), keep.shape)[keep],
                                    np.full(fallback.sum(), FALLBACK_INTEREST)])
    rows_weight = np.concatenate([weights[keep], np.ones(fallback.sum())])
    rows_label = np.concatenate([label[keep], np.full(fallback.sum(), FALLBACK_LABEL, dtype=object)])
    order_rows = np.lexsort((rows_interest, rows_user))
    return pa.table({
        "user_id": pa.array(rows_user[order_rows]),
        "interest_id": pa.array(rows_interest[order_rows].astype(np.int32)),
        "weight": pa.array(rows_weight[order_rows].astype(np.float32)),
        "label": pa.array(rows_label[order_rows], pa.string()),
    })


def similar_table(item_ids: np.ndarray, similar_ids: np.ndarray, cosine: np.ndarray, catalogue: Catalogue) -> pa.Table:
    """One row per (item, rank) of the item tower's nearest neighbours."""
    n, k = similar_ids.shape
    flat_ids = similar_ids.reshape(-1).astype(np.int64)
    return pa.table({
        "item_id": pa.array(np.repeat(np.asarray(item_ids, np.int64), k)),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
        "similar_item_id": pa.array(flat_ids),
        "title": pa.array(np.repeat(catalogue.titles[catalogue.positions(item_ids)], k), pa.string()),
        "similar_title": pa.array(catalogue.titles[catalogue.positions(flat_ids)], pa.string()),
        "score": pa.array(cosine.reshape(-1).astype(np.float32)),
    })


def seen_items_recommended(histories: Sequence[np.ndarray], recs: Recommendations) -> int:
    """How many recommended items are already in the user's history (must be 0 to publish)."""
    from tasks.model.sets import history_keys, in_sorted, pair_keys

    histories = [np.asarray(h, dtype=np.int64) for h in histories]
    if not sum(len(h) for h in histories):
        return 0
    span = int(max(np.max(np.concatenate(histories)), recs.item_ids.max(), 0)) + 2
    shown = recs.item_ids >= 0
    offered = pair_keys(np.arange(len(histories))[:, None], recs.item_ids, span)[shown]
    return int(in_sorted(offered, history_keys(histories, span)).sum())
