"""The items x items baselines' memory, measured, and the refusal before training of a catalogue whose
baselines cannot fit.

Each measurement runs in a fresh Python process: the peak resident size (VmHWM, reset through
/proc/self/clear_refs) above the resident size before the fit, so that LAPACK's and torch's buffers
count as well as numpy's."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tasks.errors import ConfigError
from tasks.evaluation.baselines import (
    PEAK_BYTES_PER_CELL,
    check_baselines_fit,
    ease_weights,
    fit_itemknn,
    interaction_matrix,
)

ITEMS = 2_000  # 4M cells: 32 MB a float64 matrix, its blocks' temporaries 1/16 of that


def histories(users: int, items: int, seed: int = 0, longest: int = 400) -> list[np.ndarray]:
    """Random histories over items 1..items (0 is padding) of 20 to `longest` items."""
    rng = np.random.default_rng(seed)
    return [rng.choice(np.arange(1, items + 1), size=rng.integers(20, min(longest, items)), replace=False)
            for _ in range(users)]


def grid_peak(name: str) -> float:
    """Bytes a cell above the starting resident size while two fits of `name` run, the first one kept
    (as a grid search keeps its best). The histories are short, so that the sparse user x item matrix,
    which grows with the interactions and not with the cells, is a small part of it."""
    code = textwrap.dedent(f"""
        import json, numpy as np
        from types import SimpleNamespace
        from tasks.evaluation.baselines import BASELINES
        from tests.unit.evaluation.test_baseline_memory import histories

        def status(field):
            return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024

        data = histories(1_000, {ITEMS}, longest=60)
        sequences = SimpleNamespace(n_items={ITEMS}, histories=lambda _: data)
        hyper = {{"itemknn": {{"neighbours": 100, "shrink": 5.0}}, "ease": {{"l2": 50.0}}}}["{name}"]
        BASELINES["{name}"](sequences, None, **hyper)  # warm: libraries' first-call buffers
        open("/proc/self/clear_refs", "w").write("5")
        base = status("VmRSS")
        kept = BASELINES["{name}"](sequences, None, **hyper)
        second = BASELINES["{name}"](sequences, None, **hyper)
        print(json.dumps((status("VmHWM") - base) / ({ITEMS} + 1) ** 2))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                          cwd=Path(__file__).parents[3])  # the repository root: `tests` and `tasks` import from there
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_a_grid_search_stays_within_the_bytes_a_cell_the_check_assumes(name):
    measured = grid_peak(name)
    # Below the figure the check uses, and not far below it: a matrix more or less would show.
    assert PEAK_BYTES_PER_CELL[name] - 4 < measured <= PEAK_BYTES_PER_CELL[name] * 1.1, measured


def test_ease_weights_are_the_closed_form():
    n = 800
    matrix = sp.random(2000, n, density=0.02, format="csr", random_state=0, dtype=np.float32)
    matrix.data[:] = 1.0
    weights = ease_weights(matrix, 50.0)
    # B = I - P diag(1/diag P) with a zero diagonal, P = (XtX + 50 I)^-1.
    gram = (matrix.T @ matrix).toarray().astype(np.float64) + 50.0 * np.eye(n)
    precision = np.linalg.inv(gram)
    expected = np.eye(n) - precision / np.diag(precision)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(weights, expected)


def test_itemknn_is_cosine_with_shrinkage_over_each_items_top_neighbours():
    data, n, k = histories(300, 120, seed=1), 120, 10
    scorer = fit_itemknn(SimpleNamespace(n_items=n, histories=lambda _: data), None, neighbours=k, shrink=5.0)
    matrix = interaction_matrix(data, n)
    co = (matrix.T @ matrix).toarray().astype(np.float64)
    counts = np.diag(co).copy()
    sim = co / (np.sqrt(np.outer(counts, counts)) + 5.0 + 1e-9)
    np.fill_diagonal(sim, 0.0)
    keep = np.argsort(-sim, axis=1)[:, :k]
    pruned = np.zeros_like(sim)
    np.put_along_axis(pruned, keep, np.take_along_axis(sim, keep, 1), 1)
    query = [np.array([3, 17, 42]), np.array([5])]
    expected = interaction_matrix(query, n).toarray() @ pruned
    assert torch.allclose(scorer(query), torch.from_numpy(expected).float(), atol=1e-5)


def test_a_catalogue_too_large_for_a_baseline_is_refused_with_what_to_do():
    check_baselines_fit(["popularity", "itemknn", "ease"], 20_000, memory_bytes=9e9, machine_bytes=12e9)  # 6.4 GB
    check_baselines_fit(["popularity"], 1_000_000, memory_bytes=9e9, machine_bytes=12e9)  # no items x items
    with pytest.raises(ConfigError) as refused:
        check_baselines_fit(["popularity", "itemknn", "ease"], 37_060, memory_bytes=18e9, machine_bytes=24e9)
    message = str(refused.value)
    assert "includes ease" in message and "ease ~22.0 GB" in message and "itemknn" not in message.split("(")[0]
    assert "37,060 items" in message and "18.0 GB" in message and "(24.0 GB)" in message
    assert "gate.baselines=popularity,itemknn" in message and "Nothing was trained" in message
    with pytest.raises(ConfigError, match=r"includes itemknn, ease, .*leave them out \(e.g. gate.baselines=popularity\)"):
        check_baselines_fit(["popularity", "itemknn", "ease"], 100_000, memory_bytes=18e9, machine_bytes=24e9)


def test_the_train_task_refuses_before_training(tmp_path):
    from tasks import pipeline

    dataset = {"run_dir": str(tmp_path / "run"), "path": str(tmp_path / "run" / "dataset"), "items": 10_000_000}
    with pytest.raises(ConfigError, match="gate.baselines includes"):
        pipeline.run_train({"paths.home": str(tmp_path / "home")}, dataset)
    assert not (tmp_path / "run").exists() and not (tmp_path / "home" / "mlflow.db").exists()
