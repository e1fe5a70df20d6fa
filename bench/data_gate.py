"""Data-gate speed: GX on the Parquet snapshot vs GX pushed down into Postgres, on MovieLens-1M.

    python -m bench.data_gate [--schema bench_ml1m]

Loads ML-1M into its own schema (once), then times (a) extract + `check_snapshot` (all three
suites, with the rejected-row lists the gate needs) and (b) the interactions suite alone through
a GX SQL datasource over the same rows (`occurred_at <= logical date`), with GX already imported
for both. Saves bench/results/data-gate-ml-1m.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("bench.data_gate")
RESULTS = Path(__file__).resolve().parent / "results"
LOGICAL_DATE = datetime(2003, 3, 1, tzinfo=UTC)  # after ML-1M's last rating


def sql_pushdown(config, logical_date: datetime) -> tuple[float, bool]:
    """Validate the interactions suite inside Postgres; returns (seconds, success)."""
    import great_expectations as gx
    import sqlalchemy as sa
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    from expectations import interactions
    from tasks import db

    started = time.perf_counter()
    schema = db.quote_ident(config.database.app_schema)
    with db.get_engine(config).connect() as conn:
        item_ids = conn.execute(sa.text(f"select item_id from {schema}.items")).scalars().all()
        user_ids = conn.execute(sa.text(f"select user_id from {schema}.users")).scalars().all()
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False)))
    source = context.data_sources.add_sql("app", connection_string=db.database_url(config))
    asset = source.add_query_asset("interactions", query=(
        f"select user_id, item_id, rating::float8 as rating, occurred_at from {schema}.interactions "
        f"where occurred_at <= '{logical_date.isoformat()}'"))
    batch = asset.add_batch_definition_whole_table("all").get_batch()
    suite = context.suites.add(interactions.build_suite(config.quality, logical_date, item_ids, user_ids))
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
    return time.perf_counter() - started, bool(result.success)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schema", default="bench_ml1m")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import sqlalchemy as sa

    from tasks import db
    from tasks.config import load_config
    from tasks.data.extract import extract_snapshot
    from tasks.data.quality import check_snapshot
    from tasks.data.sources import load_movielens
    from tasks.layout import RunLayout

    config = load_config({"database.app_schema": args.schema})
    with db.get_engine(config).connect() as conn:
        loaded = conn.execute(sa.text("select to_regclass(:t)"), {"t": f"{args.schema}.interactions"}).scalar()
    if loaded is None:
        load_movielens(config, "movielens-1m")

    started = time.perf_counter()
    import great_expectations  # noqa: F401 - paid once per process by either path
    import_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        snapshot = extract_snapshot(config, LOGICAL_DATE, RunLayout(Path(work)).snapshot.root)
        extract_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = check_snapshot(config, snapshot.path, LOGICAL_DATE, record=False)
        check_seconds = time.perf_counter() - started
    sql_seconds, sql_success = sql_pushdown(config, LOGICAL_DATE)

    result = {
        "dataset": "ml-1m", "interactions": snapshot.counts["interactions"],
        "gx_import_seconds": round(import_seconds, 2),
        "parquet": {"extract_seconds": round(extract_seconds, 2), "check_seconds": round(check_seconds, 2),
                    "total_seconds": round(extract_seconds + check_seconds, 2), "suites": "items, users, interactions",
                    "passed": report.passed},
        "postgres_pushdown": {"seconds": round(sql_seconds, 2), "suites": "interactions only",
                              "passed": sql_success},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "database": db.safe_url(db.database_url(config))},
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data-gate-ml-1m.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s", json.dumps(result))
    return result


if __name__ == "__main__":
    main()
