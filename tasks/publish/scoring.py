"""Scoring users for publication: one batch's rows, in this process or in child scoring processes.

Publishing's time goes into the user tower, whose activations are the same ~50 MB blocks batch after
batch. glibc's malloc serves blocks that size with mmap and unmaps them at free, so every batch faults
its pages in again (a quarter of the tower's time); raising its thresholds keeps them but fragments
the heap as batch shapes change (docs/experiments.md, "Publishing's user tower"). A process cannot
change its allocator once started, so large publications score in child processes started under
train.allocator's malloc (jemalloc, else mimalloc: size classes, freed pages kept), as training
does. The parent keeps the one publishing transaction: it builds and tunes the candidate index,
hands each child the model folder, the index and a memory-mapped Arrow file of the users (sorted
longest history first), and COPYs the CSV each child sends back while the children score on. With
several children (materialize.score_processes) the batches are dealt out in turn; each child gets
its share of the cores.

Protocol: a child writes pickled `ScoredBatch`es to its stdout (its own fd 1 goes to stderr, so
nothing a library prints can corrupt the stream), then `None`; its log lines go to stderr, which the
parent relays into its own log. A refusal (an item already seen, say) is sent as a `ScoringError`.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa

from tasks.config import MaterializeConfig
from tasks.db import arrow_csv
from tasks.publish import rows as reco_rows
from tasks.publish.faults import fault_point

log = logging.getLogger(__name__)

class ScoringError(RuntimeError):
    """Scoring refused to publish, or a scoring process failed; nothing of the run is visible."""


@dataclass
class ScoredBatch:
    """One batch's rows, as CSV ready for COPY, and what the run summary counts."""

    users: int
    csv: dict[str, tuple[list[str], bytes, int]]  # table -> (columns, CSV without header, rows)
    fallback_users: int = 0
    new_item_rows: int = 0
    exact_rescored_users: int = 0
    seconds: float = 0.0  # scoring and building the rows


def as_csv(table: pa.Table) -> tuple[list[str], bytes, int]:
    return table.column_names, arrow_csv(table), table.num_rows


def score_batch(recommender, catalogue: reco_rows.Catalogue, user_ids: np.ndarray, histories: Sequence[np.ndarray],
                settings: MaterializeConfig, index=None) -> ScoredBatch:
    """The published rows of one batch of users; refuses a list holding an item its user has seen."""
    started = time.perf_counter()
    recs = recommender.recommend(histories, settings.top_k, max_new_items=settings.max_new_items,
                                 index=index, candidates=settings.index_candidates)
    leaks = reco_rows.seen_items_recommended(histories, recs)
    if leaks:
        raise ScoringError(f"the champion recommended {leaks} item(s) already in users' histories; "
                           "refusing to publish")
    recommendations = reco_rows.recommendation_table(user_ids, recs, catalogue)
    interests = reco_rows.interest_table(user_ids, recs, catalogue, recommender.spec.n_interests)
    return ScoredBatch(
        users=len(user_ids),
        csv={"user_recommendations": as_csv(recommendations), "user_interests": as_csv(interests)},
        fallback_users=int((recs.interest_ids[:, 0] == reco_rows.FALLBACK_INTEREST).sum()),
        new_item_rows=int(recs.is_new.sum()),
        exact_rescored_users=recs.exact_rescored_users,
        seconds=time.perf_counter() - started)


def batch_bounds(users: int, batch_users: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_users, users)) for start in range(0, users, batch_users)]


def score_here(recommender, catalogue, user_ids: np.ndarray, histories: Sequence[np.ndarray],
               settings: MaterializeConfig, batch_users: int, index=None, part: int = 0,
               parts: int = 1) -> Iterator[ScoredBatch]:
    """The batches part, part + parts, ... (all of them by default), in this process, in order."""
    for start, stop in batch_bounds(len(user_ids), batch_users)[part::parts]:
        yield score_batch(recommender, catalogue, user_ids[start:stop], histories[start:stop], settings, index)


# --- child processes ------------------------------------------------------------------------------


