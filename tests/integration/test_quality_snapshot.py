"""The quality gate on a real MovieLens-100K snapshot extracted from Postgres, clean and corrupted."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from tasks.errors import DataQualityError
from tasks.quality import check_snapshot

# After the last ML-100K rating (1998-04-22), so the snapshot holds all 100,000.
LOGICAL_DATE = datetime(1998, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def snapshot(config, ml100k, tmp_path_factory) -> Path:
    from tasks.extract import extract_snapshot

    return extract_snapshot(config, LOGICAL_DATE, tmp_path_factory.mktemp("quality") / "snapshot").path


def test_real_snapshot_passes(config, snapshot):
    report = check_snapshot(config, snapshot, LOGICAL_DATE)

    assert report.passed, report.failures
    assert report.counts == {"items": 1682, "users": 943, "interactions": 100_000}
    assert report.summary() == (
        f"data quality: {report.evaluated}/{report.evaluated} expectations passed "
        "on 100,000 interactions, 1,682 items, 943 users"
    )
    written = json.loads((snapshot / "quality_report.json").read_text())
    assert written["summary"]["passed"] is True
    in_set = [
        r for r in written["validation_results"]["interactions"]["results"]
        if r["expectation_config"]["type"] == "expect_column_values_to_be_in_set"
    ]
    # The id lists are summarised, so the report stays small on ML-1M too.
    assert {r["expectation_config"]["kwargs"]["value_set"] for r in in_set} == {
        "<943 ids of this snapshot>", "<1,682 ids of this snapshot>"
    }


def test_corrupted_real_snapshot_fails_with_every_problem_named(config, snapshot, tmp_path):
    corrupted = tmp_path / "corrupted"
    shutil.copytree(snapshot, corrupted)
    interactions = pd.read_parquet(corrupted / "interactions.parquet")
    bad_rows = pd.DataFrame({
        "user_id": [1, 999_999, 1],
        "item_id": [888_888, 1, 1],
        "rating": [4.0, 4.0, 4.0],
        "occurred_at": pd.to_datetime(
            ["1998-01-01", "1998-01-01", "1999-03-01"], utc=True
        ).astype(interactions["occurred_at"].dtype),
    }).astype(interactions.dtypes.to_dict())
    pd.concat([interactions, bad_rows], ignore_index=True).to_parquet(corrupted / "interactions.parquet")

    with pytest.raises(DataQualityError) as caught:
        check_snapshot(config, corrupted, LOGICAL_DATE)

    message = str(caught.value)
    assert ("interactions: expect_column_values_to_be_in_set(item_id) failed for 1 of 100,003 rows "
            "(0.001%), e.g. 888888") in message
    assert ("interactions: expect_column_values_to_be_in_set(user_id) failed for 1 of 100,003 rows "
            "(0.001%), e.g. 999999") in message
    assert ("interactions: expect_column_values_to_be_between(occurred_at) failed for 1 of 100,003 rows "
            "(0.001%), e.g. 1999-03-01T00:00:00+00:00") in message
    assert len(caught.value.failures) == 3
    assert json.loads((corrupted / "quality_report.json").read_text())["summary"]["passed"] is False
