"""Day one, rehearsed: fit the new-item head on how an earlier model would have served new titles.

The titles that entered the catalogue last (the last `train.new_item_head_share` of the snapshot's
interacted titles, by first interaction) set a cut-off. Two kinds of case, each a user's first
interaction from the cut-off on, after at least `MIN_HISTORY` earlier ones: **cold**, of a title new
at the cut-off, and **warm**, of a title trained on by then. A model of day one ranks them, and the
head (tasks.model.new_item_head) is fitted on its scores of both and saved with the run's model, whose
own new items it then re-scores. That model is, by `train.new_item_head_rehearsal`:

- "model" (the default): the run's own model as of the cut-off (Recommender.as_of): every title
  outside the 5-core of the interactions before it is new again, placed by its text and the id row
  predicted from it, with that day's interaction counts. No second training (seconds on ML-1M); the
  model has learned from those titles' later ratings through its user tower and text projection,
  which the head's weights barely show (docs/experiments.md, "A rehearsal on the run's own model").
- "retrain": a second model trained, with the run's settings, on the interactions before the cut-off
  (the cold-start benchmark's validation split, bench/cold_start.py). With titles added steadily
  over time that is most of the data: nearly a second training.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.config import PipelineConfig
from tasks.errors import SourceDataError, TrainingError
from tasks.layout import ModelFiles, SnapshotFiles
from tasks.model.network import rows_within

log = logging.getLogger(__name__)

MIN_HISTORY = 5
MAX_CASES = 2000  # of each kind (a seeded sample beyond it): the head has 11 weights
# The fit keeps each kind's cases x new items scores: fewer cases where the new items are many
# (2,000 up to ~16k new items), and the rehearsal's scores are taken in batches of about this size.
CASES_MEMORY_MB = 128
MIN_CASES = 20  # of each kind: fewer leave the head the identity (11 weights fitted on a handful would be noise)
MIN_REHEARSAL_SHARE = 0.05  # of the interactions, before the cut-off: less is too little to train on


def cold_cutoff(interactions: pd.DataFrame, share: float) -> tuple[pd.Timestamp, np.ndarray]:
    """(cut-off, new titles): the last `share` of rated titles by first rating; every title first
    rated at or after the first of them is new."""
    first = interactions.groupby("item_id")["occurred_at"].min().sort_values(kind="stable")
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    count = max(1, math.ceil(share * len(first)))
    cutoff = first.iloc[-count]
    return cutoff, np.sort(first[first >= cutoff].index.to_numpy())


def ordered(interactions: pd.DataFrame) -> pd.DataFrame:
    """Ratings by user and time, ties in the snapshot's row order (as prepare orders them)."""
    return (interactions.assign(_order=np.arange(len(interactions)))
            .sort_values(["user_id", "occurred_at", "_order"], kind="stable").drop(columns="_order"))


def split_cases(interactions: pd.DataFrame, cutoff: pd.Timestamp, new_titles: np.ndarray,
               min_history: int) -> pd.DataFrame:
    """One row per case: user_id, item_id (the target), kind, history (app item ids, oldest first:
    every rating strictly before the target's time). Per user and kind, the first rating from the
    cut-off on that has `min_history` ratings before it: "cold" if of a new title,
    "warm" if of any other (the caller keeps the trained ones)."""
    rated = ordered(interactions).reset_index(drop=True)
    user_rank = rated.groupby("user_id").cumcount()
    tied = rated.groupby(["user_id", "occurred_at"]).cumcount()
    before = user_rank - tied  # ratings of the user strictly earlier in time
    late = (rated["occurred_at"] >= cutoff) & (before >= min_history)
    kind = np.where(rated["item_id"].isin(new_titles), "cold", "warm")
    chosen = rated[late].assign(kind=kind[late.to_numpy()]).groupby(["user_id", "kind"], sort=True).head(1)
    starts = rated.groupby("user_id").cumcount().to_numpy()
    firsts = pd.Series(np.flatnonzero(starts == 0), index=rated["user_id"].to_numpy()[starts == 0])
    items = rated["item_id"].to_numpy(np.int64)
    histories = [items[firsts[user]:firsts[user] + before[row]]
                 for row, user in zip(chosen.index, chosen["user_id"], strict=True)]
    cases = chosen.assign(history=histories)
    return cases[["user_id", "item_id", "kind", "occurred_at", "history"]].reset_index(drop=True)


