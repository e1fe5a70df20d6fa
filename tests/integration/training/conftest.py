"""Fixtures of the training tests: ML-100K prepared once, and one two-process training they share."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

# Two processes, a few steps: the run the one-node DDP test and the two-node comparison share.
# One thread each, so that one machine with two processes and two machines with one process each
# do the same arithmetic.
TWO_PROCESSES = {"train.epochs": 2, "train.max_steps_per_epoch": 2, "train.batch_size": 16,
                 "train.threads_per_proc": 1}


@pytest.fixture(scope="package")
def dataset_dir(ml100k, config, tmp_path_factory):
    """The test run's ML-100K, extracted and prepared (5-core, leave-one-out) as the pipeline does."""
    from tasks.data.extract import extract_snapshot
    from tasks.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("training")
    snapshot = extract_snapshot(config, datetime(1998, 5, 1, tzinfo=UTC), root / "snapshot")
    return prepare_dataset(config, snapshot.path, root / "dataset").path


@pytest.fixture(scope="package")
def one_node_two_processes(dataset_dir, base_overrides, tmp_path_factory) -> tuple[Path, object]:
    """(model folder, config) of a two-process gloo training on one machine."""
    from tasks.config import load_config
    from tasks.training.launcher import launch_training

    config = load_config({**base_overrides, **TWO_PROCESSES, "train.nproc": 2})
    return launch_training(config, dataset_dir, tmp_path_factory.mktemp("one-node") / "model"), config
