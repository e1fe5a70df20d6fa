"""Run-folder retention deletes old runs' raw events, never the newest, the protected or the summaries."""

from __future__ import annotations

import json
import os

from tasks.data.retention import PURGED, purge_old_runs
from tasks.layout import RunLayout


def _run(runs_dir, key: str, age_days: int) -> RunLayout:
    run = RunLayout.of(runs_dir, key)
    for path in [*run.snapshot.tables().values(), run.snapshot.rejected_interactions, run.dataset.sequences]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"raw events")
    run.snapshot.manifest.write_text("{}")
    run.model.root.mkdir(parents=True)
    run.model.checkpoint.write_bytes(b"weights")
    stamp = 1_700_000_000 - age_days * 86_400
    os.utime(run.snapshot.manifest, (stamp, stamp))
    return run


def test_old_runs_lose_raw_events_but_keep_their_summary_and_model(tmp_path):
    runs = {key: _run(tmp_path, key, age) for key, age in
            (("newest", 0), ("second", 7), ("champion", 14), ("old", 21), ("oldest", 28))}
    purged = purge_old_runs(tmp_path, keep=2, protect={"champion"})
    assert purged == ["old", "oldest"]
    for key in ("newest", "second", "champion"):
        assert runs[key].snapshot.interactions.exists() and runs[key].dataset.sequences.exists()
    for key in ("old", "oldest"):
        run = runs[key]
        assert not any(p.exists() for p in run.snapshot.tables().values())
        assert not run.snapshot.rejected_interactions.exists() and not run.dataset.root.exists()
        assert run.snapshot.manifest.exists() and run.model.checkpoint.exists()
        assert "keep_runs = 2" in json.loads((run.snapshot.root / PURGED).read_text())["why"]
    assert purge_old_runs(tmp_path, keep=2, protect={"champion"}) == []  # nothing left to purge


def test_no_runs_folder_is_nothing_to_do(tmp_path):
    assert purge_old_runs(tmp_path / "missing", keep=2) == []
