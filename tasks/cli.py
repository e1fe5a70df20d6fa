"""`prismrec`: the command line of the platform (load, train, train-node, materialize, promote, rollback, db, report).

`train` and `materialize` run the Airflow DAGs in this process (tasks.airflow_runtime), so
the command line exercises exactly what the scheduler runs. `promote` and `rollback` then
publish the new champion: through Airflow's asset `prismrec://champion` when
PRISMREC_AIRFLOW_API_URL names an API server (tasks.registry.champion_events), else by running
recsys_materialize in-process (`--no-publish`: neither). `train`'s flags are the DAG's run
Params (tasks.contracts.RUN_PARAMS) and become dotted config overrides (flags > DAG Params >
environment > defaults); `--set stage.field=value` reaches any other setting. Every failure
prints one paragraph on stderr and exits 1 (usage errors: 2): a PrismRecError its message, anything
else its first cause in one line; never a traceback (unless `--debug` or PRISMREC_DEBUG=1) and never
a secret (tasks.redact). Heavy modules are imported inside each command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.config import PipelineConfig, load_config
from tasks.contracts import (
    CHAMPION_URI,
    RUN_PARAM,
    RUN_PARAMS,
    check_reason,
    overrides_from_params,
    require_reason,
)
from tasks.errors import ConfigError, PrismRecError, first_cause, one_line
from tasks.redact import is_secret_name, known_secrets, redact_text

log = logging.getLogger("prismrec")

DATASETS = ("movielens-100k", "movielens-1m")


def logical_date_arg(text: str) -> datetime:
    """`YYYY-MM-DD` means the end of that day (UTC); a full ISO-8601 datetime is taken as is (naive = UTC)."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d")
            return day.replace(hour=23, minute=59, second=59, microsecond=999999, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD (e.g. 1998-04-22)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def reason_arg(text: str) -> str:
    try:
        check_reason(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("reason (--reason) ")) from None
    return text


def setting_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"{text!r} is not stage.field=value (e.g. train.lr=0.001)")
    return key.strip(), value


