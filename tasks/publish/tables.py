"""The `reco` schema BI tools read: history tables partitioned by materialization, current-set views.

Each output (`user_recommendations`, `user_interests`, `similar_items`) is stored in
`<output>_history`, LIST-partitioned by `materialization_id`: one partition per successful
run, so retention drops whole partitions instead of deleting rows. The view `<output>`
shows the rows of the run `reco.runs` marks `is_current`; moving that flag and attaching
the new partitions happen in one transaction (which briefly locks `runs` so no query can be
planned before the swap and run after it), so a query sees the old set or the new set.
Every table, view and column carries a COMMENT so BI tools can show what it means. The
schema's owner creates these once (tasks.publish.schema); a run's partitions are made and
attached by the owner's functions (tasks.publish.owner_functions), never by the pipeline's role.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from tasks import db, rowlocks
from tasks.db import quote_ident

LOCK_NAMESPACE = 1347568963  # pg advisory lock class for PrismRec ("PREC"): only while setting the schema up


@dataclass(frozen=True)
class Output:
    name: str
    doc: str
    columns: tuple[tuple[str, str, str], ...]  # (name, SQL type, comment)
    key: tuple[str, ...]  # primary key after materialization_id: one row per key per run
    indexes: dict[str, tuple[str, ...]]  # index suffix -> columns after materialization_id
    extra_view_columns: tuple[tuple[str, str, str], ...] = ()  # (name, SQL expression over h, comment)


_FALLBACK = ("is_fallback", "h.interest_id < 0",
             "True for the popularity fallback given to users with no usable viewing history.")

OUTPUTS: tuple[Output, ...] = (
    Output(
        "user_recommendations",
        "Top-k recommendations per user from the champion model (the current set: one run, complete). "
        "One user's list: where user_id = ? order by rank. Who gets an item: where item_id = ?.",
        (
            ("user_id", "bigint not null", "app.users.user_id the list is for."),
            ("rank", "integer not null", "1 = best; ranks run 1..k without gaps per user."),
            ("item_id", "bigint not null", "app.items.item_id recommended; never an item already in the user's history."),
            ("title", "text", "Display title of the recommended item (\"The Piano\", as explanations write it)."),
            ("score", "real not null", "The pick's score under its interest (a logit; comparable within one user's list only). "
                                         "Lists are ordered by rank, which shares picks out between interests: a later rank can score higher."),
            ("interest_id", "integer not null",
             "Which of the user's interest vectors picked this item: 0 = the recent interest, 1.. = "
             "long-term interests; -1 = popularity fallback."),
            ("explanation", "text", "Human-readable reason, e.g. 'because you watched A, B'; for a new item "
                                    "'new: like A, B you watched'."),
            ("is_new_item", "boolean not null default false",
             "True for a new item: one the model never saw rated in training (added to the catalogue since, or "
             "with too few ratings), placed by its text; a list holds at most materialize.max_new_items."),
        ),
        key=("user_id", "rank"),
        indexes={"item": ("item_id", "rank")},
        extra_view_columns=(_FALLBACK,),
    ),
    Output(
        "user_interests",
        "The interests behind each user's current list: how much of the list each produced and what it is about.",
        (
            ("user_id", "bigint not null", "app.users.user_id."),
            ("interest_id", "integer not null",
             "Interest vector (0-based) as in user_recommendations.interest_id: 0 = the recent interest "
             "(what the user watches now), 1.. = long-term interests; -1 = popularity fallback."),
            ("weight", "real not null", "Share of the user's list this interest produced (a user's weights sum to 1)."),
            ("label", "text", "Readable summary: recent or long-term, dominant genres of what the interest "
                              "recommends and the history titles it attends to most."),
        ),
        key=("user_id", "interest_id"),
        indexes={},
        extra_view_columns=(_FALLBACK,),
    ),
    Output(
        "similar_items",
        "Nearest items by the model's item tower (cosine of item vectors): 'more like this'.",
        (
            ("item_id", "bigint not null", "app.items.item_id."),
            ("rank", "integer not null", "1 = most similar."),
            ("similar_item_id", "bigint not null", "A similar app.items.item_id (never item_id itself)."),
            ("title", "text", "Display title of item_id."),
            ("similar_title", "text", "Display title of similar_item_id."),
            ("score", "real not null", "Cosine similarity of the two item vectors, -1..1."),
        ),
        key=("item_id", "rank"),
        indexes={},
    ),
)

_RUN_COLUMNS = {
    "materialization_id": ("bigint generated always as identity primary key",
                           "One materialization attempt; history rows and views carry it."),
    "run_key": ("text not null", "Logical run: model, version and logical date; a rerun with the same key "
                                 "reuses the succeeded output instead of adding a copy."),
    "model_name": ("text not null", "MLflow registered model."),
    "model_version": ("text not null", "MLflow model version (the champion when the run started)."),
    "run_id": ("text", "MLflow run that produced the model version."),
    "logical_date": ("timestamptz", "The orchestrator's logical date of the run, if any."),
    "status": ("text not null check (status in ('running', 'succeeded', 'failed'))",
               "running, succeeded or failed; a run whose process died is marked failed by the next run."),
    "is_current": ("boolean not null default false", "True for the one run the current-set views show."),
    "output_kept": ("boolean not null default false", "Whether this run's rows are still in the history tables "
                                                      "(older runs are dropped by retention)."),
    "started_at": ("timestamptz not null default now()", "When the run started (UTC)."),
    "finished_at": ("timestamptz", "When it succeeded or failed."),
    "generated_at": ("timestamptz", "When its recommendations were generated (UTC)."),
    "top_k": ("integer", "List length requested per user."),
    "users": ("integer", "Users scored."),
    "fallback_users": ("integer", "Users with no usable history, given the popularity list."),
    "rows": ("bigint", "Rows in user_recommendations for this run."),
    "interest_rows": ("bigint", "Rows in user_interests for this run."),
    "similar_rows": ("bigint", "Rows in similar_items for this run."),
    "retrieval": ("text", "How lists were drawn from the catalogue: exact (every item ranked) or the candidate "
                          "index's settings (lists, probes, candidates per interest)."),
    "retrieval_recall": ("real", "With the candidate index: the share of exact ranking's items it listed, "
                                 "measured on a sample of users (1 = the same lists)."),
    "backend_pid": ("integer", "Postgres backend of the publishing session (to terminate a stuck run)."),
    "error": ("text", "Why the run failed (never contains credentials)."),
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comment(conn: sa.Connection, kind: str, target: str, text: str) -> None:
    conn.execute(sa.text(f"comment on {kind} {target} is {_literal(text)}"))


def history_table(output: Output) -> str:
    return f"{output.name}_history"


def partition_table(output: Output, materialization_id: int) -> str:
    return f"{output.name}_m{int(materialization_id)}"


def lock_schema(conn: sa.Connection, schema: str) -> None:
    """Transaction-scoped lock that serialises DDL, swaps, retention and erasures across publishers: the
    `schema` row of `publish_lock` (tasks.rowlocks), which reco_reader cannot take. Subject to the
    caller's lock_timeout."""
    rowlocks.lock(conn, schema, rowlocks.SCHEMA_LOCK)


