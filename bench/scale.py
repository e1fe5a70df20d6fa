"""The cost curve: every pipeline stage on synthetic data at 1x, 10x and 100x MovieLens-1M's events.

    python -m bench.scale [--sizes 1,10,100] [--steps 30] [--until STAGE] [--from publish] [--keep-database]
                          [--url postgresql://postgres@127.0.0.1:5432/postgres]

For each size, bench.synthetic's data (long-tailed popularity, sessions, item text; 100 events per
user, the catalogue growing up to 100k items) is COPYed chunk by chunk into schema `app` of the
database `prismrec_scale` (created on the server of `--url`, dropped at the end), then the
pipeline's own task functions (tasks/pipeline.py) run in order: extract, quality (the GX data gate),
prepare, train (one epoch capped at `--steps` steps through the real launcher and worker, sampled
softmax; the full epoch is extrapolated from the measured steps/s and labelled so), then the
trained model is registered as champion and `run_materialize` scores every user and publishes the
top-50 into `reco`. Per stage: wall seconds and the peak memory of this process tree (summed Pss,
sampled every 0.5 s; the Postgres server's own memory is not in it). Results are merged into
bench/results/scale.{json,md} (`--results NAME`: NAME.{json,md}, for another machine) after each stage,
so an interrupted run keeps what it measured.
`--until prepare` stops a size after its data stages (a stage not run keeps no figure, and the size says
so in its notes). `--keep-database` leaves the database in place, and `--from publish` then measures
the score and publish stages again on it and the size's champion (a publishing change, re-measured
without loading, extracting and training again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

log = logging.getLogger("bench.scale")
RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "prismrec_scale"
STAGES = ("extract", "quality", "prepare", "train_epoch", "score", "publish")
# ML-1M's benchmark settings (bench/quality.py DATASET_SETTINGS), with a sampled softmax over 1024
# negatives: the full softmax's logits grow with the catalogue, the sampled ones do not.
# Validation takes a fixed sample of at most VALIDATION_USERS users (all of them up to 10x): at 1M
# users, validating everyone would cost more than the measured steps by far.
VALIDATION_USERS = 100_000
TRAIN = {"prepare.max_history": 200, "train.batch_size": 16, "train.n_interests": 1, "train.dropout": 0.05,
         "train.lm_trainable_layers": 0, "train.negatives": 1024, "train.epochs": 1,
         "train.validation_users": VALIDATION_USERS}


class PeakMemory:
    """The largest summed Pss of this process and its children while the block runs, in MiB, and
    the largest 1-minute load average seen meanwhile (other work on the machine slows every stage)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_mib, self.load_max = interval, 0.0, 0.0
        self.root: int | None = None  # None: this process; else the process whose tree is measured
        self.child_only = False  # measure nothing until `root` is set (a stage in a process of its own)
        self._done = threading.Event()

    def _watch(self) -> None:
        from tasks.training.memory import tree_bytes

        while True:
            root = self.root
            if root is not None or not self.child_only:
                self.peak_mib = max(self.peak_mib, tree_bytes(root or os.getpid()) / 2**20)
            self.load_max = max(self.load_max, os.getloadavg()[0])
            if self._done.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


@contextmanager
def measured(stages: dict, name: str, saved=lambda: None):
    """Time the block and its peak memory into stages[name], then call `saved` (the results are
    written after every stage, so a size cut short keeps the stages it measured)."""
    log.info("stage %s ...", name)
    started = time.perf_counter()
    with PeakMemory() as memory:
        yield memory
    stages[name] = {"seconds": round(time.perf_counter() - started, 1), "peak_mib": round(memory.peak_mib),
                    "load_average_max": round(memory.load_max, 1)}
    log.info("stage %s: %s", name, stages[name])
    saved()