def rehearsal_cases(interactions: pd.DataFrame, cutoff: pd.Timestamp, new_titles: np.ndarray,
                    trained: np.ndarray, min_history: int = MIN_HISTORY, max_cases: int | None = MAX_CASES,
                    seed: int = 0) -> dict[str, pd.DataFrame]:
    """{"cold": cases, "warm": cases} (split_cases), warm ones of `trained` titles alone; at most
    `max_cases` of each kind, a seeded sample."""
    cases = split_cases(interactions, cutoff, new_titles, min_history)
    out = {"cold": cases[cases["kind"] == "cold"],
           "warm": cases[(cases["kind"] == "warm") & cases["item_id"].isin(trained)]}
    if max_cases is not None:
        out = {kind: frame.sample(n=min(len(frame), max_cases), random_state=seed).sort_index()
               for kind, frame in out.items()}
    return {kind: frame.reset_index(drop=True) for kind, frame in out.items()}


def head_cases(recommender, cases: pd.DataFrame):
    """tasks.model.new_item_head.Cases of `cases` over every item the model holds (candidate i: index
    i + 1), built a batch at a time: what stays is the new items' columns, not the catalogue's."""
    from tasks.model.new_item_head import Cases, recent_share

    known = cases[cases["item_id"].isin(recommender.item_ids)].reset_index(drop=True)
    new = recommender.is_new[1:]
    batch = recommender.users_per_batch(CASES_MEMORY_MB, 256)
    parts = [Cases.of(torch.zeros((0, len(new))), torch.zeros((0, len(new)), dtype=torch.bool),
                      torch.zeros(0, dtype=torch.long), torch.zeros(0), new)]
    for start in range(0, len(known), batch):
        chunk = known.iloc[start:start + batch]
        indexed = recommender.histories_to_indices(list(chunk["history"]))
        per_interest, _, padded = recommender.score_indices(indexed, with_attention=False)
        seen = torch.stack([torch.from_numpy(np.isin(recommender.item_ids, history)) for history in chunk["history"]])
        targets = torch.as_tensor(recommender.index_of.loc[chunk["item_id"]].to_numpy() - 1)
        parts.append(Cases.of(per_interest.amax(1)[:, 1:].float(), seen, targets,
                              recent_share(padded, recommender.item_recent), new))
    return Cases.join(parts)


def model_as_of(config: PipelineConfig, model_dir: Path, before: pd.DataFrame, universe: np.ndarray):
    """The run's own model as day one at the cut-off would have scored (Recommender.as_of): the items
    outside `universe` (the 5-core of the interactions `before` it) new again, placed by their text."""
    from tasks.model.recommender import Recommender

    recommender = Recommender.load(model_dir, config.train.precision, keep_text_vectors=True)
    recommender.head = None
    so_far = before["item_id"].value_counts().reindex(recommender.item_ids, fill_value=0).to_numpy(np.float64)
    return recommender.as_of(universe, so_far, config.train.new_item_id_penalty)


