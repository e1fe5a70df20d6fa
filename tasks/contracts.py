"""Names and rules that several parts of PrismRec share, each written once.

- The champion asset: `recsys_training` emits it when it promotes a model, `prismrec promote`
  and `prismrec rollback` post it to Airflow's REST API, its watcher fires it when a person moves
  the alias in MLflow, `recsys_materialize` is scheduled on it.
- The run Params of `recsys_training`: each one's DAG Param, `prismrec train` flag and the
  dotted setting it overrides, so the Airflow form, the command line and the config agree.
- The forced-promotion rule: a promotion that overrules the gate must say why.

The DAG files import this module while Airflow parses them: it imports nothing heavy at
module level (Airflow only inside the functions that build Airflow objects) and touches no
database.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.errors import ConfigError

CHAMPION_ASSET_NAME = "prismrec_champion"
REASON_MAX = 500  # characters of a `reason` (a Param's maxLength; reco.model_decisions, MLflow tags)
CHAMPION_URI = "prismrec://champion"
ADDRESS_PATTERN = r"^[^\s:]+:[0-9]{1,5}$"  # HOST:PORT


TRAIN_QUEUE_ENV = "PRISMREC_TRAIN_QUEUE"


def train_queue(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `train` task's executor queue, from PRISMREC_TRAIN_QUEUE (e.g. "gpu": only the Celery workers
    started with `--queues gpu`, on GPU hosts, take it); unset or empty: Airflow's default queue.
    Read where the DAG is parsed, so the dag-processor and the scheduler need the same value."""
    queue = (os.environ if environ is None else environ).get(TRAIN_QUEUE_ENV, "").strip()
    return {"queue": queue} if queue else {}


def champion_asset(watchers: list | None = None):
    """The Airflow asset `prismrec://champion`: the MLflow alias `champion` moved.

    `watchers`: Airflow AssetWatchers that fire it from outside (recsys_materialize, which is
    scheduled on it, attaches the one that watches the MLflow registry).
    """
    from airflow.sdk import Asset

    return Asset(name=CHAMPION_ASSET_NAME, uri=CHAMPION_URI, watchers=list(watchers or []))


@dataclass(frozen=True)
class RunParam:
    """One knob of a training run under its three names.

    `kind` says what it holds: "count" (an optional positive integer; empty keeps the
    configured value), "switch" (a yes/no), "text", "address" (an optional HOST:PORT), or
    "settings" (any dotted settings).
    """

    name: str  # the DAG Param, and its key in a run's conf
    flag: str  # the `prismrec train` flag
    help: str  # what it does, for the Airflow form and `--help`
    setting: str | None = None  # the dotted setting it overrides; None: it is not a setting
    kind: str = "count"


RUN_PARAMS: tuple[RunParam, ...] = (
    RunParam("epochs", "--epochs", "most training epochs (early stopping may end sooner)", "train.epochs"),
    RunParam("n_interests", "--interests", "interest vectors per user: interest 0 follows recent viewing, "
             "1.. are long-term tastes; 1 = single-vector model", "train.n_interests"),
    RunParam("nproc", "--nproc", "torchrun processes per machine", "train.nproc"),
    RunParam("nnodes", "--nnodes", "machines training together (the others run `prismrec train-node`)",
             "train.nnodes"),
    RunParam("rdzv_endpoint", "--rdzv-endpoint", "HOST:PORT where the machines of a multi-node training meet "
             "(c10d rendezvous, on this machine)", "train.rdzv_endpoint", kind="address"),
    RunParam("max_users", "--max-users", "train on the first N users only (by id), for quick slices",
             "source.max_users"),
    RunParam("force_promote", "--force-promote",
             "make this run's model the champion even if the gate refuses it (needs a reason)", kind="switch"),
    RunParam("reason", "--reason", "why this run was started or forced; recorded with the gate decision",
             kind="text"),
    RunParam("overrides", "--set", 'advanced: dotted settings, e.g. {"train.lr": 0.001} or '
             '{"materialize.top_k": 20} (CLI: --set train.lr=0.001)', kind="settings"),
)
RUN_PARAM = {param.name: param for param in RUN_PARAMS}


def dag_params(*names: str) -> dict[str, Any]:
    """The named run Params (all of them without names) as typed, described Airflow Params."""
    from airflow.sdk import Param

    params: dict[str, Any] = {}
    for param in (RUN_PARAM[name] for name in names) if names else RUN_PARAMS:
        text = param.help[0].upper() + param.help[1:]
        if param.kind == "count":
            params[param.name] = Param(None, type=["null", "integer"], minimum=1,
                                       description=f"{text}; sets {param.setting}. Empty: the configured value.")
        elif param.kind == "switch":
            params[param.name] = Param(False, type="boolean", description=f"{text}.")
        elif param.kind == "text":
            params[param.name] = Param(None, type=["null", "string"], maxLength=REASON_MAX, description=f"{text}.")
        elif param.kind == "address":
            params[param.name] = Param(None, type=["null", "string"], pattern=ADDRESS_PATTERN,
                                       description=f"{text}; sets {param.setting}. Empty: the configured value.")
        else:
            params[param.name] = Param({}, type="object", description=f"{text}.")
    return params


def overrides_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from a run's Params; unset (None) Params leave lower layers alone.

    A named Param wins over the same key in `overrides`. Every task of a run starts here, so a
    forced promotion without a reason stops the run at its first task.
    """
    check_params(params)
    overrides = {str(key): value for key, value in dict(params.get("overrides") or {}).items()}
    for param in RUN_PARAMS:
        if param.setting and params.get(param.name) is not None:
            overrides[param.setting] = params[param.name]
    return overrides


def check_params(params: Mapping[str, Any]) -> None:
    """The rules of the Airflow form (`dag_params`), checked before Airflow sees the values, so a
    bad flag or Param gets one sentence instead of Airflow's schema-validation traceback."""
    for param in RUN_PARAMS:
        value = params.get(param.name)
        if value is None:
            continue
        if param.kind == "count" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{param.setting} ({param.flag}) must be at least 1, got {value!r}; "
                              "leave it out to keep the configured value")
        if param.kind == "text":
            check_reason(value, param.flag)
        if param.kind == "address" and not (isinstance(value, str) and re.fullmatch(ADDRESS_PATTERN, value)):
            raise ConfigError(f"{param.setting} ({param.flag}) must be HOST:PORT, e.g. 10.0.0.5:29400, got {value!r}")
        if param.kind == "settings" and not isinstance(value, Mapping):
            raise ConfigError(f"{param.name} must be an object of dotted settings, e.g. {{\"train.lr\": 0.001}}")
    require_reason(params.get("force_promote"), params.get("reason"))


def check_reason(reason: Any, flag: str = "--reason") -> None:
    """A reason is text of at most REASON_MAX characters (it is stored with the decision)."""
    if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX):
        length = len(reason) if isinstance(reason, str) else type(reason).__name__
        raise ConfigError(f"reason ({flag}) must be text of at most {REASON_MAX} characters, got {length}; "
                          "shorten it (link to a ticket for the long story)")


def require_reason(force_promote: Any, reason: Any) -> None:
    """A forced promotion overrules the gate, so it must say why; it is refused before anything runs."""
    if force_promote and not str(reason or "").strip():
        raise ConfigError(
            "force_promote needs a reason: set the `reason` Param (CLI: --reason TEXT); "
            "it is recorded with the decision in reco.model_decisions and on the model version"
        )
