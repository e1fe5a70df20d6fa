"""Typed, frozen configuration for every stage of the pipeline.

Precedence, lowest to highest: the defaults below < environment variables
(`PRISMREC_<STAGE>__<FIELD>`, e.g. `PRISMREC_TRAIN__EPOCHS=3`) < a DAG run's Params
< command-line flags. Overrides are dotted keys (`"train.epochs"`), so the DAG, the CLI
and the tests all go through `load_config`. The resolved config is logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError
from tasks.redact import redact_setting

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    # Everything the platform keeps locally (embedded Postgres, MLflow store, Airflow home,
    # snapshots) lives in one project-local folder, so `rm -rf .prismrec` is a clean reset.
    return Path(os.environ.get("PRISMREC_HOME", PROJECT_ROOT / ".prismrec")).resolve()


@dataclass(frozen=True)
class PathsConfig:
    home: Path = field(default_factory=_default_home)
    # Run folders that keep their raw-event snapshot and dataset (personal data): the newest N,
    # plus the champion's own; 5 weekly runs cover a month of drift comparisons and reruns.
    keep_runs: int = 5
    # Derived data that any run may rebuild (the frozen MiniLM states of a catalogue); unset, the
    # home's `cache/`. Homes or workers that train on the same catalogue can share one folder.
    cache: Path | None = None

    @property
    def embedded_pg(self) -> Path:
        return self.home / "pg"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def text_states(self) -> Path:
        """The frozen MiniLM layers' outputs per catalogue text (tasks.training.text_cache)."""
        return (self.cache or self.home / "cache") / "text-states"


@dataclass(frozen=True)
class DatabaseConfig:
    # None means: start the embedded Postgres (pgserver) under PathsConfig.embedded_pg.
    url: str | None = None
    app_schema: str = "app"
    reco_schema: str = "reco"
    # Roles `prismrec db grant` sets up (tasks.publish.roles): the contract's names; another
    # name only where a server hosts several PrismRec databases with separate roles.
    owner_role: str = "reco_owner"  # owns `reco` (NOLOGIN): nobody runs as it
    writer_role: str = "reco_writer"  # the pipeline
    reader_role: str = "reco_reader"  # BI tools


@dataclass(frozen=True)
class SourceConfig:
    # Wheels carrying MovieLens are cached here so a second load is offline-fast.
    cache_dir: Path = field(
        default_factory=lambda: Path(
            os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
        ) / "prismrec" / "wheels"
    )
    # Only the first N users (by id), for small, fast slices: the loader writes just them and
    # extraction snapshots just them; None means everyone.
    max_users: int | None = None


@dataclass(frozen=True)
class ExtractConfig:
    # Interactions older than this many days before the logical date are left out;
    # None keeps the whole history (MovieLens spans 7 months / 3 years).
    window_days: int | None = None


@dataclass(frozen=True)
class QualityConfig:
    # MovieLens-100K starts in 1997, ML-1M in 2000; anything before 1995 is a broken clock.
    earliest_event: str = "1995-01-01"
    # Fewer rows than this means the extraction, not the users, went wrong.
    min_interactions: int = 1000
    min_items: int = 50
    min_users: int = 20
    # How many offending values to quote per failed expectation.
    sample_size: int = 5
    # Tolerant checks (orphans, off-scale ratings, out-of-window times): up to this share of rows is dropped and reported; more is a breakage.
    max_rejected_share: float = 0.01
    # Exact duplicate (user, item, time) events are replayed writes; extra copies up to this share are dropped.
    max_duplicate_share: float = 0.01
    # Row counts must stay within [min_ratio, max_ratio] x the previous successful snapshot's (monthly MovieLens growth fits).
    volume_min_ratio: float = 0.5
    volume_max_ratio: float = 3.0
    # The newest event must be at most this many days before the logical date (stale replica); None disables.
    max_event_age_days: int | None = 30
    # Drift vs the last successful snapshot: a Jensen-Shannon divergence (item popularity, user activity) above this warns or fails.
    drift_threshold: float = 0.2
    # ... and so does a share of never-seen items or users above this (a sliding window needs it higher).
    drift_max_new_share: float = 0.5
    # "warn" logs and reports drift; "fail" stops the run (for sources that should be stable).
    drift_mode: str = "warn"


