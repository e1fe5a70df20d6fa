"""The quality benchmark's per-dataset settings: PrismRec's (bench.quality.DATASET_SETTINGS, under
the environment) and the baselines' (DATASET_BASELINES, under the --baseline flags)."""

import pytest

from bench.quality import (
    DATASET_BASELINES,
    DATASET_SETTINGS,
    baseline_settings,
    dataset_baselines,
    dataset_settings,
    run_overrides,
)
from tasks.config import load_config


def test_ml1m_reads_long_histories_with_one_interest():
    config = load_config(dataset_settings("ml-1m", environ={}), environ={})
    assert (config.prepare.max_history, config.train.batch_size, config.train.n_interests) == (200, 16, 1)
    assert config.train.dropout == 0.05 < load_config(environ={}).train.dropout
    # a frozen text encoder on ML-1M (no cold items there); the pipeline keeps one fine-tuned layer
    assert config.train.lm_trainable_layers == 0 < load_config(environ={}).train.lm_trainable_layers
    # a deeper, wider user tower than the pipeline's (2 layers, feed-forward 2x)
    assert (config.train.user_layers, config.train.user_ffn) == (4, 4)
    assert (load_config(environ={}).train.user_layers, load_config(environ={}).train.user_ffn) == (2, 2)
    # a fixed 20 epochs (v94), where the pipeline stops early within 40
    assert config.train.epochs == 20 < load_config(environ={}).train.epochs


def test_the_epochs_flag_wins_over_the_dataset_setting_and_its_absence_keeps_it():
    settings = dataset_settings("ml-1m", environ={})
    flagged = load_config(run_overrides(settings, "bench_ml1m", 14, 25.0), environ={})
    assert (flagged.train.epochs, flagged.train.max_minutes) == (14, 25.0)
    unflagged = load_config(run_overrides(settings, "bench_ml1m", None, None), environ={})
    assert (unflagged.train.epochs, unflagged.train.max_minutes) == (20, None)
    assert unflagged.database.app_schema == "bench_ml1m"
    # ML-100K has no settings: no flag, the pipeline's epochs
    assert load_config(run_overrides({}, "bench_ml100k", None, None), environ={}).train.epochs == 40


def test_the_environment_wins_over_a_dataset_setting():
    environ = {"PRISMREC_TRAIN__N_INTERESTS": "4", "PRISMREC_HOME": "/elsewhere"}
    settings = dataset_settings("ml-1m", environ)
    assert "train.n_interests" not in settings and settings["train.batch_size"] == 16
    config = load_config(settings, environ=environ)
    assert config.train.n_interests == 4
    assert config.prepare.max_history == DATASET_SETTINGS["ml-1m"]["prepare.max_history"]


def test_a_dataset_without_settings_trains_the_pipeline_defaults():
    assert "ml-100k" not in DATASET_SETTINGS and dataset_settings("ml-100k", environ={}) == {}


def test_baseline_flags_become_fit_keywords():
    settings = baseline_settings(["sasrec.dropout=0.1", "sasrec.dim=128", "ease.l2=250"])
    assert settings == {"sasrec": {"dropout": 0.1, "dim": 128}, "ease": {"l2": 250}}
    assert isinstance(settings["ease"]["l2"], float)  # an int for a float setting is widened


@pytest.mark.parametrize("flag, says", [
    ("sasrec.dropout", "expected NAME.KEY=VALUE"),
    ("bert4rec.dropout=0.1", "no baseline 'bert4rec'"),
    ("sasrec.dropuot=0.1", "has no setting 'dropuot'"),
    ("sasrec.dropout=abc", "sasrec.dropout takes float values"),
    ("sasrec.dim=64.5", "sasrec.dim takes int values"),
    ("content.vectors=1", "has no setting 'vectors'"),
])
def test_a_bad_baseline_flag_says_what_is_wrong(flag, says):
    with pytest.raises(SystemExit, match=says):
        baseline_settings([flag])


def test_a_baseline_setting_for_a_model_the_run_skips_is_refused():
    from bench.quality import main

    with pytest.raises(SystemExit, match="sasrec, which this run does not fit"):
        main(["--dataset", "ml-100k", "--only", "ease", "--baseline", "sasrec.dropout=0.1"])


def test_a_datasets_baseline_settings_apply_under_the_flags():
    assert DATASET_BASELINES["ml-1m"]["sasrec"] == {"dropout": 0.1}
    assert dataset_baselines("ml-1m", ["sasrec", "ease"], {}) == {"sasrec": {"dropout": 0.1}}
    # a flag wins for its own key and leaves the others
    flags = baseline_settings(["sasrec.dropout=0.2", "sasrec.dim=128"])
    assert dataset_baselines("ml-1m", ["sasrec"], flags) == {"sasrec": {"dropout": 0.2, "dim": 128}}
    # none for a model the run does not fit, none for a dataset without selected settings
    assert dataset_baselines("ml-1m", ["ease", "prismrec"], {}) == {}
    assert dataset_baselines("ml-100k", ["sasrec"], {}) == {}


@pytest.mark.parametrize("dataset", sorted(DATASET_BASELINES))
def test_a_datasets_baseline_settings_pass_the_flag_checks(dataset):
    # the same name, keyword and type checks as --baseline, so a typo here fails in CI, not after
    # the data has loaded and the earlier baselines have run
    import json

    flags = [f"{name}.{key}={json.dumps(value)}" for name, keys in DATASET_BASELINES[dataset].items()
             for key, value in keys.items()]
    assert baseline_settings(flags) == DATASET_BASELINES[dataset]
