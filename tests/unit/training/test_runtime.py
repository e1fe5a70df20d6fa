"""A training process's place in the run, read from torchrun's environment, and its peak memory."""

from pathlib import Path

import torch

from tasks.training.runtime import Distributed, peak_gpu_mib, peak_rss_mib


def test_distributed_reads_torchrun_environment_and_runs_alone_without_it():
    alone = Distributed.from_environment({})
    assert (alone.rank, alone.world, alone.ddp, alone.master) == (0, 1, False, True)
    second = Distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (second.rank, second.world, second.ddp, second.master) == (1, 2, True, False)
    # Alone, the collectives hand values back unchanged (no process group needed).
    totals = torch.tensor([1.0, 2.0, 3.0])
    assert alone.sum(totals) is totals and alone.max(7.5) == 7.5 and alone.from_master(3.0) == 3.0


def test_peak_rss_is_at_least_what_the_process_holds_now():
    before = peak_rss_mib()
    assert before > 10  # a Python process with torch loaded
    block = bytearray(64 * 2**20)  # 64 MiB, written so that the pages are resident
    block[::4096] = b"x" * len(block[::4096])
    status = Path("/proc/self/status")
    if status.exists():
        resident = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
        assert peak_rss_mib() >= resident / 1024 >= 64
    assert peak_rss_mib() >= before
    del block


def test_device_memory_is_only_read_on_a_gpu():
    assert peak_gpu_mib(torch.device("cpu")) is None
    if torch.cuda.is_available():  # a GPU host: what torch's allocator holds, at least one block
        block = torch.ones(2**20, device="cuda")
        assert peak_gpu_mib(block.device) >= 4
