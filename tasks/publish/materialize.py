"""Publish the champion's recommendations, interests and similar items into schema `reco`.

One run: record it in `reco.runs` as running with its backend's pid (committed; a running run
whose backend is gone has died); then, in one transaction, score every user in vectorised
batches and COPY the rows into new standalone tables, build their indexes, attach them as
partitions of the history tables and move the `is_current` flag. Readers of the views
see the old set or the new set, never a mix, and never wait long for the swap
(tasks.publish.locks); a run that dies anywhere leaves the current set as it was, and the next
run marks it failed. A rerun for the same champion and logical date reuses the succeeded
output. Retention then drops the partitions of old runs. Publishers take turns with a row lock
that needs UPDATE on `reco.publish_lock`, never an advisory lock, which any role could hold.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks import db
from tasks.config import MaterializeConfig, PipelineConfig
from tasks.errors import (
    RegistryError,
    SourceDataError,
    SupersededError,
    first_cause,
    one_line,
)
from tasks.privacy import erased_filter
from tasks.publish import owner_functions
from tasks.publish import rows as reco_rows
from tasks.publish import tables as reco_tables
from tasks.publish.faults import fault_point
from tasks.publish.locks import with_lock_timeout
from tasks.publish.schema import ensure_tables
from tasks.publish.scoring import ScoredBatch, ScoringProcesses, remove_orphaned_scratch, score_here
from tasks.redact import known_secrets, redact_text

log = logging.getLogger(__name__)

DEAD_RUN_ERROR = "the publishing process or its database connection died before finishing; nothing was published"


@dataclass(frozen=True)
class MaterializeSummary:
    rows: int
    users: int
    model_version: str
    generated_at: datetime
    seconds: float
    materialization_id: int = 0
    run_key: str = ""
    run_id: str | None = None  # MLflow run of the champion version
    fallback_users: int = 0
    new_item_rows: int = 0  # recommendations of new items (no training interactions, placed by text)
    interest_rows: int = 0
    similar_rows: int = 0
    retrieval: str = "exact"  # how lists were drawn from the catalogue (materialize.retrieval)
    retrieval_recall: float | None = None  # the candidate index's recall against exact ranking, on a sample
    exact_rescored_users: int = 0  # users the index left short of top_k listable candidates, ranked exactly
    # The two overlap: a batch's rows are written while the next batch is scored.
    score_seconds: float = 0.0  # model forward passes + building the rows (and the index, if any)
    write_seconds: float = 0.0  # CSV encoding, COPY and index builds of the three outputs
    reused: bool = False  # True when a succeeded run with the same key was republished instead

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["generated_at"] = self.generated_at.isoformat()
        for key in ("seconds", "score_seconds", "write_seconds"):
            out[key] = round(out[key], 3)
        return out


def check_source(config: PipelineConfig) -> None:
    """Refuse to start (recording nothing) when the source has no interactions table or view to read."""
    engine = db.get_engine(config)
    app = config.database.app_schema
    with engine.connect() as conn:
        found = conn.execute(sa.text("select to_regclass(:name)"),
                             {"name": f"{db.quote_ident(app)}.\"interactions\""}).scalar()
    if found is None:
        raise SourceDataError(
            f"the database at {db.safe_url(engine.url)} has no {app}.interactions table or view, so there is no "
            f"one to recommend to; load data first (`prismrec load movielens-100k`) or point database.app_schema "
            f"(PRISMREC_DATABASE__APP_SCHEMA) at your schema; nothing was published or recorded")


def read_histories(engine: sa.Engine, config: PipelineConfig) -> pd.DataFrame:
    """Every user's time-ordered history: DataFrame[user_id, history (int64 array)].

    Users listed in `<app>.users` without any interaction get an empty history (and so the
    popularity fallback); `users` is optional, the interactions alone define who exists.
    Users on the erasure list (tasks.publish.forget) are left out.
    """
    app = db.quote_ident(config.database.app_schema)
    with engine.connect() as conn:
        kept = erased_filter(conn, config.database.reco_schema)  # people erased at their request are not scored
        known = " and ".join(["user_id is not null", *([kept] if kept else [])])
        events = db.copy_out_int64(conn, (
            f'select user_id, item_id from {app}."interactions" where {known} and item_id is not null '
            "order by user_id, occurred_at, item_id"), ("user_id", "item_id"))
        user_ids = events["user_id"]
        if db.table_exists(engine, config.database.app_schema, "users"):
            listed = db.copy_out_int64(conn, f'select user_id from {app}."users" where {known}',
                                       ("user_id",))["user_id"]
            user_ids = np.concatenate([user_ids, listed])
    users = np.unique(user_ids)
    bounds = np.searchsorted(events["user_id"], users, side="left")
    histories = np.split(events["item_id"], bounds[1:])
    return pd.DataFrame({"user_id": users, "history": histories})


def read_catalogue(engine: sa.Engine, config: PipelineConfig) -> np.ndarray | None:
    """The ids in `<app>.items` now (an item retired from the catalogue since training is not listed);
    None when the source has no items relation to say which are live."""
    if not db.table_exists(engine, config.database.app_schema, "items"):
        return None
    app = db.quote_ident(config.database.app_schema)
    with engine.connect() as conn:
        return np.asarray(conn.execute(sa.text(f'select item_id from {app}."items"')).scalars().all(), dtype=np.int64)


def read_trend_counts(engine: sa.Engine, config: PipelineConfig, window_days: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The trend prior's counts as the source stands (tasks.model.trend): each item's interactions on the
    `window_days` UTC days up to and including the day of the latest one (erased users' left out), and the
    day after it. (item ids, counts, as_of_day); empty with no interactions."""
    app = db.quote_ident(config.database.app_schema)
    with engine.connect() as conn:
        kept = erased_filter(conn, config.database.reco_schema)
        known = " and ".join(["item_id is not null", "occurred_at is not null", *([kept] if kept else [])])
        last = conn.execute(sa.text(f'select max(occurred_at) from {app}."interactions" where {known}')).scalar()
        if last is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
        last = last.astimezone(UTC) if last.tzinfo else last.replace(tzinfo=UTC)  # a column without zone: UTC
        as_of_day = (last.date() - datetime(1970, 1, 1, tzinfo=UTC).date()).days + 1
        start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=as_of_day - window_days)
        counts = db.copy_out_int64(conn, (
            f'select item_id, count(*) from {app}."interactions" where {known} '
            f"and occurred_at >= '{start.isoformat()}'::timestamptz group by item_id order by item_id"),
            ("item_id", "count"))
    return counts["item_id"], counts["count"], as_of_day


