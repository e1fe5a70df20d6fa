"""Where a training run keeps its files: one object per folder, so no module spells a file name.

A run folder (`<PRISMREC_HOME>/runs/<run key>/`) holds the stages' outputs in the order the
DAG makes them:

    snapshot/   items, users, interactions (Parquet), manifest, quality report, rejected rows
    dataset/    the prepared split: sequences, items with their indices, new items, dataset.json
    model/      checkpoint, per-epoch history, training summary, settings, item table
    evaluation.json, decision.json, registered.json, mlflow_run.json

Each stage takes and returns these objects (or their `root`), and every reader finds a file
through them, so a renamed file changes here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class SnapshotFiles:
    """`snapshot/`: the extracted `app` tables as of the logical date, and the data gate's verdict."""

    root: Path

    TABLES: ClassVar[tuple[str, ...]] = ("items", "users", "interactions")

    def table(self, name: str) -> Path:
        """`items`, `users` or `interactions` as Parquet."""
        return self.root / f"{name}.parquet"

    def tables(self) -> dict[str, Path]:
        """Every extracted table's file, by table name."""
        return {name: self.table(name) for name in self.TABLES}

    @property
    def items(self) -> Path:
        return self.table("items")

    @property
    def users(self) -> Path:
        return self.table("users")

    @property
    def interactions(self) -> Path:
        return self.table("interactions")

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def quality_report(self) -> Path:
        return self.root / "quality_report.json"

    @property
    def rejected_interactions(self) -> Path:
        return self.root / "rejected_interactions.parquet"

    @property
    def rejected_items(self) -> Path:
        """Catalogue rows the tolerant item checks left out (blank text), with the reason."""
        return self.root / "rejected_items.parquet"


@dataclass(frozen=True)
class DatasetFiles:
    """`dataset/`: the 5-core, time-ordered, leave-one-out split that training and evaluation read."""

    root: Path

    @property
    def sequences(self) -> Path:
        """Every user's time-ordered item indices (tasks.data.prepare.Sequences)."""
        return self.root / "sequences.npz"

    @property
    def items(self) -> Path:
        """The ranking universe: item indices with their app ids and text."""
        return self.root / "items.parquet"

    @property
    def new_items(self) -> Path:
        """Catalogue items outside the training universe (no or too few interactions), with text:
        scored by their text alone and published as new (tasks.training.new_items)."""
        return self.root / "new_items.parquet"

    @property
    def cold_targets(self) -> Path:
        """(user, new item) pairs whose item was first rated in that user's held-out part: the
        really cold evaluation (tasks.evaluation.cold)."""
        return self.root / "cold_targets.parquet"

    @property
    def info(self) -> Path:
        return self.root / "dataset.json"


# The model folder's format, saved in its checkpoint ("format"; a checkpoint without one reads as 1).
# Raise it whenever a model gains a file or a checkpoint entry that code before it would ignore or
# misread (as the new-item head, the id rows predicted from text, the trend prior and the transition prior were): that code then refuses
# the model by name (Recommender.load) instead of scoring with part of it.
MODEL_FORMAT = 4


@dataclass(frozen=True)
class ModelFiles:
    """`model/`: what fine-tuning leaves behind, and what the MLflow model packages."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "model.pt"

    @property
    def history(self) -> Path:
        """One record per epoch: losses, validation metrics, timings, memory."""
        return self.root / "history.json"

    @property
    def summary(self) -> Path:
        """The run as a whole: best epoch, why it stopped, seconds."""
        return self.root / "training.json"

    @property
    def settings(self) -> Path:
        """The training settings the worker processes read (written by the launcher)."""
        return self.root / "train_config.json"

    @property
    def new_item_head(self) -> Path:
        """How new items' scores compete with trained ones (tasks.model.new_item_head), when fitted."""
        return self.root / "new_item_head.json"

    @property
    def trend(self) -> Path:
        """The recent-popularity prior (tasks.model.trend), when train.trend_prior fitted one."""
        return self.root / "trend.json"

    @property
    def transitions(self) -> Path:
        """The transition prior (tasks.model.transitions), when train.transition_prior fitted one."""
        return self.root / "transitions.npz"

    @property
    def items(self) -> Path:
        """The model's item table (index, id, title, genres, training interactions)."""
        return self.root / "items.parquet"


@dataclass(frozen=True)
class RunLayout:
    """A training run's folder and every file the stages write into it."""

    root: Path

    @classmethod
    def of(cls, runs_dir: Path, run_key: str) -> RunLayout:
        return cls(Path(runs_dir) / run_key)

    @property
    def key(self) -> str:
        return self.root.name

    @property
    def snapshot(self) -> SnapshotFiles:
        return SnapshotFiles(self.root / "snapshot")

    @property
    def dataset(self) -> DatasetFiles:
        return DatasetFiles(self.root / "dataset")

    @property
    def model(self) -> ModelFiles:
        return ModelFiles(self.root / "model")

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def decision(self) -> Path:
        return self.root / "decision.json"

    @property
    def registered(self) -> Path:
        return self.root / "registered.json"

    @property
    def mlflow_run(self) -> Path:
        """The id of the MLflow run `train` opened, which `register` resumes and ends."""
        return self.root / "mlflow_run.json"