def _overrides(args: argparse.Namespace, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """`--set` values, then the command's own flags on top (None = flag not given)."""
    overrides: dict[str, Any] = dict(args.settings or [])
    overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
    return overrides


def cmd_load(args: argparse.Namespace) -> int:
    from tasks.data.sources import load_movielens

    config = load_config(_overrides(args, {RUN_PARAM["max_users"].setting: args.max_users}))
    summary = load_movielens(config, args.dataset)
    print(f"loaded {summary.dataset}: {summary.interactions:,} interactions, {summary.users:,} users, "
          f"{summary.items:,} items into schema {config.database.app_schema}")
    print(f"it replays history up to its last rating, {summary.replay_ends_at}: training runs read it as of "
          "then, whatever their logical date (unless it is earlier)")
    return 0


def train_params(args: argparse.Namespace) -> dict[str, Any]:
    """recsys_training's run Params from `prismrec train`'s flags (None: the flag was not given)."""
    return {param.name: _overrides(args) if param.kind == "settings" else getattr(args, param.name)
            for param in RUN_PARAMS}


def _without_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """The run conf Airflow stores, without secret settings: a `--set database.url=...` reaches this
    process's tasks through its environment (PRISMREC_DATABASE__URL), so the metadata DB never holds it."""
    overrides = dict(params.get("overrides") or {})
    for key in [k for k, v in overrides.items() if _is_secret_setting(k, v)]:
        stage, _, name = key.partition(".")
        os.environ[f"PRISMREC_{stage.upper()}__{name.upper()}"] = str(overrides.pop(key))
    return {**params, "overrides": overrides}


def _is_secret_setting(key: str, value: Any) -> bool:
    return is_secret_name(key) or (isinstance(value, str) and "://" in value and "@" in value)


def cmd_train(args: argparse.Namespace) -> int:
    from tasks.airflow_runtime import run_dag

    params = train_params(args)
    config = load_config(overrides_from_params(params))  # the Params' rules and the settings', before Airflow starts
    result = run_dag("recsys_training", logical_date=args.logical_date, conf=_without_secrets(params), config=config)
    decision, registered = result.xcoms.get("gate") or {}, result.xcoms.get("register") or {}
    print(f"training run {result.run_id}: {result.state}")
    if decision:
        print(f"gate {'PASSED' if decision.get('passed') else 'REFUSED'}: " + "; ".join(decision.get("reasons", [])))
    if registered:
        role = "champion" if registered.get("champion_moved") else "challenger (champion unchanged)"
        print(f"registered {registered.get('model_name')} version {registered.get('version')} as {role}")
        if registered.get("champion_moved"):
            print("publish it with: prismrec materialize")
        elif not registered.get("promoted"):
            print(registered.get("verdict", ""))
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from tasks.airflow_runtime import run_dag

    params = {"overrides": _overrides(args)}
    config = load_config(params["overrides"])
    result = run_dag("recsys_materialize", logical_date=None, conf=_without_secrets(params), config=config)
    _print_published(result.xcoms.get("materialize") or {}, config)
    return 0


def _print_published(summary: dict[str, Any], config: PipelineConfig) -> None:
    print(f"published {summary.get('rows', 0):,} recommendations for {summary.get('users', 0):,} users "
          f"from model version {summary.get('model_version')} into {config.database.reco_schema}.user_recommendations")
    if summary.get("retrieval_recall") is not None:  # lists drawn from the candidate index: say what it missed
        print(f"  drawn from the candidate index ({summary['retrieval'].removeprefix('index: ')}): recall "
              f"{summary['retrieval_recall']:.3f} against exact ranking on a sample of users "
              "(materialize.index_min_recall sets the floor; higher probes more cells, slower)")


def _announce_champion(args: argparse.Namespace, config: PipelineConfig, version: str, action: str) -> int:
    """After a promotion/rollback: fire the asset `prismrec://champion`, or publish in-process.

    With PRISMREC_AIRFLOW_API_URL set, an asset event goes to that Airflow (its
    recsys_materialize publishes); if that fails the alias has still moved, so the command warns
    and exits 0. Without it (local mode), DAG recsys_materialize runs here, now; a failure
    there exits 1 (the champion moved but `reco` still holds the previous one).
    """
    from tasks.registry.champion_events import AirflowApi, fire_champion_changed

    if args.no_publish:
        print("not published (--no-publish); publish it with: prismrec materialize")
        return 0
    api = AirflowApi.from_env()
    if api is not None:
        try:
            event = fire_champion_changed(api, version, f"cli {action}")
        except PrismRecError as exc:
            print(f"prismrec {action}: warning: the champion alias DID move to version {version}, but Airflow "
                  f"was not told: {exc}\n  publish it by hand: trigger DAG recsys_materialize in the Airflow UI "
                  f"({api.base_url}), or run: prismrec materialize", file=sys.stderr)
            return 0
        print(f"asset {CHAMPION_URI} fired on {api.base_url} (event {event.get('id')}); "
              "Airflow's recsys_materialize publishes it")
        return 0

    from tasks.airflow_runtime import run_dag

    params = _without_secrets({"overrides": _overrides(args)})
    try:
        result = run_dag("recsys_materialize", logical_date=None, conf=params, config=config)
    except PrismRecError as exc:
        raise PrismRecError(f"the champion alias DID move to version {version} (decision recorded), but "
                            f"publishing it failed: {exc}; retry with: prismrec materialize") from exc
    summary = result.xcoms.get("materialize") or {}
    _print_published(summary, config)
    if str(summary.get("model_version")) != str(version):
        print(f"prismrec {action}: warning: version {summary.get('model_version')} was published, not {version}: "
              "the champion moved again meanwhile", file=sys.stderr)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from tasks.registry.decisions import promote

    config = load_config(_overrides(args))
    version = promote(config, args.version, args.reason)
    print(f"{config.registry.model_name} version {version} is the champion")
    return _announce_champion(args, config, version, "promote")


def cmd_rollback(args: argparse.Namespace) -> int:
    from tasks.registry.decisions import rollback

    config = load_config(_overrides(args))
    version = rollback(config, args.reason)
    print(f"{config.registry.model_name} champion rolled back to version {version}")
    return _announce_champion(args, config, version, "rollback")


def cmd_db_url(args: argparse.Namespace) -> int:
    from tasks.db import database_url, safe_url

    config = load_config(_overrides(args))
    if config.database.url:
        url, psql = database_url(config), "psql"
    else:
        url, psql = _embedded_server_url(config)
    if args.psql:
        print(_libpq_uri(url))
        return 0
    print(safe_url(url))
    print(f'{psql} "{_libpq_uri(url)}"')
    return 0


def cmd_train_node(args: argparse.Namespace) -> int:
    """Another machine of a multi-node training: its torchrun joins node 0's c10d rendezvous and
    trains until node 0's does; the model lands on node 0 (docs/distributed-training.md)."""
    from tasks.training.launcher import launch_training

    config = load_config(_overrides(args, {"train.nnodes": args.nnodes, "train.node_rank": args.node_rank,
                                           "train.rdzv_endpoint": args.rdzv_endpoint, "train.nproc": args.nproc}))
    if config.train.node_rank == 0:
        raise ConfigError("train-node starts the other machines of a training (--node-rank 1 to nnodes - 1); node 0 "
                          "is the pipeline's train task: trigger recsys_training (or run prismrec train) with the "
                          "same --nnodes and --rdzv-endpoint")
    work = Path(args.work_dir) if args.work_dir else config.paths.home / "train-node"
    launch_training(config, Path(args.dataset), work)
    print(f"node {config.train.node_rank} of {config.train.nnodes}: training finished (the model is on node 0)")
    return 0


def cmd_db_grant(args: argparse.Namespace) -> int:
    """Create/refresh reco_reader (BI) and reco_writer (pipeline); passwords only from the environment."""
    from tasks.publish.roles import grant_roles

    config = load_config(_overrides(args))
    created = grant_roles(config, reader_password=os.environ.get("PRISMREC_READER_PASSWORD") or None,
                          writer_password=os.environ.get("PRISMREC_WRITER_PASSWORD") or None)
    for role, new in created.items():
        print(f"{role}: {'created' if new else 'already existed'}, privileges refreshed")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Erase one person from reco and keep them out of later snapshots, training and publishing."""
    from tasks.publish.forget import forget
    from tasks.registry.decisions import current_user

    config = load_config(_overrides(args))
    erasure = forget(config, args.user_id, args.reason, current_user())
    removed = sum(erasure.rows_removed.values())
    print(f"erasure {erasure.erasure_id}: removed {removed:,} rows ("
          + ", ".join(f"{table} {n:,}" for table, n in erasure.rows_removed.items())
          + f") from {config.database.reco_schema}; the person is kept out of later snapshots, training and "
          "publishing" + (" (they were already on the erasure list)" if erasure.already_erased else ""))
    return 0


def _embedded_server_url(config: PipelineConfig) -> tuple[str, str]:
    """Start the embedded server so that it outlives this command (for psql and BI tools).

    It keeps running until it is stopped (`pg_ctl -D <folder> stop`) or until another
    prismrec command that started it exits.
    """
    import pgserver

    folder = config.paths.embedded_pg
    folder.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(folder, cleanup_mode=None)
    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    log.info("embedded Postgres runs in %s; stop it with: %s -D %s stop", folder, bin_dir / "pg_ctl", folder)
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    return url, str(bin_dir / "psql")


def _libpq_uri(url: str) -> str:
    """The URL as psql understands it, without the password (psql reads PGPASSWORD or ~/.pgpass)."""
    from sqlalchemy.engine import URL, make_url

    parsed = make_url(url)
    return URL.create(
        "postgresql", username=parsed.username, host=parsed.host, port=parsed.port,
        database=parsed.database, query=parsed.query,
    ).render_as_string(hide_password=False)


def cmd_report(args: argparse.Namespace) -> int:
    from tasks import report

    config = load_config(_overrides(args))
    print(report.render_report(config, args.run_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--set", dest="settings", action="append", type=setting_arg, metavar="STAGE.FIELD=VALUE",
                        help="override any setting of tasks/config.py (repeatable)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("--debug", action="store_true",
                        help="on failure, also print the traceback (also: PRISMREC_DEBUG=1)")

    parser = argparse.ArgumentParser(prog="prismrec", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    load = commands.add_parser("load", parents=[common], help="fill the app schema with MovieLens")
    load.add_argument("dataset", choices=DATASETS)
    load.add_argument("--max-users", type=int, metavar="N", help="load only the first N users (by id)")
    load.set_defaults(func=cmd_load)

    train = commands.add_parser("train", parents=[common], help="run DAG recsys_training once, in-process")
    train.add_argument("--logical-date", type=logical_date_arg,
                       help="extract data up to the end of this day, UTC (default: now)")
    _add_run_flags(train)
    train.set_defaults(func=cmd_train)

    node = commands.add_parser("train-node", parents=[common],
                               help="join a multi-node training as node 1.. (node 0 is the train task)",
                               description="Run this machine's torchrun processes of a training that node 0's "
                                           "train task leads; every node needs the same settings and dataset.")
    node.add_argument("--dataset", required=True, help="the run's prepared dataset folder (shared or copied from node 0)")
    node.add_argument("--node-rank", type=int, required=True, metavar="R", help="this machine's place, 1 to N-1; sets train.node_rank")
    node.add_argument("--nnodes", type=int, required=True, metavar="N", help=RUN_PARAM["nnodes"].help + "; sets train.nnodes")
    node.add_argument("--rdzv-endpoint", required=True, metavar="HOST:PORT", help="node 0's rendezvous; sets train.rdzv_endpoint")
    node.add_argument("--nproc", type=int, metavar="N", help="torchrun processes on this machine; sets train.nproc")
    node.add_argument("--work-dir", help="where this node keeps its copy of the settings (default: <home>/train-node)")
    node.set_defaults(func=cmd_train_node)

    materialize = commands.add_parser("materialize", parents=[common],
                                      help="run DAG recsys_materialize once, in-process")
    materialize.set_defaults(func=cmd_materialize)

    publish_help = ("then publish it: with PRISMREC_AIRFLOW_API_URL set, fire the Airflow asset prismrec://champion "
                    "(recsys_materialize runs there); otherwise run DAG recsys_materialize in-process")
    no_publish = argparse.ArgumentParser(add_help=False)
    no_publish.add_argument("--no-publish", action="store_true",
                            help="only move the alias and record the decision; neither fire the asset nor publish")

    promote = commands.add_parser("promote", parents=[common, no_publish],
                                  help="make VERSION the champion, record why, and publish it",
                                  description=f"Make VERSION the champion and record the decision; {publish_help}.")
    promote.add_argument("version")
    promote.add_argument("--reason", type=reason_arg,
                         help="why; recorded in reco.model_decisions and on the version's tags")
    promote.set_defaults(func=cmd_promote)

    rollback = commands.add_parser("rollback", parents=[common, no_publish],
                                   help="give champion back to the previous one, record why, and publish it",
                                   description=f"Give champion back to the previous version and record the "
                                               f"decision; {publish_help}.")
    rollback.add_argument("--reason", type=reason_arg,
                          help="why; recorded in reco.model_decisions and on the version's tags")
    rollback.set_defaults(func=cmd_rollback)

    database = commands.add_parser("db", help="the Postgres server PrismRec uses")
    db_commands = database.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    url = db_commands.add_parser("url", parents=[common],
                                 help="print its SQLAlchemy URL (password hidden) and a psql command")
    url.add_argument("--psql", action="store_true", help="print only a psql connection URI (no password)")
    url.set_defaults(func=cmd_db_url)
    grant = db_commands.add_parser("grant", parents=[common],
                                   help="as an administrator: set up reco owned by reco_owner, and roles reco_writer "
                                        "(the pipeline) and reco_reader (BI, read reco only); passwords from "
                                        "PRISMREC_WRITER_PASSWORD / PRISMREC_READER_PASSWORD")
    grant.set_defaults(func=cmd_db_grant)

    erase = commands.add_parser("forget", parents=[common],
                                help="erase a person from reco and keep them out of later training and publishing")
    erase.add_argument("user_id", type=int, metavar="USER_ID", help="app.users.user_id of the person")
    erase.add_argument("--reason", type=reason_arg,
                       help="why (e.g. a ticket number; never the person's name); recorded in reco.erasures")
    erase.set_defaults(func=cmd_forget)

    report = commands.add_parser("report", parents=[common], help="print the report of the latest training run")
    report.add_argument("--run-dir", help="report on this run folder instead of the latest")
    report.set_defaults(func=cmd_report)
    return parser


def _add_run_flags(train: argparse.ArgumentParser) -> None:
    """One flag per run Param of recsys_training; `overrides` is the `--set` every command has."""
    for param in RUN_PARAMS:
        if param.kind == "count":
            train.add_argument(param.flag, dest=param.name, type=int, metavar="N",
                               help=f"{param.help}; sets {param.setting}")
        elif param.kind == "switch":
            train.add_argument(param.flag, dest=param.name, action="store_true", help=param.help)
        elif param.kind == "text":
            train.add_argument(param.flag, dest=param.name, type=reason_arg, metavar="TEXT", help=param.help)
        elif param.kind == "address":
            train.add_argument(param.flag, dest=param.name, metavar="HOST:PORT", help=f"{param.help}; sets {param.setting}")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for chatty in ("pgserver", "alembic", "urllib3", "filelock", "airflow"):  # their INFO lines are internals
        logging.getLogger(chatty).setLevel(logging.WARNING)


def failure_message(exc: BaseException) -> str:
    """One paragraph for a failed command: a project error's message, else the first cause in one
    line; secrets this process knows (URL passwords, password variables) masked either way."""
    from tasks.airflow_tasks import project_error

    project = project_error(exc)
    if project is not None:
        text = str(project)
    else:
        text = (f"unexpected {one_line(first_cause(exc))}. Nothing PrismRec checks caught this: rerun with "
                "--debug (or PRISMREC_DEBUG=1) for the traceback, and report it if it is not a fault outside "
                "PrismRec (a server going away, a full disk)")
    return redact_text(text, known_secrets())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prismrec` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        require_reason(getattr(args, "force_promote", False), getattr(args, "reason", None))
    except ConfigError as exc:
        parser.error(str(exc))
    _setup_logging(args.verbose)
    debug = getattr(args, "debug", False) or os.environ.get("PRISMREC_DEBUG", "") not in ("", "0")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"prismrec {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the catch-all: one paragraph, no traceback, no secret
        if debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"prismrec {args.command}: error: {failure_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
