"""Inference: a trained PrismRec model folder -> scores, top-K lists, interests, explanations.

Used by evaluation (candidate and champion on the same split), by the MLflow pyfunc and by
materialization. Works in app item ids, so a model can score a split whose item indexing
differs from the one it was trained on (items it does not hold score -inf). Items with no
training interactions (new titles appended after training, tasks.training.new_items) are scored
by their text (and the id row the model's text-to-id map predicts from it, tasks.model.new_item_ids)
and flagged new; a list takes at most `max_new_items` of them, and items
retired from the catalogue (`restrict_to`) are never listed. Everything is
batched tensor work, explanations included (vectorised string operations): nothing loops
over users.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from tasks.errors import RegistryError
from tasks.layout import MODEL_FORMAT, ModelFiles
from tasks.model.network import SCORE_MEMORY_MB, ModelSpec, PrismRecNet, pad_history, rows_within
from tasks.model.new_item_head import (
    RECENT_YEARS,
    NewItemHead,
    item_ages,
    item_features,
    load_head,
    recent_share,
)
from tasks.model.new_item_ids import predict_id_rows
from tasks.model.sets import history_keys, in_sorted, pair_keys
from tasks.model.transitions import (
    TRANSITION_CANDIDATES,
    TransitionPrior,
    TransitionTable,
    successor_table,
)
from tasks.model.trend import TREND_CANDIDATES, TrendPrior, lift, training_counts
from tasks.titles import display_titles

log = logging.getLogger(__name__)

POPULARITY_FALLBACK = -1  # interest_id of items recommended by popularity, not by an interest
FALLBACK_EXPLANATION = "popular overall (no viewing history yet)"
# A pick placed by its text (never rated in training): "new: like A, B you watched".
NEW_ITEM_PREFIX, NEW_ITEM_SUFFIX = "new: like ", " you watched"
NEW_ITEM_UNEXPLAINED = "new: close to what you watch"  # ... when no watched item resembles it
BALANCED_DEPTH = 50  # list positions that an interest balance re-orders when scoring for metrics
# With a new-item head and at most this many new items, every new item is a candidate of every list
# the candidate index ranks (the index retrieves by the score before the head); more are left to the index.
HEAD_CANDIDATES = 4096


def balance_interests(scores: torch.Tensor, items: torch.Tensor, penalty: float, depth: int):
    """ComiRec's controllable aggregation (Cen et al., KDD 2020), solved greedily as the paper does.

    `scores` [B, K, C] are each interest's own top-C scores (logits), `items` [B, K, C] their
    item indices. The list S is built to maximise sum of scores + penalty x (pairs of picks from
    different interests), one pick at a time: each is the (item, interest) pair with the highest score minus
    `penalty` x the picks that interest already made, and the item leaves every interest's
    candidates. Penalty 0 is the plain best-interest ranking; larger shares the list out more.
    Scores are logits of the model's softmax, so a penalty p lets an item that is e^p times less
    likely than the best one in when its interest has one pick fewer. C >= depth makes it exact
    (an interest cannot pick past its own top-`depth`).

    Returns (scores, item indices, interest ids), each [B, depth]; -inf score (index 0) where the
    candidates run out.
    """
    users, k, c = scores.shape
    flat_scores = scores.reshape(users, k * c).clone()
    flat_items = items.reshape(users, k * c)
    owner = torch.arange(k).repeat_interleave(c).expand(users, -1)
    picks = torch.zeros(users, k, dtype=scores.dtype)
    rows = torch.arange(users)
    out_scores = torch.full((users, depth), float("-inf"), dtype=scores.dtype)
    out_items = torch.zeros((users, depth), dtype=torch.long)
    out_interest = torch.zeros((users, depth), dtype=torch.long)
    for position in range(depth):
        gain = flat_scores - penalty * picks.gather(1, owner)
        best = gain.argmax(1)
        score = flat_scores[rows, best]
        found = torch.isfinite(score)
        item, interest = flat_items[rows, best], owner[rows, best]
        out_scores[:, position] = score
        out_items[:, position] = torch.where(found, item, 0)
        out_interest[:, position] = interest
        picks[rows, interest] += found.to(picks.dtype)
        flat_scores.masked_fill_(flat_items == item[:, None], float("-inf"))
    return out_scores, out_items, out_interest


@dataclass
class Recommendations:
    item_ids: np.ndarray  # [U, k] app item ids, best first (-1 where fewer than k candidates)
    scores: np.ndarray  # [U, k]
    interest_ids: np.ndarray  # [U, k] which interest picked each item (-1: popularity fallback)
    because_item_ids: np.ndarray  # [U, k, e] history items behind each pick (attended by its interest and similar to it; -1: none)
    explanations: np.ndarray  # [U, k] "because you watched A, B" ("new: like A, B you watched" for a new item)
    is_new: np.ndarray | None = None  # [U, k] bool: the item had no training interactions (scored by its text)
    exact_rescored_users: int = 0  # with a candidate index: users too short of candidates, ranked exactly


class Recommender:
    def __init__(self, net: PrismRecNet, item_text_vectors: torch.Tensor, items: pd.DataFrame, bf16: bool = False,
                 id_from_text: torch.Tensor | None = None):
        self.net = net.eval()
        # The user tower under bf16 autocast (scores stay float32 cosines): the gate's evaluation and
        # publishing both rank through a Recommender, so the lists the gate measured are the ones published.
        self.bf16 = bf16
        self.spec = net.spec
        with torch.no_grad():
            self.item_vectors = net.item_vectors(item_text_vectors)
            trained = items["train_interactions"].to_numpy() if "train_interactions" in items else np.ones(len(items))
            # No training interactions: a title added after training or rated only in the held-out part.
            self.is_new = torch.as_tensor(np.concatenate([[False], trained == 0]))
            if net.id_embedding is not None:
                # An item never seen in training only ever got softmax-negative gradient on its id
                # row, which pushes it down; such a cold item is scored by its text alone (items
                # appended after training have no id row at all).
                rows = len(net.id_embedding.weight)
                cold = self.is_new[:rows]
                self.item_vectors[:rows][cold] -= net.id_embedding.weight[cold]
            self.new_rows = torch.nonzero(self.is_new).flatten()
            if id_from_text is not None:
                # ... and given the model's map from text to id rows (tasks.model.new_item_ids), with
                # the id row its text predicts.
                self.item_vectors[self.new_rows] += predict_id_rows(item_text_vectors[self.new_rows].float(),
                                                                    id_from_text)
            self._directions()
        # The new-item head's inputs (tasks.model.new_item_head), where the model's item table has years;
        # `head` is set by `load` when training fitted one.
        self.head: NewItemHead | None = None
        self.item_ids = items["item_id"].to_numpy()  # position i -> index i + 1
        self.items = items.reset_index(drop=True)
        interactions = items["interactions"] if "interactions" in items else pd.Series(np.nan, index=items.index)
        self._head_inputs(pd.to_numeric(interactions, errors="coerce").astype("float64").to_numpy())
        self.titles = np.concatenate([[""], display_titles(items["title"])]).astype(object)
        self.index_of = pd.Series(np.arange(1, len(self.item_ids) + 1), index=self.item_ids)
        self._id_order = np.argsort(self.item_ids, kind="stable")  # for histories_to_indices
        self._sorted_ids = self.item_ids[self._id_order].astype(np.int64)
        # Users with no known history get the most popular items (flagged with interest -1).
        counts = items["train_interactions"].to_numpy() if "train_interactions" in items else np.zeros(len(items))
        self.popularity = torch.as_tensor(np.concatenate([[-np.inf], counts]), dtype=torch.float32)
        # Items that may be listed: all, until `restrict_to` names the live catalogue.
        self.available = torch.ones(len(self.item_ids) + 1, dtype=torch.bool)
        self.available[0] = False
        # ComiRec's controllable aggregation strength (0: best interest alone); saved with the model,
        # so evaluation, the pyfunc and the published tables list the same items.
        self.interest_balance = float(net.spec.interest_balance)
        # The recent-popularity prior (tasks.model.trend), when training fitted one: its shift of every
        # score [1, N+1] as of the model's data end (publishing, the pyfunc), or per user from a split's own
        # training interactions once `date_by` gave one (evaluation: then every call passes `days`).
        self.trend: TrendPrior | None = None
        self._trend_row: torch.Tensor | None = None
        self._split_counts = None
        # The transition prior (tasks.model.transitions), when training fitted one: its successor table as
        # saved (publishing, the pyfunc), or from a split's training histories once `date_by` gave one.
        self.transitions: TransitionPrior | None = None
        self._transition_table: TransitionTable | None = None
        self.model_dir: Path | None = None  # the model folder it was loaded from (Recommender.load)
        self.text_vectors: torch.Tensor | None = None  # [N+1, text_dim], kept only when asked (Recommender.load)

    @property
    def trained(self) -> torch.Tensor:
        """[N+1] bool: the items with training interactions (not padding, not new)."""
        trained = ~self.is_new
        trained[0] = False
        return trained

    def use_trend(self, prior: TrendPrior | None) -> None:
        """Score with a fitted recent-popularity prior (None or weight 0: without one), as of the counts it
        was saved with."""
        self.trend = prior if prior is not None and prior.weight > 0 else None
        self._split_counts = None
        self._trend_row = None
        if self.trend is not None:
            counts = torch.from_numpy(np.concatenate([[0.0], self.trend.counts_of(self.item_ids)]).astype(np.float32))
            self._trend_row = lift(counts[None], self.trained, self.trend.weight)

    def use_transitions(self, prior: TransitionPrior | None) -> None:
        """Score with a fitted transition prior (None or weight 0: without one), with the successor table it holds."""
        self.transitions = prior if prior is not None and prior.weight > 0 else None
        self._transition_table = TransitionTable(self.transitions, self.index_of) if self.transitions else None

    def transition_lift(self, indexed: Sequence[np.ndarray]) -> torch.Tensor | None:
        """The transition prior's shift [B, N+1] for histories in model indices, None without a prior."""
        if self._transition_table is None:
            return None
        return self._transition_table.lift(indexed, self.n_items + 1)

    def date_by(self, sequences) -> None:
        """Score `sequences`' users as of their own last history day, from that split's training interactions
        (tasks.model.trend, tasks.model.transitions): every scoring call must then pass each history's day. A
        split without days is scored without the trend prior (it cannot say what was recent), with a warning."""
        if self.transitions is not None:
            self.use_transitions(self.transitions.with_table(successor_table(sequences.successions(2),
                                                                             sequences.item_ids)))
        if self.trend is None:
            return
        if sequences.days is None:
            log.warning(
                "this split was prepared without interaction days: scoring it without the model's trend prior "
                "(run prepare again to include it)")
            self.use_trend(None)
            return
        self._split_counts = training_counts(sequences, self.index_of)

    def trend_shift(self, days: np.ndarray | None) -> torch.Tensor | None:
        """The prior's shift of every item's score: [B, N+1] for the histories' `days` (a split's, date_by),
        [1, N+1] as of the counts `use_trend` was given (publishing), None without a prior."""
        if self.trend is None:
            return None
        if self._split_counts is None:
            return self._trend_row
        if days is None:
            raise ValueError("this Recommender scores a split (date_by): pass each history's day")
        return lift(self._split_counts.before(days, self.trend.window_days), self.trained, self.trend.weight)

    def _directions(self) -> None:
        """What the item vectors imply. They share a large common direction (every cosine is ~0.9); centred,
        their cosines say which items resemble each other (explanations, similar items); unit length, they
        are what an interest's score is the dot product with (candidate retrieval rescoring)."""
        real = self.item_vectors[1:]
        self.item_directions = torch.nn.functional.normalize(self.item_vectors - real.mean(0), dim=-1)
        self.unit_items = torch.nn.functional.normalize(self.item_vectors, dim=-1)

    def _head_inputs(self, interactions: np.ndarray) -> None:
        """The head's item inputs: each item's age behind the newest trained item (recent or not) and its
        `interactions` so far [N] (NaN: unknown)."""
        years = self.items["year"] if "year" in self.items else pd.Series(np.nan, index=self.items.index)
        ages = np.concatenate([[np.nan], item_ages(years, ~self.is_new[1:].numpy())])
        self.item_recent = torch.from_numpy(np.nan_to_num(ages, nan=np.inf) <= RECENT_YEARS)
        self.item_recent[0] = False
        self.item_features = item_features(ages, np.concatenate([[np.nan], interactions]))

    def as_of(self, trained_ids: np.ndarray, interactions: np.ndarray, id_penalty: float | None) -> Recommender:
        """This model as day one at an earlier cut-off would have scored (in place; returns it): only the
        trained items among `trained_ids` (app ids: that day's training universe) stay trained; every
        other item is new, its vector its projected text plus the id row that a map fitted on the items
        still trained predicts (tasks.model.new_item_ids; `id_penalty` None: text alone), its head inputs
        that day's (`interactions` [N] so far). Needs the text vectors (`load(keep_text_vectors=True)`).
        The new-item head's rehearsal on the run's own model (tasks.training.rehearsal)."""
        from tasks.model.new_item_ids import fit_id_from_text

        if self.text_vectors is None:
            raise ValueError("as_of needs the model's text vectors: load it with keep_text_vectors=True")
        trained = np.isin(self.item_ids, trained_ids) & ~self.is_new[1:].numpy()
        if not trained.any():
            raise ValueError("none of the model's trained items is among trained_ids: nothing to place new items by")
        rows = torch.from_numpy(np.flatnonzero(trained) + 1)
        self.is_new = torch.as_tensor(np.concatenate([[False], ~trained]))
        self.new_rows = torch.nonzero(self.is_new).flatten()
        with torch.no_grad():
            text = self.text_vectors.float()
            placed = self.net.text_projection(text[self.new_rows].to(self.item_vectors.dtype))
            if self.net.id_embedding is not None and id_penalty is not None:
                weights = fit_id_from_text(text[rows], self.net.id_embedding.weight[rows].float(), id_penalty)
                placed += predict_id_rows(text[self.new_rows], weights).to(placed.dtype)
            self.item_vectors[self.new_rows] = placed
            self._directions()
        self._head_inputs(np.asarray(interactions, dtype=np.float64))
        # A rehearsal of day one: counts and successors as of the model's data end would not be that day's.
        self.use_trend(None)
        self.use_transitions(None)
        self.popularity = torch.as_tensor(np.concatenate([[-np.inf], np.where(trained, interactions, 0)]),
                                          dtype=torch.float32)
        return self

    @classmethod
    def load(cls, model_dir: Path, precision: str = "auto", keep_text_vectors: bool = False) -> Recommender:
        """The model a training run left in `model_dir` (tasks.layout.ModelFiles), ready to score.
        `precision` is train.precision's: "auto" runs the user tower in bf16 where the CPU does bf16
        natively (as training's validation does), "bf16" or "fp32" force one. `keep_text_vectors` keeps
        the items' pooled text vectors (`text_vectors`, for `as_of`; scoring does not need them)."""
        from tasks.model.layers import use_bf16

        files = ModelFiles(Path(model_dir))
        if not files.checkpoint.exists():
            raise RegistryError(f"{files.root} holds no {files.checkpoint.name}; it is not a PrismRec model folder")
        checkpoint = torch.load(files.checkpoint, map_location="cpu", weights_only=False)
        if (written := checkpoint.get("format", 1)) > MODEL_FORMAT:
            raise RegistryError(
                f"{files.root} holds a model of format {written}, written by a newer PrismRec; this version reads "
                f"formats up to {MODEL_FORMAT} and would score it with parts left out. Load it with the PrismRec "
                "version that trained it (upgrade the image of the workers that publish and serve), or move the "
                "champion alias back to a model this version trained (`prismrec rollback`).")
        net = PrismRecNet(ModelSpec.from_dict(checkpoint["spec"]), encoder=None)
        # The text tower's layers are left out: the checkpoint's item text vectors replace them.
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("text_tower.")}
        net.load_state_dict(state)
        items = pd.read_parquet(files.items).sort_values("idx")
        recommender = cls(net, checkpoint["item_text_vectors"], items, bf16=use_bf16(precision, torch.device("cpu")),
                          id_from_text=checkpoint.get("id_from_text"))
        recommender.model_dir = files.root  # where a scoring process loads the same model from
        recommender.text_vectors = checkpoint["item_text_vectors"] if keep_text_vectors else None
        recommender.head = load_head(files.new_item_head)
        recommender.use_trend(TrendPrior.load(files.trend))
        recommender.use_transitions(TransitionPrior.load(files.transitions))
        return recommender

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def users_per_batch(self, memory_mb: float, most: int) -> int:
        """Users whose score tensor [users, interests, items + 1] of float32 fits in memory_mb (at
        least 1, at most `most`): scoring holds one such tensor and a copy of it at a time."""
        return rows_within(memory_mb, self.spec.n_interests * (self.n_items + 1), most)

    def restrict_to(self, catalogue_item_ids: np.ndarray) -> int:
        """List only items of the live catalogue (app item ids); items retired since training
        leave every list. Returns how many of the model's items were retired."""
        live = np.isin(self.item_ids, np.asarray(catalogue_item_ids, dtype=np.int64))
        self.available = torch.as_tensor(np.concatenate([[False], live]))
        return int((~live).sum())

    def to_indices(self, history: Sequence[int]) -> np.ndarray:
        """App item ids -> this model's indices, dropping items it does not know."""
        return self.histories_to_indices([history])[0]

    def histories_to_indices(self, histories: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """to_indices for many histories at once: one sorted lookup for all their items."""
        if not len(histories):
            return []
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        where = np.searchsorted(self._sorted_ids, flat).clip(max=len(self._sorted_ids) - 1)
        indices = np.where(self._sorted_ids[where] == flat, self._id_order[where] + 1, 0)
        return [part[part > 0] for part in np.split(indices, np.cumsum(lengths)[:-1])]

    def score_indices(self, histories: Sequence[np.ndarray], with_attention: bool = True,
                      days: np.ndarray | None = None, trend: bool = True):
        """Histories in model indices -> (every item's score under every interest [B, K, N+1],
        attention [B, K, L] (None without with_attention: scores alone), padded histories [B, L]).
        `days`: each history's day, for the trend prior of a split (date_by); `trend` False leaves it and the
        transition prior out."""
        padded = pad_history(histories, self.spec.max_history)
        per_interest, _, attention = self.net.interest_scores(padded, self.item_vectors, with_attention, self.bf16)
        if self.head is not None and len(self.new_rows):
            rows = self.new_rows
            per_interest[:, :, rows] = self.head.lift(per_interest[:, :, rows], self.item_features[rows],
                                                      self.item_recent[rows], recent_share(padded, self.item_recent))
        if trend and (shift := self.trend_shift(days)) is not None:
            per_interest += shift[:, None, :]
        if trend and (moved := self.transition_lift(histories)) is not None:
            per_interest += moved[:, None, :]
        return per_interest, attention, padded

    def interest_scores(self, histories: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """App-id histories -> (every item's score under every interest [B, K, N+1] without the priors,
        the histories in model indices): the user tower's part of `score_items`, for `split_scores`."""
        indexed = self.histories_to_indices(histories)
        return self.score_indices(indexed, with_attention=False, trend=False)[0], indexed

    def score_items(self, histories: Sequence[Sequence[int]], item_ids: np.ndarray,
                    depth: int = BALANCED_DEPTH, days: np.ndarray | None = None) -> torch.Tensor:
        """Scores [B, len(item_ids)] for arbitrary app item ids that rank items as the model's lists
        do; unknown items get -inf. Each item scores under its best interest; with an interest
        balance, the first `depth` unseen items are re-ordered as `recommend` lists them and lifted
        above the rest (which keep their order below), so rank metrics measure the published lists.
        `days`: each history's day (a split's, date_by)."""
        per_interest, indexed = self.interest_scores(histories)
        return self.split_scores(per_interest, indexed, item_ids, self.trend_shift(days), depth)

    def split_scores(self, per_interest: torch.Tensor, indexed: list[np.ndarray], item_ids: np.ndarray,
                     shift: torch.Tensor | None = None, depth: int = BALANCED_DEPTH) -> torch.Tensor:
        """score_items from `interest_scores`' output (changed in place) and a trend `shift` [B or 1, N+1]; the
        transition prior, where the model has one, from the histories `indexed`."""
        if shift is not None:
            per_interest += shift[:, None, :]
        if (moved := self.transition_lift(indexed)) is not None:
            per_interest += moved[:, None, :]
        columns = self.index_of.reindex(item_ids).fillna(0).to_numpy(dtype=np.int64)
        scores = per_interest.amax(1)
        if self.interest_balance > 0 and per_interest.shape[1] > 1:  # one interest: balancing changes no order
            # Only the asked-for items compete for the balanced positions (a champion's new items
            # outside the split's universe would otherwise take places no metric can see).
            outside = torch.ones(per_interest.shape[-1], dtype=torch.bool)
            outside[torch.from_numpy(columns.copy())] = False
            per_interest[:, :, outside] = float("-inf")
            top_scores, top_idx, *_ = self._ranked(per_interest, indexed, depth, max_new=None, everything=True)
            listed = torch.isfinite(top_scores)
            floor = scores.amax(1, keepdim=True)
            order = torch.arange(top_idx.shape[1], 0, -1, dtype=scores.dtype).expand_as(top_scores)
            scores.scatter_(1, top_idx, torch.where(listed, floor + order, scores.gather(1, top_idx)))
        out = scores[:, torch.tensor(columns)]
        out[:, torch.as_tensor(columns == 0)] = float("-inf")
        return out

    def _app_ids(self, indices: torch.Tensor) -> np.ndarray:
        """Model indices (0 = none) -> app item ids (-1 = none)."""
        idx = indices.numpy()
        return np.where(idx > 0, self.item_ids[np.clip(idx - 1, 0, None)], -1)

    def _ranked(self, per_interest: torch.Tensor, indexed: Sequence[np.ndarray], top_k: int,
                balance: float | None = None, max_new: int | None = None, everything: bool = False,
                columns: torch.Tensor | None = None):
        """Top-k unseen items per user from per-interest scores [B, K, N+1] (popularity for empty
        histories): (scores, item indices, the interest behind each), each [B, k]. `balance`
        overrides the model's interest balance; `max_new` caps the new items a list may take (the
        best-scoring ones stay); `everything` ranks retired items too (metrics on a split).
        With `columns` [B, M] the scores [B, K, M] are of those items alone (retrieved candidates;
        index 0: none). Masks the seen, retired and capped items in `per_interest` in place."""
        balance = self.interest_balance if balance is None else balance
        lengths = np.array([len(h) for h in indexed])
        if columns is not None:
            self._mask_candidates(per_interest, indexed, lengths, columns, max_new)
        else:
            # Only the unlistable columns are written (index 0 and retired items): a boolean mask over
            # [B, K, N+1] would pass over the whole score tensor.
            unlisted = torch.tensor([0]) if everything else torch.nonzero(~self.available).flatten()
            per_interest.index_fill_(2, unlisted, float("-inf"))
            if lengths.sum():
                rows = torch.as_tensor(np.repeat(np.arange(len(indexed)), lengths))
                per_interest[rows, :, torch.as_tensor(np.concatenate(indexed))] = float("-inf")
            if max_new is not None:
                self._cap_new(per_interest, max_new)
        k = min(top_k, self.n_items, per_interest.shape[2])
        if balance > 0 and per_interest.shape[1] > 1:
            scores, positions = per_interest.topk(k, dim=2)
            items = positions if columns is None else columns.gather(1, positions.flatten(1)).view_as(positions)
            top_scores, top_idx, interest = balance_interests(scores, items, balance, k)
        else:
            scores, best = per_interest.max(1)
            top_scores, positions = scores.topk(k, dim=1)
            interest = best.gather(1, positions)
            top_idx = positions if columns is None else columns.gather(1, positions)
        cold = torch.as_tensor(lengths == 0)
        if cold.any():
            popularity = self.popularity if everything else self.popularity.masked_fill(~self.available, float("-inf"))
            top_scores[cold], top_idx[cold] = popularity.topk(k)
            interest[cold] = POPULARITY_FALLBACK
        return top_scores, top_idx, interest

    def _mask_candidates(self, per_interest: torch.Tensor, indexed: Sequence[np.ndarray], lengths: np.ndarray,
                         columns: torch.Tensor, max_new: int | None) -> None:
        """_ranked's masking for scores [B, K, M] of candidate items `columns` [B, M]: none (0),
        retired and seen items out, then at most `max_new` new items, each user's best."""
        out = (columns == 0) | ~self.available[columns]
        if lengths.sum():
            width = self.n_items + 1
            keys = pair_keys(np.arange(len(indexed))[:, None], columns.numpy(), width)
            out |= torch.from_numpy(in_sorted(keys, history_keys(indexed, width)))
        per_interest.masked_fill_(out[:, None], float("-inf"))
        if max_new is None:
            return
        new = self.is_new[columns] & ~out
        if max_new > 0:
            best = per_interest.amax(1).masked_fill(~new, float("-inf"))
            new.scatter_(1, best.topk(min(max_new, best.shape[1]), dim=1).indices, False)  # the best stay
        per_interest.masked_fill_(new[:, None], float("-inf"))

    def candidate_index(self, lists: int | None = None, probes: int = 32):
        """An inverted-file index over the listable items (tasks.model.retrieval) for `recommend(index=)`;
        build it after `restrict_to`."""
        from tasks.model.retrieval import ItemIndex

        return ItemIndex(self.unit_items, self.available, lists, probes)

    def _top_candidates(self, indexed: list[np.ndarray], top_k: int, balance: float | None, max_new: int | None,
                        index, candidates: int):
        """_top from retrieved candidates: each interest's `candidates` best items by the index,
        their union ranked with exact scores. Users left with fewer than top_k listable candidates
        (most of them already seen) are ranked against the whole catalogue instead."""
        padded = pad_history(indexed, self.spec.max_history)
        last, attention = self.net.last_interests(padded, self.item_vectors, bf16=self.bf16)
        queries = self.net.query_vectors(last)  # [B, K, d]: score = query . unit item
        users, _, dim = queries.shape
        found = index.search(queries.reshape(-1, dim), max(candidates, top_k)).view(users, -1)
        lifted = self.head is not None and len(self.new_rows) > 0
        if lifted and len(self.new_rows) <= HEAD_CANDIDATES:
            # The head moves new items by more than their retrieval score says: every one is a candidate.
            found = torch.cat([found, self.new_rows.expand(users, -1)], dim=1)
        shift = self.trend_shift(None)  # publishing: the same for everyone, as of its counts
        if shift is not None:
            # ... and the trend prior lifts the catalogue's busiest items: the most lifted are candidates too.
            busiest = shift[0].masked_fill(~self.available, float("-inf")).topk(min(TREND_CANDIDATES, self.n_items))
            found = torch.cat([found, busiest.indices[torch.isfinite(busiest.values)].expand(users, -1)], dim=1)
        following = self.transition_lift(indexed)
        if following is not None:
            # ... and so does the transition prior, user by user: each list's most lifted are candidates too.
            lifted_most = following.topk(min(TRANSITION_CANDIDATES, self.n_items), dim=1)
            found = torch.cat([found, lifted_most.indices.masked_fill(lifted_most.values <= 0, 0)], dim=1)
        found = found.sort(dim=1).values
        found[:, 1:].masked_fill_(found[:, 1:] == found[:, :-1], 0)  # an item two interests retrieved, once
        per_interest = torch.einsum("bkd,bmd->bkm", queries, F.embedding(found, self.unit_items))  # a row gather
        if lifted:
            new = self.is_new[found]
            moved = self.head.lift(per_interest, self.item_features[found], self.item_recent[found],
                                   recent_share(padded, self.item_recent))
            per_interest = torch.where(new[:, None], moved, per_interest)
        if shift is not None:
            per_interest += shift[0][found][:, None, :]
        if following is not None:
            per_interest += following.gather(1, found)[:, None, :]
        top_scores, top_idx, interest = self._ranked(per_interest, indexed, top_k, balance, max_new, columns=found)
        short = torch.nonzero(~torch.isfinite(top_scores[:, -1]) & (padded[:, -1] > 0)).flatten()
        if len(short):
            rows = [indexed[i] for i in short.tolist()]
            exact, _, _ = self.score_indices(rows, with_attention=False)
            again = self._ranked(exact, rows, top_k, balance, max_new)
            for ranked, redone in zip((top_scores, top_idx, interest), again, strict=True):
                ranked[short] = redone
        return top_scores, top_idx, interest, attention, padded, len(short)

    def _cap_new(self, per_interest: torch.Tensor, max_new: int) -> None:
        """Leave each user at most `max_new` new items (their best by best-interest score): a score
        from text alone is not on the footing of one backed by ratings (docs/experiments.md)."""
        new_columns = torch.nonzero(self.is_new).flatten()
        if len(new_columns) <= max_new:
            return
        best = per_interest[:, :, new_columns].amax(1)  # [B, new]
        if max_new == 0:
            per_interest[:, :, new_columns] = float("-inf")
            return
        kept = best.topk(max_new, dim=1).indices
        drop = torch.ones_like(best, dtype=torch.bool).scatter_(1, kept, False)
        rows, which = drop.nonzero(as_tuple=True)
        per_interest[rows, :, new_columns[which]] = float("-inf")

    def _top(self, histories: Sequence[Sequence[int]], top_k: int, balance: float | None = None,
             max_new: int | None = None, index=None, candidates: int = 0):
        """Top-k unseen items, the interest behind each, and each interest's attention over the
        padded history, and how many users were ranked against the whole catalogue after all
        (0 without `index`; with it, _top_candidates)."""
        indexed = self.histories_to_indices(histories)
        if index is not None:
            return self._top_candidates(indexed, top_k, balance, max_new, index, candidates)
        per_interest, attention, padded = self.score_indices(indexed)
        return *self._ranked(per_interest, indexed, top_k, balance, max_new), attention, padded, 0

    def top_item_ids(self, histories: Sequence[Sequence[int]], top_k: int, max_new_items: int | None = None,
                     index=None, candidates: int = 0) -> np.ndarray:
        """The app item ids `recommend` would list [B, top_k] (-1: none), without explanations."""
        top_scores, top_idx, *_ = self._top(histories, top_k, max_new=max_new_items, index=index,
                                            candidates=candidates)
        return np.where(torch.isfinite(top_scores).numpy(), self._app_ids(top_idx), -1)

    def _because(self, top_idx: torch.Tensor, interest: torch.Tensor, attention: torch.Tensor,
                 padded: torch.Tensor, explain_items: int) -> torch.Tensor:
        """For each pick, the history items that resemble it most, favouring those its interest
        attends to: cosine(history item, pick) x (0.9 + 0.1 x relative attention).
        [B, k, e] model indices (0 = none)."""
        length = padded.shape[1]
        # Similarity to the pick leads; the interest's attention (scaled to its max) breaks near-ties
        # towards the items that interest is about. Worked out per interest [B, K, L], then per pick,
        # and in place: [B, k, L] is top_k x a history per user, the largest tensor of a batch's explanations.
        focus = (attention * 0.1).div_(attention.amax(-1, keepdim=True).clamp(min=1e-9)).add_(0.9)
        focus = focus.gather(1, interest.clamp(min=0)[..., None].expand(-1, -1, length))  # [B, k, L]
        history = F.embedding(padded, self.item_directions)  # [B, L, d] (a row gather, faster than indexing)
        picks = F.embedding(top_idx, self.item_directions)  # [B, k, d]
        weight = torch.bmm(picks, history.transpose(1, 2)).clamp_(min=0.0).mul_(focus)
        weight.masked_fill_((padded == 0)[:, None, :], -1.0)
        chosen = weight.topk(min(explain_items, length), dim=-1)
        because = padded.gather(1, chosen.indices.flatten(1)).view(chosen.indices.shape)
        return because.masked_fill(chosen.values < 0, 0).masked_fill((interest < 0)[..., None], 0)

    def recommend(self, histories: Sequence[Sequence[int]], top_k: int, explain_items: int = 2,
                  interest_balance: float | None = None, max_new_items: int | None = None,
                  index=None, candidates: int = 0) -> Recommendations:
        """Top-k unseen items per history, with the interest that picked each and why.
        `interest_balance` overrides the model's own (balance_interests; 0: best interest only);
        `max_new_items` caps the new items (no training interactions) in each list (None: no cap);
        `index` (candidate_index) ranks each interest's `candidates` retrieved items instead of the
        whole catalogue."""
        if interest_balance is not None and interest_balance < 0:
            raise ValueError(f"interest_balance must be >= 0 (0: no balancing), got {interest_balance}")
        if max_new_items is not None and max_new_items < 0:
            raise ValueError(f"max_new_items must be >= 0 (0: no new items), got {max_new_items}")
        top_scores, top_idx, interest, attention, padded, rescored = self._top(
            histories, top_k, interest_balance, max_new_items, index, candidates)
        users, k = top_idx.shape
        picked = self._because(top_idx, interest, attention, padded, explain_items)  # [B, k, e]
        titles = self.titles[picked.numpy()]  # [B, k, e]; "" where none
        watched = np.full((users, k), "", dtype=object)
        for position in range(titles.shape[-1]):  # e is 2 or 3: a loop over explanation slots, not users
            part = titles[..., position]
            separator = np.where((watched != "") & (part != ""), ", ", "")
            watched = watched + separator + part
        is_new = self.is_new[top_idx].numpy() & (interest.numpy() >= 0)
        new_text = np.where(watched != "", NEW_ITEM_PREFIX + watched + NEW_ITEM_SUFFIX, NEW_ITEM_UNEXPLAINED)
        text = np.where(is_new, new_text, "because you watched " + watched)
        text = np.where(interest.numpy() < 0, FALLBACK_EXPLANATION, text)
        valid = torch.isfinite(top_scores).numpy()
        return Recommendations(
            item_ids=np.where(valid, self._app_ids(top_idx), -1),
            scores=top_scores.numpy().astype(np.float32),
            interest_ids=interest.numpy().astype(np.int64),
            because_item_ids=self._app_ids(picked),
            explanations=text,
            is_new=is_new & valid,
            exact_rescored_users=rescored,
        )

    def similar_items(self, top_k: int, memory_mb: float = SCORE_MEMORY_MB,
                      most: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item-to-item neighbours from the item tower among the listable items (retired ones left
        out): (item_ids [N], similar ids [N, k], cosine [N, k]). Items go in blocks of at most
        `most` whose cosine rows [block, N] of float32 fit in memory_mb."""
        live = self.available[1:].numpy()
        vectors, item_ids = self.item_directions[1:][torch.as_tensor(live)], self.item_ids[live]
        k = min(top_k, len(item_ids) - 1)
        batch = rows_within(memory_mb, len(item_ids), most)
        # With bf16 (self.bf16: the CPU does it natively) the items x items product, ~80 % of the time,
        # runs in bf16 to find 2k candidates a row, which are then ranked by their float32 cosines: the
        # same neighbours and scores unless a true neighbour falls below 2k in bf16 (tested).
        shortlist = min(2 * k, len(item_ids) - 1) if self.bf16 else k
        rows = vectors.bfloat16() if self.bf16 else vectors
        ids, sims = [], []
        for start in range(0, len(vectors), batch):
            cosine = rows[start:start + batch] @ rows.T
            cosine[torch.arange(len(cosine)), torch.arange(start, start + len(cosine))] = float("-inf")
            values, indices = cosine.topk(shortlist, dim=1)
            if self.bf16:  # float32 cosines of the shortlist, best k first
                exact = torch.einsum("bd,bmd->bm", vectors[start:start + batch], F.embedding(indices, vectors))
                values, best = exact.topk(k, dim=1)
                indices = indices.gather(1, best)
            ids.append(item_ids[indices.numpy()])
            sims.append(values.float().numpy())
        return item_ids, np.concatenate(ids), np.concatenate(sims).astype(np.float32)
