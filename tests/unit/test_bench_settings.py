"""The quality benchmark's per-dataset PrismRec settings (bench.quality.DATASET_SETTINGS), a
layer of load_config's `defaults` under the environment."""

from bench.quality import DATASET_SETTINGS
from tasks.config import load_config


def test_ml1m_reads_long_histories_with_one_interest():
    config = load_config(defaults=DATASET_SETTINGS["ml-1m"], environ={})
    assert (config.prepare.max_history, config.train.batch_size, config.train.n_interests) == (200, 16, 1)


def test_the_environment_wins_over_a_dataset_setting():
    environ = {"PRISMREC_TRAIN__N_INTERESTS": "4"}
    config = load_config(defaults=DATASET_SETTINGS["ml-1m"], environ=environ)
    assert config.train.n_interests == 4
    assert config.prepare.max_history == DATASET_SETTINGS["ml-1m"]["prepare.max_history"]


def test_a_dataset_without_settings_trains_the_pipeline_defaults():
    assert "ml-100k" not in DATASET_SETTINGS
    assert load_config(defaults=DATASET_SETTINGS.get("ml-100k"), environ={}) == load_config(environ={})
