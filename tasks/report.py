"""The run report `make demo` ends with: what was checked, trained, decided and published.

Reads the files a training run leaves in its run folder (manifest, quality report, training
summary, evaluation, gate decision, registration) and what is published in `reco`, then
runs one example query a BI user would run and shows its first rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tasks import db
from tasks.config import PipelineConfig
from tasks.errors import PrismRecError
from tasks.evaluation.metrics import METRIC_NAMES
from tasks.layout import RunLayout
from tasks.registry.gate import verdict

EXAMPLE_SQL = """\
select rank, item_id, title, round(score::numeric, 3) as score, interest_id, explanation, model_version
from {reco}.user_recommendations
where user_id = {user_id}
order by rank
limit 5"""


def latest_run_dir(config: PipelineConfig) -> Path:
    """The most recently registered training run (the folder holding its registration record)."""
    folders = config.paths.runs.iterdir() if config.paths.runs.is_dir() else []
    registered = [run for run in map(RunLayout, folders) if run.registered.is_file()]
    if not registered:
        raise PrismRecError("no finished training run to report on; run `prismrec train` first")
    return max(registered, key=lambda run: run.registered.stat().st_mtime).root


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _quality_line(summary: dict) -> str:
    if not summary:
        return "no report found"
    line = (f"{'passed' if summary.get('passed') else 'FAILED'}: {summary.get('evaluated', 0)} expectations, "
            f"{summary.get('failed', 0)} blocking failures")
    tolerated = [f for f in summary.get("failures", []) if not f.get("blocking")]
    if tolerated:
        rejected = sum(f.get("rejected") or 0 for f in tolerated)
        line += f"; {len(tolerated)} tolerated warnings, {rejected:,} rows left out of the snapshot"
    return line


def _metrics_table(evaluation: dict) -> list[str]:
    rows = [("PrismRec (candidate)", evaluation.get("candidate"))]
    rows += [(f"{name} (baseline)", result) for name, result in evaluation.get("baselines", {}).items()]
    if evaluation.get("champion"):
        rows.append((f"champion v{evaluation.get('champion_version')}", evaluation["champion"]))
    header = f"  {'model':<24} {'split':<6} " + " ".join(f"{m:>11}" for m in METRIC_NAMES)
    lines = [header, "  " + "-" * (len(header) - 2)]
    for name, result in rows:
        for split in ("valid", "test"):
            values = " ".join(f"{result[split][m]:>11.4f}" for m in METRIC_NAMES)
            lines.append(f"  {name if split == 'valid' else '':<24} {split:<6} {values}")
    return lines


def _unseen_line(evaluation: dict) -> list[str]:
    """The cold slices of the test split (targets never rated in training; new items first rated in
    the held-out part), reported whatever their size; an empty slice says so instead of a 0.0000."""
    slices = evaluation.get("slices") or {}
    lines = []
    for name, label in (("items_unseen", "targets unseen in training"), ("items_new", "new items (placed by their text)")):
        models = [("PrismRec", (slices.get("candidate") or {}))]
        if slices.get("champion"):
            models.append((f"champion v{evaluation.get('champion_version')}", slices["champion"]))
        found = [(who, (by_split.get("test") or {}).get(name)) for who, by_split in models]
        found = [(who, m) for who, m in found if m]
        if found and not found[0][1]["users"]:
            lines.append(f"   {label}, test: no such users in this split")
        elif found:
            lines.append(f"   {label}, test, {found[0][1]['users']} users: " + ", ".join(
                f"{who} HR@10 {m['hr@10']:.4f}" + (f" (median rank {m['median_rank']:.0f})" if "median_rank" in m else "")
                for who, m in found))
    return lines


def _head_line(head: dict) -> list[str]:
    """The new-item head (train.new_item_head), when the run fitted one: its rehearsal and its main weights."""
    fitted = head.get("fitted_on")
    if not fitted:
        return []
    cases = fitted.get("cases", {})
    items = head.get("items", {})
    since = str(fitted.get("cutoff", "?"))[:10]
    if fitted.get("skipped"):
        return [f"   new-item head not fitted ({fitted['skipped']}, titles from {since} on new): new items scored "
                "by their text alone"]
    on = {"model": "the run's model", "retrain": "a retrained model"}.get(fitted.get("rehearsal", "retrain"), "?")
    return [f"   new-item head fitted on a rehearsal with {on} (titles from {since} on new; "
            f"{cases.get('cold', 0):,} cold and {cases.get('warm', 0):,} warm cases, {fitted.get('seconds', 0):.0f}s): "
            f"score x{head.get('scale', 1):.2f}, just added {items.get('interactions_0', 0):+.2f}, "
            f"newest year {items.get('age_0-0', 0):+.2f}"]


def _trend_line(trend: dict) -> list[str]:
    """The trend prior (train.trend_prior), when the run fitted one: what validation chose and what it gained."""
    grid = trend.get("fit", {}).get("ndcg@10")
    if not grid:
        return []
    alone, users = grid.get("none", 0.0), trend["fit"].get("validation_users", 0)
    if not trend.get("weight"):
        return [f"   trend prior: none (no window and weight validated above the model alone, {alone:.4f}, "
                f"on {users:,} users)"]
    chosen = grid.get(f"{trend['window_days']} days x {trend['weight']}", alone)
    return [f"   trend prior: the last {trend['window_days']} days' interactions, weight {trend['weight']}: "
            f"validation NDCG@10 {alone:.4f} -> {chosen:.4f} on {users:,} users"]


def _transition_line(path: Path) -> list[str]:
    """The transition prior (train.transition_prior), when the run fitted one: the weight validation chose."""
    from tasks.model.transitions import TransitionPrior

    prior = TransitionPrior.load(path)
    grid = (prior.fit.get("ndcg@10") or {}) if prior is not None else {}
    if not grid:
        return []
    alone, users = grid.get("0.0", 0.0), prior.fit.get("validation_users", 0)
    if not prior.weight:
        return [f"   transition prior: none (no weight validated above the model alone, {alone:.4f}, on {users:,} users)"]
    return [f"   transition prior: weight {prior.weight}: validation NDCG@10 {alone:.4f} -> "
            f"{grid.get(str(prior.weight), alone):.4f} on {users:,} users"]


def render_report(config: PipelineConfig, run_dir: Path | None = None) -> str:
    run = RunLayout(Path(run_dir) if run_dir else latest_run_dir(config))
    manifest = _read(run.snapshot.manifest)
    quality = _read(run.snapshot.quality_report)
    dataset = _read(run.dataset.info)
    training = _read(run.model.summary)
    evaluation = _read(run.evaluation)
    decision = _read(run.decision)
    registered = _read(run.registered)

    out = [f"PrismRec run report — {run.key}", ""]
    counts = manifest.get("counts", {})
    out.append(f"1. Extracted (as of {manifest.get('as_of') or manifest.get('logical_date', '?')}): "
               f"{counts.get('interactions', 0):,} interactions, {counts.get('items', 0):,} items, "
               f"{counts.get('users', 0):,} users")
    replay = manifest.get("replay")
    if replay and manifest.get("as_of") != manifest.get("logical_date"):
        out.append(f"   (the source replays {replay['dataset']}, which ends then; the run's logical date was "
                   f"{manifest.get('logical_date')})")
    out.append(f"2. Data quality: {_quality_line(quality.get('summary') or {})}")
    out.append(f"3. Prepared (5-core, leave-one-out): {dataset.get('users', 0):,} users, "
               f"{dataset.get('items', 0):,} items, {dataset.get('interactions', 0):,} interactions"
               + (f"; {dataset['new_items']:,} more catalogue items are new (placed by their text)"
                  if dataset.get("new_items") else ""))
    if training:
        out.append(f"4. Fine-tuned in {training.get('train_seconds', 0):.0f}s on {training.get('world_size', 1)} "
                   f"process(es), {training.get('epochs_run', 0)} epochs, best valid NDCG@10 "
                   f"{training.get('best_valid_ndcg@10', 0):.4f}")
        out.extend(_head_line(_read(run.model.new_item_head)))
        out.extend(_trend_line(_read(run.model.trend)))
        out.extend(_transition_line(run.model.transitions))
    if evaluation:
        out.append("5. Full-ranking metrics (all items ranked, history masked):")
        out.extend(_metrics_table(evaluation))
        out.extend(_unseen_line(evaluation))
    if decision:
        outcome = "PASSED" if decision.get("passed") else "REFUSED"
        out.append(f"6. Gate {outcome}:")
        out.extend(f"   - {reason}" for reason in decision.get("reasons", []))
    refused = bool(registered) and not registered.get("promoted")
    if registered:
        alias = "champion + challenger" if registered.get("promoted") else "challenger (champion unchanged)"
        out.append(f"7. Registered {config.registry.model_name} version {registered.get('version')} "
                   f"as {alias}; MLflow run {registered.get('run_id')}")
        if refused:
            said = verdict(decision, version=str(registered.get("version")),
                           champion_before=registered.get("champion_before"), promoted=False)
            out.append(f"   {said[0].upper()}{said[1:]}")
    out.extend(_published(config, registered if refused else None))
    return "\n".join(out)


def _nothing_published(refused: dict | None) -> str:
    """What to do when `reco` holds nothing yet; after a refusal with no champion, materialize cannot help."""
    if refused is None or refused.get("champion_before"):
        return "8. Published: nothing yet (run `prismrec materialize` to publish the champion)"
    version = refused.get("version")
    return (f"8. Published: nothing, and `prismrec materialize` has no champion to publish; to publish v{version} "
            f"anyway, overrule the gate: prismrec promote {version} --reason TEXT")


def _published(config: PipelineConfig, refused: dict | None = None) -> list[str]:
    """What `reco` holds now; `refused` is the registration of a candidate the gate turned down, if any."""
    engine = db.get_engine(config)
    reco = db.quote_ident(config.database.reco_schema)
    if not db.table_exists(engine, config.database.reco_schema, "user_recommendations"):
        return [_nothing_published(refused)]
    with engine.connect() as conn:
        stats = conn.execute(sa.text(
            f"select count(*), count(distinct user_id), min(model_version), max(generated_at) "
            f"from {reco}.user_recommendations")).one()
        if not stats[0]:
            return ["8. Published: reco.user_recommendations is empty"]
        user_id = conn.execute(sa.text(f"select min(user_id) from {reco}.user_recommendations")).scalar()
        sql = EXAMPLE_SQL.format(reco=reco, user_id=user_id)
        rows = conn.execute(sa.text(sql)).all()
        interests = conn.execute(sa.text(
            f"select interest_id, weight, label from {reco}.user_interests where user_id = :u order by interest_id"),
            {"u": user_id}).all()
    lines = [f"8. Published: {stats[0]:,} rows for {stats[1]:,} users in {config.database.reco_schema}."
             f"user_recommendations (model version {stats[2]}, generated {stats[3]:%Y-%m-%d %H:%M:%S} UTC)",
             "", "Try it (e.g. `psql \"$(prismrec db url --psql)\"`):", "", sql, ""]
    for row in rows:
        lines.append(f"  {row.rank:>2}. {row.title[:40]:<40} score {row.score}  interest {row.interest_id}  "
                     f"{row.explanation}")
    if interests:
        lines += ["", f"  User {user_id}'s interests (share of the top-{config.materialize.top_k}, reco.user_interests):"]
        lines += [f"    {row.interest_id:>2}  {row.weight:5.0%}  {row.label}" for row in interests]
    return lines
