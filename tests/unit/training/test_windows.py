"""Training windows: every interaction a target once, each with enough history before it."""

import numpy as np
import pytest

from tasks.training.windows import training_batches, training_windows, window_context


def test_every_interaction_is_a_target_once_with_all_positions():
    histories = [np.arange(1, 12), np.arange(1, 3), np.arange(1, 2)]
    windows = training_windows(histories, range(3), max_history=4, all_positions=True)
    # 11 items -> targets 2..11 in windows ending at 11, 7, 3; a 1-item history has no target.
    assert [w.tolist() for w, _ in windows] == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [1, 2, 3], [1, 2]]
    assert [fresh for _, fresh in windows] == [4, 4, 2, 1]
    targets = [t for w, fresh in windows[:3] for t in w[1:].tolist()[-fresh:]]
    assert sorted(targets) == list(range(2, 12))


def test_overlapping_windows_give_every_target_context_and_train_it_once():
    windows = training_windows([np.arange(1, 12)], [0], max_history=4, all_positions=True, context=2)
    assert [w.tolist() for w, _ in windows] == [[7, 8, 9, 10, 11], [5, 6, 7, 8, 9], [3, 4, 5, 6, 7], [1, 2, 3, 4, 5]]
    assert [fresh for _, fresh in windows] == [2, 2, 2, 4]
    trained = []
    for window, fresh in windows:
        position = len(window) - 1 - fresh  # index in the window of the first trained target's input
        for t in range(fresh):
            seen = position + 1 + t  # items before the target, inside the window
            target = window[-fresh + t]
            assert seen >= 2 or seen == target - 1  # at least `context` items, or the whole history so far
            trained.append(int(target))
    assert sorted(trained) == list(range(2, 12))
    inputs, targets = next(training_batches(windows, 8, 4))
    assert inputs[0].tolist() == [7, 8, 9, 10] and targets[0].tolist() == [0, 0, 10, 11]
    assert targets[3].tolist() == [2, 3, 4, 5]
    assert window_context(0.5, 4) == 2 and window_context(0.5, 50) == 25 and window_context(0.99, 4) == 3


def test_latest_window_only_without_all_positions():
    windows = training_windows([np.arange(1, 12)], [0], max_history=4, all_positions=False)
    assert [(w.tolist(), fresh) for w, fresh in windows] == [([7, 8, 9, 10, 11], 4)]


def test_window_overlap_outside_its_range_is_a_clear_config_error():
    from tasks.config import load_config
    from tasks.errors import ConfigError

    assert load_config({"train.window_overlap": 0.5}).train.window_overlap == 0.5
    with pytest.raises(ConfigError, match=r"train.window_overlap must be in \[0, 1\), got 1.0"):
        load_config({"train.window_overlap": 1.0})