def trend_as_of(trend, interactions: pd.DataFrame, cutoff: pd.Timestamp):
    """The run's trend prior (tasks.model.trend) as day one at the cut-off would have applied it: its window's
    counts of the interactions on the whole days before the cut-off's day."""
    from dataclasses import replace

    times, cutoff = interactions["occurred_at"], pd.Timestamp(cutoff)
    times = times.dt.tz_localize("UTC") if times.dt.tz is None else times  # a snapshot's times are UTC
    day = (cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")).normalize()
    start = day - pd.Timedelta(days=trend.window_days)
    counts = interactions.loc[(times >= start) & (times < day), "item_id"].value_counts().sort_index()
    as_of_day = int((day - pd.Timestamp("1970-01-01", tz="UTC")).days)
    return replace(trend, item_ids=counts.index.to_numpy(np.int64).tolist(), counts=counts.to_numpy(np.int64).tolist(),
                   as_of_day=as_of_day)


def fit_new_item_head(config: PipelineConfig, snapshot_dir: Path, work: Path, model_dir: Path,
                      head_file: Path | None = None, trend=None) -> dict:
    """Rehearse day one on the snapshot in `snapshot_dir` (files under `work`), fit the new-item head
    and save it into `model_dir` (or `head_file`: a comparison's); returns the rehearsal's facts (also
    saved with the head). With the run's `trend` prior (tasks.model.trend, fitted first), the rehearsal
    scores the trained titles with it as of the cut-off, so the head learns how new titles compete with
    busy ones; with a transition prior saved in `model_dir`, with the successors of the interactions
    before the cut-off."""
    from tasks.data.prepare import load_dataset, prepare_dataset
    from tasks.model.new_item_head import NewItemHead, fit_head, save_head
    from tasks.model.recommender import Recommender
    from tasks.model.transitions import TransitionPrior, successor_table
    from tasks.training.launcher import launch_training

    started = time.time()
    snapshot = SnapshotFiles(Path(snapshot_dir))
    interactions = pd.read_parquet(snapshot.interactions, columns=["user_id", "item_id", "occurred_at"])
    cutoff, new_titles = cold_cutoff(interactions, config.train.new_item_head_share)
    before = int((interactions["occurred_at"] < cutoff).sum())
    retrain = config.train.new_item_head_rehearsal == "retrain"
    facts = {"cutoff": cutoff.isoformat(), "share": config.train.new_item_head_share,
             "rehearsal": config.train.new_item_head_rehearsal, "new_titles": len(new_titles)}
    head_path = head_file or ModelFiles(Path(model_dir)).new_item_head

    def identity(skipped: str, why: str) -> dict:
        # The default rehearsal: data that cannot rehearse day one is no reason to stop a run.
        log.warning("the new-item head stays the identity (new items scored as without it): %s", why)
        facts.update(cases={"cold": 0, "warm": 0}, skipped=skipped, seconds=round(time.time() - started, 1))
        save_head(NewItemHead().requires_grad_(False), head_path, facts)
        return facts

    if before < MIN_REHEARSAL_SHARE * len(interactions):
        too_few = (f"only {before:,} of {len(interactions):,} interactions come before the last "
                   f"{config.train.new_item_head_share:.0%} of titles first appeared ({cutoff}), too few to rehearse "
                   "day one on")
        if not retrain:
            return identity("too few interactions before the cut-off",
                            too_few + "; a lower train.new_item_head_share moves the cut-off later")
        raise TrainingError(
            f"train.new_item_head: {too_few} (titles that all appear at once leave nothing before them). Turn "
            "train.new_item_head off, or lower train.new_item_head_share so that the cut-off falls later. Nothing "
            "was registered or published.")
    rehearsal = SnapshotFiles(Path(work) / "snapshot")
    rehearsal.root.mkdir(parents=True, exist_ok=True)
    # The whole catalogue, and the interactions before the cut-off: the new titles are there, unrated.
    pd.read_parquet(snapshot.items).to_parquet(rehearsal.items, index=False)
    interactions[interactions["occurred_at"] < cutoff].to_parquet(rehearsal.interactions, index=False)
    log.info("rehearsing day one: %d titles first interacted with from %s on are new; %s the %d interactions "
             "before it", len(new_titles), cutoff,
             "training on" if retrain else "the run's model, with the titles outside the 5-core of", before)
    try:
        prepare_dataset(config, rehearsal.root, Path(work) / "dataset")
        sequences, _ = load_dataset(Path(work) / "dataset")
        if retrain:
            rehearsed = launch_training(config, Path(work) / "dataset", Path(work) / "model")
            recommender = Recommender.load(rehearsed, config.train.precision)
        else:
            recommender = model_as_of(config, model_dir, interactions[interactions["occurred_at"] < cutoff],
                                      sequences.item_ids[1:])
    except (SourceDataError, ValueError) as error:
        if retrain:
            raise
        return identity("no rehearsal universe", f"the interactions before the cut-off ({cutoff}) leave no model of "
                        f"day one to rehearse with: {error}")
    if trend is not None and trend.weight > 0:
        recommender.use_trend(trend_as_of(trend, interactions, cutoff))
        facts["trend_prior"] = {"window_days": trend.window_days, "weight": trend.weight}
    transitions = TransitionPrior.load(ModelFiles(Path(model_dir)).transitions)
    if transitions is not None and transitions.weight > 0:  # ... and the transition prior, its successors as of then
        table = successor_table(sequences.successions(0), sequences.item_ids)
        recommender.use_transitions(transitions.with_table(table))
        facts["transition_prior"] = {"weight": transitions.weight}
    most = rows_within(CASES_MEMORY_MB, len(recommender.new_rows), MAX_CASES)
    cases = rehearsal_cases(interactions, cutoff, new_titles, sequences.item_ids[1:], max_cases=most,
                            seed=config.train.seed)
    with torch.no_grad():
        kinds = {kind: head_cases(recommender, frame) for kind, frame in cases.items()}
    if all(len(k.targets) >= MIN_CASES for k in kinds.values()):
        new = recommender.new_rows
        head = fit_head(list(kinds.values()), recommender.item_features[new], recommender.item_recent[new])
    else:
        log.warning("the rehearsal has %s cases (fewer than %d of a kind): the new-item head stays the identity "
                    "(new items scored as without it)", {kind: len(k.targets) for kind, k in kinds.items()}, MIN_CASES)
        head = NewItemHead().requires_grad_(False)
    facts |= {"cases": {kind: len(k.targets) for kind, k in kinds.items()},
              "rehearsal_items": recommender.n_items, "seconds": round(time.time() - started, 1)}
    save_head(head, head_path, facts)
    log.info("new-item head fitted on the rehearsal (%s): %s", json.dumps(facts), json.dumps(head.to_dict()))
    return facts
