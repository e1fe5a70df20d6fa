"""Publish the champion's top-k recommendations for every user into `reco.user_recommendations`.

Scores go first into a session-private staging table (COPY, batch by batch); then ONE
transaction deletes the published set and inserts the new one. Under MVCC a concurrent
reader (a BI dashboard) sees either the old set or the new set, never a mix, and a failure
at any point leaves the published set as it was. Rerunning for the same champion replaces
rows rather than adding to them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks import db
from tasks.config import PipelineConfig
from tasks.errors import SourceDataError

log = logging.getLogger(__name__)

TABLE = "user_recommendations"
_STAGING = 'pg_temp."user_recommendations_staging"'
_SCORED = ["user_id", "rank", "item_id", "score", "interest_id", "explanation"]
_COMMENTS = {
    None: "Top-k recommendations per user from the champion model; replaced as a whole on each "
          "materialisation (readers see the old or the new set, never a mix).",
    "user_id": "app.users.user_id the list is for.",
    "rank": "1 = best; ranks are 1..k without gaps per user.",
    "item_id": "app.items.item_id recommended; never an item already in the user's history.",
    "score": "Model score (higher is better); comparable within one user's list only.",
    "interest_id": "Which of the user's interest vectors produced this item (0-based).",
    "explanation": "Human-readable reason, e.g. 'because you watched A, B'.",
    "model_name": "MLflow registered model that produced the list.",
    "model_version": "MLflow model version (the champion at generation time).",
    "generated_at": "When this set of recommendations was generated (UTC).",
}


@dataclass(frozen=True)
class MaterializeSummary:
    rows: int
    users: int
    model_version: str
    generated_at: datetime
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "users": self.users,
            "model_version": self.model_version,
            "generated_at": self.generated_at.isoformat(),
            "seconds": round(self.seconds, 3),
        }


def read_histories(engine: sa.Engine, config: PipelineConfig) -> pd.DataFrame:
    """Every user's full, time-ordered item history: DataFrame[user_id, history (list of ids)]."""
    interactions = f"{db.quote_ident(config.database.app_schema)}.\"interactions\""
    with engine.connect() as conn:
        rows = pd.read_sql_query(
            sa.text(f"select user_id, item_id from {interactions} order by user_id, occurred_at, item_id"),
            conn,
        )
    grouped = rows.groupby("user_id", sort=True)["item_id"].agg(lambda s: [int(i) for i in s])
    return grouped.rename("history").reset_index()


def check_recommendations(recs: pd.DataFrame, users: pd.DataFrame, top_k: int) -> None:
    """Refuse to publish a malformed list; any failure here is a model bug, not a user error."""
    missing = [c for c in _SCORED if c not in recs.columns]
    if missing:
        raise RuntimeError(f"the champion's predictions lack columns {missing}; got {list(recs.columns)}")
    strangers = set(recs["user_id"]) - set(users["user_id"])
    if strangers:
        raise RuntimeError(f"the champion returned users it was not asked about: {sorted(strangers)[:5]}")
    if recs.duplicated(["user_id", "rank"]).any() or recs.duplicated(["user_id", "item_id"]).any():
        raise RuntimeError("the champion returned a rank or an item twice for the same user")
    if ((recs["rank"] < 1) | (recs["rank"] > top_k)).any():
        raise RuntimeError(f"the champion returned ranks outside 1..{top_k}")
    if not np.isfinite(recs["score"].to_numpy(dtype="float64")).all():
        raise RuntimeError("the champion returned non-finite scores")
    seen = users[["user_id", "history"]].explode("history").dropna().rename(columns={"history": "item_id"})
    seen["item_id"] = seen["item_id"].astype("int64")
    leaks = recs[["user_id", "item_id"]].merge(seen.drop_duplicates(), on=["user_id", "item_id"])
    if len(leaks):
        first = leaks.iloc[0]
        raise RuntimeError(
            f"the champion recommended {len(leaks)} item(s) already in the user's history "
            f"(e.g. user {first['user_id']}, item {first['item_id']}); refusing to publish"
        )