@dataclass(frozen=True)
class PrepareConfig:
    # The 5-core filter of docs/protocol.md: one pass, users then items (as RecBole does).
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    # Longest history the user tower reads; ML-100K median history is ~65 items.
    max_history: int = 50


@dataclass(frozen=True)
class TrainConfig:
    # Interest vectors per user: interest 0 follows the recent sequence, 1..K-1 pool long-term
    # tastes from the whole history; K=1 is a single-vector (SASRec-like) model.
    n_interests: int = 4
    # Width of item/interest vectors; 128 is ample for catalogues of a few thousand items.
    dim: int = 128
    # Top MiniLM layers fine-tuned (the rest stay frozen and cached): 1 places cold items by their
    # text far better than 0, and 2 learns no faster (see docs/experiments.md).
    lm_trainable_layers: int = 1
    # Item texts are a title, a year and genres: 32 word pieces cover nearly all of them.
    max_text_tokens: int = 32
    # Layers of the causal transformer that contextualises the history before interest extraction.
    user_layers: int = 2
    user_heads: int = 2
    # The transformer's feed-forward width, as a multiple of train.dim.
    user_ffn: int = 2
    dropout: float = 0.2
    # Items whose text rows are recomputed with gradient each step (drawn from the batch's targets):
    # 32 trains as well as 64 on ML-100K at ~20 % more steps a second on fp32 CPUs, and 16 no
    # better or faster (docs/experiments.md, v81).
    lm_items_per_step: int = 32
    # An upper bound: early stopping on validation NDCG@10 usually ends the run sooner.
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    # The pretrained layers need a much gentler step than the freshly initialised towers.
    lm_lr: float = 5e-5
    weight_decay: float = 0.01
    # Stop when validation NDCG@10 has not improved for this many epochs.
    patience: int = 5
    # Halve both learning rates after this many epochs without a better validation NDCG@10 (None:
    # constant rates); a cosine anneal does no better (see docs/experiments.md).
    lr_patience: int | None = 1
    # The halving stops at this share of the start rates.
    lr_floor: float = 0.01
    # torchrun processes per machine; on CPU keep nproc * threads <= cores, on GPUs one per device.
    nproc: int = 1
    # Machines taking part in one training (torchrun --nnodes): the pipeline's train task is node 0,
    # the others run `prismrec train-node` (docs/distributed-training.md). 1: this machine alone.
    nnodes: int = 1
    # This machine's place among them: 0 writes the model folder; set only on the other nodes.
    node_rank: int = 0
    # host:port of the c10d rendezvous, on node 0 (which hosts it); needed when nnodes > 1.
    rdzv_endpoint: str | None = None
    threads_per_proc: int = 0  # 0: cores // nproc
    seed: int = 42
    # Fuse a learned id embedding for items seen in training (cold items fall back to text).
    use_id_embedding: bool = True
    # New items (no training interactions) get the id row their text predicts: a ridge regression from
    # text vectors to the trained items' id rows, fitted after training with this penalty ("none": text
    # alone). Strong penalties lean on the mean row; 100 fitted best on a validation split (docs/experiments.md).
    new_item_id_penalty: float | None = 100.0
    # Fit the new-item head (tasks.model.new_item_head: how new items' scores compete with trained ones,
    # from their recency, their few interactions and the user's taste for recent releases) on a rehearsal
    # of day one (tasks.training.rehearsal) at the cut-off where the last `new_item_head_share` of titles
    # appeared. Too few rehearsal cases leave the head the identity (new items scored as without it).
    new_item_head: bool = True
    new_item_head_share: float = 0.1
    # What the rehearsal ranks with: "model", the run's own model with the titles outside that day's
    # 5-core made new again (seconds; the default); "retrain", a second model trained on the interactions
    # before the cut-off (nearly a second training). On ML-1M's time split "model" fitted a head as good
    # or better with MiniLM frozen, a more cautious one with a fine-tuned layer (docs/experiments.md, "A
    # rehearsal on the run's own model").
    new_item_head_rehearsal: str = "model"
    # Fit a recent-popularity prior after training (tasks.model.trend): each trained item's score gets a
    # lift by how busy it was in the weeks before the day of the prediction, window and weight chosen on
    # validation (weight 0 included), before the new-item head, which is fitted with it on. Needs the
    # interaction days `prepare` keeps. Off by default: level on ML-100K (v80); ML-1M's benchmark
    # setting turns it on (docs/experiments.md, v77-v79).
    trend_prior: bool = False
    # Fit a transition prior after training (tasks.model.transitions), after the trend prior: each item's score
    # gets a lift by how often it came right after the user's latest items in the training histories, its
    # weight chosen on validation (0 included). Off by default: it adds on ML-1M's leave-one-out split, which
    # its benchmark setting turns it on for, and costs on the cold-start time split (docs/experiments.md,
    # "A transition prior on ML-1M").
    transition_prior: bool = False
    # Cap on steps per epoch, for quick slices and tests; None trains on everything.
    max_steps_per_epoch: int | None = None
    # Every interaction is a training target: histories longer than prepare.max_history are cut
    # into windows (False: only each user's latest window, as a truncating SASRec does).
    all_positions: bool = True
    # Share of prepare.max_history that every target sees before it (all there is near a history's
    # start): windows overlap by that many items. 0.5 learns faster than 0 (see docs/experiments.md).
    window_overlap: float = 0.5
    # Softmax over the whole catalogue (0), or over this many uniformly sampled negatives per batch
    # plus each target: cheaper logits for large catalogues, a little less accurate.
    negatives: int = 0
    # Scores are cosines times this (softmax temperature 1 / logit_scale; the interest balance is in
    # these logit units): 10 learns slower, 30 is level (see docs/experiments.md).
    logit_scale: float = 20.0
    # Penalty on positive cosines between a user's long-term interests: keeps them apart without
    # pushing them past orthogonal; stronger settings cost accuracy.
    interest_diversity: float = 0.1
    # How the published lists share picks between interests (tasks.model.recommender.balance_interests;
    # 0: best interest alone): 0.1 gives nearly every user two interests or more at a cost within noise.
    interest_balance: float = 0.1
    # Polyak averaging of the weights over about this many epochs of steps (0: off); each epoch the
    # better of averaged and live weights on validation is kept: the average leads on a plateau.
    ema_epochs: float = 1.8
    # Warm the average up (tasks.training.schedule.ema_decay) so that early on it follows the
    # fast-improving weights instead of lagging them by ema_epochs.
    ema_warmup: bool = True
    # Users each epoch validates on (early stopping, the plateau schedule, averaged-or-live): None all
    # of them, else a fixed random sample of this many, the same every epoch. With ~100k users and
    # more, validating everyone twice an epoch costs more than the epoch's steps; the evaluate task
    # still scores every user.
    validation_users: int | None = None
    # Wall-clock budget: training stops before an epoch that would overrun it (measured on the
    # epochs so far, validation included); the best epoch is kept.
    max_minutes: float | None = None
    # Matmul precision: "auto" = bf16 autocast on a GPU and on CPUs with native bf16 (AVX512-BF16,
    # AMX), fp32 elsewhere; "bf16" or "fp32" force one. The user tower ranks in it too, resolved on the
    # ranking machine: validation, the gate's evaluation, publishing and the pyfunc (Recommender.load).
    precision: str = "auto"
    # Memory allocator of the training processes (CPU; tasks.training.launcher.allocator_env):
    # glibc's malloc fragments over a long run (resident memory grows epoch after epoch) and
    # returns a step's large score matrices to the kernel only to fault them in again. "auto":
    # jemalloc when the system has it (Debian: libjemalloc2), else mimalloc (the cmeel-mimalloc
    # dependency), else glibc with huge pages; "jemalloc" or "mimalloc" insist on one; "system"
    # leaves the allocator alone.
    allocator: str = "auto"
    # Memory guard: the run stops with a message once its processes hold more than this many GB
    # (their summed Pss; tasks.training.memory), before the kernel's out-of-memory killer would end
    # it silently. Unset: 75 % of the machine's memory, or of the container's limit.
    max_memory_gb: float | None = None


