"""The `prismrec` command line: exit codes, messages, and how flags become settings."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.cli import build_parser, logical_date_arg, main, setting_arg, train_params
from tasks.config import load_config
from tasks.contracts import RUN_PARAMS, overrides_from_params, require_reason
from tasks.errors import ConfigError
from tasks.layout import RunLayout
from tasks.pipeline import run_key_of

ROOT = Path(__file__).resolve().parents[2]


def prismrec(*args: str, home: Path) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh interpreter with an isolated home."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PRISMREC_", "AIRFLOW", "MLFLOW_"))}
    env["PRISMREC_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("args", [
    [],                                        # no command
    ["frobnicate"],                            # unknown command
    ["load", "movielens-20m"],                 # unknown dataset
    ["train", "--epochs", "many"],             # not a number
    ["train", "--logical-date", "1998-13-01"],  # not a date
    ["train", "--force-promote"],              # forcing needs a reason
    ["train", "--set", "epochs=3"],            # not stage.field=value
    ["db"],                                    # missing sub-command
])
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert "usage: prismrec" in capsys.readouterr().err


def test_bad_setting_exits_1_with_a_clear_message_and_no_traceback(tmp_path):
    done = prismrec("train", "--epochs", "0", home=tmp_path)
    assert done.returncode == 1
    assert "prismrec train: error: train.epochs (--epochs) must be at least 1, got 0" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_unknown_setting_names_what_exists(tmp_path):
    done = prismrec("train", "--set", "train.epoch=3", home=tmp_path)
    assert done.returncode == 1
    assert "unknown setting 'train.epoch'" in done.stderr and "epochs" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # the CLI in a subprocess against a fresh MLflow store
def test_promote_without_any_version_exits_1(tmp_path):
    done = prismrec("promote", "7", home=tmp_path)
    assert done.returncode == 1
    assert "no versions of model 'prismrec' are registered yet" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_day_means_the_end_of_that_day_utc():
    assert logical_date_arg("1998-04-22") == datetime(1998, 4, 22, 23, 59, 59, 999999, tzinfo=UTC)
    assert logical_date_arg("1998-04-22T10:00:00") == datetime(1998, 4, 22, 10, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        logical_date_arg("22/04/1998")


def test_train_flags_become_params_and_dotted_overrides():
    args = build_parser().parse_args(
        ["train", "--epochs", "3", "--interests", "2", "--max-users", "50", "--set", "train.lr=0.01"]
    )
    assert setting_arg("train.lr=0.01") == ("train.lr", "0.01")
    params = train_params(args)
    assert params == {"epochs": 3, "n_interests": 2, "nproc": None, "nnodes": None, "rdzv_endpoint": None,
                      "max_users": 50, "force_promote": False, "reason": None, "overrides": {"train.lr": "0.01"}}
    assert overrides_from_params(params) == {
        "train.lr": "0.01", "train.epochs": 3, "train.n_interests": 2, "source.max_users": 50,
    }


def test_every_run_param_is_a_train_flag_and_reaches_its_setting():
    argv, counts = ["train"], {}
    for param in RUN_PARAMS:
        if param.kind == "count":
            argv += [param.flag, "3"]
            counts[param.setting] = 3
        elif param.kind == "switch":
            argv += [param.flag]
        elif param.kind == "text":
            argv += [param.flag, "a reason"]
        elif param.kind == "address":
            argv += [param.flag, "10.0.0.5:29400"]
            counts[param.setting] = "10.0.0.5:29400"
        else:
            argv += [param.flag, "train.lr=0.01"]
    params = train_params(build_parser().parse_args(argv))
    assert set(params) == {param.name for param in RUN_PARAMS}
    overrides = overrides_from_params(params)
    assert overrides == {"train.lr": "0.01", **counts} and len(counts) == 6
    config = load_config(overrides, environ={}).to_dict()  # every setting named in the table exists
    assert all(config[key] == value for key, value in counts.items())


def test_a_forced_promotion_needs_a_reason_everywhere(capsys):
    with pytest.raises(ConfigError, match="force_promote needs a reason"):
        require_reason(True, "   ")
    require_reason(True, "new catalogue")
    require_reason(False, None)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--force-promote", "--reason", " "])
    assert exited.value.code == 2 and "force_promote needs a reason" in capsys.readouterr().err


def test_named_params_win_over_the_overrides_object_and_none_means_unset():
    params = {"epochs": 5, "nproc": None, "overrides": {"train.epochs": 9, "train.nproc": 2}}
    assert overrides_from_params(params) == {"train.epochs": 5, "train.nproc": 2}


def test_run_keys_are_safe_folder_names():
    assert run_key_of("manual__2026-11-28T05:48:55.923175+00:00") == "manual__2026-11-28T05_48_55.923175_00_00"
    assert run_key_of("scheduled__2024-01-07T00:00:00+00:00/../x") == "scheduled__2024-01-07T00_00_00_00_00_.._x"
    assert "/" not in run_key_of("a/b") and run_key_of("///") == "run"


def test_force_promote_overrules_a_refusing_gate_and_records_why(tmp_path):
    from tasks.pipeline import run_gate

    def splits(ndcg: float) -> dict:
        return {"valid": {"ndcg@10": ndcg}, "test": {"ndcg@10": ndcg}}

    evaluated = {
        "evaluation": {"candidate": splits(0.05), "baselines": {"popularity": splits(0.08)},
                       "champion": splits(0.09), "champion_version": "1"},
        "path": str(RunLayout(tmp_path).evaluation), "run_dir": str(tmp_path),
    }
    refused = run_gate({}, evaluated)
    assert refused["passed"] is False and refused["force_promote"] is False

    forced = run_gate({}, evaluated, force_promote=True, reason="new catalogue, baseline is stale")
    assert forced["passed"] is True
    assert forced["reasons"][-1] == "forced by operator: new catalogue, baseline is stale"
    assert forced["operator_reason"] == "new catalogue, baseline is stale"
    assert RunLayout(tmp_path).decision.exists()


REASON_600 = "r" * 600


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--max-users", "-5"], "source.max_users (--max-users) must be at least 1, got -5"),
    (["load", "movielens-100k", "--max-users", "-5"], "source.max_users (--max-users) must be at least 1"),
])
def test_a_bad_count_is_one_sentence_before_anything_runs(args, message, tmp_path):
    done = prismrec(*args, home=tmp_path)
    assert done.returncode == 1, done.stderr
    assert f"prismrec {args[0]}: error: {message}" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "airflow").exists()  # Airflow never saw it


@pytest.mark.parametrize("args", [
    ["train", "--force-promote", "--reason", REASON_600],
    ["promote", "3", "--reason", REASON_600],
    ["rollback", "--reason", REASON_600],
])
def test_a_reason_longer_than_the_form_allows_is_a_usage_error(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "at most 500 characters, got 600" in err and "Traceback" not in err


def test_params_from_the_airflow_form_follow_the_same_rules():
    from tasks.contracts import check_params

    for bad in ({"max_users": -5}, {"epochs": 0}, {"nproc": True}, {"reason": REASON_600}, {"overrides": "x"}):
        with pytest.raises(ConfigError):
            check_params(bad)
    check_params({"max_users": 5, "reason": "r" * 500, "overrides": {"train.lr": 0.1}})


@pytest.mark.parametrize("password", ["Sekr3t@Tail", "Sekr3t@Tail:Mor3", "Sekr3t:Tail@Mor3"])
def test_a_password_with_at_or_colon_is_refused_without_echoing_it(password, tmp_path):
    env_url = f"postgresql://alice:{password}@127.0.0.1:5432/prismrec"
    done = subprocess.run([sys.executable, "-m", "tasks.cli", "db", "url"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("PRISMREC_")},
                               "PRISMREC_HOME": str(tmp_path), "PRISMREC_DATABASE_URL": env_url})
    assert done.returncode == 1
    assert "percent-encode it" in done.stderr and "Traceback" not in done.stderr
    for part in ("Sekr3t", "Tail", "Mor3"):
        assert part not in done.stderr + done.stdout


def test_an_unexpected_failure_is_one_paragraph_with_its_first_cause_and_no_secret(monkeypatch, capsys):
    import tasks.cli

    password = "hunter2-Zq9"
    monkeypatch.setenv("PRISMREC_DATABASE_URL", f"postgresql://bob:{password}@db.example:5432/reco")

    def failing(args):
        try:
            raise OSError(f"terminating connection to postgresql://bob:{password}@db.example:5432/reco")
        except OSError:
            raise RuntimeError(f"connection already closed ({password})") from None

    monkeypatch.setattr(tasks.cli, "cmd_db_url", failing)
    assert main(["db", "url"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prismrec db: error: unexpected RuntimeError: connection already closed (***)")
    assert "Traceback" not in err and password not in err and len(err.strip().splitlines()) == 1
    assert "--debug" in err

    monkeypatch.setattr(tasks.cli, "cmd_db_url", lambda args: (_ for _ in ()).throw(ValueError("boom")))
    assert main(["db", "url", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_the_first_database_error_of_a_cascade_is_the_cause():
    import psycopg2
    import sqlalchemy as sa

    from tasks.errors import first_cause, one_line

    try:
        try:
            raise sa.exc.OperationalError("select 1", {}, psycopg2.OperationalError(
                "terminating connection due to administrator command\nSSL SYSCALL error"))
        except sa.exc.OperationalError:
            raise sa.exc.InterfaceError("rollback", {}, psycopg2.InterfaceError("connection already closed"))
    except sa.exc.InterfaceError as exc:
        cascade = exc
    assert one_line(first_cause(cascade)) == "OperationalError: terminating connection due to administrator command"
    plain = ValueError("x")
    assert first_cause(plain) is plain


def test_secret_settings_never_leave_the_config_unmasked():
    from tasks.redact import known_secrets, redact_setting, redact_text, url_password

    config = load_config({"database.url": "postgresql://u:pa%40ss@h:5432/d",
                          "registry.tracking_uri": "https://ml:tok3n-x@mlflow.example/"}, environ={})
    flat = config.to_dict()
    assert flat["database.url"] == "postgresql://u:***@h:5432/d"
    assert flat["registry.tracking_uri"] == "https://ml:***@mlflow.example/"
    assert config.database.url == "postgresql://u:pa%40ss@h:5432/d"  # the live config keeps it
    assert redact_setting("airflow.api_token", "abc123") == "***" and redact_setting("train.epochs", 3) == 3
    assert redact_setting("PRISMREC_AIRFLOW_API_TOKEN", "abc123") == "***"
    assert redact_setting("train.max_text_tokens", 32) == 32  # a count of tokens, not a token
    assert url_password("postgresql://u:p@ss:w@h/d") == "p@ss:w"
    assert redact_text("at postgresql://u:p@ss:w@h/d now") == "at postgresql://u:***@h/d now"
    secrets = known_secrets({"PRISMREC_DATABASE_URL": "postgresql://u:p@ss:w@h/d", "PRISMREC_WRITER_PASSWORD": "wr1ter"})
    assert redact_text("p@ss:w, p%40ss%3Aw and wr1ter", secrets) == "***, *** and ***"


def test_a_publication_from_the_candidate_index_says_its_recall(capsys):
    from tasks.cli import _print_published

    config = load_config({})
    _print_published({"rows": 5_001_000, "users": 100_020, "model_version": "3", "retrieval": "exact",
                      "retrieval_recall": None}, config)
    exact = capsys.readouterr().out
    assert exact.startswith("published 5,001,000 recommendations for 100,020 users from model version 3")
    assert "recall" not in exact
    _print_published({"rows": 50, "users": 1, "model_version": "3", "retrieval_recall": 0.9469,
                      "retrieval": "index: 770 lists, 32 probed, 200 candidates an interest"}, config)
    assert ("drawn from the candidate index (770 lists, 32 probed, 200 candidates an interest): recall 0.947"
            in capsys.readouterr().out)
