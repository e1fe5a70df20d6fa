"""Every decision about the champion, on record: the gate's, a forced one, a person's.

A row in Postgres `reco.model_decisions` (for BI tools and audits) says what was decided, by
whom or what ("gate", "forced by <user>: <reason>", "cli promote", "cli rollback",
"mlflow-ui move detected"), which version held `champion` before and after, the metrics,
the slices and every reason; the MLflow model version it concerns gets two tags, the latest
decision's id and who took it. A champion moved outside PrismRec (the MLflow UI) is noticed by
the champion watcher (tasks.registry.champion_watch), or the next time the pipeline or the CLI
touches the registry, and recorded as such, once.

Whoever moves the alias and records it holds the champion lock (`champion_lock`) across both
steps, so nobody looking at the registry meanwhile takes PrismRec's own move for a person's.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from tasks import db, rowlocks
from tasks.config import PipelineConfig

log = logging.getLogger(__name__)

TABLE = "model_decisions"
ACTIONS = ("gate", "force", "promote", "rollback", "external")
EXTERNAL_MOVE = "mlflow-ui move detected"
_TAG_MAX = 5000  # MLflow's limit on a tag value

_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("decision_id", "bigint generated always as identity primary key", "Order of the decisions (ascending)."),
    ("decision_key", "text unique",
     "Idempotency key of a pipeline decision (a retried task updates its row); null for human actions."),
    ("decided_at", "timestamptz not null default now()", "When the decision was recorded."),
    ("model_name", "text not null", "MLflow registered model the decision is about."),
    ("action", "text not null", "gate | force | promote | rollback | external (alias moved outside PrismRec)."),
    ("decided_by", "text not null",
     "Who or what decided: 'gate', 'forced by <user>: <reason>', 'cli promote', 'cli rollback', "
     "'mlflow-ui move detected'."),
    ("actor", "text not null", "The OS user or Airflow run that recorded it."),
    ("candidate_version", "text", "The model version decided on (the new candidate, or the version promoted to)."),
    ("champion_before", "text", "Version holding the champion alias before the decision (null: none)."),
    ("champion_after", "text", "Version holding the champion alias after the decision (null: none)."),
    ("passed", "boolean", "The gate's verdict (true also when forced); null for human actions."),
    ("reasons", "jsonb not null default '[]'", "Every check of the gate with its outcome, or why a person acted."),
    ("operator_reason", "text", "The reason a person gave (required to force a refused candidate)."),
    ("metrics", "jsonb not null default '{}'", "Candidate, baseline and champion metrics behind the decision."),
    ("slices", "jsonb not null default '{}'", "Per-slice metrics (history length, head/tail/cold items)."),
    ("run_key", "text", "Training run folder / Airflow run the decision came from, if any."),
)


@dataclass(frozen=True)
class ModelDecision:
    """One decision about who holds `champion`, as stored in reco.model_decisions."""

    model_name: str
    action: str
    decided_by: str
    actor: str
    candidate_version: str | None
    champion_before: str | None
    champion_after: str | None
    passed: bool | None = None
    reasons: list[str] = field(default_factory=list)
    operator_reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    slices: dict[str, Any] = field(default_factory=dict)
    run_key: str | None = None
    decision_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_user() -> str:
    """The OS user running this process (who typed the command), or "unknown"."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _table(config: PipelineConfig) -> str:
    return f"{db.quote_ident(config.database.reco_schema)}.{db.quote_ident(TABLE)}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ensure_table(conn: sa.Connection, config: PipelineConfig) -> None:
    """Create reco.model_decisions (and its comments) if missing, on `conn`'s transaction.

    Present (set up by the schema's owner), it costs one lookup and takes no lock a reader could hold.
    """
    table = _table(config)
    exists = conn.execute(sa.text("select to_regclass(:name) is not null"),
                          {"name": f"{config.database.reco_schema}.{TABLE}"}).scalar()
    if exists:
        return
    conn.execute(sa.text("select pg_advisory_xact_lock(hashtext('prismrec.model_decisions'))"))  # first setup only
    db.ensure_schema(conn, config.database.reco_schema)
    if conn.execute(sa.text("select to_regclass(:name) is not null"),
                    {"name": f"{config.database.reco_schema}.{TABLE}"}).scalar():
        return
    columns = ",\n  ".join(f"{db.quote_ident(name)} {sql}" for name, sql, _ in _COLUMNS)
    conn.execute(sa.text(f"create table {table} (\n  {columns},\n"
                         f"  check (action in ({', '.join(_literal(a) for a in ACTIONS)})))"))
    conn.execute(sa.text(f"create index on {table} (model_name, decision_id desc)"))
    conn.execute(sa.text(
        f"comment on table {table} is " + _literal(
            "Every decision about which model version is the champion: the gate's verdicts, forced "
            "promotions, promotions and rollbacks by people, and moves noticed in the MLflow registry. "
            "Latest first: order by decision_id desc.")))
    for name, _, comment in _COLUMNS:
        conn.execute(sa.text(f"comment on column {table}.{db.quote_ident(name)} is {_literal(comment)}"))


