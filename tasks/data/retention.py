"""Run-folder retention: raw-event files of old training runs are deleted, their summaries kept.

A run folder's `snapshot/` (the extracted `app` rows: who watched what, when) and `dataset/`
(the same events as sequences) are personal data. Only the newest `paths.keep_runs` run folders
keep them, plus the folders named in `protect` (the run in progress, the champion's own run,
whose lineage names them); the others keep their manifest, quality report, model and
evaluation, and get `snapshot/purged.json` saying when and why. Drift compares with the last
successful snapshot, so keeping at least two leaves it something to compare with.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

from tasks.layout import RunLayout

log = logging.getLogger(__name__)

PURGED = "purged.json"


def _raw_files(run: RunLayout) -> list[Path]:
    snapshot = run.snapshot
    files = [*snapshot.tables().values(), snapshot.rejected_interactions]
    return [path for path in files if path.exists()]


def _started(run: RunLayout) -> float:
    """When the run extracted its snapshot (the manifest's time), else when its folder changed."""
    manifest = run.snapshot.manifest
    return (manifest if manifest.exists() else run.root).stat().st_mtime


def purge_old_runs(runs_dir: Path, keep: int, protect: Collection[str] = ()) -> list[str]:
    """Delete raw events of run folders beyond the newest `keep`, except `protect`ed keys; returns the
    run keys purged."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = sorted((RunLayout(p) for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=_started, reverse=True)
    purged = []
    for run in runs[keep:]:
        if run.key in protect:
            continue
        files = _raw_files(run)
        if not files and not run.dataset.root.exists():
            continue
        for path in files:
            path.unlink()
        shutil.rmtree(run.dataset.root, ignore_errors=True)
        run.snapshot.root.mkdir(parents=True, exist_ok=True)
        (run.snapshot.root / PURGED).write_text(json.dumps({
            "purged_at": datetime.now(UTC).isoformat(), "files": [p.name for p in files] + ["dataset/"],
            "why": f"paths.keep_runs = {keep}: only the newest runs and the champion's keep raw events"}, indent=2))
        purged.append(run.key)
    if purged:
        log.info("retention: deleted the raw events of %d old run folder(s) (%s); keeping the newest %d and %s",
                 len(purged), ", ".join(purged), keep, ", ".join(sorted(protect)) or "nothing else")
    return purged
