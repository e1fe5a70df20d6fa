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
    assert done.stderr.strip().endswith("prismrec train: error: train.epochs must be at least 1")
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
    assert params == {"epochs": 3, "n_interests": 2, "nproc": None, "max_users": 50, "force_promote": False,
                      "reason": None, "overrides": {"train.lr": "0.01"}}
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
        else:
            argv += [param.flag, "train.lr=0.01"]
    params = train_params(build_parser().parse_args(argv))
    assert set(params) == {param.name for param in RUN_PARAMS}
    overrides = overrides_from_params(params)
    assert overrides == {"train.lr": "0.01", **counts} and len(counts) == 4
    config = load_config(overrides, environ={}).to_dict()  # every setting named in the table exists
    assert all(config[key] == 3 for key in counts)


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
