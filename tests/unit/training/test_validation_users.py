"""train.validation_users: which users each epoch validates on (tasks.training.loop.validation_users)."""

import numpy as np
import pytest

from tasks.config import load_config
from tasks.errors import ConfigError
from tasks.training.loop import validation_users


def test_every_user_by_default_and_when_the_sample_covers_them_all():
    assert np.array_equal(validation_users(5, None, 42), np.arange(5))
    assert np.array_equal(validation_users(5, 9, 42), np.arange(5))


def test_a_sample_is_sorted_distinct_and_the_same_for_the_same_seed():
    sample = validation_users(1000, 100, 42)
    assert len(sample) == len(set(sample.tolist())) == 100
    assert np.all(np.diff(sample) > 0) and 0 <= sample.min() and sample.max() < 1000
    assert np.array_equal(sample, validation_users(1000, 100, 42))  # every epoch, every rank
    assert not np.array_equal(sample, validation_users(1000, 100, 43))


def test_a_sample_of_no_users_is_refused():
    with pytest.raises(ConfigError, match="train.validation_users must be at least 1"):
        load_config({"train.validation_users": 0})