def _score(model, users: pd.DataFrame, top_k: int) -> pd.DataFrame:
    recs = model.predict(users[["user_id", "history"]], params={"top_k": top_k})
    check_recommendations(recs, users, top_k)
    return recs[_SCORED].astype({"user_id": "int64", "rank": "int32", "item_id": "int64",
                                 "score": "float32", "interest_id": "int32"})


def _create_table(conn: sa.Connection, target: str) -> None:
    conn.execute(sa.text(f"""
        create table if not exists {target} (
            user_id bigint not null,
            rank int not null,
            item_id bigint not null,
            score real not null,
            interest_id int,
            explanation text,
            model_name text not null,
            model_version text not null,
            generated_at timestamptz not null,
            primary key (user_id, rank)
        )"""))
    for column, comment in _COMMENTS.items():
        what = f"table {target}" if column is None else f"column {target}.{db.quote_ident(column)}"
        conn.execute(sa.text(f"comment on {what} is '{comment.replace(chr(39), chr(39) * 2)}'"))


def materialize(config: PipelineConfig) -> MaterializeSummary:
    """Score every user with the champion and replace `reco.user_recommendations` atomically.

    Raises NoChampionError (before touching Postgres) when no version holds `champion`.
    """
    from tasks.registry import load_champion

    started = time.perf_counter()
    version, model = load_champion(config)
    top_k, batch_users = config.materialize.top_k, config.materialize.batch_users
    engine = db.get_engine(config)
    users = read_histories(engine, config)
    if users.empty:
        raise SourceDataError(
            f"{config.database.app_schema}.interactions is empty, so there is no one to recommend to; "
            "load data first (`prismrec load movielens-100k`); the published recommendations are unchanged"
        )
    log.info("scoring %d users with %s version %s (top %d)", len(users), config.registry.model_name, version, top_k)
    generated_at = datetime.now(timezone.utc)
    target = f"{db.quote_ident(config.database.reco_schema)}.{db.quote_ident(TABLE)}"
    db.ensure_schemas(engine, config.database.reco_schema)

    with engine.connect() as conn:
        conn.execute(sa.text(
            f"create temp table {_STAGING} (user_id bigint, rank int, item_id bigint, score real, "
            "interest_id int, explanation text)"
        ))
        conn.commit()
        try:
            scoring_started, staged = time.perf_counter(), 0
            for start in range(0, len(users), batch_users):
                batch = users.iloc[start:start + batch_users]
                staged += db.copy_dataframe(conn, _STAGING, _score(model, batch, top_k))
                conn.commit()
                done, elapsed = start + len(batch), time.perf_counter() - scoring_started
                rate = done / elapsed if elapsed > 0 else float("inf")
                log.info("scored %d/%d users (%.0f users/s, ETA %.0fs)", done, len(users), rate,
                         (len(users) - done) / rate if rate else 0.0)
            _create_table(conn, target)
            # Serialises concurrent publishers (readers' ACCESS SHARE locks are not blocked), so a
            # second run's DELETE sees the first run's rows instead of colliding with them.
            conn.execute(sa.text(f"lock table {target} in share row exclusive mode"))
            conn.execute(sa.text(f"delete from {target}"))
            conn.execute(
                sa.text(f"""
                    insert into {target} (user_id, rank, item_id, score, interest_id, explanation,
                                          model_name, model_version, generated_at)
                    select user_id, rank, item_id, score, interest_id, explanation,
                           :model_name, :model_version, :generated_at
                    from {_STAGING}"""),
                {"model_name": config.registry.model_name, "model_version": version, "generated_at": generated_at},
            )
            conn.commit()
        finally:
            conn.rollback()
            conn.execute(sa.text(f"drop table if exists {_STAGING}"))
            conn.commit()

    summary = MaterializeSummary(rows=staged, users=len(users), model_version=version,
                                 generated_at=generated_at, seconds=time.perf_counter() - started)
    log.info("published %d recommendations for %d users from version %s in %.1fs",
             summary.rows, summary.users, version, summary.seconds)
    return summary
