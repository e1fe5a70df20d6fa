"""The training processes' memory allocator (train.allocator, tasks.training.launcher.allocator_env)."""

import ctypes.util
import subprocess
import sys

import pytest

from tasks.config import ConfigError, load_config
from tasks.errors import TrainingError
from tasks.training import launcher
from tasks.training.launcher import GLIBC_HUGE_PAGES, JEMALLOC_CONF, allocator_env, mimalloc_library

JEMALLOC = ctypes.util.find_library("jemalloc")
MIMALLOC = mimalloc_library()


def maps_under(env: dict[str, str]) -> str:
    """/proc/self/maps of a Python process started with `env` (which libraries it has loaded)."""
    return subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=env, capture_output=True, text=True, check=True).stdout


def test_system_leaves_the_environment_alone():
    assert allocator_env("system", {"LD_PRELOAD": "libfoo.so"}) == {}


@pytest.mark.skipif(JEMALLOC is None, reason="no libjemalloc on this machine")
def test_auto_preloads_jemalloc_with_decay_off_and_keeps_earlier_preloads():
    env = allocator_env("auto", {"LD_PRELOAD": "libfoo.so", "MALLOC_CONF": "narenas:2"})
    assert env["LD_PRELOAD"].split() == [JEMALLOC, "libfoo.so"]
    assert env["MALLOC_CONF"] == "narenas:2," + JEMALLOC_CONF
    # A process already under jemalloc (the re-run benchmark) passes it on unchanged.
    assert allocator_env("auto", {"LD_PRELOAD": env["LD_PRELOAD"]}) == {}


@pytest.mark.skipif(JEMALLOC is None, reason="no libjemalloc on this machine")
def test_a_process_started_with_the_environment_runs_on_jemalloc():
    env = allocator_env("jemalloc", {})
    assert "jemalloc" in maps_under(env)
    # asked for again under it (a benchmark that re-runs itself), it adds nothing
    assert allocator_env("jemalloc", env) == {}


def test_mimalloc_comes_with_the_project_and_a_process_runs_on_it():
    assert MIMALLOC is not None, "cmeel-mimalloc is a dependency: make venv installs it"
    env = allocator_env("mimalloc", {"LD_PRELOAD": "libfoo.so"})
    assert env["LD_PRELOAD"].split() == [MIMALLOC, "libfoo.so"]
    assert "libmimalloc" in maps_under({"LD_PRELOAD": MIMALLOC})
    assert allocator_env("mimalloc", {"LD_PRELOAD": MIMALLOC}) == {}
    assert allocator_env("auto", {"LD_PRELOAD": MIMALLOC}) == {}


def test_without_jemalloc_auto_takes_mimalloc(monkeypatch):
    monkeypatch.setattr(launcher, "jemalloc_library", lambda: None)
    assert allocator_env("auto", {}) == {"LD_PRELOAD": MIMALLOC}
    with pytest.raises(TrainingError, match="apt-get install libjemalloc2"):
        allocator_env("jemalloc", {})


def test_without_either_auto_falls_back_to_huge_pages_and_each_fails_clearly(monkeypatch):
    monkeypatch.setattr(launcher, "jemalloc_library", lambda: None)
    monkeypatch.setattr(launcher, "mimalloc_library", lambda: None)
    assert allocator_env("auto", {}) == {"GLIBC_TUNABLES": GLIBC_HUGE_PAGES}
    assert allocator_env("auto", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + GLIBC_HUGE_PAGES}
    assert allocator_env("auto", {"GLIBC_TUNABLES": GLIBC_HUGE_PAGES}) == {}
    with pytest.raises(TrainingError, match="apt-get install libjemalloc2"):
        allocator_env("jemalloc", {})
    with pytest.raises(TrainingError, match="cmeel-mimalloc package is not installed"):
        allocator_env("mimalloc", {})


def test_an_unknown_allocator_is_a_config_error():
    with pytest.raises(ConfigError, match="train.allocator must be auto, jemalloc, mimalloc or system"):
        load_config({"train.allocator": "tcmalloc"})