def _insert(conn: sa.Connection, config: PipelineConfig, decision: ModelDecision) -> int:
    row = decision.to_dict()
    for key in ("reasons", "metrics", "slices"):
        row[key] = json.dumps(row[key], default=str)
    names = list(row)
    cols = ", ".join(db.quote_ident(n) for n in names)
    values = ", ".join(f"cast(:{n} as jsonb)" if n in ("reasons", "metrics", "slices") else f":{n}" for n in names)
    updates = ", ".join(f"{db.quote_ident(n)} = excluded.{db.quote_ident(n)}" for n in names if n != "decision_key")
    return int(conn.execute(sa.text(
        f"insert into {_table(config)} ({cols}) values ({values}) "
        f"on conflict (decision_key) do update set {updates}, decided_at = now() returning decision_id"
    ), row).scalar_one())


def _last_champion(conn: sa.Connection, config: PipelineConfig, model_name: str) -> tuple[bool, str | None]:
    """(any decision on record, champion after the latest one) for `model_name`."""
    row = conn.execute(sa.text(
        f"select champion_after from {_table(config)} where model_name = :name order by decision_id desc limit 1"
    ), {"name": model_name}).first()
    return (row is not None, row[0] if row is not None else None)


def _tags(decision_id: int, decision: ModelDecision) -> dict[str, str]:
    """The version's tags: which decision is the latest on it and who took it (its reasons, metrics
    and history are rows of reco.model_decisions, not tags)."""
    return {"last_decision_id": str(decision_id), "last_decision_by": decision.decided_by[:_TAG_MAX]}


def record(config: PipelineConfig, decision: ModelDecision) -> int:
    """Store `decision` in reco.model_decisions (one transaction) and tag its model version; returns its id."""
    from tasks.registry.store import tag_version

    engine = db.get_engine(config)
    with engine.begin() as conn:
        ensure_table(conn, config)
        decision_id = _insert(conn, config, decision)
    version = decision.candidate_version or decision.champion_after
    if version:
        try:
            tag_version(config, version, _tags(decision_id, decision))
        except Exception:  # the decision is on record; a failed tag must not make its caller think otherwise
            log.warning("decision %d is recorded, but tagging %s version %s failed", decision_id,
                        decision.model_name, version, exc_info=True)
    log.info("decision %d on %s: %s (champion %s -> %s)", decision_id, decision.model_name, decision.decided_by,
             decision.champion_before, decision.champion_after)
    return decision_id


