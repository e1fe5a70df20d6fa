"""EASE's items x items solve: its memory, measured, and the refusal before training of a catalogue
whose solve cannot fit."""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.errors import ConfigError
from tasks.evaluation.baselines import EASE_PEAK_BYTES_PER_CELL, check_ease_fits, ease_weights


def test_ease_holds_two_float64_item_matrices_at_its_peak():
    n = 800
    matrix = sp.random(2000, n, density=0.02, format="csr", random_state=0)
    matrix.data[:] = 1.0
    tracemalloc.start()
    weights = ease_weights(matrix, 50.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 2 * 8 * n * n <= peak < 2.2 * 8 * n * n <= EASE_PEAK_BYTES_PER_CELL * n * n
    # The closed form itself: B = I - P diag(1/diag P) with a zero diagonal, P = (XtX + 50 I)^-1.
    gram = (matrix.T @ matrix).toarray() + 50.0 * np.eye(n)
    precision = np.linalg.inv(gram)
    expected = np.eye(n) - precision / np.diag(precision)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(weights, expected)


def test_a_catalogue_too_large_for_ease_is_refused_with_what_to_do():
    check_ease_fits(["popularity", "ease"], 20_000, memory_bytes=9e9, machine_bytes=12e9)  # 8.0 GB fits
    check_ease_fits(["popularity", "itemknn"], 100_000, memory_bytes=9e9, machine_bytes=12e9)  # no EASE
    with pytest.raises(ConfigError) as refused:
        check_ease_fits(["popularity", "ease"], 37_060, memory_bytes=18e9, machine_bytes=24e9)
    message = str(refused.value)
    assert "~27.5 GB for this run's 37,060 items" in message and "18.0 GB" in message
    assert "gate.baselines=popularity,itemknn" in message and "Nothing was trained" in message


def test_the_train_task_refuses_before_training(tmp_path):
    from tasks import pipeline

    dataset = {"run_dir": str(tmp_path / "run"), "path": str(tmp_path / "run" / "dataset"), "items": 10_000_000}
    with pytest.raises(ConfigError, match="gate.baselines includes ease"):
        pipeline.run_train({"paths.home": str(tmp_path / "home")}, dataset)
    assert not (tmp_path / "run").exists() and not (tmp_path / "home" / "mlflow.db").exists()
