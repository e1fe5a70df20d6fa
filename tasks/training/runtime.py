"""Where a training process stands: its rank in the run, its device, and its peak memory.

The same worker runs single-process or under `torchrun` (DDP: gloo on CPU, nccl on GPU);
`Distributed` reads its place from torchrun's environment variables and makes every collective
a no-op when it runs alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Distributed:
    """This process's rank among `world` processes and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (unset: one process)."""
        environ = os.environ if environ is None else environ
        local_rank = int(environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        return cls(rank=int(environ.get("RANK", "0")), world=int(environ.get("WORLD_SIZE", "1")), device=device)

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        """Rank 0 alone logs progress and writes the model folder."""
        return self.rank == 0

    def start(self) -> None:
        if self.ddp:
            torch.distributed.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    def stop(self) -> None:
        if self.ddp:
            torch.distributed.destroy_process_group()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (it must be on this process's device: nccl reduces
        GPU tensors only)."""
        if self.ddp:
            torch.distributed.all_reduce(tensor)
        return tensor

    def max(self, value: float) -> float:
        """The largest of the ranks' values."""
        if not self.ddp:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.item()

    def from_master(self, value: float) -> float:
        """Rank 0's value on every rank (where the ranks must agree, e.g. on a decision made by
        the clock)."""
        if not self.ddp:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(tensor, 0)
        return tensor.item()


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB (Linux: VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
