"""Least privilege on the real server: an administrator sets `reco` up, `reco_writer` publishes, `reco_reader` reads.

The roles are named per test run (they are cluster-wide) and dropped afterwards. The pipeline
side runs connected as the writer login itself, not through SET ROLE, so every check is the
server's own verdict on what that role may do.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

APP, RECO, MODEL = "roles_app", "roles_reco", "roles_test"
SUFFIX = secrets.token_hex(3)
OWNER, WRITER, READER = (f"{r}_{SUFFIX}" for r in ("reco_owner", "reco_writer", "reco_reader"))
PASSWORD = "Pw-never-logged-7c41"
D1 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def admin_config(config):
    return dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, app_schema=APP, reco_schema=RECO, owner_role=OWNER,
                                     writer_role=WRITER, reader_role=READER),
        registry=dataclasses.replace(config.registry, model_name=MODEL),
        materialize=dataclasses.replace(config.materialize, top_k=5, batch_users=2, keep_runs=1, similar_top_k=3),
    )


@pytest.fixture(scope="module")
def granted(admin_config, engine, database_url, trained_model_dir, tmp_path_factory):
    """Source data with a real catalogue, a first publish by the superuser (a schema set up before the
    roles existed), then the administrator's setup, twice (idempotence)."""
    from tasks.model.recommender import Recommender
    from tasks.publish.materialize import materialize
    from tasks.publish.roles import grant_roles
    from tasks.registry.store import register_candidate

    items = [int(i) for i in Recommender.load(trained_model_dir).item_ids[:30]]
    start = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [{"u": u, "i": items[(u * 7 + n) % 30], "t": start + timedelta(days=u, hours=n)}
            for u in range(1, 7) for n in range(4)]
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {APP} cascade; drop schema if exists {RECO} cascade; "
                             f"create schema {APP}"))
        conn.execute(sa.text(f"create table {APP}.interactions (user_id bigint, item_id bigint, rating real, "
                             "occurred_at timestamptz)"))
        conn.execute(sa.text(f"create table {APP}.users (user_id bigint primary key)"))
        conn.execute(sa.text(f"insert into {APP}.interactions values (:u, :i, 4, :t)"), rows)
        conn.execute(sa.text(f"insert into {APP}.users select generate_series(1, 6)"))
    register_candidate(
        admin_config, model_dir=trained_model_dir, run_dir=tmp_path_factory.mktemp("roles-run") / "run",
        evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["test"]},
        lineage={"run_key": "roles-test"})
    materialize(admin_config, logical_date=D1)
    first = grant_roles(admin_config)
    second = grant_roles(admin_config, writer_password=PASSWORD)
    yield first, second
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {RECO} cascade"))
        for role in (OWNER, WRITER, READER):
            conn.execute(sa.text(f"drop owned by {role}; drop role {role}"))


def _url(database_url: str, role: str) -> str:
    return sa.make_url(database_url).set(username=role, password=PASSWORD).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def writer_config(admin_config, granted, database_url):
    return dataclasses.replace(admin_config, database=dataclasses.replace(
        admin_config.database, url=_url(database_url, WRITER)))


@pytest.fixture(scope="module")
def as_role(database_url, granted):
    """A function running one statement connected as a role (rolled back), returning rows or rowcount."""
    engines = {}

    def run(role: str, statement: str):
        if role not in engines:
            engines[role] = sa.create_engine(_url(database_url, role))
        with engines[role].connect() as conn:
            try:
                result = conn.execute(sa.text(statement))
                return result.all() if result.returns_rows else result.rowcount
            finally:
                conn.rollback()

    yield run
    for engine in engines.values():
        engine.dispose()


@pytest.fixture(scope="module")
def writer_publication(writer_config, granted):
    """The writer publishes a newer set (scores, COPYs, swaps, applies retention) and records a decision."""
    from tasks.publish.materialize import materialize
    from tasks.registry.decisions import ModelDecision, record

    summary = materialize(writer_config, logical_date=D1 + timedelta(days=1))
    decision = record(writer_config, ModelDecision(
        model_name=MODEL, action="promote", decided_by="cli promote", actor="test", candidate_version="1",
        champion_before="1", champion_after="1"))
    return summary, decision


def test_setup_is_idempotent_and_hands_the_schema_to_the_owner(granted, engine):
    first, second = granted
    assert first == {OWNER: True, READER: True, WRITER: True}
    assert second == {OWNER: False, READER: False, WRITER: False}
    with engine.connect() as conn:
        owners = set(conn.execute(sa.text(
            "select distinct pg_get_userbyid(relowner) from pg_class where relnamespace = cast(:s as regnamespace) "
            "and relkind in ('r', 'p', 'v') union select pg_get_userbyid(nspowner) from pg_namespace where nspname = :s "
            "union select distinct pg_get_userbyid(proowner) from pg_proc where pronamespace = cast(:s as regnamespace)"),
            {"s": RECO}).scalars())
        login = conn.execute(sa.text("select rolcanlogin from pg_roles where rolname = :r"), {"r": OWNER}).scalar()
    assert owners == {OWNER} and login is False


