"""Start fine-tuning under `torchrun` and stream its output into the calling task's log.

`launch_training` is what the pipeline calls: it writes the run's training settings next to the
model folder, gives the worker processes their thread count and memory allocator, and runs
`tasks.training.worker` under `torch.distributed.run` (DDP: gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from tasks.config import PipelineConfig
from tasks.errors import TrainingError
from tasks.layout import ModelFiles

log = logging.getLogger(__name__)


def launch_training(config: PipelineConfig, dataset_dir: Path, out_dir: Path) -> Path:
    """Run the worker under `torchrun --nproc_per_node N`; return the model folder."""
    files = ModelFiles(Path(out_dir))
    files.root.mkdir(parents=True, exist_ok=True)
    settings = {"train": dataclasses.asdict(config.train), "max_history": config.prepare.max_history}
    files.settings.write_text(json.dumps(settings, indent=2))
    nproc = config.train.nproc
    threads = config.train.threads_per_proc or max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env.update(allocator_env(config.train.allocator, env))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tasks.training.worker", "--dataset", str(dataset_dir), "--out", str(files.root)]
    log.info("launching: %s (OMP_NUM_THREADS=%s, allocator: %s)", " ".join(command[2:]), threads,
             env.get("LD_PRELOAD") or env.get("GLIBC_TUNABLES") or "system")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in process.stdout:  # stream into this task's log so progress shows in Airflow
        line = line.rstrip()
        tail = (tail + [line])[-30:]
        log.info("[torchrun] %s", line)
    if process.wait() != 0 or not files.checkpoint.exists():
        raise TrainingError(
            f"torchrun exited with code {process.returncode}; last output:\n" + "\n".join(tail)
            + "\nCheck train.* settings (epochs, nproc, batch_size) and the log above."
        )
    return files.root


# jemalloc keeps freed pages for reuse instead of returning them to the kernel after a delay.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"

# glibc >= 2.35: blocks it maps for large allocations get transparent huge pages (512x fewer
# faults); older glibc ignores the tunable.
GLIBC_HUGE_PAGES = "glibc.malloc.hugetlb=1"


def allocator_env(choice: str, environ: dict[str, str]) -> dict[str, str]:
    """Environment variables that give a training process the allocator `choice` (train.allocator).

    A full-catalogue training step allocates its [positions, items] score matrices afresh each
    step (~100 MB each on ML-1M); glibc serves blocks over 32 MB with mmap and unmaps them at
    free, so every step faults its largest tensors in page by page again. jemalloc with decay
    off reuses them; without it, huge pages make the faults 512x fewer.
    """
    if choice == "system" or "jemalloc" in environ.get("LD_PRELOAD", ""):
        return {}  # (a process started under jemalloc, such as the benchmark, passes it on)
    import ctypes.util

    library = ctypes.util.find_library("jemalloc")
    if library is None:
        if choice == "jemalloc":
            raise TrainingError("train.allocator is 'jemalloc' but no libjemalloc is installed here: install it "
                                "(Debian/Ubuntu: apt-get install libjemalloc2) or set train.allocator=auto")
        tunables = environ.get("GLIBC_TUNABLES", "")
        return {} if GLIBC_HUGE_PAGES in tunables else {"GLIBC_TUNABLES": ":".join(filter(None, [tunables, GLIBC_HUGE_PAGES]))}
    return {"LD_PRELOAD": " ".join(filter(None, [library, environ.get("LD_PRELOAD")])),
            "MALLOC_CONF": ",".join(filter(None, [environ.get("MALLOC_CONF"), JEMALLOC_CONF]))}

