"""The DDL a publish needs, as functions that run with the schema owner's rights.

Partitions are created, indexed, attached and dropped by `reco`'s owner (the `reco_owner` role
that `prismrec db grant` sets up, or whoever created the schema), never by `reco_writer`:
ATTACH and DROP need ownership of the history tables, and a pipeline role that owned them could
also alter, drop or put triggers on them. So the owner defines four SECURITY DEFINER functions
with a fixed search_path, each taking a run id (a number, so nothing a caller passes reaches
SQL as text), and grants EXECUTE on them to the writer only (PUBLIC's default EXECUTE is
revoked). The writer still COPYs the rows itself, into tables the owner created for that run.
"""

from __future__ import annotations

import sqlalchemy as sa

from tasks.db import quote_ident
from tasks.privacy import ERASED_USERS
from tasks.publish.tables import OUTPUTS, history_table, lock_schema, make_current, partition_table

FUNCTIONS = {
    "create_run_partitions": "Creates one publish's standalone tables (the writer COPYs into them).",
    "index_run_partitions": "Builds one publish's keys and indexes and analyzes its tables.",
    "attach_run_partitions": "Drops erased users' rows from one running publish's tables and attaches them "
                             "to the history tables.",
    "drop_run_partitions": "Retention: drops the tables of finished, not current publishes.",
}
SIGNATURES = {name: "bigint[]" if name == "drop_run_partitions" else "bigint" for name in FUNCTIONS}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _partition(output) -> str:
    """A format() expression for the run's table of `output` (schema-qualified, %I-quoted)."""
    return f"{_literal(output.name + '_m')} || mid"


def _running_check(s: str) -> str:
    return (f"  if not exists (select 1 from {s}.runs where materialization_id = mid and status = 'running') then\n"
            "    raise exception 'materialization % is not a running publish', mid using errcode = '22023';\n"
            "  end if;\n")


def _create_body(s: str) -> str:
    lines = []
    for output in OUTPUTS:
        columns = ", ".join(f"{quote_ident(n)} {t}" for n, t, _ in output.columns)
        # The run id comes from the default, so COPY does not ship it per row; the CHECK lets
        # ATTACH skip its validation scan.
        statement = (f"create table {s}.%I (materialization_id bigint not null default %s "
                     f"check (materialization_id = %s), {columns})")
        lines.append(f"  execute format({_literal(statement)}, {_partition(output)}, mid, mid);")
    # No look at `runs` here: the lock it takes would last through the long COPY and hold up every
    # other publisher's swap (which locks `runs` exclusively). CREATE fails on an existing name.
    return "\n".join(lines)


def _index_body(s: str) -> str:
    lines = []
    for output in OUTPUTS:
        key = ", ".join(quote_ident(c) for c in ("materialization_id", *output.key))
        lines.append(f"  execute format({_literal(f'alter table {s}.%I add primary key ({key})')}, {_partition(output)});")
        for index_columns in output.indexes.values():
            cols = ", ".join(quote_ident(c) for c in ("materialization_id", *index_columns))
            lines.append(f"  execute format({_literal(f'create index on {s}.%I ({cols})')}, {_partition(output)});")
        lines.append(f"  execute format({_literal(f'analyze {s}.%I')}, {_partition(output)});")
    return "\n".join(lines)


def _attach_body(s: str) -> str:
    lines = []
    for output in OUTPUTS:
        if any(name == "user_id" for name, _, _ in output.columns):
            # People erased while this run was scoring (under the same lock as the erasure)
            statement = f"delete from {s}.%I where user_id in (select user_id from {s}.{quote_ident(ERASED_USERS)})"
            lines.append(f"  execute format({_literal(statement)}, {_partition(output)});")
        attach = f"alter table {s}.{quote_ident(history_table(output))} attach partition {s}.%I for values in (%s)"
        lines.append(f"  execute format({_literal(attach)}, {_partition(output)}, mid);")
    return _running_check(s) + "\n".join(lines)