def create_tables(conn: sa.Connection, schema: str) -> None:
    """Create what is missing of the schema, `publish_lock`, `runs`, the partitioned history tables and
    the current-set views, as the current role (their owner); tasks.publish.schema adds the rest."""
    quote_ident(schema)
    # Only while setting up (a reader taking it then delays the setup, never a publish).
    conn.execute(sa.text("select pg_advisory_xact_lock(:ns, :key)"), {"ns": LOCK_NAMESPACE, "key": 0})
    db.ensure_schema(conn, schema)
    rowlocks.create_table(conn, schema)
    if not sa.inspect(conn).has_table("runs", schema=schema):
        _create_runs_and_history(conn, schema)
    _add_new_columns(conn, schema)
    _ensure_views(conn, schema)


def _create_runs_and_history(conn: sa.Connection, schema: str) -> None:
    s = quote_ident(schema)
    _comment(conn, "schema", s, "PrismRec's published recommendations, for BI tools (read-only for reco_reader).")
    columns = ",\n".join(f"{quote_ident(n)} {t}" for n, (t, _) in _RUN_COLUMNS.items())
    conn.execute(sa.text(f"create table {s}.runs ({columns})"))
    conn.execute(sa.text(f"create unique index runs_one_current on {s}.runs (is_current) where is_current"))
    conn.execute(sa.text(f"create index runs_by_key on {s}.runs (run_key, status)"))
    _comment(conn, "table", f"{s}.runs", "One row per materialization attempt: model version, timing, rows, "
                                         "status (running/succeeded/failed) and error.")
    for name, (_, text) in _RUN_COLUMNS.items():
        _comment(conn, "column", f"{s}.runs.{quote_ident(name)}", text)
    for output in OUTPUTS:
        table = f"{s}.{quote_ident(history_table(output))}"
        columns = ",\n".join(f"{quote_ident(n)} {t}" for n, t, _ in output.columns)
        key = ", ".join(quote_ident(c) for c in ("materialization_id", *output.key))
        conn.execute(sa.text(
            f"create table {table} (materialization_id bigint not null, {columns}, primary key ({key})) "
            "partition by list (materialization_id)"
        ))
        for suffix, index_columns in output.indexes.items():
            cols = ", ".join(quote_ident(c) for c in ("materialization_id", *index_columns))
            conn.execute(sa.text(f"create index {quote_ident(f'{output.name}_by_{suffix}')} on {table} ({cols})"))
        _comment(conn, "table", table, f"History of {output.name}: every kept run's rows, one partition per "
                                       "run (join reco.runs on materialization_id). " + output.doc)
        _comment(conn, "column", f"{table}.materialization_id", "reco.runs.materialization_id of the run.")
        for name, _, text in output.columns:
            _comment(conn, "column", f"{table}.{quote_ident(name)}", text)


