"""Whether `reco` is ready to publish into, and setting it up when the connected role may.

The schema's owner creates everything once (`prismrec db grant`, run by an administrator,
does it as `reco_owner`); with the embedded server the pipeline connects as the superuser and
sets it up on first use. Connected as `reco_writer`, nothing is ever created: a missing piece
means the administrator's setup has not run (or predates this version), and the error says so.
"""

from __future__ import annotations

import sqlalchemy as sa

from tasks import privacy, rowlocks
from tasks.db import quote_ident
from tasks.errors import ConfigError
from tasks.publish import owner_functions
from tasks.publish import tables as reco_tables


def is_set_up(conn: sa.Connection, schema: str) -> bool:
    """Whether every relation and owner function a publish uses exists in `schema`."""
    names = [f"{quote_ident(schema)}.{quote_ident(n)}" for n in (
        "runs", rowlocks.TABLE, *privacy.TABLES, *(o.name for o in reco_tables.OUTPUTS), "item_exposure")]
    found = conn.execute(sa.text("select bool_and(to_regclass(n) is not null) from unnest(cast(:n as text[])) n"),
                         {"n": names}).scalar()
    return bool(found) and owner_functions.installed(conn, schema) and not reco_tables.missing_columns(conn, schema)


def create_tables(conn: sa.Connection, schema: str) -> None:
    """Create what is missing (tables, views, erasure tables) and (re)define the owner functions, as the
    current role, which becomes their owner."""
    reco_tables.create_tables(conn, schema)
    privacy.create_tables(conn, schema)
    owner_functions.install(conn, schema)


def ensure_tables(engine: sa.Engine, schema: str) -> None:
    """Set `schema` up if anything is missing (idempotent; one lookup when all is there)."""
    with engine.begin() as conn:
        if is_set_up(conn, schema):
            return
        try:
            create_tables(conn, schema)
        except sa.exc.ProgrammingError as exc:
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            raise ConfigError(
                f"schema {schema!r} is not set up for publishing, and role {engine.url.username or 'in use'} may not "
                f"set it up ({detail}). An administrator sets it up once with `prismrec db grant` (the owner role, "
                "the tables and the pipeline's grants; docs/database-roles.md); nothing was changed") from None
