"""Watch the MLflow alias `champion`: a person who moves it (the MLflow UI, a script) publishes.

Airflow 3's event-driven scheduling runs `ChampionMovedTrigger` in the triggerer, as the
watcher of the asset `prismrec://champion` (dags/recsys_materialize.py). Every `poll_interval`
seconds it looks once (`look_once`): when the registry's champion differs from the champion
after the latest decision in `reco.model_decisions`, nobody in PrismRec moved it, so the move
is recorded there as a person's (action `external`) and the trigger fires an asset event; the
scheduler then runs `recsys_materialize`, which publishes the champion.

The record is the watcher's memory, in Postgres: a restarted triggerer catches up with a move
made while it was down and never fires twice for the same one, and when the alias did not move
it does nothing. PrismRec's own moves (a training run's promotion, `prismrec promote` and
`rollback`) record their decision under the champion lock in the same breath as they move the
alias, and fire the asset themselves; the watcher skips a look while that lock is held.

Airflow imports this module while it parses the DAG file: only Airflow's trigger base is
imported at module level; MLflow and Postgres are reached in a worker thread, when it looks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from tasks.config import PipelineConfig

log = logging.getLogger(__name__)

WATCHER_NAME = "mlflow_champion_alias"
POLL_SECONDS = 60.0  # "within minutes"; one look is a registry read and one small query
ACTOR = "airflow triggerer (champion watcher)"


def look_once(config: PipelineConfig, actor: str = ACTOR) -> dict[str, Any] | None:
    """One look at the registry: the move to publish, recorded once, or None when there is none.

    None also when the champion alias was removed (nothing to publish: `reco` keeps its lists
    and the next registry action records the removal) and while PrismRec itself holds the
    champion lock (it is moving the alias and will record it).
    """
    from tasks.registry.decisions import champion_lock, note_external_move
    from tasks.registry.store import champion_version

    if champion_version(config) is None:
        return None
    with champion_lock(config, wait=False) as held:
        if not held:
            log.info("the champion is being moved by PrismRec right now; looking again later")
            return None
        decision = note_external_move(config, actor, noticed="by the champion watcher, which publishes it")
    if decision is None or decision.champion_after is None:
        return None
    log.info("champion of %s moved from %s to %s outside PrismRec: firing %s", decision.model_name,
             decision.champion_before or "none", decision.champion_after, WATCHER_NAME)
    return {"version": decision.champion_after, "champion_before": decision.champion_before,
            "model_name": decision.model_name, "source": "mlflow registry"}


class ChampionMovedTrigger(BaseEventTrigger):
    """Fires once per move of `champion` made outside PrismRec; reads the settings from the environment."""

    def __init__(self, poll_interval: float = POLL_SECONDS) -> None:
        super().__init__()
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.{type(self).__name__}", {"poll_interval": self.poll_interval}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            move = await asyncio.to_thread(self._look)
            if move is not None:
                yield TriggerEvent(move)
            await asyncio.sleep(self.poll_interval)

    def _look(self) -> dict[str, Any] | None:
        """look_once with this process's settings; a failed look (Postgres or MLflow away) is logged
        and retried at the next interval, so the watcher outlives an outage."""
        from tasks.config import load_config

        try:
            return look_once(load_config())
        except Exception as exc:  # noqa: BLE001 - any fault: the next look tries again
            log.warning("champion watcher could not look at the registry (%s: %s); trying again in %gs",
                        type(exc).__name__, exc, self.poll_interval)
            return None
