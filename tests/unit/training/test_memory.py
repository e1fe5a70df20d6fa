"""The memory guard of training (tasks.training.memory): what it reads and when it stops a run."""

import os
import signal
import subprocess
import sys

from tasks.training.memory import (
    GB,
    MemoryGuard,
    default_limit_gb,
    descendants,
    machine_memory_bytes,
    started_at,
    tree_bytes,
)

# A parent that starts a child holding ~400 MB, then waits: the tree's memory is mostly the child's.
HOLDER = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
          "'import time; block = bytearray(400 * 1000 * 1000); print(\"ready\", flush=True); time.sleep(60)'])")


def stop_holder(process: subprocess.Popen) -> None:
    for pid in [*descendants(process.pid), process.pid]:
        os.kill(pid, signal.SIGKILL)
    process.wait()


def start_holder() -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_the_tree_counts_the_grandchild_memory():
    process = start_holder()
    try:
        assert tree_bytes(process.pid) > 0.4 * GB
    finally:
        stop_holder(process)


def test_the_guard_stops_a_tree_over_its_limit_and_leaves_one_under_it_alone():
    process = start_holder()
    stopped: list[bool] = []
    try:
        with MemoryGuard(process.pid, limit_gb=5.0, stop=lambda: stopped.append(True), interval=0.1) as roomy:
            subprocess.run(["sleep", "0.5"], check=True)
        assert roomy.tripped is None and not stopped and roomy.peak_gb > 0.4
        with MemoryGuard(process.pid, limit_gb=0.2, stop=lambda: stopped.append(True), interval=0.1) as tight:
            subprocess.run(["sleep", "0.5"], check=True)
        assert stopped == [True] and tight.tripped > 0.4
    finally:
        stop_holder(process)


def test_a_root_killed_under_the_guard_leaves_no_orphan_running():
    """torchrun killed (by the out-of-memory killer, say): the worker it started must not train on alone."""
    process = start_holder()
    child = descendants(process.pid)[0]
    try:
        with MemoryGuard(process.pid, limit_gb=5.0, stop=lambda: None, interval=0.1) as guard:
            subprocess.run(["sleep", "0.3"], check=True)  # a few readings of the whole tree
            assert started_at(child) is not None and not guard.orphans_stopped
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            for _ in range(50):
                if started_at(child) is None:
                    break
                subprocess.run(["sleep", "0.1"], check=True)
        assert guard.orphans_stopped == [child] and started_at(child) is None
    finally:
        if started_at(child) is not None:
            os.kill(child, signal.SIGKILL)


def test_the_default_limit_is_three_quarters_of_the_machine():
    assert default_limit_gb() == round(machine_memory_bytes() * 0.75 / GB, 1)
    assert 0 < default_limit_gb() < machine_memory_bytes() / GB


def test_workers_get_a_small_onednn_primitive_cache_unless_the_environment_sets_one():
    """The bf16 matmuls' oneDNN cache at its default size grew ~1 GB an epoch on bf16 CPUs (bench.memory);
    workers keep a small one, which holds the bucketed shapes' common ones."""
    from tasks.config import load_config
    from tasks.training.launcher import worker_env

    config = load_config({"train.nproc": 2, "train.threads_per_proc": 1})
    env = worker_env(config, {"PATH": "/usr/bin"})
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == "/usr/bin" and env["HF_HUB_OFFLINE"] == "1"
    assert worker_env(config, {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"})["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


def test_a_worker_killed_by_the_kernel_is_recognised_in_torchrun_output():
    from tasks.training.launcher import KILLED, memory_message

    assert KILLED.search("traceback : Signal 9 (SIGKILL) received by PID 4711")
    assert KILLED.search("  exitcode  : -9 (pid: 4711)")
    assert not KILLED.search("  exitcode  : 1 (pid: 4711)") and not KILLED.search("exitcode  : -90")
    message = memory_message(21.3, 18.0, True, 17)
    assert message.startswith("Training stopped during epoch 18: its processes held 21.3 GB of memory, over "
                              "train.max_memory_gb = 18.0 GB (the default, 75 % of this machine's")
