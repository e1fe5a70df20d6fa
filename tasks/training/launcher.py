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
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tasks.config import PipelineConfig
from tasks.errors import TrainingError
from tasks.layout import ModelFiles
from tasks.training.memory import (
    GB,
    MemoryGuard,
    default_limit_gb,
    descendants,
    machine_memory_bytes,
)

log = logging.getLogger(__name__)


def launch_training(config: PipelineConfig, dataset_dir: Path, out_dir: Path,
                    on_epoch: Callable[[dict], None] | None = None) -> Path:
    """Run the worker under `torchrun` (this machine's train.nproc processes, one node of
    train.nnodes); return the model folder, which node 0 alone fills.

    `on_epoch` gets each epoch's record of the history (rank 0's) as soon as the epoch ends:
    the pipeline logs it to MLflow while training goes on."""
    files = ModelFiles(Path(out_dir))
    files.root.mkdir(parents=True, exist_ok=True)
    settings = {"train": dataclasses.asdict(config.train), "max_history": config.prepare.max_history,
                "text_state_cache": str(config.paths.text_states)}
    files.settings.write_text(json.dumps(settings, indent=2))
    env = worker_env(config, dict(os.environ))
    threads = env["OMP_NUM_THREADS"]
    command = torchrun_command(config, dataset_dir, files.root)
    log.info("launching: %s (OMP_NUM_THREADS=%s, allocator: %s)", " ".join(command[2:]), threads,
             env.get("LD_PRELOAD") or env.get("GLIBC_TUNABLES") or "system")
    limit = config.train.max_memory_gb or default_limit_gb()
    tail: list[str] = []
    last_epoch = None
    with sigterm_exits():
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            with MemoryGuard(process.pid, limit, stop=lambda: stop_tree(process)) as guard:
                for line in process.stdout:  # stream into this task's log so progress shows in Airflow
                    line = line.rstrip()
                    tail = (tail + [line])[-30:]
                    log.info("[torchrun] %s", line)
                    if match := EPOCH_LINE.search(line):
                        last_epoch = int(match.group(1))
                        if on_epoch is not None:
                            report_epoch(files, last_epoch, on_epoch)
                process.wait()
        finally:
            if process.poll() is None:
                # Interrupted (Ctrl-C, a `kill`, Airflow stopping the task): torchrun and its workers
                # must not train on alone, holding the cores and memory.
                log.warning("training interrupted: stopping torchrun and its workers")
                stop_tree(process)
    if guard.tripped is not None:
        raise TrainingError(memory_message(guard.tripped, limit, config.train.max_memory_gb is None, last_epoch))
    writes_model = config.train.node_rank == 0
    if process.returncode != 0 or (writes_model and not files.checkpoint.exists()):
        killed = process.returncode == -signal.SIGKILL or any(KILLED.search(line) for line in tail)
        raise TrainingError(
            f"torchrun exited with code {process.returncode}; last output:\n" + "\n".join(tail)
            + ("\nA training process was killed with SIGKILL, which is usually the kernel's out-of-memory killer: "
               "set train.max_memory_gb below this machine's memory so that the run stops with a message, and see "
               "'Training processes' in docs/architecture.md for what to lower." if killed else
               "\nCheck train.* settings (epochs, nproc, batch_size) and the log above.")
        )
    log.info("training used at most %.1f GB of memory (train.max_memory_gb = %.1f)", guard.peak_gb, limit)
    return files.root


