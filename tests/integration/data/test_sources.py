"""The MovieLens loader against a real Postgres and the genuine MovieLens-100K files."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from tasks.config import load_config
from tasks.data.sources import load_movielens
from tasks.errors import ConfigError, PrismRecError, SourceDataError

FINGERPRINT = """
    select count(*),
           md5(string_agg(concat_ws(',', user_id, item_id, rating, extract(epoch from occurred_at)), ';'
                          order by source_row))
    from {schema}.interactions
"""


def scalar(engine: sa.Engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def table_counts(engine: sa.Engine, schema: str) -> dict[str, int]:
    return {t: scalar(engine, f"select count(*) from {schema}.{t}") for t in ("items", "users", "interactions")}


def test_movielens_100k_matches_the_protocol(ml100k, engine):
    assert (ml100k.dataset, ml100k.items, ml100k.users, ml100k.interactions) == ("movielens-100k", 1682, 943, 100_000)
    assert table_counts(engine, "app") == {"items": 1682, "users": 943, "interactions": 100_000}
    assert scalar(engine, "select count(distinct user_id) from app.interactions") == 943
    assert scalar(engine, "select count(distinct item_id) from app.interactions") == 1682
    assert scalar(engine, "select min(extract(epoch from occurred_at))::bigint from app.interactions") == 874724710
    assert scalar(engine, "select max(extract(epoch from occurred_at))::bigint from app.interactions") == 893286638
    with engine.connect() as conn:
        first = conn.execute(sa.text(
            "select user_id, item_id, rating, extract(epoch from occurred_at)::bigint "
            "from app.interactions where source_row = 1")).one()
        toy_story = conn.execute(sa.text("select title, genres, year, description from app.items where item_id = 1")).one()
        video = conn.execute(sa.text("select title, year from app.items where item_id = 1412")).one()
        placeholder = conn.execute(sa.text("select title, year, description from app.items where item_id = 267")).one()
        suspects = conn.execute(sa.text("select description from app.items where item_id = 12")).scalar_one()
        user = conn.execute(sa.text("select age, gender, occupation, zip_code from app.users where user_id = 1")).one()
        indexes = set(conn.execute(sa.text(
            "select indexdef from pg_indexes where schemaname = 'app' and tablename = 'interactions'")).scalars())
    assert tuple(first) == (196, 242, 3.0, 881250949)  # first line of u.data
    assert tuple(toy_story) == ("Toy Story", "Animation|Children's|Comedy", 1995,
                                "Toy Story (1995). Genres: Animation, Children's, Comedy.")
    assert tuple(video) == ("Land Before Time III: The Time of the Great Giving", 1995)
    assert tuple(placeholder) == ("unknown", None, "unknown.")
    assert suspects == "The Usual Suspects (1995). Genres: Crime, Thriller."
    assert tuple(user) == (24, "M", "technician", "85711")
    assert any("(user_id, occurred_at)" in d for d in indexes) and any("(occurred_at)" in d for d in indexes)


def test_loading_twice_leaves_identical_data(ml100k, config, engine):
    before = scalar(engine, FINGERPRINT.format(schema="app"))
    again = load_movielens(config, "movielens-100k")
    assert again.to_dict() | {"seconds": 0} == ml100k.to_dict() | {"seconds": 0}
    assert scalar(engine, FINGERPRINT.format(schema="app")) == before
    assert table_counts(engine, "app") == {"items": 1682, "users": 943, "interactions": 100_000}


def test_max_users_keeps_the_first_users_and_every_item(ml100k, base_overrides, engine):
    sliced = load_config({**base_overrides, "database.app_schema": "app_slice", "source.max_users": 50})
    summary = load_movielens(sliced, "movielens-100k")
    expected = scalar(engine, "select count(*) from app.interactions where user_id <= 50")
    assert (summary.users, summary.items, summary.interactions) == (50, 1682, expected)
    assert table_counts(engine, "app_slice") == {"items": 1682, "users": 50, "interactions": expected}
    assert scalar(engine, "select max(user_id) from app_slice.users") == 50
    assert scalar(engine, "select max(user_id) from app_slice.interactions") == 50
    assert table_counts(engine, "app")["interactions"] == 100_000  # the shared schema is untouched


def test_failed_write_leaves_the_previous_data(ml100k, base_overrides, engine):
    # A user's own items table with a required column the loader does not fill: COPY fails mid-load.
    with engine.begin() as conn:
        conn.execute(sa.text("drop schema if exists app_strict cascade; create schema app_strict"))
        conn.execute(sa.text("create table app_strict.items (item_id bigint primary key, price integer not null)"))
        conn.execute(sa.text("insert into app_strict.items values (7, 999)"))
    strict = load_config({**base_overrides, "database.app_schema": "app_strict"})
    with pytest.raises(SourceDataError, match="Nothing was changed"):
        load_movielens(strict, "movielens-100k")
    with engine.connect() as conn:
        assert conn.execute(sa.text("select item_id, price from app_strict.items")).all() == [(7, 999)]
        tables = set(conn.execute(sa.text(
            "select table_name from information_schema.tables where table_schema = 'app_strict'")).scalars())
    assert tables == {"items"}  # the tables the failed load created were rolled back too


def test_unknown_dataset_is_a_user_error(ml100k, config, engine):
    with pytest.raises(ConfigError, match="movielens-100k, movielens-1m"):
        load_movielens(config, "movielens-20m")
    assert table_counts(engine, "app")["interactions"] == 100_000


def test_failed_download_says_what_to_do(base_overrides, tmp_path, monkeypatch):
    # A real pip run against an index that refuses connections (nothing cached, no local wheels).
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
    offline = load_config({**base_overrides, "source.cache_dir": str(tmp_path / "empty-cache"),
                           "database.app_schema": "app_offline"})
    with pytest.raises(SourceDataError, match="recbole==1.2.1.*copy recbole-1.2.1-py3-none-any.whl into") as err:
        load_movielens(offline, "movielens-100k")
    assert isinstance(err.value, PrismRecError)
    assert not list((tmp_path / "empty-cache").glob("*.whl"))
