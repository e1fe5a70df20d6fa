"""Database roles, least privilege: `reco_owner` owns `reco`, `reco_writer` runs the pipeline, `reco_reader` reads.

`grant_roles` (`prismrec db grant`) runs once as an administrator (a superuser, or a role with
CREATEROLE that may create schemas) and again after each upgrade; it is idempotent:

- `reco_owner` (NOLOGIN) owns schema `reco`, every table, view and the owner functions
  (tasks.publish.owner_functions) that create, index, attach and drop a run's partitions;
  objects made earlier by another role are handed to it.
- `reco_writer` (the pipeline: extract, gate, train, register, materialize, forget) reads
  `app` and `reco`, inserts and updates `runs`, `model_decisions`, `publish_lock` and the
  erasure tables, deletes an erased person's history rows, COPYs into its run's new tables and
  calls the owner functions. It cannot create anything in `reco`, own, alter or drop the
  owner's objects, or put triggers on them.
- `reco_reader` (BI) may only SELECT `reco` (not the erasure list, not `app`): it holds no
  UPDATE, so it cannot take `publish_lock`'s rows, and publishing uses no advisory lock it could hold.

Passwords are passed to Postgres as bound parameters and never logged; errors quote the
server's message, never the statement. docs/database-roles.md shows the resulting SQL.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from tasks import db
from tasks.config import PipelineConfig
from tasks.errors import ConfigError

log = logging.getLogger(__name__)

# The contract's names (DatabaseConfig's defaults).
READER = "reco_reader"
WRITER = "reco_writer"
OWNER = "reco_owner"


def _ensure_role(conn: sa.Connection, role: str, password: str | None, login: bool = True) -> bool:
    """Create `role` if missing and set its password when given; True if created."""
    exists = conn.execute(sa.text("select 1 from pg_roles where rolname = :r"), {"r": role}).scalar()
    if not exists:
        conn.execute(sa.text(f"create role {db.quote_ident(role)} {'login' if login else 'nologin'}"))
    if password is not None:
        # psycopg2 binds the value client-side as a quoted literal; it is never logged by us.
        conn.execute(sa.text(f"alter role {db.quote_ident(role)} with login password :password"),
                     {"password": password})
    return not exists


def _hand_to_owner(conn: sa.Connection, schema: str, owner: str) -> None:
    """Make `owner` own the schema and everything in it (tables made by an earlier superuser setup)."""
    s, o = db.quote_ident(schema), db.quote_ident(owner)
    conn.execute(sa.text(f"create schema if not exists {s} authorization {o}"))
    conn.execute(sa.text(f"alter schema {s} owner to {o}"))
    relations = conn.execute(sa.text(
        "select c.relname, c.relkind from pg_class c where c.relnamespace = cast(:s as regnamespace) "
        "and c.relkind in ('r', 'p', 'v', 'm') and pg_get_userbyid(c.relowner) <> :o"), {"s": s, "o": owner}).all()
    for name, kind in relations:
        what = "view" if kind == "v" else "materialized view" if kind == "m" else "table"
        conn.execute(sa.text(f"alter {what} {s}.{db.quote_ident(name)} owner to {o}"))
    functions = conn.execute(sa.text(
        "select p.oid::regprocedure::text from pg_proc p where p.pronamespace = cast(:s as regnamespace) "
        "and pg_get_userbyid(p.proowner) <> :o"), {"s": s, "o": owner}).scalars().all()
    for signature in functions:  # regprocedure text is already schema-qualified and quoted
        conn.execute(sa.text(f"alter function {signature} owner to {o}"))


def _grants(config: PipelineConfig) -> list[str]:
    d = config.database
    reco, app = db.quote_ident(d.reco_schema), db.quote_ident(d.app_schema)
    owner, writer, reader = (db.quote_ident(r) for r in (d.owner_role, d.writer_role, d.reader_role))
    erased, audit = f"{reco}.erased_users", f"{reco}.erasures"
    # An erasure deletes a person's rows from the history tables that name users.
    history = ", ".join(f"{reco}.{db.quote_ident(o.name + '_history')}" for o in _outputs()
                        if any(name == "user_id" for name, _, _ in o.columns))
    return [
        # Nobody but the owner creates in reco; start every role from nothing, then grant.
        f"revoke all on schema {reco} from public",
        f"revoke all on schema {reco} from {writer}, {reader}",
        f"grant usage on schema {reco} to {writer}, {reader}",
        f"revoke all on all tables in schema {reco} from public, {writer}, {reader}",
        f"revoke all on all functions in schema {reco} from public, {writer}, {reader}",
        f"alter default privileges in schema {reco} revoke all on tables from {writer}",  # older setups' grants
        f"alter default privileges for role {owner} in schema {reco} revoke execute on functions from public",
        # reader: SELECT on reco, except who asked to be forgotten; nothing in app
        f"grant select on all tables in schema {reco} to {reader}",
        f"revoke select on {erased} from {reader}",
        f"alter default privileges for role {owner} in schema {reco} grant select on tables to {reader}",
        f"revoke all on schema {app} from {reader}",
        f"revoke all on all tables in schema {app} from {reader}",
        # writer: read everything it publishes from and to; write only rows, never DDL
        f"grant select on all tables in schema {reco} to {writer}",
        f"grant insert, update on {reco}.runs, {reco}.model_decisions, {reco}.publish_lock to {writer}",
        f"grant insert on {erased}, {audit} to {writer}",
        f"grant delete on {history} to {writer}",
        f"grant usage, select on all sequences in schema {reco} to {writer}",
        f"grant execute on all functions in schema {reco} to {writer}",
        # a run's new tables, made by the owner function: the writer COPYs into them
        f"alter default privileges for role {owner} in schema {reco} grant select, insert on tables to {writer}",
        f"grant usage on schema {app} to {writer}",
        f"grant select on all tables in schema {app} to {writer}",
        f"alter default privileges in schema {app} grant select on tables to {writer}",
    ]


def _outputs():
    from tasks.publish.tables import OUTPUTS

    return OUTPUTS


def grant_roles(config: PipelineConfig, reader_password: str | None = None,
                writer_password: str | None = None) -> dict[str, bool]:
    """Set up the owner, writer and reader roles and `reco` on the configured server; returns {role: created}.

    Must run as a role allowed to create roles and schemas (a superuser or a DBA).
    """
    from tasks.publish import schema as reco_schema
    from tasks.registry import decisions

    d = config.database
    db.quote_ident(d.reco_schema), db.quote_ident(d.app_schema)
    engine = db.get_engine(config)
    try:
        with engine.begin() as conn:
            # Roles are cluster-wide: serialise concurrent setups on the same server.
            conn.execute(sa.text("select pg_advisory_xact_lock(1347568963, -1)"))
            created = {d.owner_role: _ensure_role(conn, d.owner_role, None, login=False),
                       d.reader_role: _ensure_role(conn, d.reader_role, reader_password),
                       d.writer_role: _ensure_role(conn, d.writer_role, writer_password)}
            superuser = conn.execute(sa.text("select rolsuper from pg_roles where rolname = current_user")).scalar()
            if not superuser:  # a DBA with CREATEROLE acts as the owner through membership
                conn.execute(sa.text(f"grant {db.quote_ident(d.owner_role)} to current_user"))
            conn.execute(sa.text(f"create schema if not exists {db.quote_ident(d.app_schema)}"))
            _hand_to_owner(conn, d.reco_schema, d.owner_role)
            conn.execute(sa.text(f"set local role {db.quote_ident(d.owner_role)}"))
            reco_schema.create_tables(conn, d.reco_schema)
            decisions.ensure_table(conn, config)
            conn.execute(sa.text("reset role"))
            for statement in _grants(config):
                conn.execute(sa.text(statement))
    except sa.exc.DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise ConfigError(
            f"could not set up roles {d.owner_role}/{d.writer_role}/{d.reader_role} on {db.safe_url(engine.url)}: "
            f"{detail}. Run `prismrec db grant` as a user allowed to create roles (CREATEROLE) and schemas, "
            f"and to grant on schemas {d.reco_schema!r} and {d.app_schema!r}; nothing was changed."
        ) from None
    log.info("roles ready on %s: %s owns %s, %s (pipeline), %s (read %s)%s", db.safe_url(engine.url), d.owner_role,
             d.reco_schema, d.writer_role, d.reader_role, d.reco_schema,
             "; created " + ", ".join(r for r, new in created.items() if new) if any(created.values()) else "")
    return created
