"""The erasure list and its audit (`reco.erased_users`, `reco.erasures`): who is kept out, and a record of why.

`erased_users` holds nothing but the ids of people erased at their request (tasks.publish.forget);
extraction and publishing leave them out through `erased_filter`. Only the pipeline's role can read
it. `erasures` audits each request (when, who ran it, why, rows removed) and never holds the id;
`erased_users` has no time column, so no audit row points at an id.
"""

from __future__ import annotations

import sqlalchemy as sa

from tasks.db import quote_ident

ERASED_USERS = "erased_users"
AUDIT = "erasures"
TABLES = (ERASED_USERS, AUDIT)

_AUDIT_COLUMNS = (
    ("erasure_id", "bigint generated always as identity primary key", "Order of the requests."),
    ("erased_at", "timestamptz not null default now()", "When the erasure ran (UTC)."),
    ("operator", "text not null", "The OS user who ran prismrec forget."),
    ("reason", "text", "The reason given (--reason), e.g. a ticket number; never the person's name."),
    ("rows_removed", "jsonb not null", "Rows deleted per reco table."),
    ("already_erased", "boolean not null", "True when the person had been erased before (a repeated request)."),
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_tables(conn: sa.Connection, schema: str) -> None:
    """Create both tables if missing (the schema's owner, at setup)."""
    s = quote_ident(schema)
    conn.execute(sa.text(f"create table if not exists {s}.{ERASED_USERS} (user_id bigint primary key)"))
    conn.execute(sa.text(f"comment on table {s}.{ERASED_USERS} is " + _literal(
        "People erased at their request (prismrec forget): left out of snapshots, training and publishing "
        "while the source still holds them. Ids only; not readable by reco_reader.")))
    conn.execute(sa.text(f"comment on column {s}.{ERASED_USERS}.user_id is "
                         + _literal("app.users.user_id of a person erased at their request.")))
    columns = ", ".join(f"{name} {sql}" for name, sql, _ in _AUDIT_COLUMNS)
    conn.execute(sa.text(f"create table if not exists {s}.{AUDIT} ({columns})"))
    conn.execute(sa.text(f"comment on table {s}.{AUDIT} is " + _literal(
        "Audit of erasure requests: when, who ran it, why, how many rows left which table. "
        "It never holds the erased person's id.")))
    for name, _, text in _AUDIT_COLUMNS:
        conn.execute(sa.text(f"comment on column {s}.{AUDIT}.{name} is {_literal(text)}"))


def erased_filter(conn: sa.Connection, reco_schema: str, column: str = "user_id") -> str:
    """An SQL condition that keeps erased users out (`''` while the schema has no erasure list)."""
    table = f"{quote_ident(reco_schema)}.{ERASED_USERS}"
    if conn.execute(sa.text("select to_regclass(:t)"), {"t": table}).scalar() is None:
        return ""
    return f"{quote_ident(column)} not in (select user_id from {table})"
