"""bench.ensemble: members' log-softmax scores averaged, means over subsets, and its refusals."""

from __future__ import annotations

import pytest
import torch

from bench.ensemble import ensemble_scorer, subsets


def test_an_ensemble_ranks_by_its_members_mean_score_each_scored_as_of_the_histories_days():
    # a prefers item 1, b item 3; together item 2, which neither ranks first, is the best compromise.
    a = torch.tensor([[float("-inf"), 10.0, 8.0, 0.0], [float("-inf"), 1.0, 2.0, 3.0]])
    b = torch.tensor([[float("-inf"), 0.0, 7.0, 9.0], [float("-inf"), 3.0, 2.0, 1.0]])
    seen = []

    def member(scores):
        def score(histories, days=None):
            seen.append(days)
            return scores[: len(histories)]
        return score

    scored = ensemble_scorer([member(a), member(b)])(["h1", "h2"], days="days")
    assert torch.isneginf(scored[:, 0]).all() and torch.allclose(scored[:, 1:], (a[:, 1:] + b[:, 1:]) / 2)
    assert scored[0, 1:].argmax().item() == 1 and a[0, 1:].argmax().item() == 0 and b[0, 1:].argmax().item() == 2
    assert torch.allclose(scored[1, 1:], torch.tensor(2.0))  # opposite tastes: level
    assert seen == ["days", "days"] and a[0, 1] == 10.0  # members' scores left as they were
    assert ensemble_scorer([]).dated


def test_the_means_by_size_average_every_subset_of_that_size():
    rows = {"a": {"valid": {"hr@10": 0.2, "ndcg@10": 0.1}, "test": {"hr@10": 0.2, "ndcg@10": 0.1}},
            "b": {"valid": {"hr@10": 0.4, "ndcg@10": 0.3}, "test": {"hr@10": 0.4, "ndcg@10": 0.2}},
            "a + b": {"valid": {"hr@10": 0.5, "ndcg@10": 0.35}, "test": {"hr@10": 0.45, "ndcg@10": 0.25}}}
    alone, pair = subsets(["a", "b"], rows)
    assert (alone["members"], alone["subsets"], alone["test"]["ndcg@10"]) == (1, 2, 0.15)
    assert (pair["members"], pair["subsets"], pair["valid"]["ndcg@10"]) == (2, 1, 0.35)


def test_it_needs_two_trained_models_on_a_prepared_split(tmp_path, monkeypatch, capsys):
    from bench import ensemble

    monkeypatch.setenv("PRISMREC_PATHS__HOME", str(tmp_path))
    with pytest.raises(SystemExit):
        ensemble.main(["--dataset", "ml-100k", str(tmp_path / "one")])
    assert "two model folders or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble.main(["--dataset", "ml-100k", str(tmp_path / "one"), str(tmp_path / "x" / ".." / "one")])
    assert "given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble.main(["--dataset", "ml-100k", str(tmp_path / "one"), str(tmp_path / "two")])
    assert "holds no prepared split" in capsys.readouterr().err