def _ensure_views(conn: sa.Connection, schema: str) -> None:
    """Create the current-set views if missing (replacing a plain table left by older versions)."""
    s = quote_ident(schema)
    for output in OUTPUTS:
        kind = conn.execute(sa.text(
            "select c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = :schema and c.relname = :name"), {"schema": schema, "name": output.name}).scalar()
        if kind == "v":
            continue
        view = f"{s}.{quote_ident(output.name)}"
        if kind is not None:
            conn.execute(sa.text(f"drop table {view} cascade"))
        columns = ", ".join(f"h.{quote_ident(n)}" for n, _, _ in output.columns)
        extras = "".join(f", {expression} as {quote_ident(n)}" for n, expression, _ in output.extra_view_columns)
        conn.execute(sa.text(f"""
            create view {view} as
            select {columns}{extras}, r.model_name, r.model_version, r.run_id, r.generated_at, h.materialization_id
            from {s}.{quote_ident(history_table(output))} h
            join {s}.runs r on r.materialization_id = h.materialization_id
            where h.materialization_id = (select materialization_id from {s}.runs where is_current)"""))
        _comment(conn, "view", view, output.doc)
        docs = [(n, d) for n, _, d in output.columns] + [(n, d) for n, _, d in output.extra_view_columns] + [
            ("model_name", _RUN_COLUMNS["model_name"][1]), ("model_version", _RUN_COLUMNS["model_version"][1]),
            ("run_id", _RUN_COLUMNS["run_id"][1]), ("generated_at", _RUN_COLUMNS["generated_at"][1]),
            ("materialization_id", "reco.runs.materialization_id of the current run."),
        ]
        for name, text in docs:
            _comment(conn, "column", f"{view}.{quote_ident(name)}", text)
    if conn.execute(sa.text("select to_regclass(:v)"), {"v": f"{schema}.item_exposure"}).scalar() is None:
        view = f"{s}.item_exposure"
        conn.execute(sa.text(f"""
            create view {view} as
            select item_id, min(title) as title, count(*) as users,
                   count(*) filter (where rank <= 10) as users_top10, avg(rank)::real as mean_rank
            from {s}.user_recommendations group by item_id"""))
        _comment(conn, "view", view, "Exposure of each item in the current lists: top items by exposure are "
                                     "`order by users desc`.")
        for name, text in (("item_id", "app.items.item_id."), ("title", "Item title."),
                           ("users", "Users whose list contains the item."),
                           ("users_top10", "Users who get it in their top 10."),
                           ("mean_rank", "Average rank where it appears.")):
            _comment(conn, "column", f"{view}.{quote_ident(name)}", text)


