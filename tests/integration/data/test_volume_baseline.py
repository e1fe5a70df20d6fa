"""The data gate's volume band compares like with like, on real MovieLens-100K in Postgres.

Every run here goes through the functions the DAG's `extract` and `quality` tasks call, with
today as its logical date: on replayed data (app.prismrec_replay) every run then has the same
as-of, the replay's last rating. The source is a private copy of `app` (tables, not views), so
rows can vanish without touching the test run's shared schema, and each test has its own
PrismRec home, hence its own record of snapshots that passed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.errors import DataQualityError
from tasks.layout import SnapshotFiles
from tasks.pipeline import run_extract, run_quality

SOURCE = "volume_app"


@pytest.fixture
def overrides(ml100k, base_overrides, engine, tmp_path) -> dict:
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {SOURCE} cascade; create schema {SOURCE}"))
        for table in ("items", "users", "interactions", "prismrec_replay"):
            conn.execute(sa.text(f"create table {SOURCE}.{table} as select * from app.{table}"))
    home = tmp_path / "home"  # its own MLflow store too: a refused run's experiment lives with its home
    yield base_overrides | {"paths.home": str(home), "database.app_schema": SOURCE,
                            "registry.tracking_uri": f"sqlite:///{home / 'mlflow.db'}"}
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {SOURCE} cascade"))


def _run(overrides: dict, run_key: str, **settings) -> dict:
    """extract + quality of one training run triggered now; returns the quality report written."""
    snapshot = run_extract(overrides | settings, run_key, datetime.now(UTC))
    run_quality(overrides | settings, snapshot)
    return json.loads(SnapshotFiles(Path(snapshot["path"])).quality_report.read_text())


def _volume_checks(report: dict) -> dict[str, tuple[int | None, int | None]]:
    """{table: (min, max)} of each row-count expectation the run was held to."""
    return {
        table: (kwargs["min_value"], kwargs.get("max_value"))
        for table, validation in report["validation_results"].items()
        for outcome in validation["results"]
        if outcome["expectation_config"]["type"] == "expect_table_row_count_to_be_between"
        for kwargs in [outcome["expectation_config"]["kwargs"]]
    }


def test_runs_on_unchanged_replayed_data_pass_and_a_rerun_after_rows_vanished_fails(overrides, engine):
    first = _run(overrides, "scheduled__one")
    assert first["logical_date"] == "1998-04-22 23:10:38+00:00"  # the replay's end, whatever today is
    assert _volume_checks(first)["interactions"] == (1000, None)  # nothing to compare with yet

    second = _run(overrides, "manual__two")  # same as-of: compares with the first run
    assert _volume_checks(second)["interactions"] == (50_000, 300_000)
    assert second["drift"]["previous"].endswith("scheduled__one/snapshot")
    assert second["drift"]["breaches"] == []
    assert _run(overrides, "manual__two")["drift"]["previous"] is None  # a rerun of its own folder: no self-drift

    with engine.begin() as conn:  # 70 % of the interactions vanish from the source
        conn.execute(sa.text(f"delete from {SOURCE}.interactions where (user_id * 7 + item_id) % 10 < 7"))
        left = conn.execute(sa.text(f"select count(*) from {SOURCE}.interactions")).scalar_one()
    assert 25_000 < left < 35_000

    for run_key in ("manual__two", "manual__three"):  # a rerun of the same run, and a new run of the date
        with pytest.raises(DataQualityError) as refused:
            _run(overrides, run_key)
        message = str(refused.value)
        assert (f"interactions: expect_table_row_count_to_be_between failed: {left:,} rows, expected between "
                "50,000 and 300,000 (the last successful snapshot had 100,000)") in message
        assert ("The volume band is measured against the last snapshot of this source, window and user slice "
                "that passed the gate: as of 1998-04-22T23:10:38+00:00") in message
        assert "manual__two/snapshot. If the rows really went" in message
        assert "lower quality.volume_min_ratio" in message

    # The refusals left the baseline alone; accepting the drop on purpose makes it the new one.
    accepted = _run(overrides, "manual__four", **{"quality.volume_min_ratio": 0.1})
    assert _volume_checks(accepted)["interactions"] == (10_000, 300_000)
    assert _volume_checks(_run(overrides, "manual__five"))["interactions"] == (left // 2, left * 3)


def test_a_user_slice_is_never_the_baseline_of_a_full_run(overrides):
    slice_ = {"source.max_users": 100}
    assert _volume_checks(_run(overrides, "full__one"))["interactions"] == (1000, None)
    sliced = _run(overrides, "slice__one", **slice_)  # about a tenth of the rows: not held to the full run's band
    assert _volume_checks(sliced)["interactions"] == (1000, None) and sliced["drift"]["previous"] is None
    n_slice = sliced["summary"]["counts"]["interactions"]
    assert 5_000 < n_slice < 20_000

    full = _run(overrides, "full__two")  # compares with the full run, not with the slice
    assert _volume_checks(full)["interactions"] == (50_000, 300_000)
    assert full["drift"]["previous"].endswith("full__one/snapshot")
    again = _run(overrides, "slice__two", **slice_)  # and a slice with the slice of the same size
    assert _volume_checks(again)["interactions"] == (max(1000, n_slice // 2), n_slice * 3)
    assert again["drift"]["previous"].endswith("slice__one/snapshot")