def fresh_trend(recommender, engine: sa.Engine, config: PipelineConfig) -> None:
    """A champion with a trend prior publishes with the source's own last days (it may have been trained
    days or weeks ago), not with the counts saved at its training: `use_trend` with them, logged."""
    prior = recommender.trend
    if prior is None:
        return
    item_ids, counts, as_of_day = read_trend_counts(engine, config, prior.window_days)
    recommender.use_trend(replace(prior, item_ids=item_ids.tolist(), counts=counts.tolist(),
                                              as_of_day=as_of_day))
    last = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=as_of_day - 1)
    log.info("trend prior: %d items' interactions on the %d days to %s lift their scores (weight %.1f; "
             "the model's own counts end %s)", len(item_ids), prior.window_days, last.date(), prior.weight,
             (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=prior.as_of_day - 1)).date())


def _recommender(pyfunc, version: str):
    """The champion's vectorised Recommender behind its pyfunc wrapper."""
    try:
        return pyfunc.unwrap_python_model().recommender
    except AttributeError:
        raise RegistryError(
            f"champion version {version} is not a PrismRec model (its pyfunc has no recommender); "
            "promote a version registered by `prismrec train`"
        ) from None


def _describe(exc: BaseException, engine: sa.Engine) -> str:
    """One safe line about a failure: its first cause (a killed backend, not the "connection already
    closed" of the rollback after it), the driver's message, never SQL parameters or a password."""
    secrets = known_secrets() | ({str(engine.url.password)} if engine.url.password else set())
    return redact_text(one_line(first_cause(exc), 2000), secrets)


