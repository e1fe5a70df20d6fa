"""The training processes' memory allocator (train.allocator, tasks.training.launcher.allocator_env)."""

import ctypes.util
import subprocess
import sys

import pytest

from tasks.config import ConfigError, load_config
from tasks.errors import TrainingError
from tasks.training.launcher import GLIBC_HUGE_PAGES, JEMALLOC_CONF, allocator_env

JEMALLOC = ctypes.util.find_library("jemalloc")


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
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=env, capture_output=True, text=True, check=True).stdout
    assert "jemalloc" in maps


def test_without_jemalloc_auto_falls_back_to_huge_pages_and_jemalloc_fails_clearly(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert allocator_env("auto", {}) == {"GLIBC_TUNABLES": GLIBC_HUGE_PAGES}
    assert allocator_env("auto", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + GLIBC_HUGE_PAGES}
    assert allocator_env("auto", {"GLIBC_TUNABLES": GLIBC_HUGE_PAGES}) == {}
    with pytest.raises(TrainingError, match="apt-get install libjemalloc2"):
        allocator_env("jemalloc", {})


def test_an_unknown_allocator_is_a_config_error():
    with pytest.raises(ConfigError, match="train.allocator must be auto, jemalloc or system"):
        load_config({"train.allocator": "tcmalloc"})