def _drop_body(s: str) -> str:
    parents = ", ".join(f"{s}.{quote_ident(history_table(o))}" for o in OUTPUTS)
    drops = "\n".join(f"    execute format({_literal(f'drop table if exists {s}.%I')}, {_partition(o)});"
                      for o in OUTPUTS)
    # Parents first, so readers (who lock parent then partitions) never deadlock with the drops.
    return (f"  lock table {parents} in access exclusive mode;\n"
            "  foreach mid in array mids loop\n"
            f"    if exists (select 1 from {s}.runs where materialization_id = mid and (is_current or status = 'running')) then\n"
            "      raise exception 'materialization % is current or running; retention keeps it', mid using errcode = '22023';\n"
            "    end if;\n"
            f"{drops}\n"
            f"    update {s}.runs set output_kept = false where materialization_id = mid;\n"
            "  end loop;\n")


def install(conn: sa.Connection, schema: str) -> None:
    """(Re)define the functions as the current role (the schema's owner); only their owner may run them
    until `tasks.publish.roles` grants EXECUTE to the writer."""
    s = quote_ident(schema)
    bodies = {"create_run_partitions": _create_body(s), "index_run_partitions": _index_body(s),
              "attach_run_partitions": _attach_body(s), "drop_run_partitions": _drop_body(s)}
    for name, doc in FUNCTIONS.items():
        argument = "mids bigint[]" if SIGNATURES[name] == "bigint[]" else "mid bigint"
        declare = "declare mid bigint;\n" if name == "drop_run_partitions" else ""
        conn.execute(sa.text(
            f"create or replace function {s}.{name}({argument}) returns void language plpgsql security definer "
            f"set search_path = pg_catalog, pg_temp as $prismrec$\n{declare}begin\n{bodies[name]}\nend\n$prismrec$"))
        conn.execute(sa.text(f"revoke all on function {s}.{name}({SIGNATURES[name]}) from public"))
        conn.execute(sa.text(f"comment on function {s}.{name}({SIGNATURES[name]}) is {_literal(doc)}"))


def installed(conn: sa.Connection, schema: str) -> bool:
    """Whether every function exists in `schema`."""
    names = [f"{quote_ident(schema)}.{name}({SIGNATURES[name]})" for name in FUNCTIONS]
    return bool(conn.execute(sa.text("select bool_and(to_regprocedure(n) is not null) from unnest(cast(:n as text[])) n"),
                             {"n": names}).scalar())


def call(conn: sa.Connection, schema: str, name: str, argument) -> None:
    """Run one of the functions on `conn`'s transaction."""
    cast = "bigint[]" if SIGNATURES[name] == "bigint[]" else "bigint"
    conn.execute(sa.text(f"select {quote_ident(schema)}.{name}(cast(:a as {cast}))"),
                 {"a": [int(x) for x in argument] if cast == "bigint[]" else int(argument)})


def create_partitions(conn: sa.Connection, schema: str, materialization_id: int) -> dict[str, str]:
    """Standalone tables for one running run's rows, made by the owner (attached later by `swap_in`);
    output name -> qualified table. Spelled out rather than LIKE <parent>, so that the long COPY
    phase holds no lock on the parent (retention needs it exclusively)."""
    call(conn, schema, "create_run_partitions", materialization_id)
    s, mid = quote_ident(schema), int(materialization_id)
    return {output.name: f"{s}.{quote_ident(partition_table(output, mid))}" for output in OUTPUTS}


def index_partitions(conn: sa.Connection, schema: str, materialization_id: int) -> None:
    """Build each partition's keys and indexes after COPY (faster than maintaining them row by row)."""
    call(conn, schema, "index_run_partitions", materialization_id)


def swap_in(conn: sa.Connection, schema: str, materialization_id: int) -> None:
    """Attach a run's partitions (erased users' rows left out) and make it current, inside the publishing
    transaction and under the schema lock."""
    lock_schema(conn, schema)
    call(conn, schema, "attach_run_partitions", materialization_id)
    make_current(conn, schema, materialization_id)


def drop_outputs(conn: sa.Connection, schema: str, materialization_ids: list[int]) -> None:
    """Drop runs' partitions (retention), by the owner; never the current or a running run's."""
    call(conn, schema, "drop_run_partitions", materialization_ids)