# A run is alive while its backend is: pid shown in pg_stat_activity, started no later than the run.
_ALIVE = ("exists (select 1 from pg_stat_activity a where a.pid = r.backend_pid "
          "and (a.backend_start is null or a.backend_start <= r.started_at))")


def reap_dead_runs(engine: sa.Engine, schema: str) -> list[int]:
    """Mark failed every 'running' run whose backend is gone; returns their ids."""
    runs = f"{db.quote_ident(schema)}.runs"
    with engine.begin() as conn:
        dead = list(conn.execute(sa.text(
            f"update {runs} set status = 'failed', finished_at = clock_timestamp(), error = :error "
            f"where materialization_id in (select r.materialization_id from {runs} r where r.status = 'running' "
            f"and not {_ALIVE}) and status = 'running' returning materialization_id"),
            {"error": DEAD_RUN_ERROR}).scalars())
    if dead:
        log.warning("marked runs %s failed: %s", sorted(dead), DEAD_RUN_ERROR)
    return sorted(dead)


def _await_same_key(conn: sa.Connection, runs: str, run_key: str) -> None:
    """Wait, holding no lock, for live runs with the same key to finish (then `_reuse` finds their output)."""
    while True:
        live = list(conn.execute(sa.text(
            f"select r.materialization_id from {runs} r where r.run_key = :k and r.status = 'running' and {_ALIVE}"),
            {"k": run_key}).scalars())
        if not live:
            conn.commit()
            return
        conn.commit()
        log.info("run %s is already being published (materialization %s); waiting for it", run_key, live)
        time.sleep(1.0)


def _run_key(config: PipelineConfig, version: str, logical_date: datetime | None, now: datetime) -> str:
    when = (logical_date or now).astimezone(UTC).isoformat()
    return f"{config.registry.model_name}@v{version}@{when}" + ("" if logical_date else "@adhoc")


def _reuse(conn: sa.Connection, config: PipelineConfig, run_key: str) -> MaterializeSummary | None:
    """Republish a succeeded run with the same key whose rows are still kept; None if there is none."""
    schema = config.database.reco_schema
    runs = f"{db.quote_ident(schema)}.runs"
    found: list = []

    def find_and_point() -> None:
        reco_tables.lock_schema(conn, schema)  # retention cannot drop the run between this check and the re-point
        found[:] = [conn.execute(sa.text(
            f"select * from {runs} where run_key = :k and status = 'succeeded' and output_kept "
            "order by materialization_id desc limit 1"), {"k": run_key}).mappings().first()]
        if found[0] is not None and not found[0]["is_current"]:
            refuse_if_superseded(conn, schema, found[0]["materialization_id"])
            reco_tables.make_current(conn, schema, found[0]["materialization_id"])

    with_lock_timeout(conn, config.materialize, schema, f"re-pointing the current set to run {run_key}",
                      find_and_point)
    conn.commit()
    row = found[0]
    if row is None:
        return None
    log.info("run %s already published as materialization %s; made it current, nothing rescored",
             run_key, row["materialization_id"])
    return MaterializeSummary(
        rows=row["rows"], users=row["users"], model_version=row["model_version"], generated_at=row["generated_at"],
        seconds=0.0, materialization_id=row["materialization_id"], run_key=run_key, run_id=row["run_id"],
        fallback_users=row["fallback_users"], interest_rows=row["interest_rows"],
        similar_rows=row["similar_rows"], retrieval=row["retrieval"] or "exact",
        retrieval_recall=row["retrieval_recall"], reused=True)


