"""`reco_reader` / `reco_writer` on the real server: what each role can and cannot do (checked as the role)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import sqlalchemy as sa

RECO, APP = "roles_reco", "roles_app"
PASSWORD = "Pw-never-logged-7c41"


@pytest.fixture(scope="module")
def roles_config(config):
    return dataclasses.replace(config, database=dataclasses.replace(config.database, app_schema=APP, reco_schema=RECO))


@pytest.fixture(scope="module")
def granted(roles_config, engine):
    """Roles set up twice (idempotence) over existing tables; one more table and a view created afterwards."""
    from tasks.publish.roles import grant_roles

    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {RECO} cascade; drop schema if exists {APP} cascade"))
        conn.execute(sa.text(f"create schema {APP}; create table {APP}.interactions (user_id bigint, item_id bigint)"))
        conn.execute(sa.text(f"insert into {APP}.interactions values (1, 10)"))
        conn.execute(sa.text(f"create schema {RECO}; create table {RECO}.runs (materialization_id bigint)"))
        conn.execute(sa.text(f"insert into {RECO}.runs values (1)"))
    first = grant_roles(roles_config)
    second = grant_roles(roles_config)
    with engine.begin() as conn:  # created after the grant: covered by default privileges
        conn.execute(sa.text(f"create table {RECO}.later (user_id bigint, item_id bigint)"))
        conn.execute(sa.text(f"insert into {RECO}.later values (7, 70)"))
        conn.execute(sa.text(f"create view {RECO}.current_set as select * from {RECO}.later"))
    return first, second


def _as(engine, role: str, statement: str):
    """Run one statement as `role` (SET ROLE drops the session's superuser rights), then roll back."""
    with engine.connect() as conn:
        conn.execute(sa.text(f"set role {role}"))
        try:
            result = conn.execute(sa.text(statement))
            return result.all() if result.returns_rows else result.rowcount
        finally:
            conn.rollback()
            conn.execute(sa.text("reset role"))
            conn.commit()


def test_grant_is_idempotent(granted):
    first, second = granted
    assert set(first) == {"reco_reader", "reco_writer"}
    assert second == {"reco_reader": False, "reco_writer": False}


@pytest.mark.parametrize("table", ["runs", "later", "current_set"])
def test_reader_reads_reco_including_tables_created_later(granted, engine, table):
    assert len(_as(engine, "reco_reader", f"select * from {RECO}.{table}")) == 1


@pytest.mark.parametrize("statement", [
    f"insert into {RECO}.later values (1, 1)",
    f"update {RECO}.runs set materialization_id = 2",
    f"delete from {RECO}.later",
    f"truncate {RECO}.runs",
    f"create table {RECO}.intruder (x int)",
    f"drop table {RECO}.later",
])
def test_reader_cannot_write_reco(granted, engine, statement):
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied|must be owner"):
        _as(engine, "reco_reader", statement)


def test_reader_cannot_read_app(granted, engine):
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied for schema roles_app"):
        _as(engine, "reco_reader", f"select * from {APP}.interactions")


def test_writer_reads_app_and_writes_reco(granted, engine):
    assert _as(engine, "reco_writer", f"select * from {APP}.interactions") == [(1, 10)]
    assert _as(engine, "reco_writer", f"insert into {RECO}.later values (2, 20)") == 1
    assert _as(engine, "reco_writer", f"create table {RECO}.next_run (x int)") == -1
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        _as(engine, "reco_writer", f"insert into {APP}.interactions values (2, 20)")


def test_reader_logs_in_with_its_own_credentials(granted, roles_config, database_url, caplog):
    """A password set by grant_roles never reaches the log; the role can log in and is still read-only."""
    from tasks.publish.roles import grant_roles

    with caplog.at_level(logging.DEBUG):
        grant_roles(roles_config, reader_password=PASSWORD)
    assert PASSWORD not in caplog.text and "reco_reader" in caplog.text
    url = sa.make_url(database_url).set(username="reco_reader", password=PASSWORD)
    reader = sa.create_engine(url)
    try:
        with reader.connect() as conn:
            assert conn.execute(sa.text("select current_user")).scalar() == "reco_reader"
            assert conn.execute(sa.text(f"select count(*) from {RECO}.later")).scalar() == 1
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(f"select * from {APP}.interactions"))
    finally:
        reader.dispose()


def test_unsafe_schema_names_are_refused(roles_config):
    from tasks.errors import ConfigError
    from tasks.publish.roles import grant_roles

    bad = dataclasses.replace(roles_config, database=dataclasses.replace(roles_config.database, app_schema="app; drop"))
    with pytest.raises(ConfigError, match="not a valid SQL identifier"):
        grant_roles(bad)
