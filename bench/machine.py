"""What a benchmark's numbers were measured on, read from the running machine (every bench/results file keeps it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The widest matmul instruction set a CPU offers, widest first: cloud machines of one model name ("AMD EPYC")
# come with and without bf16 units, and their speeds differ by ~2x (docs/experiments.md, "Machines").
ISA_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"))


def cpu_isa(flags: set[str]) -> str | None:
    """The widest matmul instruction set among /proc/cpuinfo's `flags`, e.g. "AVX512-BF16", or None."""
    return next((name for flag, name in ISA_FLAGS if flag in flags), None)


def machine() -> dict:
    """CPU model and its widest matmul instruction set, cores, memory, torch threads, GPU (or None),
    Python and torch versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    ram_gib = None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):  # the first processor's, after its model name
                flags = set(line.split(":", 1)[1].split())
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "isa": cpu_isa(flags),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