def refuse_if_superseded(conn: sa.Connection, schema: str, materialization_id: int) -> None:
    """Newest wins: refuse to make a run current over a newer current set (call under the schema lock).

    A run's age is its logical date (Airflow's, or the moment a run without one was triggered),
    so a slow run started before another must not replace that one's set when it finishes later.
    Runs without a logical date (direct calls of `materialize`) are compared by when they
    started, and only with each other: a replayed date and a wall clock do not compare.
    """
    runs = f"{db.quote_ident(schema)}.runs"
    newer = conn.execute(sa.text(
        f"select c.materialization_id, coalesce(c.logical_date, c.generated_at) as made_for, "
        f"coalesce(r.logical_date, r.generated_at) as mine from {runs} c, {runs} r "
        "where c.is_current and r.materialization_id = :m and c.materialization_id <> r.materialization_id and ("
        "(c.logical_date is not null and r.logical_date is not null and c.logical_date > r.logical_date) or "
        "(c.logical_date is null and r.logical_date is null and c.generated_at > r.generated_at))"),
        {"m": int(materialization_id)}).first()
    if newer is not None:
        raise SupersededError(
            f"materialization {materialization_id} (for {newer.mine.isoformat()}) is older than the current set, "
            f"materialization {newer.materialization_id} (for {newer.made_for.isoformat()}), so it was not "
            "published: a run never replaces a newer one. The current set is untouched; to publish an older model, "
            "move the champion alias (`prismrec rollback` or `prismrec promote VERSION`) and publish again")


def candidate_index(recommender, settings: MaterializeConfig):
    """The inverted-file index lists are drawn from (tasks.model.retrieval), or None to rank every item:
    materialize.retrieval "index", or "auto" on a catalogue of index_min_items listable items or more."""
    listable = int(recommender.available.sum())
    if settings.retrieval == "exact" or (settings.retrieval == "auto" and listable < settings.index_min_items):
        return None
    return recommender.candidate_index(settings.index_lists, settings.index_probes)