def _stage_child(function: str, args: tuple, results) -> None:
    """A stage's process: run tasks.pipeline.<function>(*args) and send back its result (or its error)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from tasks import pipeline

    try:
        results.put(("ok", getattr(pipeline, function)(*args)))
    except BaseException as error:  # noqa: BLE001 - sent to the parent, which raises it
        results.put(("error", f"{type(error).__name__}: {error}"))


def in_own_process(memory: PeakMemory, function: str, *args):
    """tasks.pipeline.<function>(*args) in a fresh process, as an Airflow task runs it, with `memory`
    measuring that process alone (a spawned interpreter: nothing of this process's heap)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_stage_child, args=(function, args, results))
    memory.child_only = True
    child.start()
    memory.root = child.pid
    while True:
        try:
            status, value = results.get(timeout=1.0)
            break
        except queue.Empty:
            if not child.is_alive():  # killed (the kernel's out-of-memory killer, say) before it answered
                raise RuntimeError(f"stage {function} died with exit code {child.exitcode}") from None
    child.join()
    if status != "ok":
        raise RuntimeError(f"stage {function} failed: {value}")
    return value


def load_synthetic(engine, schema: str, spec) -> dict:
    """Create the source tables as `prismrec load` does and COPY the generated data in chunks."""
    import sqlalchemy as sa

    from bench.synthetic import END, interaction_chunks, items_frame, users_frame
    from tasks import db
    from tasks.data.extract import Replay
    from tasks.data.sources import _INDEXES, _TABLES, _csv, _record_replay

    s = db.quote_ident(schema)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {s} cascade"))
        conn.execute(sa.text(f"create schema {s}"))
        for table, columns in _TABLES.items():
            ddl = ", ".join(f"{db.quote_ident(c)} {t}" for c, t in columns.items())
            conn.execute(sa.text(f"create table {s}.{db.quote_ident(table)} ({ddl})"))
        for table, frame in (("items", items_frame(spec)), ("users", users_frame(spec))):
            db.copy_rows(conn, f"{s}.{table}", list(frame.columns), _csv(frame))
        for chunk in interaction_chunks(spec):
            db.copy_rows(conn, f"{s}.interactions", list(chunk.columns), _csv(chunk), freeze=False)
        for index, columns in _INDEXES.items():
            conn.execute(sa.text(f'create index {db.quote_ident(index)} on {s}."interactions" ({columns})'))
        conn.execute(sa.text(f'analyze {s}."items", {s}."users", {s}."interactions"'))
        _record_replay(conn, s, Replay(f"synthetic-{spec.events}", END - timedelta(seconds=1)))
    return {"seconds": round(time.perf_counter() - started, 1)}


def run_size(factor: int, admin_url: str, database: str, home: Path, steps: int, entry: dict, saved,
             until: str = "publish") -> dict:
    """Every stage at `factor` x ML-1M's events up to `until`, filled into `entry` (the size's item of `sizes`)."""
    from bench.synthetic import END, ML1M_EVENTS, ScaleSpec
    from tasks import db, pipeline
    from tasks.config import load_config
    from tasks.registry.store import register_candidate

    spec = ScaleSpec.of(factor * ML1M_EVENTS)
    overrides = size_overrides(factor, admin_url, database, home, steps)
    config = load_config(overrides)
    log.info("%dx: %s", factor, spec)
    loaded = load_synthetic(db.get_engine(config), config.database.app_schema, spec)
    log.info("loaded %s events in %.0fs", f"{spec.events:,}", loaded["seconds"])
    entry |= {"load_seconds": loaded["seconds"]}
    stages = entry["stages"]
    run_key = f"scale-{factor}x"
    # The data stages run in processes of their own, as Airflow tasks do: each peak is that stage's alone.
    with measured(stages, "extract", saved) as memory:
        snapshot = in_own_process(memory, "run_extract", overrides, run_key, END)
    with measured(stages, "quality", saved) as memory:
        in_own_process(memory, "run_quality", overrides, snapshot)
    with measured(stages, "prepare", saved) as memory:
        dataset = in_own_process(memory, "run_prepare", overrides, snapshot)
    entry["dataset"] = {k: dataset[k] for k in ("users", "items", "interactions", "dropped_interactions")}
    if until == "prepare":
        saved()
        return entry
    with measured(stages, "train_epoch", saved):
        trained = pipeline.run_train(overrides, dataset)
    training_figures(entry, Path(trained["model_dir"]), steps)
    register_candidate(config, model_dir=Path(trained["model_dir"]), run_dir=Path(trained["run_dir"]),
                       evaluation={}, decision={"passed": True, "reasons": ["cost-curve benchmark"]},
                       lineage={"run_key": run_key})
    return measure_publish(entry, overrides, saved)


def training_figures(entry: dict, model_dir: Path, steps: int) -> None:
    """The capped run's throughput from its model folder, and the full epoch extrapolated (labelled so)."""
    from tasks.layout import ModelFiles

    summary = json.loads(ModelFiles(model_dir).summary.read_text())
    record = json.loads(ModelFiles(model_dir).history.read_text())[-1]
    steps_per_s, full_steps = record["steps_per_second"], summary["full_steps_per_epoch"]
    epoch_s = full_steps / steps_per_s
    dataset = entry["dataset"]
    entry["stages"]["train_epoch"] |= {
        "measured_steps": steps, "steps_per_second": round(steps_per_s, 2), "full_steps_per_epoch": full_steps,
        "epoch_seconds_extrapolated": round(epoch_s), "events_per_second": round(dataset["interactions"] / epoch_s),
        "validation_seconds": round(record["validation_seconds"], 1)}
    entry["notes"]["train_epoch"] = (
        f"seconds is the measured wall time of the capped run ({steps} steps, text vectors, validation of "
        f"{min(dataset['users'], VALIDATION_USERS):,} users, MLflow); a full epoch of {full_steps} steps is "
        f"EXTRAPOLATED at {epoch_s:.0f} s")


def size_overrides(factor: int, admin_url: str, database: str, home: Path, steps: int) -> dict:
    """The pipeline settings every stage of a size runs with."""
    return {"database.url": admin_url.rsplit("/", 1)[0] + f"/{database}", "paths.home": str(home),
            "registry.model_name": f"prismrec_scale_{factor}x", "materialize.top_k": 50,
            "materialize.keep_runs": 1, "train.max_steps_per_epoch": steps, "quality.volume_max_ratio": 1000.0,
            # The model gate is not a stage here; EASE's items x items solve would refuse 37k items.
            "gate.baselines": "popularity", **TRAIN}


def measure_publish(entry: dict, overrides: dict, saved) -> dict:
    """Publish every user's top-50 from the size's champion: the score and publish stages."""
    from tasks import pipeline

    stages = entry["stages"]
    with measured(stages, "publish"):
        published = pipeline.run_materialize(overrides)
    stages["score"] = {"seconds": round(published["score_seconds"], 1), "peak_mib": stages["publish"]["peak_mib"],
                       **{k: published[k] for k in ("retrieval", "retrieval_recall", "exact_rescored_users")}}
    stages["publish"] |= {"rows": published["rows"], "write_seconds": round(published["write_seconds"], 1)}
    recall = published["retrieval_recall"]
    entry["notes"]["score"] = ("scoring runs inside publish, which COPYs each batch's rows while the next is scored: "
                               "seconds is scoring's share (with scoring processes, the wall time until their last "
                               "batch), plus the index and similar items, peak_mib the whole publish's process tree; "
                               "retrieval "
                               f"{published['retrieval']}" + ("" if recall is None else f", recall {recall:.4f} "
                               "against exact ranking on a sample of users"))
    saved()
    return entry


LATER_STAGES = ("train_epoch", "score", "publish")
NOTE = ("seconds are wall-clock; each stage's largest 1-minute load average is in scale.json (load_average_max; "
        "above the core count, other work shared the machine); MiB is a stage's peak: extract, quality and prepare "
        "each run in a process of their own, as Airflow tasks do (their seconds include its start); train_epoch, score "
        "and publish are the benchmark's process (with torchrun's tree while training)")


def keep_later_stages(entry: dict, sizes: list[dict]) -> dict:
    """A size measured `--until prepare` keeps the training, scoring and publishing figures of its
    earlier run (with their date and notes); without one, the size says they were not run."""
    earlier = next((s for s in sizes if s["events"] == entry["events"]), None)
    kept = {k: v for k, v in (earlier or {}).get("stages", {}).items() if k in LATER_STAGES and v}
    if not kept:
        entry["notes"]["train_epoch, score, publish"] = "not run (--until prepare)"
        return entry
    notes = {k: v for k, v in earlier.get("notes", {}).items() if k in LATER_STAGES}
    notes["train_epoch, score, publish"] = (f"measured {earlier.get('measured_at', '?')}; this size's data stages "
                                            "were measured again since (--until prepare)")
    return entry | {"stages": kept, "notes": notes}


def machine() -> dict:
    from bench.machine import machine as describe

    info = describe()  # its ram_gib is the machine's memory
    info["load_average_at_start"] = [round(x, 1) for x in os.getloadavg()]
    return info


def save(result: dict) -> None:
    """bench/results/<name>.json and the table in <name>.md (name: --results, "scale" unless given);
    sizes measured by another run and not by this one are kept from the file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result.get('results', 'scale')}.json"
    on_disk = json.loads(path.read_text()) if path.exists() else {}
    ours = {s["events"] for s in result["sizes"]}
    result["sizes"] = sorted(result["sizes"] + [s for s in on_disk.get("sizes", []) if s["events"] not in ours],
                             key=lambda s: s["events"])
    path.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Cost curve (bench.scale)", "",
             f"Measured {result['generated_at']} on {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['ram_gib']} GiB; {result['note']}", "",
             "| events | users | items | " + " | ".join(f"{s} s (MiB)" for s in STAGES) + " |",
             "| ---: | ---: | ---: | " + " | ".join("---:" for _ in STAGES) + " |"]
    for size in result["sizes"]:
        cells = []
        for stage in STAGES:
            got = size["stages"].get(stage)
            cells.append("—" if got is None or got.get("seconds") is None else f"{got['seconds']:,} ({got['peak_mib']:,})")
        lines.append(f"| {size['events']:,} | {size['users']:,} | {size['items']:,} | " + " | ".join(cells) + " |")
    lines += ["", "train_epoch is a capped run; the extrapolated full epoch (labelled, not measured):", ""]
    for size in result["sizes"]:
        t = size["stages"].get("train_epoch") or {}
        if "epoch_seconds_extrapolated" in t:
            lines.append(f"- {size['events']:,} events: {t['measured_steps']} steps at {t['steps_per_second']} steps/s; "
                         f"a full epoch of {t['full_steps_per_epoch']:,} steps EXTRAPOLATES to "
                         f"{t['epoch_seconds_extrapolated']:,} s ({t['events_per_second']:,} events/s)")
    lines += ["", "Notes per size:", ""]
    for size in result["sizes"]:
        loads = [got["load_average_max"] for got in size["stages"].values() if got and "load_average_max" in got]
        if loads:
            lines.append(f"- {size['events']:,} events: measured from {size.get('measured_at', '?')}; 1-minute load "
                         f"average up to {max(loads)} during its stages ({result['machine']['cores']} cores)")
        for stage, note in size.get("notes", {}).items():
            lines.append(f"- {size['events']:,} events, {stage}: {note}")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="multiples of ML-1M's 1M events")
    parser.add_argument("--steps", type=int, default=30, help="training steps measured per size")
    parser.add_argument("--url", default=os.environ.get("SCALE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--database", default=DATABASE, help="the database created for the run and dropped after it")
    parser.add_argument("--home", default="/tmp/prismrec-scale", help="PRISMREC_HOME of the runs (removed first)")
    parser.add_argument("--until", choices=("prepare", "publish"), default="publish",
                        help="the last stage run for each size (prepare: the data stages only)")
    parser.add_argument("--from", dest="start", choices=("load", "publish"), default="load",
                        help="publish: measure publishing again on the database and home an earlier run of "
                             "the size left (--keep-database, or a run stopped after training)")
    parser.add_argument("--keep-database", action="store_true", help="leave the database for a later --from publish")
    parser.add_argument("--results", default="scale",
                        help="bench/results/<results>.{json,md}: another name keeps a different machine's curve apart")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.results):
        parser.error(f"--results {args.results!r}: a file name in bench/results (letters, digits, '.', '_', '-'), "
                     "e.g. scale-xeon-amx")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for chatty in ("alembic", "mlflow", "great_expectations"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    import sqlalchemy as sa

    admin = sa.create_engine(args.url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT")
    home = Path(args.home)
    path = RESULTS / f"{args.results}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    result = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "results": args.results,
              "note": NOTE,
              "sizes": [s for s in previous.get("sizes", [])]}
    if args.start == "publish":
        return publish_again(args, result, admin, home)
    try:
        for factor in (int(f) for f in args.sizes.split(",")):
            with admin.connect() as conn:
                conn.execute(sa.text(f"drop database if exists {args.database} with (force)"))
                conn.execute(sa.text(f"create database {args.database}"))
            from bench.synthetic import ML1M_EVENTS, ScaleSpec

            spec = ScaleSpec.of(factor * ML1M_EVENTS)
            entry = {"factor": factor, "events": spec.events, "users": spec.users, "items": spec.items,
                     "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "stages": {}, "notes": {}}
            if args.until == "prepare":
                entry = keep_later_stages(entry, result["sizes"])
            result["sizes"] = sorted([s for s in result["sizes"] if s["events"] != entry["events"]] + [entry],
                                     key=lambda s: s["events"])
            shutil.rmtree(home / f"{factor}x", ignore_errors=True)
            run_size(factor, args.url, args.database, home / f"{factor}x", args.steps, entry, lambda: save(result),
                     args.until)
    finally:  # `with (force)` ends the pipeline's pooled connections to it
        if not args.keep_database:
            with admin.connect() as conn:
                conn.execute(sa.text(f"drop database if exists {args.database} with (force)"))
    return result


def publish_again(args, result: dict, admin, home: Path) -> dict:
    """--from publish: the score and publish stages of each size again, on what an earlier run left
    (its database, its home's champion and its figures for the stages before)."""
    import sqlalchemy as sa

    with admin.connect() as conn:
        exists = conn.execute(sa.text("select 1 from pg_database where datname = :d"), {"d": args.database}).scalar()
    for factor in (int(f) for f in args.sizes.split(",")):
        entry = next((s for s in result["sizes"] if s.get("factor") == factor and s["stages"].get("train_epoch")),
                     None)
        if not exists or entry is None or not (home / f"{factor}x" / "mlflow.db").exists():
            raise SystemExit(f"--from publish needs what an earlier run of {factor}x left: the database "
                             f"{args.database}, {home / f'{factor}x'} and its training figures in scale.json; "
                             "run the size with --keep-database first")
        if "steps_per_second" not in entry["stages"]["train_epoch"]:  # a run stopped before it wrote them
            training_figures(entry, home / f"{factor}x" / "runs" / f"scale-{factor}x" / "model", args.steps)
        entry["notes"]["score, publish"] = (f"measured again {datetime.now(UTC).isoformat(timespec='seconds')} "
                                            "(--from publish) on the data and model of the run above")
        measure_publish(entry, size_overrides(factor, args.url, args.database, home / f"{factor}x", args.steps),
                        lambda: save(result))
    return result


if __name__ == "__main__":
    main()