def missing_columns(conn: sa.Connection, schema: str) -> int:
    """How many OUTPUTS columns the history tables lack (a schema set up by an older PrismRec); read from
    the catalogue, which every role sees whatever its privileges."""
    wanted = [(history_table(output), name) for output in OUTPUTS for name, _, _ in output.columns]
    wanted += [("runs", name) for name in _RUN_COLUMNS]
    return conn.execute(sa.text(
        "select count(*) from unnest(cast(:tables as text[]), cast(:names as text[])) w(t, n) "
        "where not exists (select 1 from pg_attribute a where not a.attisdropped and a.attname = w.n "
        "and a.attrelid = to_regclass(quote_ident(:schema) || '.' || quote_ident(w.t)))"),
        {"schema": schema, "tables": [t for t, _ in wanted], "names": [n for _, n in wanted]}).scalar()


def _add_new_columns(conn: sa.Connection, schema: str) -> None:
    """Bring `runs` and the history tables made by an older PrismRec up to date: add the columns they lack
    (existing rows get the column's default) and drop the view over them, which `_ensure_views` recreates."""
    s = quote_ident(schema)
    present = set(conn.execute(sa.text(
        "select column_name from information_schema.columns where table_schema = :schema and table_name = 'runs'"),
        {"schema": schema}).scalars())
    for name, (sql_type, text) in _RUN_COLUMNS.items():
        if name not in present:  # nullable, no key: an older run reads null
            conn.execute(sa.text(f"alter table {s}.runs add column {quote_ident(name)} {sql_type}"))
            _comment(conn, "column", f"{s}.runs.{quote_ident(name)}", text)
    for output in OUTPUTS:
        history = history_table(output)
        present = set(conn.execute(sa.text(
            "select column_name from information_schema.columns where table_schema = :schema and table_name = :name"),
            {"schema": schema, "name": history}).scalars())
        missing = [(n, t, d) for n, t, d in output.columns if n not in present]
        for name, sql_type, text in missing:
            conn.execute(sa.text(f"alter table {s}.{quote_ident(history)} add column {quote_ident(name)} {sql_type}"))
            _comment(conn, "column", f"{s}.{quote_ident(history)}.{quote_ident(name)}", text)
        if missing:
            conn.execute(sa.text(f"drop view if exists {s}.{quote_ident(output.name)} cascade"))


def make_current(conn: sa.Connection, schema: str, materialization_id: int) -> None:
    """Point the current-set views at a run whose partitions are attached (same transaction as the caller's)."""
    runs = f"{quote_ident(schema)}.runs"
    # Every reader locks `runs` (through the views) before planning. A reader planned before an
    # ATTACH commits but executing after it would look for the new run among the old partitions
    # and find nothing; holding ACCESS EXCLUSIVE here until commit (milliseconds: the data is
    # already written) closes that window.
    conn.execute(sa.text(f"lock table {runs} in access exclusive mode"))
    conn.execute(sa.text(f"update {runs} set is_current = false where is_current and materialization_id <> :m"),
                 {"m": int(materialization_id)})
    conn.execute(sa.text(f"update {runs} set is_current = true, output_kept = true where materialization_id = :m"),
                 {"m": int(materialization_id)})