def tune_recall(recommender, users: pd.DataFrame, index, settings: MaterializeConfig) -> float:
    """The index's recall: the share of the items exact ranking lists that its lists hold too, over
    up to recall_sample_users users with a history (a fixed random sample). Below
    materialize.index_min_recall, the index probes half as many cells again and measures again, until the
    recall is reached or every cell is probed (exact, up to candidates per interest): the catalogue
    and the model decide how many cells a recall needs, and this finds it for each publication."""
    with_history = np.flatnonzero(users["history"].map(len).to_numpy() > 0)
    chosen = np.random.default_rng(0).choice(with_history, size=min(settings.recall_sample_users,
                                                                    len(with_history)), replace=False)
    histories = list(users["history"].iloc[np.sort(chosen)])
    step = recommender.users_per_batch(settings.score_memory_mb, settings.batch_users)  # exact ranking's batch
    parts = [histories[start:start + step] for start in range(0, len(histories), step)]
    truths = [truth[truth >= 0] for part in parts
              for truth in recommender.top_item_ids(part, settings.top_k, settings.max_new_items)]
    listed = sum(len(truth) for truth in truths)
    while True:
        lists = (recommender.top_item_ids(part, settings.top_k, settings.max_new_items, index=index,
                                          candidates=settings.index_candidates) for part in parts)
        mine = (row for rows in lists for row in rows)
        found = sum(len(np.intersect1d(row, truth)) for row, truth in zip(mine, truths, strict=True))
        recall = found / listed if listed else 1.0
        log.info("candidate index: %d of %d cells probed, recall %.4f against exact ranking on %d users",
                 index.probes, index.lists, recall, len(histories))
        if recall >= settings.index_min_recall or index.probes >= index.lists:
            return recall
        # Steps of 1.5x rather than 2x: the recall rises steeply, and each step past the floor costs
        # every user's search (1,265 cells at 100k items: 64 gave 0.899, 128 gave 0.981).
        index.probe(min(index.lists, -(-3 * index.probes // 2)))


def score_processes(recommender, users: int, settings: MaterializeConfig) -> int:
    """Child scoring processes for this run (tasks.publish.scoring), 0 to score in this process: from
    materialize.score_process_min_users users up, for a model loaded from its folder."""
    if not settings.score_processes or users < settings.score_process_min_users or recommender.model_dir is None:
        return 0
    return settings.score_processes


def _score_and_write(conn, recommender, users: pd.DataFrame, tables: dict[str, str], config: PipelineConfig) -> dict:
    """Score all users batch by batch and COPY the rows; returns counts and timings."""
    settings = config.materialize
    t0 = time.perf_counter()
    index = candidate_index(recommender, settings)
    stats = {"retrieval": "exact", "retrieval_recall": None, "exact_rescored_users": 0}
    if index is not None:
        if settings.recall_sample_users:
            stats["retrieval_recall"] = round(tune_recall(recommender, users, index, settings), 4)
        stats["retrieval"] = (f"index: {index.lists} lists, {index.probes} probed, "
                              f"{settings.index_candidates} candidates an interest")
    index_seconds = time.perf_counter() - t0
    batch_users = recommender.users_per_batch(settings.score_memory_mb, settings.batch_users)
    if batch_users < settings.batch_users:
        log.info("scoring %d users a batch (materialize.batch_users %d): %d interests x %d items fit "
                 "materialize.score_memory_mb = %d", batch_users, settings.batch_users,
                 recommender.spec.n_interests, recommender.n_items, settings.score_memory_mb)
    log.info("user tower in %s (train.precision %s), as the gate's evaluation ran it",
             "bf16" if recommender.bf16 else "fp32", config.train.precision)
    catalogue = reco_rows.Catalogue.from_items(recommender.items)
    # Longest histories first: a batch of similar lengths pads only to its own longest (pad_history).
    users = users.iloc[np.argsort(-users["history"].map(len).to_numpy(), kind="stable")]
    user_ids, histories = users["user_id"].to_numpy(np.int64), list(users["history"])
    stats |= {"rows": 0, "interest_rows": 0, "fallback_users": 0, "new_item_rows": 0,
              "score_seconds": index_seconds, "write_seconds": 0.0}
    processes = score_processes(recommender, len(users), settings)
    started = time.perf_counter()
    done = 0

    def write(batch: ScoredBatch) -> None:
        """COPY one batch's rows (on the writer thread, while the next batch is scored)."""
        nonlocal done
        t0 = time.perf_counter()
        for table, key in (("user_recommendations", "rows"), ("user_interests", "interest_rows")):
            columns, csv, rows = batch.csv[table]
            db.copy_rows(conn, tables[table], columns, io.BytesIO(csv), freeze=True)
            stats[key] += rows
            fault_point("copy")
        stats["write_seconds"] += time.perf_counter() - t0
        done += batch.users
        elapsed = time.perf_counter() - started
        log.info("published %d/%d users (%.0f users/s, ETA %.0fs)", done, len(users), done / elapsed,
                 (len(users) - done) * elapsed / done)

    with contextlib.ExitStack() as stack:
        if processes:
            batches = stack.enter_context(ScoringProcesses(
                recommender, user_ids, histories, settings, batch_users, processes, config.train.allocator, index))
        else:
            batches = score_here(recommender, catalogue, user_ids, histories, settings, batch_users, index)
        # One batch is written while the next is scored: Postgres ingests the rows on its own core. At
        # most one COPY is in flight, and the connection is used by one thread at a time.
        writer = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="reco-copy"))
        pending = None
        for batch in batches:
            stats["fallback_users"] += batch.fallback_users
            stats["new_item_rows"] += batch.new_item_rows
            stats["exact_rescored_users"] += batch.exact_rescored_users
            if not processes:
                stats["score_seconds"] += batch.seconds
            if pending is not None:
                pending.result()  # the previous batch's COPY (its error, if any, stops the run here)
            pending = writer.submit(write, batch)
        if pending is not None:
            pending.result()
        if processes:  # the children's wall time, start-up included (their batches overlap)
            stats["score_seconds"] += time.perf_counter() - started
    t0 = time.perf_counter()
    neighbours = recommender.similar_items(settings.similar_top_k, settings.score_memory_mb)
    similar = reco_rows.similar_table(*neighbours, catalogue)
    t1 = time.perf_counter()
    stats["similar_rows"] = db.copy_arrow(conn, tables["similar_items"], similar, freeze=True)
    stats["score_seconds"] += t1 - t0
    stats["write_seconds"] += time.perf_counter() - t1
    return stats


def materialize(config: PipelineConfig, *, logical_date: datetime | None = None,
                run_key: str | None = None) -> MaterializeSummary:
    """Score every user with the champion and publish the result atomically (see the module doc).

    `logical_date` (the orchestrator's) makes reruns idempotent: the same champion and date
    republish the kept output instead of adding a copy. Raises NoChampionError before
    touching Postgres when no version holds `champion`.
    """
    from tasks.registry.store import load_champion

    settings = config.materialize
    started = time.perf_counter()
    schema = config.database.reco_schema
    db.quote_ident(schema)
    version, pyfunc = load_champion(config)
    recommender = _recommender(pyfunc, version)
    mlflow_run_id = getattr(pyfunc.metadata, "run_id", None)
    engine = db.get_engine(config)
    users = read_histories(engine, config)
    catalogue = read_catalogue(engine, config)
    fresh_trend(recommender, engine, config)
    retired = recommender.restrict_to(recommender.item_ids if catalogue is None else catalogue)
    if retired:
        log.info("%d of the champion's %d items are no longer in %s.items: left out of every list",
                 retired, recommender.n_items, config.database.app_schema)
    if users.empty:
        raise SourceDataError(
            f"{config.database.app_schema}.interactions is empty, so there is no one to recommend to; "
            "load data first (`prismrec load movielens-100k`); the published recommendations are unchanged")
    ensure_tables(engine, schema)
    reap_dead_runs(engine, schema)
    remove_orphaned_scratch()  # the users files of scoring processes whose publisher died
    generated_at = datetime.now(UTC)
    key = run_key or _run_key(config, version, logical_date, generated_at)
    runs = f"{db.quote_ident(schema)}.runs"

    with engine.connect() as conn:
        if conn.execute(sa.text("select current_setting('server_version_num')::int")).scalar() >= 140000:
            # Notice a vanished client while blocked, so its locks (and its run's row) go quickly.
            conn.execute(sa.text("set client_connection_check_interval = '2s'"))
        _await_same_key(conn, runs, key)  # same-key runs queue here instead of duplicating work
        reused = _reuse(conn, config, key)
        if reused is not None:
            return reused
        mid = conn.execute(sa.text(
            f"insert into {runs} (run_key, model_name, model_version, run_id, logical_date, status, "
            "generated_at, top_k, backend_pid) values (:k, :name, :version, :run_id, :logical_date, "
            "'running', :generated_at, :top_k, pg_backend_pid()) returning materialization_id"),
            {"k": key, "name": config.registry.model_name, "version": version, "run_id": mlflow_run_id,
             "logical_date": logical_date, "generated_at": generated_at, "top_k": settings.top_k}).scalar_one()
        conn.commit()
        log.info("materialization %s (%s): scoring %d users with %s version %s, top %d",
                 mid, key, len(users), config.registry.model_name, version, settings.top_k)
        try:
            stats = _publish(conn, recommender, users, config, mid)
        except BaseException as exc:
            _mark_failed(engine, conn, runs, mid, _describe(exc, engine))
            raise
        finally:
            if not conn.closed and not conn.invalidated:
                conn.rollback()

    _apply_retention(engine, schema, settings)
    summary = MaterializeSummary(
        users=len(users), model_version=version, generated_at=generated_at, seconds=time.perf_counter() - started,
        materialization_id=mid, run_key=key, run_id=mlflow_run_id, **stats)
    log.info("published materialization %s: %d recommendations for %d users (%d on the popularity fallback, "
             "%d of new items), %d interests, %d similar items from version %s in %.1fs (retrieval: %s%s)", mid,
             summary.rows, summary.users, summary.fallback_users, summary.new_item_rows, summary.interest_rows,
             summary.similar_rows, version, summary.seconds, summary.retrieval,
             "" if summary.retrieval_recall is None else f", recall {summary.retrieval_recall:.4f}")
    return summary


def _publish(conn: sa.Connection, recommender, users: pd.DataFrame, config: PipelineConfig, mid: int) -> dict:
    """The one publishing transaction: new partitions, COPY, indexes, attach, flag, run row."""
    schema = config.database.reco_schema
    with conn.begin():
        fault_point("started")
        tables = owner_functions.create_partitions(conn, schema, mid)
        stats = _score_and_write(conn, recommender, users, tables, config)
        t0 = time.perf_counter()
        owner_functions.index_partitions(conn, schema, mid)
        fault_point("before_swap")
        stats["write_seconds"] += time.perf_counter() - t0
        def swap() -> None:
            reco_tables.lock_schema(conn, schema)
            refuse_if_superseded(conn, schema, mid)
            owner_functions.swap_in(conn, schema, mid)

        with_lock_timeout(conn, config.materialize, schema, f"the swap of materialization {mid}", swap)
        conn.execute(sa.text(
            f"update {db.quote_ident(schema)}.runs set status = 'succeeded', finished_at = clock_timestamp(), users = :users, "
            "rows = :rows, interest_rows = :interest_rows, similar_rows = :similar_rows, "
            "fallback_users = :fallback_users, retrieval = :retrieval, retrieval_recall = :retrieval_recall "
            "where materialization_id = :m"),
            {"m": mid, "users": len(users), **{k: stats[k] for k in (
                "rows", "interest_rows", "similar_rows", "fallback_users", "retrieval", "retrieval_recall")}})
    return stats


def _mark_failed(engine: sa.Engine, conn: sa.Connection, runs: str, mid: int, error: str) -> None:
    """Record the failure on a fresh connection (the run's own may be the thing that died)."""
    try:
        if not conn.closed and not conn.invalidated:
            conn.rollback()
        with engine.begin() as fresh:
            fresh.execute(sa.text(f"update {runs} set status = 'failed', finished_at = clock_timestamp(), error = :e "
                                  "where materialization_id = :m and status = 'running'"), {"e": error, "m": mid})
        log.error("materialization %s failed: %s; the current set is unchanged", mid, error)
    except sa.exc.SQLAlchemyError as exc:  # the next run's reap_dead_runs will mark it
        log.error("materialization %s failed (%s) and could not be marked failed: %s", mid, error,
                  _describe(exc, engine))


def _apply_retention(engine: sa.Engine, schema: str, settings: MaterializeConfig) -> None:
    """Drop the partitions of succeeded runs beyond the newest `keep_runs` (the current one always stays)."""
    runs = f"{db.quote_ident(schema)}.runs"
    keep_runs = settings.keep_runs
    try:
        with engine.begin() as conn:
            # One try: readers queue behind the drops for at most this long, and the next run retries.
            conn.execute(sa.text(f"set local lock_timeout = {int(settings.swap_lock_timeout_ms)}"))
            reco_tables.lock_schema(conn, schema)
            old = conn.execute(sa.text(
                f"select materialization_id from {runs} where output_kept and not is_current "
                "order by finished_at desc, materialization_id desc offset :keep"), {"keep": keep_runs - 1}).scalars()
            old = list(old)
            if old:
                owner_functions.drop_outputs(conn, schema, old)
                log.info("retention: dropped the rows of runs %s (keeping %d)", old, keep_runs)
    except sa.exc.OperationalError as exc:  # e.g. a long BI query held the lock; the next run retries
        log.warning("retention skipped this time: %s", _describe(exc, engine))
