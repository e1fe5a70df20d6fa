"""Database roles: `reco_reader` for BI tools (read `reco` only) and `reco_writer` for the pipeline.

`grant_roles` is idempotent: it creates missing roles, (re)applies the grants and the
default privileges that cover tables created later (each materialization adds partitions),
and revokes anything the reader must not have. Passwords are passed to Postgres as bound
parameters and never logged; errors quote the server's message, never the statement.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from tasks import db
from tasks.config import PipelineConfig
from tasks.errors import ConfigError

log = logging.getLogger(__name__)

READER = "reco_reader"
WRITER = "reco_writer"


def _ensure_role(conn: sa.Connection, role: str, password: str | None) -> bool:
    """Create `role` (LOGIN) if missing and set its password when given; True if created."""
    exists = conn.execute(sa.text("select 1 from pg_roles where rolname = :r"), {"r": role}).scalar()
    if not exists:
        conn.execute(sa.text(f"create role {db.quote_ident(role)} login"))
    if password is not None:
        # psycopg2 binds the value client-side as a quoted literal; it is never logged by us.
        conn.execute(sa.text(f"alter role {db.quote_ident(role)} with login password :password"),
                     {"password": password})
    return not exists


def _grant(conn: sa.Connection, config: PipelineConfig) -> None:
    reco = db.quote_ident(config.database.reco_schema)
    app = db.quote_ident(config.database.app_schema)
    reader, writer = db.quote_ident(READER), db.quote_ident(WRITER)
    superuser = conn.execute(sa.text("select rolsuper from pg_roles where rolname = current_user")).scalar()
    for schema in (reco, app):
        conn.execute(sa.text(f"create schema if not exists {schema}"))
    statements = [
        # reader: look at reco, nothing else
        f"grant usage on schema {reco} to {reader}",
        f"revoke create on schema {reco} from {reader}",
        f"revoke all on all tables in schema {reco} from {reader}",
        f"grant select on all tables in schema {reco} to {reader}",
        f"revoke all on schema {app} from {reader}",
        f"revoke all on all tables in schema {app} from {reader}",
        f"alter default privileges in schema {reco} grant select on tables to {reader}",
        # writer: build and swap reco, read app
        f"grant usage, create on schema {reco} to {writer}",
        f"grant select, insert, update, delete, truncate, references on all tables in schema {reco} to {writer}",
        f"grant usage, select on all sequences in schema {reco} to {writer}",
        f"grant usage on schema {app} to {writer}",
        f"grant select on all tables in schema {app} to {writer}",
        f"alter default privileges in schema {reco} grant all on tables to {writer}",
        f"alter default privileges in schema {reco} grant usage, select on sequences to {writer}",
        f"alter default privileges in schema {app} grant select on tables to {writer}",
    ]
    if superuser:
        # Tables the pipeline creates while connected as reco_writer must be readable too.
        statements.append(f"alter default privileges for role {writer} in schema {reco} "
                          f"grant select on tables to {reader}")
    for statement in statements:
        conn.execute(sa.text(statement))


def grant_roles(config: PipelineConfig, reader_password: str | None = None,
                writer_password: str | None = None) -> dict[str, bool]:
    """Create/refresh `reco_reader` and `reco_writer` on the configured server; returns {role: created}.

    Must run as a role allowed to create roles (the embedded server's superuser, or a DBA).
    """
    engine = db.get_engine(config)
    try:
        with engine.begin() as conn:
            # Roles are cluster-wide: serialise concurrent setups on the same server.
            conn.execute(sa.text("select pg_advisory_xact_lock(1347568963, -1)"))
            created = {READER: _ensure_role(conn, READER, reader_password),
                       WRITER: _ensure_role(conn, WRITER, writer_password)}
            _grant(conn, config)
    except sa.exc.DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise ConfigError(
            f"could not set up roles {READER}/{WRITER} on {db.safe_url(engine.url)}: {detail}. "
            "Run `prismrec db grant` as a user allowed to create roles (CREATEROLE) and grant on "
            f"schemas {config.database.reco_schema!r} and {config.database.app_schema!r}; nothing was changed."
        ) from None
    log.info("roles ready on %s: %s (read %s), %s (pipeline)%s", db.safe_url(engine.url), READER,
             config.database.reco_schema, WRITER,
             "; created " + ", ".join(r for r, new in created.items() if new) if any(created.values()) else "")
    return created
