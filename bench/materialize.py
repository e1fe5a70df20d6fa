"""Publishing benchmark: top-100 for every MovieLens-1M user (~604k rows) through the real `materialize`.

    python -m bench.materialize [--top-k 100] [--steps 20] [--retrain]

ML-1M is loaded into the benchmark's own schema (`bench_app`), a short PrismRec run is
trained with `launch_training` (the code the DAG runs) and registered as champion of
`prismrec_bench` (reused on later runs unless --retrain), then `tasks.publish.materialize.materialize`
publishes into `bench_reco`. Measured in the same run: scoring rows/s (model + row building),
the project's write rows/s (pyarrow CSV + COPY + index builds) and `pandas.to_sql` writing
the same rows into tables with the same indexes. Saves bench/results/materialize.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.machine import machine

log = logging.getLogger("bench.materialize")

RESULTS = Path(__file__).resolve().parent / "results"
APP, RECO, MODEL = "bench_app", "bench_reco", "prismrec_bench"
ML1M_RATINGS = 1_000_209
LOGICAL_DATE = datetime(2003, 3, 1, tzinfo=UTC)  # after ML-1M's last rating


def ensure_ml1m(config) -> None:
    """Load ML-1M into the benchmark schema unless it is already there."""
    import sqlalchemy as sa

    from tasks import db
    from tasks.data.sources import load_movielens

    engine = db.get_engine(config)
    if db.table_exists(engine, APP, "interactions"):
        with engine.connect() as conn:
            if conn.execute(sa.text(f"select count(*) from {APP}.interactions")).scalar() == ML1M_RATINGS:
                return
    load_movielens(config, "movielens-1m")


def ensure_champion(config, steps: int, retrain: bool) -> str:
    """A champion of MODEL trained on ML-1M (a short real run), reused unless `retrain`."""
    from tasks.data.extract import extract_snapshot
    from tasks.data.prepare import prepare_dataset
    from tasks.layout import RunLayout
    from tasks.registry.store import champion_version, register_candidate
    from tasks.training.launcher import launch_training

    version = champion_version(config)
    if version is not None and not retrain:
        log.info("reusing %s version %s", MODEL, version)
        return version
    run = RunLayout.of(config.paths.runs, "bench-materialize")
    snapshot = extract_snapshot(config, LOGICAL_DATE, run.snapshot.root)
    dataset = prepare_dataset(config, snapshot.path, run.dataset.root)
    model_dir = launch_training(config, Path(dataset.path), run.model.root)
    return register_candidate(
        config, model_dir=model_dir, run_dir=run.root, evaluation={}, decision={"passed": True, "reasons": ["benchmark"]},
        lineage={"run_key": "bench-materialize", "steps_per_epoch": steps}).version


def to_sql_seconds(engine, materialization_id: int) -> tuple[int, float]:
    """Time pandas.to_sql writing the run's rows (all three outputs) into tables with the same indexes."""
    import pandas as pd
    import sqlalchemy as sa

    from tasks.publish.tables import OUTPUTS, partition_table

    rows, seconds = 0, 0.0
    for output in OUTPUTS:
        source = f"{RECO}.{partition_table(output, materialization_id)}"
        target = f"to_sql_{output.name}"
        with engine.connect() as conn:
            frame = pd.read_sql_query(sa.text(f"select * from {source}"), conn)
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists {RECO}.{target}"))
            conn.execute(sa.text(f"create table {RECO}.{target} (like {source} including defaults including indexes)"))
        started = time.perf_counter()
        with engine.begin() as conn:
            frame.to_sql(target, conn, schema=RECO, if_exists="append", index=False)
        seconds += time.perf_counter() - started
        rows += len(frame)
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop table {RECO}.{target}"))
    return rows, seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="training steps of the short PrismRec run")
    parser.add_argument("--retrain", action="store_true", help="train a new benchmark champion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for chatty in ("pgserver", "alembic", "mlflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

    from tasks import db
    from tasks.config import load_config
    from tasks.publish.materialize import materialize

    config = load_config({"database.app_schema": APP, "database.reco_schema": RECO, "registry.model_name": MODEL,
                          "materialize.top_k": args.top_k, "materialize.keep_runs": 2,
                          "train.epochs": 1, "train.max_steps_per_epoch": args.steps})
    ensure_ml1m(config)
    version = ensure_champion(config, args.steps, args.retrain)
    summary = materialize(config)  # ad hoc run key: always a fresh publication
    written = summary.rows + summary.interest_rows + summary.similar_rows
    to_sql_rows, to_sql_time = to_sql_seconds(db.get_engine(config), summary.materialization_id)
    assert to_sql_rows == written, (to_sql_rows, written)
    write_rate, to_sql_rate = written / summary.write_seconds, to_sql_rows / to_sql_time
    result = {
        "rows": summary.rows,
        "score_rows_per_s": round(summary.rows / summary.score_seconds),
        "write_rows_per_s": round(write_rate),
        "to_sql_rows_per_s": round(to_sql_rate),
        "write_vs_to_sql": round(write_rate / to_sql_rate, 1),
        "details": {
            "dataset": "movielens-1m", "users": summary.users, "fallback_users": summary.fallback_users,
            "top_k": args.top_k, "model": f"{MODEL} v{version}", "interest_rows": summary.interest_rows,
            "similar_rows": summary.similar_rows, "rows_written_per_method": written,
            "score_seconds": round(summary.score_seconds, 2), "write_seconds": round(summary.write_seconds, 2),
            "to_sql_seconds": round(to_sql_time, 2), "publish_seconds": round(summary.seconds, 2),
            "write_includes": "pyarrow CSV encoding + COPY + index builds (user_recommendations, user_interests, "
                              "similar_items); to_sql writes the same rows into tables with the same indexes",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "materialize.json").write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    print(f"\nPublishing benchmark: top-{args.top_k} for {summary.users:,} ML-1M users "
          f"({result['machine']['cpu']}, {result['machine']['cores']} cores)")
    for key in ("rows", "score_rows_per_s", "write_rows_per_s", "to_sql_rows_per_s", "write_vs_to_sql"):
        value = result[key]
        print(f"  {key:<{width}}  {value:>12,}" if isinstance(value, int) else f"  {key:<{width}}  {value:>12}")
    print(f"saved {RESULTS / 'materialize.json'}")
    return result


if __name__ == "__main__":
    main()