def test_writer_runs_publishing_and_decisions(writer_publication, writer_config, engine):
    summary, decision = writer_publication
    assert summary.rows == 6 * 5 and not summary.reused
    with engine.connect() as conn:
        current = conn.execute(sa.text(f"select materialization_id, logical_date from {RECO}.runs where is_current")).one()
        kept = conn.execute(sa.text(f"select count(*) from {RECO}.runs where output_kept")).scalar()
        partition_owners = set(conn.execute(sa.text(
            "select distinct pg_get_userbyid(relowner) from pg_class where relnamespace = cast(:s as regnamespace) "
            "and relname ~ '_m[0-9]+$'"), {"s": RECO}).scalars())
        decided_by = conn.execute(sa.text(f"select actor from {RECO}.model_decisions where decision_id = :d"),
                                  {"d": decision}).scalar()
    assert current.materialization_id == summary.materialization_id and kept == 1  # retention dropped the first
    assert partition_owners == {OWNER} and decided_by == "test"


@pytest.mark.parametrize("statement", [
    f"create table {RECO}.intruder (x int)",
    f"create trigger spy before update on {RECO}.runs for each row execute function pg_catalog.suppress_redundant_updates_trigger()",
    f"drop table {RECO}.runs",
    f"drop view {RECO}.user_recommendations",
    f"alter table {RECO}.runs add column x int",
    f"alter table {RECO}.user_recommendations_history rename to hidden",
    f"truncate {RECO}.model_decisions",
    f"create or replace function {RECO}.drop_run_partitions(mids bigint[]) returns void language sql as 'select 1'",
    f"insert into {APP}.interactions values (1, 1, 1, now())",
    "create schema intruder",
])
def test_writer_cannot_change_what_it_does_not_own(writer_publication, as_role, statement):
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied|must be owner"):
        as_role(WRITER, statement)


@pytest.mark.parametrize("statement", [
    f"insert into {RECO}.runs (run_key, model_name, model_version, status) values ('x', 'x', '1', 'failed')",
    f"update {RECO}.runs set is_current = false",
    f"delete from {RECO}.user_recommendations_history",
    f"create table {RECO}.intruder (x int)",
    f"select name from {RECO}.publish_lock for update",
    f"lock table {RECO}.runs in access exclusive mode",
    f"lock table {RECO}.publish_lock in exclusive mode",
    f"select {RECO}.drop_run_partitions(array[1]::bigint[])",
    f"select {RECO}.create_run_partitions(1)",
    f"select * from {RECO}.erased_users",
    f"select * from {APP}.interactions",
])
def test_reader_can_only_read_the_published_tables(writer_publication, as_role, statement):
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        as_role(READER, statement)


@pytest.mark.parametrize("relation", ["user_recommendations", "user_interests", "similar_items", "item_exposure",
                                      "runs", "model_decisions", "erasures", "user_recommendations_history"])
def test_reader_reads_reco_including_tables_created_later(writer_publication, as_role, relation):
    assert len(as_role(READER, f"select count(*) from {RECO}.{relation}")) == 1
    assert as_role(READER, f"select count(*) from {RECO}.user_recommendations") == [(30,)]


def test_a_reader_holding_every_advisory_lock_stalls_nothing(writer_config, writer_publication, database_url):
    """The keys older versions locked (schema setup, champion, decisions table) held by a reader: a
    publish, a champion move's lock and a decision still go through at once."""
    from tasks.publish.materialize import materialize
    from tasks.registry.decisions import champion_lock

    reader = sa.create_engine(_url(database_url, READER))
    try:
        with reader.connect() as conn:
            for key in ("1347568963, 0", "1347568963, -1", f"hashtext('prismrec.champion:{MODEL}')",
                        "hashtext('prismrec.model_decisions')"):
                assert conn.execute(sa.text(f"select pg_try_advisory_lock({key})")).scalar()
            summary = materialize(writer_config, logical_date=D1 + timedelta(days=2))
            with champion_lock(writer_config, wait=False) as held:
                assert held
            assert not summary.reused
    finally:
        reader.dispose()


def test_writer_login_password_never_reaches_the_log(admin_config, granted, caplog):
    from tasks.publish.roles import grant_roles

    with caplog.at_level(logging.DEBUG):
        grant_roles(admin_config, reader_password=PASSWORD)
    assert PASSWORD not in caplog.text and READER in caplog.text


def test_writer_without_setup_is_told_to_ask_an_administrator(writer_config, writer_publication):
    from tasks.db import get_engine
    from tasks.errors import ConfigError
    from tasks.publish.schema import ensure_tables

    with pytest.raises(ConfigError, match="db grant"):
        ensure_tables(get_engine(writer_config), "roles_elsewhere")


def test_unsafe_names_are_refused(admin_config):
    from tasks.errors import ConfigError
    from tasks.publish.roles import grant_roles

    bad = dataclasses.replace(admin_config, database=dataclasses.replace(admin_config.database, app_schema="app; drop"))
    with pytest.raises(ConfigError, match="not a valid SQL identifier"):
        grant_roles(bad)