@contextmanager
def sigterm_exits():
    """For the launch's duration, SIGTERM raises SystemExit where nothing else handles it (a `kill` of
    `prismrec train` or of a benchmark), so that the launch stops its workers before the process ends.
    A handler already installed (Airflow's task runner has one) is left as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def exit_on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# The rendezvous's name: the nodes of one training meet under it at train.rdzv_endpoint.
RDZV_ID = "prismrec-train"


def torchrun_command(config: PipelineConfig, dataset_dir: Path, out_dir: Path) -> list[str]:
    """The `torchrun` command line of this machine's part of a training.

    One machine: `--standalone`. Several (train.nnodes > 1): a c10d rendezvous at train.rdzv_endpoint,
    hosted by node 0 (`is_host`, so that nodes sharing a host, as in tests, agree on which one), every
    node starting train.nproc workers; torchrun waits for all of them (rdzv timeout, 15 minutes)."""
    t = config.train
    if t.nnodes == 1:
        placement = ["--standalone", f"--nproc_per_node={t.nproc}"]
    else:
        placement = [f"--nnodes={t.nnodes}", f"--node_rank={t.node_rank}", f"--nproc_per_node={t.nproc}",
                     "--rdzv_backend=c10d", f"--rdzv_endpoint={t.rdzv_endpoint}", f"--rdzv_id={RDZV_ID}",
                     f"--rdzv_conf=is_host={int(t.node_rank == 0)},join_timeout=900"]
    return [sys.executable, "-m", "torch.distributed.run", *placement,
            "-m", "tasks.training.worker", "--dataset", str(dataset_dir), "--out", str(out_dir)]


def report_epoch(files: ModelFiles, epoch: int, on_epoch: Callable[[dict], None]) -> None:
    """Hand `epoch`'s record of the history (the worker writes it before the epoch's line) to
    `on_epoch`; a failure there is logged and never stops training."""
    try:
        record = next((r for r in json.loads(files.history.read_text()) if r.get("epoch") == epoch), None)
        if record is not None:
            on_epoch(record)
    except Exception:
        log.warning("could not report epoch %d (training goes on)", epoch, exc_info=True)


# oneDNN (bf16 matmuls on CPUs with AVX512-BF16 or AMX) caches a compiled primitive for every
# matmul shape it meets, by default up to 1,024 of them, ~0.6-1 MiB each (measured). With shapes that vary by
# step the cache grew by ~0.5-2 GB an epoch until the kernel killed the run (docs/experiments.md,
# "Training memory"); without it every bf16 matmul compiles again (~8 ms for a product that runs in
# under 1 ms). The products whose rows vary by step are padded to a few shapes
# (tasks.model.layers.in_row_buckets), whose common ones a 256-entry cache keeps: an ML-100K epoch
# takes ~10 s instead of ~17 on a 2-core Xeon with AMX, and the peak rises by up to ~270 MiB while the
# cache fills (over ~25 ML-100K epochs), then stays flat. A value in the environment is kept.
ONEDNN_CACHE = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}


def worker_env(config: PipelineConfig, environ: dict[str, str]) -> dict[str, str]:
    """The environment of the torchrun workers: `environ` plus their thread count, allocator and
    oneDNN cache, offline model loading and unbuffered output."""
    threads = config.train.threads_per_proc or max(1, (os.cpu_count() or 1) // config.train.nproc)
    env = {**ONEDNN_CACHE, **environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           # The worker that writes the model is local rank 0 of node 0 (tasks.training.runtime).
           "PRISMREC_NODE_RANK": str(config.train.node_rank)}
    env.update(allocator_env(config.train.allocator, env))
    return env


# The worker's end-of-epoch line ("epoch 3: loss ..."), and torchrun's report of a worker killed by SIGKILL.
EPOCH_LINE = re.compile(r"\bepoch (\d+): loss")
KILLED = re.compile(r"SIGKILL|exitcode\s*:\s*-9\b")


def stop_tree(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop torchrun and its workers: SIGTERM (torchrun passes it on), then SIGKILL to whatever is left."""
    pids = descendants(process.pid)
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    for pid in [*pids, process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def memory_message(reached_gb: float, limit_gb: float, default: bool, epoch: int | None) -> str:
    """The one paragraph a user reads when the memory guard stops training."""
    where = f"during epoch {epoch + 1}" if epoch else "before the first epoch ended"
    source = (f"the default, 75 % of this machine's {machine_memory_bytes() / GB:.1f} GB" if default
              else "as configured")
    return (f"Training stopped {where}: its processes held {reached_gb:.1f} GB of memory, over train.max_memory_gb "
            f"= {limit_gb:.1f} GB ({source}). Nothing was registered or published. If memory grew from epoch to "
            "epoch (each epoch's line above ends with its peak RSS), check train.allocator: 'auto' (jemalloc, else mimalloc) "
            "keeps it flat, 'system' leaves glibc's malloc, whose heap fragments over a long run. To need less "
            "memory, lower train.batch_size or prepare.max_history, or set train.negatives (e.g. 2048) for a large "
            "catalogue; or raise train.max_memory_gb if the machine has room.")


# jemalloc keeps freed pages for reuse instead of returning them to the kernel after a delay.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"

# glibc >= 2.35: blocks it maps for large allocations get transparent huge pages (512x fewer
# faults); older glibc ignores the tunable. Used only when neither jemalloc nor mimalloc is there.
GLIBC_HUGE_PAGES = "glibc.malloc.hugetlb=1"

def jemalloc_library() -> str | None:
    """The system's libjemalloc (Debian/Ubuntu: libjemalloc2), or None."""
    import ctypes.util

    return ctypes.util.find_library("jemalloc")


def mimalloc_library() -> str | None:
    """libmimalloc from the cmeel-mimalloc wheel, a dependency of this project, or None."""
    from importlib import metadata

    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    libraries = sorted(str(f.locate()) for f in files if f.name.startswith("libmimalloc.so"))
    return next((path for path in libraries if Path(path).exists()), None)


def preloaded(environ: dict[str, str]) -> bool:
    """Whether the environment already preloads jemalloc or mimalloc."""
    return any(name in environ.get("LD_PRELOAD", "") for name in ("jemalloc", "mimalloc"))


def allocator_env(choice: str, environ: dict[str, str]) -> dict[str, str]:
    """Environment variables that give a training process the allocator `choice` (train.allocator).

    Two things make glibc's malloc a poor fit for training. A full-catalogue step allocates its
    [positions, items] score matrices afresh (~100 MB each on ML-1M); glibc serves blocks over
    32 MB with mmap and unmaps them at free, so every step faults its largest tensors in again.
    And its heap fragments: once its dynamic mmap threshold has risen, the varying sizes of a
    step's tensors (histories and batches differ in length) leave freed holes that later blocks
    do not fit, so resident memory grows epoch after epoch while live tensors stay the same
    (docs/experiments.md, "Training memory"). jemalloc with decay off and mimalloc both reuse
    freed blocks by size class and stay flat.

    "auto": jemalloc where the system has it, else mimalloc (always installed with PrismRec),
    else glibc with huge pages. "jemalloc"/"mimalloc" insist on one; "system" changes nothing.
    """
    already = environ.get("LD_PRELOAD", "")
    if choice == "system" or (choice == "auto" and preloaded(environ)) or (choice != "auto" and choice in already):
        return {}  # (a process started under one, such as a re-run benchmark, passes it on)
    if choice in ("auto", "jemalloc") and (library := jemalloc_library()) is not None:
        return {"LD_PRELOAD": " ".join(filter(None, [library, environ.get("LD_PRELOAD")])),
                "MALLOC_CONF": ",".join(filter(None, [environ.get("MALLOC_CONF"), JEMALLOC_CONF]))}
    if choice == "jemalloc":
        raise TrainingError("train.allocator is 'jemalloc' but no libjemalloc is installed here: install it "
                            "(Debian/Ubuntu: apt-get install libjemalloc2) or set train.allocator=auto")
    if choice in ("auto", "mimalloc") and (library := mimalloc_library()) is not None:
        return {"LD_PRELOAD": " ".join(filter(None, [library, environ.get("LD_PRELOAD")]))}
    if choice == "mimalloc":
        raise TrainingError("train.allocator is 'mimalloc' but the cmeel-mimalloc package is not installed in "
                            "this environment: reinstall PrismRec with its dependencies (make venv) or set "
                            "train.allocator=auto")
    tunables = environ.get("GLIBC_TUNABLES", "")
    return {} if GLIBC_HUGE_PAGES in tunables else {"GLIBC_TUNABLES": ":".join(filter(None, [tunables, GLIBC_HUGE_PAGES]))}
