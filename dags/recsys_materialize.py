"""
### recsys_materialize

Publishes recommendations for every user into Postgres schema `reco`
(`reco.user_recommendations`, swapped in one transaction) from the model that holds the
MLflow alias `champion` at the moment the task runs.

Triggered by the asset `prismrec://champion`, which `recsys_training` emits when it promotes
a new champion and `prismrec promote` / `prismrec rollback` post through the REST API
(tasks/registry/champion_events.py). A champion moved in the MLflow UI (or by any script) is
noticed by the asset's watcher, which runs in the triggerer while this DAG is unpaused: within a
minute it records the move in `reco.model_decisions` as a person's decision and fires the asset
(tasks/registry/champion_watch.py).

**Where the code is.** The one task, `materialize`, calls `pipeline.run_materialize`
(`tasks/pipeline.py`), which runs `tasks/publish/materialize.py` (tables in
`tasks/publish/tables.py`, rows and explanations in `tasks/publish/rows.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetWatcher, dag, task

from tasks.airflow_tasks import fail_fast
from tasks.contracts import champion_asset, dag_params, overrides_from_params
from tasks.registry.champion_watch import WATCHER_NAME, ChampionMovedTrigger

# The watcher polls the MLflow alias from the triggerer: a move made outside PrismRec fires the asset.
CHAMPION = champion_asset(watchers=[AssetWatcher(name=WATCHER_NAME, trigger=ChampionMovedTrigger())])


@dag(
    dag_id="recsys_materialize",
    doc_md=__doc__,
    description="Publish the MLflow champion: recommendations, interests and similar items into schema reco",
    schedule=[CHAMPION],
    # Early on purpose: runs as of a historic logical date (MovieLens is 1997-2003) are legitimate
    # replays, and Airflow creates no tasks for dates before start_date. catchup=False keeps
    # the scheduler from backfilling all those weeks.
    start_date=datetime(1990, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # two publications at once would only race for the same swap
    tags=["prismrec", "publishing"],
    default_args={"owner": "prismrec", "retries": 2, "retry_delay": timedelta(minutes=2)},
    params=dag_params("overrides"),
)
def recsys_materialize():
    @task
    @fail_fast
    def materialize(**context) -> dict:
        from tasks import pipeline

        # Asset-triggered runs have no logical date in Airflow 3: the run's run_after stands in.
        logical_date = context.get("logical_date") or context["dag_run"].run_after
        return pipeline.run_materialize(overrides_from_params(context["params"]),
                                        airflow_run_id=context["run_id"], logical_date=logical_date)

    materialize()


recsys_materialize()