def parse_floors(text: str) -> dict[str, float]:
    """`"hr@10=0.05, ndcg@10=0.02"` -> {"hr@10": 0.05, "ndcg@10": 0.02}; ConfigError if malformed."""
    floors: dict[str, float] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(part)
            floors[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"gate.floors entry {part!r} is not metric=value; write e.g. gate.floors=\"hr@10=0.05,ndcg@10=0.02\""
            ) from None
        if math.isnan(floors[name.strip()]):
            raise ConfigError(f"gate.floors entry {part!r} is NaN; give a number")
    return floors


GATE_BASELINES = ("popularity", "itemknn", "ease")  # cheap enough to fit inside every run
REHEARSALS = ("retrain", "model")  # train.new_item_head_rehearsal


@dataclass(frozen=True)
class GateConfig:
    # The selection metric (tasks.evaluation.metrics.SELECTION_METRIC), on the validation split.
    metric: str = "ndcg@10"
    # Baselines scored on the run's split (comma-separated, from popularity, itemknn, ease); the
    # candidate must beat the best of them. EASE and item-kNN hold items x items matrices (16 and 8
    # bytes a cell at their peak: EASE needs 6.4 GB at 20k items); `train` refuses, before training,
    # a catalogue whose baselines cannot fit (tasks.evaluation.baselines.check_baselines_fit).
    baselines: str = "popularity,ease"
    # Absolute floor on validation/test NDCG@10; 0 means only the comparisons decide.
    min_metric: float = 0.0
    # The candidate may trail the champion by at most this much (absolute) on the same split.
    champion_tolerance: float = 0.005
    # More absolute floors, "metric=value,..." (e.g. "hr@10=0.05"); a metric the evaluation lacks refuses, never passes.
    floors: str = ""
    # Slices hold fewer users, so their metrics are noisier than the overall one: a wider tolerance.
    slice_tolerance: float = 0.02
    # A slice with fewer users than this is too noisy to judge; its check is skipped, saying so.
    min_slice_users: int = 50
    # History-length slices: short <= short_history_max training items, long >= long_history_min; unset: terciles.
    short_history_max: int | None = None
    long_history_min: int | None = None
    # Head items: the most popular ones that together hold this share of training interactions; the rest is tail.
    head_share: float = 0.5
    # Cold items: targets with fewer than this many training interactions (text carries them, not ids).
    cold_item_interactions: int = 10

    def baseline_names(self) -> list[str]:
        return [name.strip() for name in self.baselines.split(",") if name.strip()]

    def __post_init__(self) -> None:  # why: a malformed floor must stop a run before anything is written
        names = self.baseline_names()
        unknown = sorted(set(names) - set(GATE_BASELINES))
        if not names or unknown:
            raise ConfigError(f"gate.baselines={self.baselines!r}: give a comma-separated list from "
                              f"{', '.join(GATE_BASELINES)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        parse_floors(self.floors)
        if not 0.0 < self.head_share < 1.0:
            raise ConfigError("gate.head_share must be between 0 and 1 (e.g. 0.5)")
        if self.min_slice_users < 1 or self.cold_item_interactions < 1:
            raise ConfigError("gate.min_slice_users and gate.cold_item_interactions must be at least 1")
        if (self.short_history_max is None) != (self.long_history_min is None) or (
                self.short_history_max is not None and self.short_history_max >= self.long_history_min):
            raise ConfigError("set both gate.short_history_max and gate.long_history_min (short < long), "
                              "or neither for terciles")


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "prismrec"
    experiment: str = "prismrec"
    # None: MLFLOW_TRACKING_URI if set, else the project-local SQLite store.
    tracking_uri: str | None = None


RETRIEVALS = ("auto", "exact", "index")  # materialize.retrieval


@dataclass(frozen=True)
class MaterializeConfig:
    top_k: int = 50
    # Users scored per forward pass, at most; fewer where their score tensor (users x interests x
    # catalogue items, float32) would pass score_memory_mb: a catalogue that grows then costs time,
    # not memory (throughput is flat from ~64 users a batch up).
    batch_users: int = 1024
    score_memory_mb: int = 512
    # Materializations whose output stays in reco's history tables (the current one always does).
    keep_runs: int = 7
    # Neighbours per item in reco.similar_items (a "more like this" row needs ~10-20).
    similar_top_k: int = 20
    # The swap waits at most this long for a lock a reader holds (a long BI query); readers that
    # arrive meanwhile queue behind it, so this bounds their wait too.
    swap_lock_timeout_ms: int = 1000
    # Tries of the swap (waits of 1, 2, 4 ... s between them) before the run fails, current set untouched.
    swap_attempts: int = 5
    # New items (no training interactions, placed by their text) a list may take, its best
    # ones: a text-only score ranks the users who later rate such an item far above chance but
    # below what ratings give, so uncapped they would crowd or vanish by accident of scale
    # (docs/experiments.md, "New items"); None lets them compete freely, 0 keeps them out.
    max_new_items: int | None = 5
    # How each user's list is drawn from the catalogue: "exact" ranks every item; "index" ranks the
    # candidates an inverted-file index retrieves for each interest (tasks.model.retrieval:
    # approximate, far cheaper on a large catalogue); "auto" uses the index from index_min_items
    # listable items up. A run with the index measures its recall against exact ranking on
    # recall_sample_users users and records it (reco.runs.retrieval_recall).
    retrieval: str = "auto"
    index_min_items: int = 20_000
    # Cells of the index (None: ~4 sqrt(items)) and cells each interest's query visits: more probes,
    # higher recall, slower.
    index_lists: int | None = None
    index_probes: int = 32
    # Items each interest retrieves (at least top_k); their union is ranked with exact scores.
    index_candidates: int = 200
    # Users whose lists are ranked both ways to measure the index's recall; below index_min_recall
    # the index probes half as many cells again until it is reached (0: measure, never probe more).
    recall_sample_users: int = 1000
    index_min_recall: float = 0.9
    # Publications of score_process_min_users users or more are scored in this many child processes
    # (tasks.publish.scoring), each started under train.allocator's malloc with its share of the cores:
    # glibc's re-faults the user tower's activations batch after batch. On 2 cores two processes of one
    # thread each beat one of two threads (docs/experiments.md). 0 scores in the task's own process.
    score_processes: int = 2
    score_process_min_users: int = 20_000


@dataclass(frozen=True)
class PipelineConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    materialize: MaterializeConfig = field(default_factory=MaterializeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Flat `{"stage.field": value}` view, JSON-friendly, for logging to MLflow and writing to disk.

        Secrets are redacted (tasks.redact): a URL's password is `***`, so this view may go
        into any store; the live config object keeps the real values.
        """
        flat: dict[str, Any] = {}
        for stage in dataclasses.fields(self):
            section = getattr(self, stage.name)
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                key = f"{stage.name}.{f.name}"
                flat[key] = redact_setting(key, str(value) if isinstance(value, Path) else value)
        return flat

    def digest(self) -> str:
        """Short hash of the settings that shape the model (paths and URLs excluded)."""
        relevant = {
            k: v for k, v in self.to_dict().items()
            if k.split(".")[0] in {"extract", "prepare", "train"} and k not in _PLACEMENT
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


# Where a training process runs, not what it learns: left out of the digest.
_PLACEMENT = frozenset({"train.node_rank", "train.rdzv_endpoint"})

_ENV_SHORTCUTS = {
    "PRISMREC_DATABASE_URL": "database.url",
    "MLFLOW_TRACKING_URI": "registry.tracking_uri",
}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a string/JSON value into the field's declared type, or raise ConfigError."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | {"Path": Path})
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
            return None
        return _coerce(value, args[0], key)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.strip().lower() in {"1", "true", "yes", "on"}:
                    return True
                if value.strip().lower() in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is Path:
            return Path(value).expanduser().resolve()
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"setting {key}={value!r} is not a valid {getattr(annotation, '__name__', annotation)}; "
            f"fix the environment variable, DAG Param or flag that sets it"
        ) from None


def load_config(overrides: Mapping[str, Any] | None = None, *,
                environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Resolve the pipeline config: defaults < environment < `overrides` (Params, then flags).

    `overrides` maps dotted keys (`"train.epochs"`) to values; None values are ignored so unset
    flags do not clobber lower layers.
    """
    environ = os.environ if environ is None else environ
    layered: dict[str, Any] = {}
    for env_name, key in _ENV_SHORTCUTS.items():
        if environ.get(env_name):
            layered[key] = environ[env_name]
    for env_name, value in environ.items():
        if env_name.startswith("PRISMREC_") and "__" in env_name:
            stage, _, name = env_name[len("PRISMREC_"):].partition("__")
            layered[f"{stage.lower()}.{name.lower()}"] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            layered[key] = value

    base = PipelineConfig()
    sections: dict[str, dict[str, Any]] = {}
    stage_fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    for key, value in layered.items():
        stage, _, name = key.partition(".")
        if stage not in stage_fields or not name:
            raise ConfigError(f"unknown setting {key!r}; valid stages: {', '.join(stage_fields)}")
        section_fields = {f.name: f for f in dataclasses.fields(getattr(base, stage))}
        if name not in section_fields:
            raise ConfigError(
                f"unknown setting {key!r}; {stage} has: {', '.join(sorted(section_fields))}"
            )
        sections.setdefault(stage, {})[name] = _coerce(value, section_fields[name].type, key)
    config = dataclasses.replace(
        base, **{stage: dataclasses.replace(getattr(base, stage), **values) for stage, values in sections.items()}
    )
    validate(config)
    return config


def rendezvous_endpoint_ok(endpoint: str) -> bool:
    """Whether `endpoint` is HOST:PORT (torchrun's --rdzv_endpoint) with a usable port."""
    host, sep, port = endpoint.rpartition(":")
    return bool(sep and host.strip() and not any(c.isspace() for c in endpoint)
                and port.isdigit() and 1 <= int(port) <= 65535)


def validate(config: PipelineConfig) -> None:
    """Reject settings that cannot work, before any stage touches a database."""
    t = config.train
    checks = [
        (t.n_interests >= 1, "train.n_interests must be at least 1"),
        (t.epochs >= 1, "train.epochs must be at least 1"),
        (t.precision in ("auto", "bf16", "fp32"), "train.precision must be auto, bf16 or fp32"),
        (t.allocator in ("auto", "jemalloc", "mimalloc", "system"),
         f"train.allocator must be auto, jemalloc, mimalloc or system, got {t.allocator!r}"),
        (t.interest_diversity >= 0, "train.interest_diversity must be >= 0"),
        (t.interest_balance >= 0, f"train.interest_balance must be >= 0 (0: no balancing), got {t.interest_balance}"),
        (t.logit_scale > 0, f"train.logit_scale must be positive, got {t.logit_scale}"),
        (t.ema_epochs >= 0, f"train.ema_epochs must be >= 0 (0: no weight averaging), got {t.ema_epochs}"),
        (t.negatives >= 0, "train.negatives must be >= 0 (0: full softmax over the catalogue)"),
        (t.lm_items_per_step >= 1,
         f"train.lm_items_per_step must be at least 1 (the items whose text vectors a step refreshes; to freeze "
         f"MiniLM set train.lm_trainable_layers=0), got {t.lm_items_per_step}"),
        (t.max_minutes is None or t.max_minutes > 0, "train.max_minutes must be positive (or unset)"),
        (t.validation_users is None or t.validation_users >= 1,
         f"train.validation_users must be at least 1 (or unset for every user), got {t.validation_users}"),
        (t.max_memory_gb is None or t.max_memory_gb > 0,
         f"train.max_memory_gb must be positive (or unset for 75 % of the machine's memory), got {t.max_memory_gb}"),
        (0 <= t.lr_floor < 1, "train.lr_floor must be in [0, 1): the share of the start rates the schedule never goes below"),
        (t.nproc >= 1, "train.nproc must be at least 1"),
        (t.nnodes >= 1, "train.nnodes must be at least 1"),
        (0 <= t.node_rank < t.nnodes,
         f"train.node_rank must be between 0 and train.nnodes - 1 = {t.nnodes - 1}, got {t.node_rank}"),
        (t.nnodes == 1 or t.rdzv_endpoint is not None,
         f"train.nnodes is {t.nnodes} but train.rdzv_endpoint is unset: give every node node 0's HOST:PORT "
         "(e.g. train.rdzv_endpoint=10.0.0.5:29400; --rdzv-endpoint) so that they can meet"),
        (t.rdzv_endpoint is None or rendezvous_endpoint_ok(t.rdzv_endpoint),
         f"train.rdzv_endpoint must be HOST:PORT with a port from 1 to 65535 (e.g. 10.0.0.5:29400), "
         f"got {t.rdzv_endpoint!r}"),
        (0 <= t.lm_trainable_layers <= 6, "train.lm_trainable_layers must be between 0 and 6 (MiniLM has 6)"),
        (t.dim % t.user_heads == 0, "train.dim must be divisible by train.user_heads"),
        (t.user_ffn >= 1, f"train.user_ffn (the feed-forward width as a multiple of train.dim) must be at least 1, "
         f"got {t.user_ffn}"),
        (0.0 <= t.dropout < 1.0, "train.dropout must be in [0, 1)"),
        (t.batch_size >= 1 and t.lr > 0 and t.lm_lr >= 0, "train.batch_size, train.lr must be positive"),
        (config.prepare.max_history >= 2, "prepare.max_history must be at least 2"),
        (0.0 <= t.window_overlap < 1.0, f"train.window_overlap must be in [0, 1), got {t.window_overlap}"),
        (t.new_item_head_rehearsal in REHEARSALS,
         f"train.new_item_head_rehearsal must be one of {', '.join(REHEARSALS)}, got {t.new_item_head_rehearsal!r}"),
        (0 < t.new_item_head_share < 1,
         f"train.new_item_head_share must be between 0 and 1 (the share of titles that are new in the rehearsal), "
         f"got {t.new_item_head_share}"),
        (t.new_item_id_penalty is None or t.new_item_id_penalty >= 0,
         f"train.new_item_id_penalty must be >= 0 (or none: new items by their text alone), got {t.new_item_id_penalty}"),
        (config.materialize.top_k >= 1, "materialize.top_k must be at least 1"),
        (min(config.materialize.keep_runs, config.materialize.similar_top_k, config.materialize.batch_users,
             config.materialize.score_memory_mb) >= 1,
         "materialize.keep_runs, materialize.similar_top_k, materialize.batch_users and "
         "materialize.score_memory_mb must be at least 1"),
        (config.paths.keep_runs >= 2, f"paths.keep_runs must be at least 2 (this run and the one drift compares "
                                      f"with), got {config.paths.keep_runs}"),
        (config.materialize.max_new_items is None or config.materialize.max_new_items >= 0,
         "materialize.max_new_items must be >= 0 (0: no new items in the lists), or unset for no cap"),
        (config.materialize.swap_lock_timeout_ms >= 1 and config.materialize.swap_attempts >= 1,
         "materialize.swap_lock_timeout_ms and materialize.swap_attempts must be at least 1"),
        (config.materialize.retrieval in RETRIEVALS,
         f"materialize.retrieval must be one of {', '.join(RETRIEVALS)}, got {config.materialize.retrieval!r}"),
        (min(config.materialize.index_min_items, config.materialize.index_probes,
             config.materialize.index_candidates, config.materialize.index_lists or 1) >= 1
         and config.materialize.recall_sample_users >= 0,
         "materialize.index_min_items, index_lists, index_probes and index_candidates must be at least 1, "
         "materialize.recall_sample_users at least 0"),
        (config.materialize.score_processes >= 0 and config.materialize.score_process_min_users >= 0,
         "materialize.score_processes (0: score in the task's own process) and "
         "materialize.score_process_min_users must be at least 0"),
        (0.0 <= config.materialize.index_min_recall <= 1.0,
         f"materialize.index_min_recall must be between 0 and 1, got {config.materialize.index_min_recall}"),
        (config.source.max_users is None or config.source.max_users >= 1,
         f"source.max_users (--max-users) must be at least 1, or unset for every user; got {config.source.max_users}"),
        (config.extract.window_days is None or config.extract.window_days > 0,
         "extract.window_days must be positive (or unset for the whole history)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    d = config.database
    for kind, name in (("schema", d.app_schema), ("schema", d.reco_schema), ("role", d.owner_role),
                       ("role", d.writer_role), ("role", d.reader_role)):
        if not name.isidentifier() or name.lower() != name:
            raise ConfigError(
                f"{kind} name {name!r} is not a plain lower-case SQL identifier; use letters, digits and _"
            )
