"""The scoring processes' plumbing: the users file they memory-map, and when publishing starts them."""

import dataclasses
from pathlib import Path

import numpy as np

from tasks.config import MaterializeConfig
from tasks.publish.materialize import score_processes
from tasks.publish.scoring import batch_bounds, read_users, write_users


def test_the_users_file_round_trips_ids_and_histories(tmp_path):
    user_ids = np.array([7, 3, 9, 4], np.int64)
    histories = [np.array([5, 6, 7]), np.array([], np.int64), np.array([2**40]), np.array([1, 1])]
    write_users(tmp_path / "users.arrow", user_ids, histories)
    ids, read = read_users(str(tmp_path / "users.arrow"))
    assert ids.tolist() == user_ids.tolist()
    assert [h.tolist() for h in read] == [h.tolist() for h in histories]
    write_users(tmp_path / "none.arrow", np.zeros(0, np.int64), [])
    assert read_users(str(tmp_path / "none.arrow"))[0].size == 0


def test_batches_cover_every_user_once():
    assert batch_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)] and batch_bounds(0, 3) == []
    assert batch_bounds(4, 4) == [(0, 4)]


class _Loaded:
    model_dir = Path("/models/1")


def test_child_processes_score_large_publications_of_a_model_loaded_from_its_folder():
    settings = MaterializeConfig(score_processes=2, score_process_min_users=100)
    assert score_processes(_Loaded(), 100, settings) == 2
    assert score_processes(_Loaded(), 99, settings) == 0  # too few users to pay for the start-up
    assert score_processes(_Loaded(), 10**6, dataclasses.replace(settings, score_processes=0)) == 0
    unsaved = _Loaded()
    unsaved.model_dir = None  # built in memory: nothing a child could load
    assert score_processes(unsaved, 10**6, settings) == 0


def test_a_negative_process_count_is_refused_with_the_setting_named():
    import pytest

    from tasks.config import load_config
    from tasks.errors import ConfigError

    with pytest.raises(ConfigError, match="materialize.score_processes"):
        load_config({"materialize.score_processes": -1}, environ={})
    assert load_config({"materialize.score_processes": "0"}, environ={}).materialize.score_processes == 0


def test_scratch_folders_of_dead_publishers_are_removed_and_live_ones_kept(tmp_path):
    import os

    from tasks.publish.scoring import SCRATCH_PREFIX, remove_orphaned_scratch

    dead_pid = 2**22 + 7  # above Linux's pid_max default: no such process
    dead, alive = tmp_path / f"{SCRATCH_PREFIX}{dead_pid}-abc", tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{SCRATCH_PREFIX}not-a-pid"
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "users.arrow").write_bytes(b"x")
    assert remove_orphaned_scratch(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