@contextlib.contextmanager
def champion_lock(config: PipelineConfig, *, wait: bool = True) -> Iterator[bool]:
    """Hold the champion lock of the configured model while the block runs; yields whether it is held.

    The row `champion:<model>` of reco.publish_lock, locked FOR UPDATE by a transaction kept open
    on its own connection: it spans MLflow calls and other transactions, and dies with the
    process that holds it. Taking it needs UPDATE on publish_lock, which reco_reader lacks (an
    advisory lock, which any role may take, would let a reader stall every promotion).
    `wait=False` does not queue: it yields False at once when someone else holds the lock.
    """
    schema = config.database.reco_schema
    key = f"champion:{config.registry.model_name}"
    engine = db.get_engine(config)
    with engine.begin() as conn:
        rowlocks.ensure_table(conn, schema)
        rowlocks.add_row(conn, schema, key)
    with engine.connect() as conn:
        held = rowlocks.lock(conn, schema, key, wait=wait)
        try:
            yield held
        finally:
            conn.rollback()


def note_external_move(config: PipelineConfig, actor: str, own_run_key: str | None = None,
                       noticed: str = "before the next registry action") -> ModelDecision | None:
    """Record a champion move nobody recorded (the MLflow UI, a script); returns the decision recorded.

    Compares the registry's champion with the one after the latest recorded decision. Call it
    holding `champion_lock`, before acting on the registry, so the trail of decisions has no
    gaps and a move is recorded once. A champion registered by `own_run_key` is this training
    run's own (a retried task), not a move. `noticed` says when, for the decision's reason.
    """
    from tasks.registry.store import champion_version, version_tags

    name = config.registry.model_name
    current = champion_version(config)
    with db.get_engine(config).begin() as conn:
        ensure_table(conn, config)
        any_on_record, last = _last_champion(conn, config, name)
    if last == current or (not any_on_record and current is None):
        return None
    if own_run_key and current is not None and version_tags(config, current).get("run_key") == own_run_key:
        return None
    before = last if any_on_record else None
    decision = ModelDecision(
        model_name=name, action="external", decided_by=EXTERNAL_MOVE, actor=actor,
        candidate_version=current, champion_before=before, champion_after=current,
        reasons=[f"champion moved from {before or 'none'} to {current or 'none'} outside PrismRec "
                 f"(MLflow UI or API); noticed {noticed}"],
    )
    record(config, decision)
    return decision


def _human_move(config: PipelineConfig, action: str, move, reason: str | None, actor: str | None) -> str:
    """Run `move()` (a registry promote/rollback returning the new champion) and record it."""
    actor = actor or current_user()
    with champion_lock(config):
        return _record_human_move(config, action, move, reason, actor)


def _record_human_move(config: PipelineConfig, action: str, move, reason: str | None, actor: str) -> str:
    from tasks.registry.store import champion_version, version_metrics

    note_external_move(config, actor)
    before = champion_version(config)
    after = move()
    why = reason or ("promoted by hand" if action == "promote" else "rolled back by hand")
    reasons = [f"{why} (champion {before or 'none'} -> {after})"]
    if before == after:
        reasons.append(f"version {after} already held champion; nothing moved")
    record(config, ModelDecision(
        model_name=config.registry.model_name, action=action, decided_by=f"cli {action}", actor=actor,
        candidate_version=after, champion_before=before, champion_after=after, reasons=reasons,
        operator_reason=reason, metrics={"run": version_metrics(config, after)},
    ))
    return after


def promote(config: PipelineConfig, version: str, reason: str | None = None, actor: str | None = None) -> str:
    """`prismrec promote`: make `version` the champion and record who did it and why."""
    from tasks.registry import store as registry

    return _human_move(config, "promote", lambda: registry.promote(config, version, reason), reason, actor)


def rollback(config: PipelineConfig, reason: str | None = None, actor: str | None = None) -> str:
    """`prismrec rollback`: give champion back to the previous version and record who did it and why."""
    from tasks.registry import store as registry

    return _human_move(config, "rollback", lambda: registry.rollback(config), reason, actor)
