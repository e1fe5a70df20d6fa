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
    """This process's rank among `world` processes and the device it trains on.

    `node_rank` is the machine's place as configured (train.node_rank, passed as PRISMREC_NODE_RANK):
    c10d rendezvous numbers the machines in its own order, so the global rank 0 may live on any of
    them, while the model folder must land on node 0, where the pipeline's train task runs."""

    rank: int
    world: int
    device: torch.device
    local_rank: int = 0
    node_rank: int | None = None  # None: a single machine, where global rank 0 writes

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (unset: one process), and the
        configured PRISMREC_NODE_RANK. On a GPU machine each local rank takes its own device."""
        environ = os.environ if environ is None else environ
        local_rank = int(environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        node_rank = environ.get("PRISMREC_NODE_RANK")
        return cls(rank=int(environ.get("RANK", "0")), world=int(environ.get("WORLD_SIZE", "1")), device=device,
                   local_rank=local_rank, node_rank=int(node_rank) if node_rank else None)

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        """The one process that logs progress and writes the model folder: local rank 0 of node 0
        (of the only machine: global rank 0)."""
        if self.node_rank is None:
            return self.rank == 0
        return self.node_rank == 0 and self.local_rank == 0

    @property
    def backend(self) -> str:
        """nccl between GPUs, gloo between CPU processes."""
        return "nccl" if self.device.type == "cuda" else "gloo"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # nccl's collectives and default allocations on this rank's GPU
        if self.ddp:
            torch.distributed.init_process_group(backend=self.backend)

    def stop(self) -> None:
        if self.ddp:
            torch.distributed.destroy_process_group()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (it must be on this process's device: nccl reduces
        GPU tensors only)."""
        if self.ddp:
            torch.distributed.all_reduce(tensor)
        return tensor

    def mean(self, values: list[float]) -> list[float]:
        """Each of `values` averaged over the ranks (every rank gets the same numbers)."""
        if not self.ddp:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def max(self, value: float) -> float:
        """The largest of the ranks' values."""
        if not self.ddp:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.item()

    def from_master(self, value: float) -> float:
        """Global rank 0's value on every rank (where the ranks must agree, e.g. on a decision made
        by the clock)."""
        if not self.ddp:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(tensor, 0)
        return tensor.item()


def peak_gpu_mib(device: torch.device) -> float | None:
    """The most memory torch's caching allocator has held on a CUDA `device` so far, in MiB (what
    the device must have free); None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_reserved(device) / 2**20


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
