"""bench.step_ab loads a module's source from a git revision beside the current one."""

import argparse

import pytest

import tasks.model.layers
from bench.step_ab import module_at, swap_arg, versions


def test_swap_names_a_module_and_its_attributes():
    assert swap_arg("tasks.model.layers:attention,dropout") == ("tasks.model.layers", ["attention", "dropout"])
    with pytest.raises(argparse.ArgumentTypeError, match="MODULE:NAME"):
        swap_arg("tasks.model.layers")


def test_a_revision_s_module_is_loaded_apart_from_the_current_one():
    before = module_at("HEAD", "tasks.model.layers")
    assert before is not tasks.model.layers
    assert before.attention is not tasks.model.layers.attention
    assert before.attention.__code__.co_filename == "HEAD:tasks/model/layers.py"
    chosen = versions("HEAD", [("tasks.model.layers", ["dropout"])])
    assert chosen["after"] == [(tasks.model.layers, "dropout", tasks.model.layers.dropout)]
    assert chosen["before"][0][2].__code__.co_filename == "HEAD:tasks/model/layers.py"


def test_a_missing_name_or_file_stops_with_a_message():
    with pytest.raises(SystemExit, match="missing"):
        versions("HEAD", [("tasks.model.layers", ["no_such_function"])])
    with pytest.raises(SystemExit, match="cannot read"):
        module_at("HEAD", "tasks.model.no_such_module")


def test_the_step_benchmarks_run_under_the_workers_allocator(monkeypatch):
    """bench.profile_step / bench.step_ab re-run themselves under the allocator a training worker gets."""
    import os

    from bench import profile_step

    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((args, env)))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    profile_step.with_worker_allocator("bench.profile_step", ["--steps", "5"], {})
    (args, env), = calls
    assert args[1:] == ["-m", "bench.profile_step", "--steps", "5"]
    assert "jemalloc" in env["LD_PRELOAD"] or "mimalloc" in env["LD_PRELOAD"]  # mimalloc is a dependency
    monkeypatch.setenv("LD_PRELOAD", env["LD_PRELOAD"])  # the re-run: already under it, so no second exec
    profile_step.with_worker_allocator("bench.profile_step", ["--steps", "5"], {})
    monkeypatch.delenv("LD_PRELOAD")
    profile_step.with_worker_allocator("bench.step_ab", [], {"train.allocator": "system"})  # as asked: no change
    assert len(calls) == 1
