"""Named row locks in `reco.publish_lock`: how PrismRec's writers take turns, without advisory locks.

Any role may take any Postgres advisory lock, so a BI login (`reco_reader`) could hold
PrismRec's and stall publishing or promotions forever. A row of `publish_lock` locked
FOR UPDATE needs UPDATE on the table, which only the pipeline's role has. Rows:
`schema` (DDL, swaps, retention, erasures) and `champion:<model>` (moving the champion alias).
"""

from __future__ import annotations

import sqlalchemy as sa

from tasks.db import ensure_schema, quote_ident

TABLE = "publish_lock"
SCHEMA_LOCK = "schema"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_table(conn: sa.Connection, schema: str) -> None:
    """Create `publish_lock` with its `schema` row if missing (the schema's owner, at setup)."""
    table = f"{quote_ident(schema)}.{TABLE}"
    conn.execute(sa.text(f"create table if not exists {table} (name text primary key)"))
    conn.execute(sa.text(f"insert into {table} values (:n) on conflict do nothing"), {"n": SCHEMA_LOCK})
    conn.execute(sa.text(f"comment on table {table} is " + _literal(
        "Publishers lock its rows to take turns at DDL, swaps, retention, erasures and champion moves "
        "(needs UPDATE: readers cannot take them).")))
    conn.execute(sa.text(f"comment on column {table}.name is " + _literal(
        "What the row guards: 'schema' (DDL, swaps, retention, erasures), 'champion:<model>' (the champion alias).")))


def ensure_table(conn: sa.Connection, schema: str) -> None:
    """Create the schema and `publish_lock` on first use where nobody set them up (the embedded server's
    superuser); one lookup, no lock, when they exist."""
    if conn.execute(sa.text("select to_regclass(:t)"), {"t": f"{quote_ident(schema)}.{TABLE}"}).scalar() is not None:
        return
    conn.execute(sa.text("select pg_advisory_xact_lock(1347568963, 0)"))  # the schema's setup lock (first use only)
    ensure_schema(conn, schema)
    create_table(conn, schema)


def add_row(conn: sa.Connection, schema: str, name: str) -> None:
    """Make sure row `name` exists; commit this before locking the row (an insert not yet committed
    would make a second taker wait on the inserting transaction, even with `wait=False`)."""
    conn.execute(sa.text(f"insert into {quote_ident(schema)}.{TABLE} values (:n) on conflict do nothing"), {"n": name})


def lock(conn: sa.Connection, schema: str, name: str, *, wait: bool = True) -> bool:
    """Lock row `name` (see `add_row`) until `conn`'s transaction ends; False if `wait` is False and
    someone else holds it, or the row is missing. Subject to the caller's lock_timeout."""
    table = f"{quote_ident(schema)}.{TABLE}"
    found = conn.execute(sa.text(f"select name from {table} where name = :n for update"
                                 + ("" if wait else " skip locked")), {"n": name}).first()
    return found is not None
