"""Pure parts of the data-quality gate: drift metrics, the snapshot record, messages, dtype checks.

The gate itself is exercised on real MovieLens data in tests/integration/data/test_quality_*.py.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import load_config
from tasks.data import quality_store
from tasks.data.drift import compare_interactions, drift_report, js_divergence
from tasks.data.quality import Failure, QualityReport, check_snapshot
from tasks.errors import ConfigError, DataQualityError
from tasks.layout import SnapshotFiles


@pytest.fixture
def config(tmp_path):
    return load_config({"paths.home": str(tmp_path / "home")}, environ={})


def _interactions(pairs: list[tuple[int, int]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["user_id", "item_id"])


def test_js_divergence_known_values():
    same = pd.Series({1: 3, 2: 1})
    assert js_divergence(same, same * 10) == 0.0  # shares, not counts
    assert js_divergence(pd.Series({1: 1}), pd.Series({2: 1})) == 1.0  # disjoint supports
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4); JS = (KL(p|m) + KL(q|m)) / 2 in bits.
    expected = (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25) + math.log2(1 / 0.75)) / 2
    assert js_divergence(pd.Series({1: 1, 2: 1}), pd.Series({1: 2})) == pytest.approx(expected)


def test_drift_metrics_new_items_users_and_breaches(config):
    previous = _interactions([(1, 10), (1, 11), (2, 10), (2, 11)])
    current = _interactions([(1, 10), (1, 12), (3, 12), (3, 13)])
    report = compare_interactions(current, previous, config.quality, "prev")

    assert report.metrics["new_user_share"] == pytest.approx(1 / 2)
    assert report.metrics["new_item_share"] == pytest.approx(2 / 3, abs=1e-6)
    assert report.metrics["user_activity_js"] == 0.0  # everyone rated two items, before and after
    assert report.breaches == [f"item_popularity_js {report.metrics['item_popularity_js']:.3f} > 0.2",
                               "new_item_share 0.667 > 0.5"]
    assert not report.failed and "drift warning" in report.summary()
    assert compare_interactions(current, None, config.quality).to_dict()["previous"] is None


def test_drift_report_fails_only_in_fail_mode(tmp_path):
    for name, pairs in (("prev", [(1, 10), (2, 10)]), ("cur", [(7, 50), (8, 51)])):
        (tmp_path / name).mkdir()
        _interactions(pairs).to_parquet(SnapshotFiles(tmp_path / name).interactions)
    warn = load_config({"paths.home": str(tmp_path)}, environ={})
    assert drift_report(tmp_path / "cur", tmp_path / "prev", warn).breaches  # warns, returns

    fail = load_config({"paths.home": str(tmp_path), "quality.drift_mode": "fail"}, environ={})
    with pytest.raises(DataQualityError, match=r"new_item_share 1.000 > 0.5.*quality.drift_mode=warn"):
        drift_report(tmp_path / "cur", tmp_path / "prev", fail)
    assert drift_report(tmp_path / "cur", tmp_path / "gone", fail).previous is None  # deleted: first-run behaviour

    with pytest.raises(ConfigError, match="quality.drift_mode='loud'"):
        drift_report(tmp_path / "cur", None, load_config({"quality.drift_mode": "loud"}, environ={}))


def test_baseline_is_the_latest_success_of_the_same_kind_at_or_before_the_date(config, tmp_path):
    def at(day: str) -> datetime:
        return datetime.fromisoformat(day).replace(tzinfo=UTC)

    for day, n in (("1998-01-01", 100), ("1998-03-01", 300), ("1998-02-01", 200)):
        quality_store.record_success(config, "src", at(day), tmp_path / day, {"interactions": n})
    quality_store.record_success(config, "other", at("1998-02-15"), tmp_path / "x", {"interactions": 9})
    quality_store.record_success(config, "src", at("1998-02-01"), tmp_path / "rerun", {"interactions": 250})

    baseline = quality_store.baseline(config, "src", at("1998-02-20"))
    assert baseline["counts"] == {"interactions": 250} and baseline["snapshot_dir"].endswith("rerun")
    # A run of the same date compares with the last one that passed (reruns, replayed data).
    assert quality_store.baseline(config, "src", at("1998-02-01"))["counts"] == {"interactions": 250}
    assert quality_store.baseline(config, "src", at("1997-12-31")) is None  # nothing that early
    assert len(json.loads(quality_store.history_path(config).read_text())["snapshots"]) == 4


def test_snapshot_kind_tells_slices_and_windows_apart(tmp_path):
    def kind(**manifest) -> str:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        base = {"source_url": "postgresql+psycopg2://u:***@h/db", "schema": "app", "window_days": None}
        SnapshotFiles(folder).manifest.write_text(json.dumps(base | manifest))
        return quality_store.source_key(folder)

    full = kind()
    assert full == kind(max_users=None) == "postgresql+psycopg2://u:***@h/db|app|window=None|users=all"
    assert kind(max_users=200) == "postgresql+psycopg2://u:***@h/db|app|window=None|users=first 200"
    assert len({full, kind(max_users=200), kind(max_users=300), kind(window_days=90), kind(schema="crm")}) == 5


def test_failure_messages_say_what_was_dropped_and_why():
    tolerated = Failure("interactions", "expect_column_values_to_be_in_set", "item_id", "warning",
                        3, 100_003, 0.003, ["999999"], blocking=False, rejected=3, threshold=0.01)
    assert tolerated.describe() == (
        "interactions: expect_column_values_to_be_in_set(item_id) failed for 3 of 100,003 rows (0.003%), "
        "e.g. 999999 [tolerated (up to 1%): 3 rows left out of the snapshot]")
    over = Failure("interactions", "expect_column_values_to_be_between", "rating", "warning",
                   2_000, 100_000, 2.0, ["50.0"], blocking=True, threshold=0.01)
    assert over.describe().endswith("e.g. 50.0 [more than the tolerated 1%]")
    report = QualityReport(True, {"interactions": 100_000, "items": 5, "users": 4}, 30, [tolerated], 1.0,
                           Path("r.json"), rejected={"interactions": 3})
    assert report.summary() == ("data quality: 30/30 expectations passed on 100,000 interactions, 5 items, "
                                "4 users; 3 rows left out by 1 tolerant expectations")


def test_missing_parquet_file_fails_the_gate(config, tmp_path):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    pd.DataFrame({"user_id": [1]}).to_parquet(SnapshotFiles(snapshot).users)

    with pytest.raises(DataQualityError, match="items.parquet, interactions.parquet missing; re-run the extract"):
        check_snapshot(config, snapshot, datetime(1999, 1, 1, tzinfo=UTC))
    assert json.loads(SnapshotFiles(snapshot).quality_report.read_text())["summary"]["passed"] is False


def test_dtype_problems_name_the_observed_and_expected_type():
    from expectations.common import TIMESTAMP, dtype_problems
    from expectations.interactions import COLUMNS

    frame = pd.DataFrame({
        "user_id": pd.array([1], dtype="int64"), "item_id": pd.array([1], dtype="Int64"),
        "rating": [4.0], "occurred_at": pd.to_datetime(["1998-01-01"]),  # naive: no time zone
    })
    assert COLUMNS["occurred_at"] == TIMESTAMP
    assert dtype_problems(frame, COLUMNS) == {"occurred_at": "datetime64[us], expected UTC timestamp"}
    assert dtype_problems(frame.assign(occurred_at=frame["occurred_at"].dt.tz_localize("UTC")), COLUMNS) == {}
