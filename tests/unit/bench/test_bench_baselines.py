"""The benchmark's own baselines on hand-made sequences: each one does what its definition says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.baselines import BASELINES, GRIDS, SASRec, fit_content, fit_sasrec
from tasks.evaluation import baselines as gate_baselines
from tests.builders import make_items, make_sequences


def test_the_benchmark_runs_the_gates_baselines_and_its_own():
    assert set(BASELINES) == set(GRIDS) == {"popularity", "itemknn", "ease", "content", "sasrec"}
    assert {name: BASELINES[name] for name in gate_baselines.BASELINES} == gate_baselines.BASELINES


@pytest.mark.slow  # encodes every item with MiniLM
def test_content_ranks_the_identical_text_highest():
    texts = ["Toy Story (1995). Animation, Children's, Comedy.",
             "Heat (1995). Action, Crime, Thriller.",
             "Toy Story (1995). Animation, Children's, Comedy.",
             "Sense and Sensibility (1995). Drama, Romance.",
             "Casino (1995). Drama, Thriller."]
    sequences = make_sequences([[1, 2, 3, 4], [2, 4, 5, 1]], n_items=5)
    scores = fit_content(sequences, make_items(texts), decay=0.5)([np.array([1]), np.array([2, 4])])
    assert scores.shape == (2, 6)
    assert scores[0, 3].item() == pytest.approx(1.0, abs=1e-5)  # same text: cosine 1
    others = scores[0, [2, 4, 5]]
    assert torch.all(scores[0, 3] > others)
    assert scores[0, 0].item() == float("-inf")


@pytest.mark.slow  # fits a SASRec model
def test_sasrec_learns_a_deterministic_cycle():
    # Every user walks the cycle 1 -> 2 -> ... -> 20 -> 1 from a different start.
    n_items, length = 20, 12
    walks = [[(start + step) % n_items + 1 for step in range(length)] for start in range(n_items)] * 2
    sequences = make_sequences(walks, n_items)
    scorer = fit_sasrec(sequences, make_items(["a"] * n_items), dim=32, max_len=length, dropout=0.0,
                        lr=1e-2, batch_size=8, max_epochs=20, patience=20, device="cpu")
    histories = sequences.histories(1)  # predict each test target from the full preceding history
    predicted = scorer(histories)[:, 1:].argmax(1) + 1
    accuracy = (predicted.numpy() == sequences.targets("test")).mean()
    assert accuracy > 0.5  # chance is 1 / 20


def test_sasrec_last_only_is_the_last_position_of_the_full_pass():
    torch.manual_seed(0)
    net = SASRec(n_items=30, max_len=8, dim=16, blocks=2, heads=2, dropout=0.2).eval()
    sequence = torch.tensor([[0, 0, 0, 4, 9, 2, 7, 1], [3, 5, 8, 13, 21, 1, 2, 6]])
    last = net(sequence, last_only=True)
    assert last.shape == (2, 1, 16)
    assert torch.allclose(last, net(sequence)[:, -1:], atol=1e-5)
