"""Prepare: 5-core filter, time-ordered histories, leave-one-out split (docs/protocol.md).

The filter is one pass, users then items, as RecBole does; users left with fewer than
three interactions afterwards are dropped (leave-one-out needs a history, a validation
target and a test target). Item index 0 is padding; items are indexed 1..n.

The 5-core items are the training and evaluation universe. Every other item of the gated
catalogue (no ratings yet, or too few) is kept beside it as a new item: training appends it to
the model, placed by its text, so it is published from the first run after it appears.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import PipelineConfig, PrepareConfig
from tasks.errors import SourceDataError
from tasks.layout import DatasetFiles, SnapshotFiles

log = logging.getLogger(__name__)

MIN_SEQUENCE = 3  # training history >= 1, validation target, test target


@dataclass(frozen=True)
class Sequences:
    """Every user's time-ordered item indices in CSR form, plus the item universe."""

    user_ids: np.ndarray  # [U] app user ids
    indptr: np.ndarray  # [U + 1] offsets into item_idx
    item_idx: np.ndarray  # [nnz] item indices 1..n_items, time-ordered per user
    item_ids: np.ndarray  # [n_items + 1] app item id of each index; item_ids[0] = -1 (padding)
    # [nnz] the UTC day (days since 1970-01-01) of each interaction, aligned with item_idx; None for a
    # split prepared before days were kept (the recent-popularity prior, tasks.model.trend, needs them)
    days: np.ndarray | None = None
    # [nnz] True where an interaction has the same time as the user's previous one (items saved together, as a
    # page of ratings is: their order is the source's, not one the user chose); None for a split prepared before
    # it was kept (tasks.model.transitions then counts every pair)
    tied: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def sequence(self, user: int) -> np.ndarray:
        return self.item_idx[self.indptr[user]:self.indptr[user + 1]]

    def histories(self, holdout: int) -> list[np.ndarray]:
        """Each user's sequence without its last `holdout` items (2: training, 1: for test)."""
        return [self.sequence(u)[: len(self.sequence(u)) - holdout] for u in range(self.n_users)]

    def targets(self, split: str) -> np.ndarray:
        """Leave-one-out targets: the last item is `test`, the second-to-last `valid`."""
        offset = {"test": 1, "valid": 2}[split]
        return self.item_idx[self.indptr[1:] - offset]

    def as_of_days(self, holdout: int) -> np.ndarray | None:
        """[U] the day of each user's last history item when `holdout` items are held out (None without days):
        the day a prediction from that history is made on."""
        return None if self.days is None else self.days[self.indptr[1:] - 1 - holdout]

    def successions(self, holdout: int) -> tuple[np.ndarray, np.ndarray]:
        """Every direct succession (a, b) of item indices in the users' histories without their last `holdout`
        items where b came at a later time than a: items saved at one time (`tied`) follow each other only in
        the source's order, so those pairs are left out."""
        follows = np.ones(max(len(self.item_idx) - 1, 0), dtype=bool)  # [nnz - 1]: pair (p, p + 1)
        follows[self.indptr[1:-1] - 1] = False  # across two users
        for k in range(1, holdout + 1):  # into the held-out items (every sequence is longer than `holdout`)
            follows[self.indptr[1:] - 1 - k] = False
        if self.tied is not None:
            follows &= ~self.tied[1:]
        at = np.flatnonzero(follows)
        return self.item_idx[at], self.item_idx[at + 1]

    def save(self, path: Path) -> None:
        extra = {name: value for name, value in (("days", self.days), ("tied", self.tied)) if value is not None}
        np.savez(path, user_ids=self.user_ids, indptr=self.indptr, item_idx=self.item_idx, item_ids=self.item_ids,
                 **extra)

    @classmethod
    def load(cls, path: Path) -> Sequences:
        with np.load(path) as data:
            arrays = {k: data[k] for k in ("user_ids", "indptr", "item_idx", "item_ids")}
            return cls(**arrays, **{name: data[name] if name in data.files else None for name in ("days", "tied")})


