"""What the quality gate keeps on disk: the record of successful snapshots, and manifest updates.

The record (`<home>/quality/snapshot_history.json`) holds, per kind of snapshot and as-of date
(the snapshot's "now"), the counts and folder of the last snapshot that passed the gate. A
run's volume band and drift report compare with the latest record of the same kind at or
before its own as-of date: an earlier run of the same date counts (a rerun, or every run on
replayed data, whose as-of is the replay's end), a later date never does (a backfill compares
with the past it would have seen), and a kind is never compared with another: a `max_users`
slice is not the baseline of a full run, nor a windowed snapshot of an unwindowed one.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import PipelineConfig
from tasks.data.extract import file_sha256
from tasks.layout import SnapshotFiles

HISTORY_NAME = "snapshot_history.json"


def history_path(config: PipelineConfig) -> Path:
    return config.paths.home / "quality" / HISTORY_NAME


def source_key(snapshot_dir: Path) -> str:
    """The kind of a snapshot: database, schema, window and user slice; only like is compared with like."""
    manifest = SnapshotFiles(Path(snapshot_dir)).manifest
    if not manifest.is_file():
        return "unknown"
    meta = json.loads(manifest.read_text())
    users = meta.get("max_users")
    return (f"{meta.get('source_url', '')}|{meta.get('schema', '')}|window={meta.get('window_days')}"
            f"|users={f'first {users}' if users else 'all'}")


def _iso(moment: datetime) -> str:
    stamp = pd.Timestamp(moment)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).isoformat()


def _read(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["snapshots"] if path.is_file() else []


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers (two DAG runs finishing together) with an advisory file lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def baseline(config: PipelineConfig, source: str, as_of: datetime) -> dict[str, Any] | None:
    """The last snapshot of kind `source` that passed the gate as of `as_of` or earlier, or None."""
    moment = _iso(as_of)
    known = [s for s in _read(history_path(config)) if s["source"] == source and s["logical_date"] <= moment]
    return max(known, key=lambda s: s["logical_date"]) if known else None


def record_success(config: PipelineConfig, source: str, logical_date: datetime, snapshot_dir: Path,
                   counts: dict[str, int]) -> None:
    """Record the snapshot of kind `source` as of `logical_date` that passed; it replaces an earlier one
    of the same kind and date, so the next run of that date compares with this one."""
    path = history_path(config)
    entry = {"source": source, "logical_date": _iso(logical_date), "snapshot_dir": str(Path(snapshot_dir).resolve()),
             "counts": dict(counts), "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
    with _locked(path):
        kept = [s for s in _read(path) if (s["source"], s["logical_date"]) != (source, entry["logical_date"])]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"snapshots": sorted(kept + [entry], key=lambda s: s["logical_date"])}, indent=2))
        tmp.replace(path)


def _edit_manifest(snapshot_dir: Path, edit) -> None:
    """Apply `edit(manifest, files)` to the snapshot's manifest, if it has one, and write it atomically."""
    files = SnapshotFiles(Path(snapshot_dir))
    path = files.manifest
    if not path.is_file():
        return
    manifest = json.loads(path.read_text())
    edit(manifest, files)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def update_manifest(snapshot_dir: Path, interactions: pd.DataFrame, *, rejected: int) -> None:
    """Make the manifest describe the rewritten interactions file (count, hash, time range, rejects)."""
    def edit(manifest: dict, files: SnapshotFiles) -> None:
        manifest.setdefault("counts", {})["interactions"] = len(interactions)
        manifest.setdefault("sha256", {})[files.interactions.name] = file_sha256(files.interactions)
        manifest["sha256"][files.rejected_interactions.name] = file_sha256(files.rejected_interactions)
        times = interactions["occurred_at"]
        manifest["min_occurred_at"] = times.min().isoformat() if len(times) else None
        manifest["max_occurred_at"] = times.max().isoformat() if len(times) else None
        manifest["rejected"] = {"interactions": rejected, "file": files.rejected_interactions.name}

    _edit_manifest(snapshot_dir, edit)


def update_manifest_items(snapshot_dir: Path, items: pd.DataFrame, *, rejected: int) -> None:
    """Make the manifest describe the rewritten items file (count, hash, left-out items)."""
    def edit(manifest: dict, files: SnapshotFiles) -> None:
        manifest.setdefault("counts", {})["items"] = len(items)
        manifest.setdefault("sha256", {})[files.items.name] = file_sha256(files.items)
        manifest["sha256"][files.rejected_items.name] = file_sha256(files.rejected_items)
        manifest["rejected_items"] = {"items": rejected, "file": files.rejected_items.name}

    _edit_manifest(snapshot_dir, edit)