@dataclass
class Job:
    """What a scoring process needs (pickled into the run's scratch folder)."""

    model_dir: str
    precision: str  # "bf16" or "fp32": the parent's Recommender's, so both rank alike
    listable_item_ids: np.ndarray  # restrict_to's catalogue
    settings: MaterializeConfig
    users_file: str  # Arrow IPC file: user_id int64, history list<int64>, longest history first
    batch_users: int
    processes: int
    threads: int
    index: object = None  # tasks.model.retrieval.ItemIndex, tuned, or None for exact ranking
    trend: object = None  # tasks.model.trend.TrendPrior with the publication's counts (materialize.fresh_trend)


def write_users(path: Path, user_ids: np.ndarray, histories: Sequence[np.ndarray]) -> None:
    """Users and their histories as one Arrow IPC file the children memory-map."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate([np.asarray(h, np.int64) for h in histories]) if len(histories) else np.zeros(0, np.int64)
    table = pa.table({"user_id": pa.array(np.asarray(user_ids, np.int64)),
                      "history": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_users(path: str) -> tuple[np.ndarray, list[np.ndarray]]:
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    history = table.column("history").combine_chunks()
    offsets, values = history.offsets.to_numpy(), history.values.to_numpy()
    return table.column("user_id").to_numpy(), [values[a:b] for a, b in itertools.pairwise(offsets)]


SCRATCH_PREFIX = "prismrec-score-"  # + the publishing process's pid


def remove_orphaned_scratch(folder: Path | None = None) -> list[Path]:
    """Remove the scratch folders (users files: ~1 GB at 1M users) of publishing processes that died
    without cleaning up (a SIGKILL, say); returns them."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = path.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d scratch folder(s) of publishing processes that died: %s", len(removed),
                 ", ".join(map(str, removed)))
    return removed