@dataclass(frozen=True)
class Events:
    """Interactions as three int64 columns in source order (the snapshot's: by user, then time): user
    and item ids, and times as integers. Prepare works on these, not on a DataFrame: at 100M events a
    column is 800 MB, and each pandas filter or reorder would copy all of them."""

    user_id: np.ndarray
    item_id: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)

    @classmethod
    def from_frame(cls, interactions: pd.DataFrame) -> Events:
        times = interactions["occurred_at"].array
        times = times.asi8 if hasattr(times, "asi8") else np.asarray(times, dtype=np.int64)  # datetimes: their int64
        return cls(interactions["user_id"].to_numpy(np.int64), interactions["item_id"].to_numpy(np.int64),
                   np.asarray(times, dtype=np.int64))

    @classmethod
    def read(cls, path: Path) -> Events:
        """The snapshot's interactions file, column by column (no DataFrame in between)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["user_id", "item_id", "occurred_at"])
        columns = [table.column(name).cast(pa.int64()).to_numpy() for name in ("user_id", "item_id", "occurred_at")]
        return cls(*columns)


@dataclass(frozen=True)
class Core:
    """The 5-core filter's result: `rows` of Events kept, ordered by user, then time (ties keep the
    source order), and the codes that index users and items (pandas.factorize, in order of appearance)."""

    rows: np.ndarray  # int64 row numbers into Events
    user_code: np.ndarray  # [events] code of each row's user
    item_code: np.ndarray  # [events] code of each row's item
    user_ids: np.ndarray  # [codes] the id of each user code
    item_ids: np.ndarray  # [codes] the id of each item code


def _smallest_int(n: int):
    return np.int32 if n < 2**31 else np.int64


def core(events: Events, cfg: PrepareConfig) -> Core:
    """One pass: drop users with too few interactions, then items, then too-short users; order the rest."""
    user_code, user_ids = pd.factorize(events.user_id)
    user_code = user_code.astype(_smallest_int(len(user_ids)), copy=False)
    item_code, item_ids = pd.factorize(events.item_id)
    item_code = item_code.astype(_smallest_int(len(item_ids)), copy=False)
    keep = (np.bincount(user_code, minlength=len(user_ids)) >= cfg.min_user_interactions)[user_code]
    item_counts = np.bincount(item_code[keep], minlength=len(item_ids))
    keep &= (item_counts >= cfg.min_item_interactions)[item_code]
    user_counts = np.bincount(user_code[keep], minlength=len(user_ids))
    keep &= (user_counts >= MIN_SEQUENCE)[user_code]
    rows = np.flatnonzero(keep)
    del keep
    if not _user_time_ordered(events.user_id[rows], events.time[rows]):
        # one lexsort over integer keys; the row numbers break ties in source order
        rows = rows[np.lexsort((rows, events.time[rows], events.user_id[rows]))]
    return Core(rows, user_code, item_code, np.asarray(user_ids, dtype=np.int64), np.asarray(item_ids, dtype=np.int64))


def _user_time_ordered(users: np.ndarray, times: np.ndarray) -> bool:
    """Whether rows already run by user, then time (a snapshot is extracted in that order)."""
    if len(users) < 2:
        return True
    same = users[1:] == users[:-1]
    return bool(np.all(users[1:] >= users[:-1]) and np.all(~same | (times[1:] >= times[:-1])))


def build_sequences(events: Events, kept: Core, per_second: int | None = None) -> Sequences:
    """The CSR sequences of the 5-core's rows `kept` (item indices 1..n in order of item id), with which
    interactions share their time with the user's previous one; with `per_second` (the time column's ticks
    per second) each interaction's UTC day too."""
    if not len(kept.rows):
        raise SourceDataError(
            "no user has enough interactions after the 5-core filter; "
            "load more data or lower prepare.min_user_interactions / prepare.min_item_interactions"
        )
    codes = kept.item_code[kept.rows]
    present = np.flatnonzero(np.bincount(codes, minlength=len(kept.item_ids)))
    present = present[np.argsort(kept.item_ids[present], kind="stable")]  # item codes in order of id
    index_of_code = np.zeros(len(kept.item_ids), dtype=np.int64)
    index_of_code[present] = np.arange(1, len(present) + 1)
    users = events.user_id[kept.rows]
    starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
    times = events.time[kept.rows]
    return Sequences(
        user_ids=users[starts],
        indptr=np.append(starts, len(users)).astype(np.int64),
        item_idx=index_of_code[codes],
        item_ids=np.concatenate([[-1], kept.item_ids[present]]).astype(np.int64),
        days=None if per_second is None else (times // (per_second * 86_400)).astype(np.int32),
        tied=np.concatenate([[False], (users[1:] == users[:-1]) & (times[1:] == times[:-1])]),
    )


def ticks_per_second(path: Path) -> int:
    """How many of the snapshot's integer times make a second (its Parquet timestamp unit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = pq.read_schema(path).field("occurred_at").type
    if not pa.types.is_timestamp(kind):
        raise SourceDataError(f"{path}: occurred_at is {kind}, not a timestamp; extract the snapshot again")
    return {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[kind.unit]


@dataclass(frozen=True)
class DatasetInfo:
    path: str
    users: int
    items: int
    interactions: int
    dropped_interactions: int
    new_items: int = 0  # catalogue items outside the 5-core, scored by their text alone
    cold_targets: int = 0  # (user, new item) pairs first rated in the held-out part (tasks.evaluation.cold)


    def to_dict(self) -> dict:
        return asdict(self)


def prepare_dataset(config: PipelineConfig, snapshot_dir: Path, out_dir: Path) -> DatasetInfo:
    """Snapshot Parquet -> the dataset folder: sequences, the ranking universe (items) and its info."""
    snapshot, dataset = SnapshotFiles(Path(snapshot_dir)), DatasetFiles(Path(out_dir))
    events = Events.read(snapshot.interactions)
    items = pd.read_parquet(snapshot.items)
    kept = core(events, config.prepare)
    sequences = build_sequences(events, kept, ticks_per_second(snapshot.interactions))
    universe = (
        pd.DataFrame({"idx": np.arange(1, sequences.n_items + 1), "item_id": sequences.item_ids[1:]})
        .merge(items, on="item_id", how="left")
    )
    if universe["description"].isna().any():
        missing = universe.loc[universe["description"].isna(), "item_id"].head(5).tolist()
        raise SourceDataError(f"items {missing} have interactions but no row in app.items; fix the source")
    counts = pd.Series(np.bincount(kept.item_code, minlength=len(kept.item_ids)), index=kept.item_ids)
    new_items = new_catalogue_items(items, counts, sequences.item_ids[1:])
    cold = cold_targets(events, sequences, kept)
    dataset.root.mkdir(parents=True, exist_ok=True)
    sequences.save(dataset.sequences)
    universe.to_parquet(dataset.items, index=False)
    new_items.to_parquet(dataset.new_items, index=False)
    cold.to_parquet(dataset.cold_targets, index=False)
    info = DatasetInfo(
        path=str(dataset.root),
        users=sequences.n_users,
        items=sequences.n_items,
        interactions=len(sequences.item_idx),
        dropped_interactions=len(events) - len(sequences.item_idx),
        new_items=len(new_items),
        cold_targets=len(cold),
    )
    dataset.info.write_text(json.dumps(info.to_dict(), indent=2))
    log.info("prepared %d users, %d items, %d interactions (%d dropped by the 5-core filter); "
             "%d more catalogue items are new, placed by their text", info.users, info.items,
             info.interactions, info.dropped_interactions, info.new_items)
    return info


def new_catalogue_items(items: pd.DataFrame, counts: pd.Series, trained: np.ndarray) -> pd.DataFrame:
    """Catalogue items outside the 5-core universe `trained`, ordered by id, with how many
    interactions each has in the snapshot (`counts`, by item id; 0 for a title nobody has rated yet)."""
    new = items[~items["item_id"].isin(trained)].sort_values("item_id", kind="stable")
    return new.assign(interactions=new["item_id"].map(counts).fillna(0).astype(np.int64)).reset_index(drop=True)


def cold_targets(events: Events, sequences: Sequences, kept: Core) -> pd.DataFrame:
    """Really cold targets: (user, item) where the item is outside the 5-core universe (so unseen in
    training) and its first interaction by anyone falls in that user's held-out part (at or after the
    time of the user's validation target). DataFrame[user (index into sequences), item_id]. `sequences`
    are built from `kept`, the 5-core of `events`."""
    # Each user's validation target is their second-to-last kept row (rows run by user as `sequences` do).
    held_out_from = events.time[kept.rows[sequences.indptr[1:] - 2]]  # [U]
    user_index = np.full(len(kept.user_ids), -1, dtype=np.int64)  # user code -> index into sequences
    user_index[kept.user_code[kept.rows[sequences.indptr[:-1]]]] = np.arange(sequences.n_users)
    in_universe = np.isin(kept.item_ids, sequences.item_ids[1:])  # per item code
    first_seen = pd.Series(events.time).groupby(kept.item_code).min().to_numpy()  # per item code (0..n-1)
    candidates = np.flatnonzero(~in_universe[kept.item_code] & (user_index[kept.user_code] >= 0))
    user = user_index[kept.user_code[candidates]]
    item_code = kept.item_code[candidates]
    start = held_out_from[user]
    cold = (events.time[candidates] >= start) & (first_seen[item_code] >= start)
    pairs = pd.DataFrame({"user": user[cold], "item_id": kept.item_ids[item_code[cold]]})
    return pairs.drop_duplicates().sort_values(["user", "item_id"], ignore_index=True).astype(np.int64)


def load_cold_targets(dataset_dir: Path) -> pd.DataFrame:
    """The dataset's really cold targets (empty for a dataset prepared before they were kept)."""
    path = DatasetFiles(Path(dataset_dir)).cold_targets
    return pd.read_parquet(path) if path.exists() else pd.DataFrame({"user": [], "item_id": []}, dtype=np.int64)


def load_new_items(dataset_dir: Path) -> pd.DataFrame:
    """The dataset's new items (empty for a dataset prepared before new items were kept)."""
    path = DatasetFiles(Path(dataset_dir)).new_items
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["item_id", "title", "genres", "description"])


def load_dataset(dataset_dir: Path) -> tuple[Sequences, pd.DataFrame]:
    """The prepared sequences and the item universe (`idx`-ordered, with text)."""
    dataset = DatasetFiles(Path(dataset_dir))
    items = pd.read_parquet(dataset.items).sort_values("idx").reset_index(drop=True)
    return Sequences.load(dataset.sequences), items
