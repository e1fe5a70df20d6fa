"""
### recsys_training

Weekly retraining of the PrismRec recommender, from the production tables to the registry:

`extract` (Parquet snapshot of `app` as of the run's logical date) → `quality` (Great
Expectations gate; a failure stops the run and nothing is written) → `prepare` (5-core,
leave-one-out) → `train` (torchrun fine-tuning) → `evaluate` (candidate, the gate's baselines
and the current champion on the same split) → `gate` (validation metrics) → `register` (MLflow:
alias `challenger`, and `champion` if the gate passed).

When the champion moves, `register` emits the asset `prismrec://champion`, which triggers
`recsys_materialize`. Every task only passes paths, counts and versions through XCom; the
run's files live in `<PRISMREC_HOME>/runs/<run id>/`.

**Where the code is.** Each task calls one function of `tasks/pipeline.py`, which calls its stage:

| task | glue | stage |
| --- | --- | --- |
| `extract` | `pipeline.run_extract` | `tasks/data/extract.py` |
| `quality` | `pipeline.run_quality` | `tasks/data/quality.py`, suites in `expectations/` |
| `prepare` | `pipeline.run_prepare` | `tasks/data/prepare.py` |
| `train` | `pipeline.run_train` | `tasks/training/launcher.py` → `tasks/training/worker.py` |
| `evaluate` | `pipeline.run_evaluate` | `tasks/evaluation/evaluate.py` |
| `gate` | `pipeline.run_gate` | `tasks/registry/gate.py` |
| `register` | `pipeline.run_register` | `tasks/registry/store.py`, `tasks/registry/decisions.py` |

**Logical date.** Extraction reads interactions up to the run's logical date. Scheduled runs
have one; manual runs in Airflow 3 may not (logical date `None`), and then the run's
`run_after` (the moment it was triggered) is used instead. A source schema that replays a
historic dataset (`prismrec load` records it in `app.prismrec_replay`) is read as of the earlier
of that date and the replay's end, so a run triggered now, or by the schedule, on MovieLens
succeeds; the `extract` log and the run report say so.

**Failures.** A bad setting or Param, bad source data or a refused snapshot fails its task at
once, without retries, with the message `prismrec train` prints (tasks/airflow_tasks.py); only
transient faults (Postgres not answering, a dropped connection) are retried.

**Params** (the same as `prismrec train`'s flags, tasks/contracts.py) left empty keep the
configured value (environment `PRISMREC_<STAGE>__<FIELD>`, then the defaults in
`tasks/config.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetAlias, dag, task

from tasks.airflow_tasks import end_training_run, fail_fast, note_verdict
from tasks.contracts import champion_asset, dag_params, overrides_from_params, train_queue

CHAMPION = champion_asset()
# Emitted through an alias so that only a run that actually promoted a model produces an
# event (an Asset outlet always emits).
CHAMPION_MOVES = AssetAlias(name="prismrec_champion_moves")


@dag(
    dag_id="recsys_training",
    doc_md=__doc__,
    description=("Weekly retraining: extract from Postgres, data gate, fine-tune under torchrun, "
                 "evaluate, model gate, register in MLflow"),
    schedule="@weekly",
    # Early on purpose: runs as of a historic logical date (MovieLens is 1997-2003) are legitimate
    # replays, and Airflow creates no tasks for dates before start_date. catchup=False keeps
    # the scheduler from backfilling all those weeks.
    start_date=datetime(1990, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # runs share the registry and the machine's cores
    tags=["prismrec", "training"],
    default_args={"owner": "prismrec", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params=dag_params(),
)
def recsys_training():
    @task
    @fail_fast
    def extract(**context) -> dict:
        from tasks import pipeline

        # Manual Airflow 3 runs may have no logical date: fall back to when the run was triggered.
        logical_date = context.get("logical_date") or context["dag_run"].run_after
        return pipeline.run_extract(overrides_from_params(context["params"]), context["run_id"], logical_date)

    @task(retries=0)  # a refused snapshot is a verdict on the data; retrying repeats it
    @fail_fast
    def quality(snapshot: dict, **context) -> dict:
        from tasks import pipeline

        return pipeline.run_quality(overrides_from_params(context["params"]), snapshot)

    @task
    @fail_fast
    def prepare(snapshot: dict, **context) -> dict:
        from tasks import pipeline

        return pipeline.run_prepare(overrides_from_params(context["params"]), snapshot)

    # Expensive: fail loudly, rerun by hand. PRISMREC_TRAIN_QUEUE sends it to GPU workers (Celery).
    @task(retries=0, execution_timeout=timedelta(hours=6), **train_queue())
    @fail_fast
    def train(dataset: dict, **context) -> dict:
        from tasks import pipeline

        return pipeline.run_train(overrides_from_params(context["params"]), dataset)

    @task(on_failure_callback=end_training_run)  # the MLflow run train opened ends FAILED, not RUNNING
    @fail_fast
    def evaluate(dataset: dict, trained: dict, **context) -> dict:
        from tasks import pipeline

        return pipeline.run_evaluate(overrides_from_params(context["params"]), dataset, trained)

    @task(on_failure_callback=end_training_run)
    @fail_fast
    def gate(evaluated: dict, **context) -> dict:
        from tasks import pipeline

        params = context["params"]
        return pipeline.run_gate(
            overrides_from_params(params), evaluated,
            force_promote=bool(params.get("force_promote")), reason=params.get("reason"),
            user=getattr(context["dag_run"], "triggering_user_name", None),  # who forced it, if anyone
        )

    @task(outlets=[CHAMPION_MOVES], on_failure_callback=end_training_run)
    @fail_fast
    def register(snapshot: dict, trained: dict, evaluated: dict, decision: dict, **context) -> dict:
        from tasks import pipeline

        registered = pipeline.run_register(
            overrides_from_params(context["params"]), snapshot=snapshot, trained=trained,
            evaluated=evaluated, decision=decision, airflow_run_id=context["run_id"],
        )
        if registered["champion_moved"]:
            context["outlet_events"][CHAMPION_MOVES].add(CHAMPION, extra={"version": registered["version"]})
        note_verdict(context, registered.get("verdict"))  # the run's note in the UI
        return registered

    snapshot = extract()
    checked = quality(snapshot)
    dataset = prepare(snapshot)
    checked >> dataset
    trained = train(dataset)
    evaluated = evaluate(dataset, trained)
    register(snapshot, trained, evaluated, gate(evaluated))


recsys_training()