class ScoringProcesses:
    """`processes` child scoring processes; iterate to receive their batches as they come."""

    def __init__(self, recommender, user_ids: np.ndarray, histories: Sequence[np.ndarray],
                 settings: MaterializeConfig, batch_users: int, processes: int, allocator: str, index=None):
        self.processes = max(1, int(processes))
        self.scratch = tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        self.children: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        try:
            self._start(recommender, user_ids, histories, settings, batch_users, allocator, index)
        except BaseException:
            self.close()  # no child or scratch file outlives a failed start
            raise

    def _start(self, recommender, user_ids, histories, settings, batch_users, allocator, index) -> None:
        from tasks.training.launcher import allocator_env

        folder = Path(self.scratch.name)
        write_users(folder / "users.arrow", user_ids, histories)
        job = Job(model_dir=str(recommender.model_dir), precision="bf16" if recommender.bf16 else "fp32",
                  listable_item_ids=recommender.item_ids[recommender.available[1:].numpy()],
                  settings=settings, users_file=str(folder / "users.arrow"), batch_users=batch_users,
                  processes=self.processes, threads=max(1, (os.cpu_count() or 1) // self.processes), index=index,
                  trend=recommender.trend)
        (folder / "job.pickle").write_bytes(pickle.dumps(job, protocol=5))
        env = {**os.environ, **allocator_env(allocator, dict(os.environ)),
               "OMP_NUM_THREADS": str(job.threads), "PRISMREC_SCORING_PARENT": str(os.getpid())}
        self._results: queue.Queue = queue.Queue(maxsize=2 * self.processes)
        self._tails: list[list[str]] = [[] for _ in range(self.processes)]
        for part in range(self.processes):
            self.children.append(subprocess.Popen(
                [sys.executable, "-m", "tasks.publish.scoring", str(folder / "job.pickle"), str(part)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for part, child in enumerate(self.children):
            for target in (self._receive, self._relay):
                thread = threading.Thread(target=target, args=(part, child), daemon=True,
                                          name=f"scorer-{part}-{target.__name__.strip('_')}")
                thread.start()
                self._threads.append(thread)
        log.info("scoring in %d process(es) of %d thread(s), %s", self.processes, job.threads,
                 env.get("LD_PRELOAD") or "the system's malloc")

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._results.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _receive(self, part: int, child: subprocess.Popen) -> None:
        """Batches from one child's stdout into the queue; then its end (None) or its failure."""
        try:
            while True:
                message = pickle.load(child.stdout)
                if message is None:
                    break
                self._put(message)
        except (EOFError, OSError):  # the child's end of the pipe closed: its exit status says why
            pass
        except (pickle.UnpicklingError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
            # a stream this process cannot read: stop the child, fail the run
            child.kill()
            self._put(ScoringError(f"scoring process {part} sent what this process cannot read ({exc!r}); "
                                   "nothing was published"))
        child.wait()
        self._put((part, child.returncode))

    def _relay(self, part: int, child: subprocess.Popen) -> None:
        """A child's log lines into this process's log (its last lines kept for an error)."""
        for raw in child.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._tails[part] = (self._tails[part] + [line])[-20:]
                log.info("scorer %d: %s", part, line)

    def __iter__(self) -> Iterator[ScoredBatch]:
        running = self.processes
        while running:
            message = self._results.get()
            if isinstance(message, ScoredBatch):
                yield message
            elif isinstance(message, ScoringError):
                raise message
            else:
                part, code = message
                running -= 1
                if code != 0:
                    for thread in self._threads:  # its last lines
                        if thread.name == f"scorer-{part}-relay":
                            thread.join(timeout=5)
                    raise ScoringError(self._failure(part, code))

    def _failure(self, part: int, code: int) -> str:
        if code < 0:
            return (f"scoring process {part} was killed by signal {-code}"
                    + (" (most likely out of memory: lower materialize.score_memory_mb or materialize.batch_users, "
                       "or set materialize.score_processes = 1)" if -code == 9 else "")
                    + "; nothing was published")
        tail = next((line for line in reversed(self._tails[part]) if "Error" in line), None)
        tail = tail or (self._tails[part][-1] if self._tails[part] else "no output")
        return f"scoring process {part} failed (exit status {code}): {tail}; nothing was published"

    def close(self) -> None:
        self._stop.set()
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        self.scratch.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the publishing process dies (a cancelled task, say), rather
    than score on for no one until its next write fails."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the broken pipe stops it at its next batch
        pass
    if str(os.getppid()) != os.environ.get("PRISMREC_SCORING_PARENT"):  # it died before the call
        sys.exit(1)


def child_main(job_path: str, part: int) -> int:
    """A scoring process: its share of the batches (part, part + processes, ...) to stdout."""
    _die_with_parent()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to the log, never into the stream
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it tried: the parent said
    if code := os.environ.get("PRISMREC_FAULT_SCORING_EXIT"):  # a test's failing child (fault injection)
        log.error("RuntimeError: exiting with status %s as PRISMREC_FAULT_SCORING_EXIT asks", code)
        return int(code)
    job: Job = pickle.loads(Path(job_path).read_bytes())
    import torch

    from tasks.model.recommender import Recommender

    torch.set_num_threads(job.threads)
    started = time.perf_counter()
    recommender = Recommender.load(Path(job.model_dir), job.precision)
    recommender.restrict_to(job.listable_item_ids)
    if job.trend is not None:
        recommender.use_trend(job.trend)  # the parent's counts, as of the publication
    catalogue = reco_rows.Catalogue.from_items(recommender.items)
    user_ids, histories = read_users(job.users_file)
    log.info("loaded the model and %d users in %.1fs; scoring %d batches", len(user_ids),
             time.perf_counter() - started, len(batch_bounds(len(user_ids), job.batch_users)[part::job.processes]))
    fault_point("score")  # (tests/integration/publish/test_faults.py: a publisher killed while it scores)
    try:
        for batch in score_here(recommender, catalogue, user_ids, histories, job.settings, job.batch_users,
                                job.index, part, job.processes):
            pickle.dump(batch, out, protocol=5)
            out.flush()
    except ScoringError as refused:
        pickle.dump(refused, out, protocol=5)
        out.flush()
        return 0
    except BrokenPipeError:  # the parent is gone
        return 1
    pickle.dump(None, out, protocol=5)
    out.flush()
    return 0


if __name__ == "__main__":
    # Through the module's importable name, so that what it pickles unpickles in the parent
    # (tasks.publish.scoring.ScoredBatch, not __main__.ScoredBatch).
    import importlib

    sys.exit(importlib.import_module("tasks.publish.scoring").child_main(sys.argv[1], int(sys.argv[2])))
