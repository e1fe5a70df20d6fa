"""bench.ties: a table of every pair follows the source's order of items saved at one time; successions do not."""

from __future__ import annotations

import numpy as np

from bench.ties import successions_alone, tied_targets
from tasks.data.prepare import Sequences


def test_only_the_table_of_every_pair_finds_a_target_saved_with_the_history_s_latest_item():
    # Items 1..30. Three users saved 20 and 25 at one time (then 1, 2, 3 later); three took 10 after 20 later on.
    # The user under test took 7, then 20 and 25 at one time: 25, the test target, follows 20 only in the source.
    rows = [([20, 25, 1, 2, 3], [False, True, False, False, False])] * 3
    rows += [([20, 10, 4, 5, 6], [False] * 5)] * 3
    rows += [([7, 20, 25], [False, False, True])]
    sequences = Sequences(user_ids=np.arange(len(rows)), indptr=np.r_[0, np.cumsum([len(r) for r, _ in rows])],
                          item_idx=np.concatenate([r for r, _ in rows]), item_ids=np.r_[-1, 100 + np.arange(1, 31)],
                          tied=np.concatenate([t for _, t in rows]))
    tied = tied_targets(sequences)
    assert tied.tolist() == [False] * 6 + [True]
    found = successions_alone(sequences, tied)
    # Every pair: 20 -> 25 (3 of 6 successors of 20) and 20 -> 10 (3 of 6): 25 is the second pick, a hit.
    assert found["every pair"]["tied"] == {"users": 1, "hr@10": 1.0, "ndcg@10": round(1 / np.log2(3), 4)}
    # Later only: 20 -> 10 alone; 25 is among the unlifted items, behind more than ten of lower index.
    assert found["later only"]["tied"]["hr@10"] == 0.0
    assert found["every pair"]["other"]["users"] == found["later only"]["other"]["users"] == 6


def test_the_report_needs_a_split_prepared_with_its_ties_and_trained_model_folders(tmp_path, monkeypatch, capsys):
    import pytest

    from bench import ties
    from tests.builders import make_items, make_sequences

    monkeypatch.setenv("PRISMREC_PATHS__HOME", str(tmp_path))
    with pytest.raises(SystemExit):
        ties.main(["--dataset", "ml-100k"])
    assert "holds no prepared split" in capsys.readouterr().err
    dataset = tmp_path / "bench" / "ml-100k" / "dataset"
    dataset.mkdir(parents=True)
    make_sequences([[1, 2, 3]], 3).save(dataset / "sequences.npz")  # as prepared before ties were marked
    make_items(["a", "b", "c"]).to_parquet(dataset / "items.parquet")
    with pytest.raises(SystemExit):
        ties.main(["--dataset", "ml-100k", str(tmp_path / "no-model")])
    assert "no model.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ties.main(["--dataset", "ml-100k"])
    assert "prepared before items saved at one time were marked" in capsys.readouterr().err
