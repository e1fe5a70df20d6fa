"""Shared fixtures: an isolated PrismRec home, a real Postgres database and MLflow store per test run.

With PRISMREC_DATABASE_URL set, a fresh database is created on that server for the test run
and dropped afterwards; unset, the embedded Postgres (pgserver) runs in a temporary folder.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the machine's cores: one thread per worker and per training process,
    # or their OpenMP threads spin against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PRISMREC_TRAIN__THREADS_PER_PROC", "1")


# `make test` runs on two xdist workers (`-n 2 --dist loadfile`): each worker has its own home,
# Postgres and MLflow store (the session fixtures below), and a file's tests stay on one worker (they
# share module fixtures, and a story runs in order; the live stack is one file).


def run_root(tmp_path_factory) -> Path:
    """A folder that every xdist worker of this test run shares (each worker's base temp is a folder
    of it), or the base temp itself without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory) -> Path:
    """One `paths.cache` for every home, CLI and service this test run starts, on every worker: the
    frozen MiniLM states of a catalogue are computed by its first training and read by the later ones,
    as homes that share a cache folder do (tasks/training/text_cache.py writes each file atomically)."""
    cache = run_root(tmp_path_factory) / "shared-cache"
    cache.mkdir(exist_ok=True)
    previous = os.environ.get("PRISMREC_PATHS__CACHE")
    os.environ["PRISMREC_PATHS__CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("PRISMREC_PATHS__CACHE", None)
    else:
        os.environ["PRISMREC_PATHS__CACHE"] = previous


@pytest.fixture(scope="session")
def prismrec_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("prismrec-home")
    return home


@pytest.fixture(scope="session")
def database_url(prismrec_home: Path):
    """A real, empty Postgres database for this test run."""
    from tasks.db import embedded_url

    configured = os.environ.get("PRISMREC_DATABASE_URL")
    if not configured:
        yield embedded_url(prismrec_home / "pg")
        return
    admin_url = sa.make_url(configured.replace("postgresql://", "postgresql+psycopg2://", 1))
    name = f"prismrec_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    admin.dispose()


@pytest.fixture(scope="session")
def base_overrides(prismrec_home: Path, database_url: str) -> dict:
    """Dotted-key overrides that point every stage at this test run's stores."""
    return {
        "paths.home": str(prismrec_home),
        "database.url": database_url,
        "registry.tracking_uri": f"sqlite:///{prismrec_home / 'mlflow.db'}",
    }


@pytest.fixture(scope="session")
def config(base_overrides):
    from tasks.config import load_config

    return load_config(base_overrides)


@pytest.fixture(scope="session")
def engine(config):
    from tasks.db import get_engine

    return get_engine(config)


@pytest.fixture(scope="session")
def ml100k(config):
    """The full, real MovieLens-100K loaded once into schema `app` of the test run's database."""
    from tasks.data.sources import load_movielens

    return load_movielens(config, "movielens-100k")


@pytest.fixture(scope="session")
def trained_model_dir(ml100k, config, base_overrides, tmp_path_factory) -> Path:
    """A tiny real PrismRec model (1 epoch, 2 steps under torchrun) on the test run's ML-100K, shared by
    tests. Each xdist worker trains its own: both workers want it at the start of a run, and one waiting
    for the other's single-threaded training would leave a core idle."""
    from datetime import datetime

    from tasks.config import load_config
    from tasks.data.extract import extract_snapshot
    from tasks.data.prepare import prepare_dataset
    from tasks.layout import RunLayout
    from tasks.training.launcher import launch_training

    run = RunLayout(tmp_path_factory.mktemp("trained-model"))
    snapshot = extract_snapshot(config, datetime(1998, 5, 1, tzinfo=UTC), run.snapshot.root)
    dataset = prepare_dataset(config, snapshot.path, run.dataset.root)
    # No weight averaging: one validation an epoch instead of two (the averaging is test_training's).
    tiny = load_config({**base_overrides, "train.epochs": 1, "train.max_steps_per_epoch": 2, "train.nproc": 1,
                        "train.ema_epochs": 0})
    return launch_training(tiny, Path(dataset.path), run.model.root)
