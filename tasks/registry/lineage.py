"""Lineage of a trained model: which data, which code, which settings, how long it took.

Gathered from the run folder at registration time and stored as tags on the MLflow run and
model version, so any version in the registry can be traced back to its snapshot (location
and content hash, row counts, the data gate's verdict), the git commit and the config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.config import PROJECT_ROOT, PipelineConfig
from tasks.layout import ModelFiles, SnapshotFiles

log = logging.getLogger(__name__)


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """`git rev-parse HEAD` of the code that ran (with "+dirty" for uncommitted changes), else "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if head and dirty else (head or "unknown")


def content_hash(sha256: Mapping[str, str]) -> str:
    """One hash over a snapshot's files: sha256 of the sorted `name:sha256` lines."""
    lines = "\n".join(f"{name}:{digest}" for name, digest in sorted(sha256.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def full_config_hash(config: PipelineConfig) -> str:
    """Hash of every setting except where things live (paths, URLs: they differ per machine)."""
    relevant = {k: v for k, v in config.to_dict().items()
                if not k.startswith("paths.") and k not in {"database.url", "registry.tracking_uri", "source.cache_dir"}}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_lineage(config: PipelineConfig, *, snapshot: Mapping[str, Any], model_dir: Path,
                  run_dir: Path) -> dict[str, str]:
    """Lineage tags (all strings) of a candidate trained in `run_dir` from `snapshot`.

    The snapshot's manifest wins over the extract task's XCom: the data gate rewrites the
    interactions when it leaves rejected rows out, and the manifest follows it.
    """
    files = SnapshotFiles(Path(snapshot["path"]))
    manifest = _read(files.manifest)
    sha256 = manifest.get("sha256") or snapshot.get("sha256") or {}
    counts = manifest.get("counts") or snapshot.get("counts") or {}
    quality = _read(files.quality_report).get("summary") or {}
    training = _read(ModelFiles(Path(model_dir)).summary)
    tags = {
        "snapshot_path": str(files.root),
        "snapshot_content_sha256": content_hash(sha256) if sha256 else "unknown",
        "snapshot_sha256": sha256.get(files.interactions.name, ""),
        "logical_date": str(snapshot.get("logical_date", "")),
        "data_as_of": str(manifest.get("as_of") or snapshot.get("as_of") or snapshot.get("logical_date", "")),
        "data_gate_passed": str(quality.get("passed", "unknown")).lower(),
        "data_gate_rejected_rows": str(sum(int(v) for v in (quality.get("rejected") or {}).values())),
        "data_gate_failed_expectations": str(quality.get("failed", "")),
        "git_commit": git_commit(),
        "config_digest": config.digest(),
        "config_hash": full_config_hash(config),
        "train_seconds": f"{float(training['train_seconds']):.1f}" if "train_seconds" in training else "unknown",
        "epochs_run": str(training.get("epochs_run", "")),
        "run_key": Path(run_dir).name,
    }
    for table, rows in counts.items():
        tags[f"snapshot_rows_{table}"] = str(rows)
    if "interactions" in counts:
        tags["snapshot_interactions"] = str(counts["interactions"])  # registry searches written against this name
    return tags
