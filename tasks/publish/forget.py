"""A person's right to be forgotten: `prismrec forget USER_ID` erases them from `reco` and keeps them out.

One transaction, under the publishers' schema lock (so no swap lands between the steps):
the user's rows leave every current and historical table that names a user
(`user_recommendations_history`, with their explanations, and `user_interests_history`), the
id joins `reco.erased_users`, and `reco.erasures` records when, who, why and how many rows,
without the id. `erased_users` is what keeps them out afterwards: extraction leaves their
events out of every later snapshot (so no later training sees them), publishing scores nobody
in it, and a publish already running when the request came drops their rows right before its
swap. It holds nothing but ids and only the pipeline role can read it; an id stays on it,
so a source or a backup that still (or again) holds the person never brings them back. What a
trained model learnt is not erased (see the README).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import sqlalchemy as sa

from tasks import db
from tasks.config import PipelineConfig
from tasks.contracts import check_reason
from tasks.privacy import AUDIT, ERASED_USERS
from tasks.publish import tables as reco_tables
from tasks.publish.locks import with_lock_timeout
from tasks.publish.schema import ensure_tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Erasure:
    """What one request removed: rows per table, and whether the id was already on the list."""

    erasure_id: int
    rows_removed: dict[str, int]
    already_erased: bool


def forget(config: PipelineConfig, user_id: int, reason: str | None, operator: str) -> Erasure:
    """Erase `user_id` from `reco` and put them on the erasure list; see the module doc."""
    if reason is not None:
        check_reason(reason)
    schema = config.database.reco_schema
    s = db.quote_ident(schema)
    engine = db.get_engine(config)
    ensure_tables(engine, schema)
    removed: dict[str, int] = {}
    outcome: list[int | bool] = []

    def erase() -> None:
        removed.clear()
        reco_tables.lock_schema(conn, schema)
        new = conn.execute(sa.text(f"insert into {s}.{ERASED_USERS} values (:u) on conflict do nothing"),
                           {"u": int(user_id)}).rowcount
        for output in reco_tables.OUTPUTS:
            if any(name == "user_id" for name, _, _ in output.columns):
                table = reco_tables.history_table(output)
                removed[table] = conn.execute(sa.text(f"delete from {s}.{db.quote_ident(table)} where user_id = :u"),
                                              {"u": int(user_id)}).rowcount
        erasure_id = conn.execute(sa.text(
            f"insert into {s}.{AUDIT} (operator, reason, rows_removed, already_erased) "
            "values (:operator, :reason, cast(:rows as jsonb), :again) returning erasure_id"),
            {"operator": operator, "reason": reason, "rows": json.dumps(removed), "again": not new}).scalar_one()
        outcome[:] = [erasure_id, not new]

    with engine.connect() as conn, conn.begin():
        with_lock_timeout(conn, config.materialize, schema, "the erasure", erase)
    log.info("erasure %s: removed %s rows from %s%s", outcome[0], sum(removed.values()), schema,
             " (already on the erasure list)" if outcome[1] else "")
    return Erasure(erasure_id=int(outcome[0]), rows_removed=dict(removed), already_erased=bool(outcome[1]))
