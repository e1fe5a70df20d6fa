"""Scoring in bounded pieces: how many users a batch holds for a catalogue's size, the one-pass lookup
of histories, and that neither the batch size nor the block size changes what is listed."""

import numpy as np
import pandas as pd
import pytest

from tasks.config import ConfigError, load_config
from tests.unit.model.test_interest_balance import HISTORIES, small_recommender


def test_histories_map_to_model_indices_in_order_dropping_unknown_items():
    recommender = small_recommender(0.0)  # app ids 100..129 -> indices 1..30
    got = recommender.histories_to_indices([[129, 7, 100, 100, 115], [], [5, 6], [101]])
    assert [h.tolist() for h in got] == [[30, 1, 1, 16], [], [], [2]]
    assert recommender.histories_to_indices([]) == []
    assert recommender.to_indices([103, 999]).tolist() == [4]


def test_users_per_batch_keeps_the_score_tensor_under_the_budget():
    recommender = small_recommender(0.0, n_items=30, k=3)
    per_user = 4 * 3 * 31  # float32 x interests x (items + padding)
    assert recommender.users_per_batch(1, most=10_000) == 2**20 // per_user == 2818
    assert recommender.users_per_batch(1, most=100) == 100  # the configured batch caps it
    assert recommender.users_per_batch(1e-9, most=100) == 1  # never empty


@pytest.mark.parametrize("batch", [1, 3])
def test_small_batches_list_what_one_batch_lists(batch):
    recommender = small_recommender(2.0)
    whole = recommender.recommend(HISTORIES, 10, max_new_items=2)
    parts = [recommender.recommend(HISTORIES[start:start + batch], 10, max_new_items=2)
             for start in range(0, len(HISTORIES), batch)]
    for field in ("item_ids", "interest_ids", "because_item_ids", "explanations"):
        assert np.array_equal(np.concatenate([getattr(p, field) for p in parts]), getattr(whole, field)), field
    assert np.allclose(np.concatenate([p.scores for p in parts]), whole.scores)


def test_similar_items_in_small_blocks_match_one_block():
    recommender = small_recommender(0.0, n_items=30)
    one_block = recommender.similar_items(5, memory_mb=1)
    blocks_of_eight = recommender.similar_items(5, memory_mb=8 * 4 * 30 / 2**20)
    assert np.array_equal(one_block[0], blocks_of_eight[0]) and np.array_equal(one_block[1], blocks_of_eight[1])
    assert np.allclose(one_block[2], blocks_of_eight[2], atol=1e-6)  # matmul blocks round apart


def test_a_score_budget_below_one_mb_is_refused():
    assert load_config({"materialize.score_memory_mb": 64}).materialize.score_memory_mb == 64
    with pytest.raises(ConfigError, match="materialize.score_memory_mb must be at least 1"):
        load_config({"materialize.score_memory_mb": 0})


def test_the_evaluation_scorer_scores_in_pieces_under_its_budget():
    """recommender_scorer (the gate's and the benchmarks' scorer) splits a block of users into pieces
    whose scores fit its memory budget; the pieces score what one block does."""
    from types import SimpleNamespace

    import torch

    from tasks.evaluation.scoring import recommender_scorer

    recommender = small_recommender(2.0)
    split = SimpleNamespace(item_ids=np.concatenate([[0], recommender.item_ids]))  # index i -> app id
    histories = [recommender.to_indices(h) for h in HISTORIES[:3]]
    calls = []
    score_items = recommender.score_items
    recommender.score_items = lambda users, items, days: calls.append(len(users)) or score_items(users, items, days=days)
    whole = recommender_scorer(recommender, split)(histories)
    one_user = 4 * 3 * 31 / 2**20  # the score tensor of one user, in MB
    pieces = recommender_scorer(recommender, split, memory_mb=2 * one_user)(histories)
    assert calls == [3, 2, 1]  # one block, then pieces of two users
    assert whole.shape == pieces.shape == (3, 31) and torch.isinf(whole[:, 0]).all()
    assert torch.allclose(whole, pieces)


def served_model():
    """The registered pyfunc (mlflow/prismrec_model.py, loaded as MLflow loads models-from-code) around a small model."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "prismrec_model", Path(__file__).parents[3] / "mlflow" / "prismrec_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    served = module.PrismRecPyfunc()
    served.read_settings()  # what load_context does before it loads the model
    served.recommender = small_recommender(2.0)
    return served


def test_the_served_model_scores_a_large_request_in_batches_that_list_what_one_batch_lists():
    """The registered pyfunc (mlflow/prismrec_model.py) splits a request under its score budget."""
    served = served_model()
    request = pd.DataFrame({"user_id": [11, 12, 13, 14], "history": HISTORIES})
    whole = served.predict(None, request, {"top_k": 5})
    served.score_memory_mb = 1.5 * 4 * 3 * 31 / 2**20  # one user's scores [3 interests, 31 items] fit, two do not
    assert served.recommender.users_per_batch(served.score_memory_mb, most=4) == 1
    batches, recommend = [], served.recommender.recommend
    served.recommender.recommend = lambda histories, *args, **kwargs: (batches.append(len(histories)),
                                                                       recommend(histories, *args, **kwargs))[1]
    batched = served.predict(None, request, {"top_k": 5})
    assert batches == [1, 1, 1, 1]
    pd.testing.assert_frame_equal(batched, whole)
    assert sorted(whole["user_id"].unique()) == [11, 12, 13, 14] and len(whole) == 4 * 5


def test_the_served_model_takes_its_budget_and_new_item_cap_from_the_serving_environment(monkeypatch):
    """`mlflow models serve` in a container with less memory: PRISMREC_MATERIALIZE__* there set the defaults,
    read when the model loads; a bad value stops the load with the setting named."""
    monkeypatch.setenv("PRISMREC_MATERIALIZE__SCORE_MEMORY_MB", "7")
    monkeypatch.setenv("PRISMREC_MATERIALIZE__MAX_NEW_ITEMS", "2")
    monkeypatch.setenv("PRISMREC_TRAIN__PRECISION", "fp32")
    served = served_model()
    assert served.precision == "fp32"  # what load_context passes to Recommender.load
    budgets, caps = [], []
    per_batch, recommend = served.recommender.users_per_batch, served.recommender.recommend
    served.recommender.users_per_batch = lambda budget, most: (budgets.append(budget), per_batch(budget, most))[1]
    served.recommender.recommend = lambda histories, top_k, **kwargs: (
        caps.append(kwargs["max_new_items"]), recommend(histories, top_k, **kwargs))[1]
    request = pd.DataFrame({"user_id": [11, 12, 13, 14], "history": HISTORIES})
    served.predict(None, request, {"top_k": 5})
    assert budgets == [7] and caps == [2]
    monkeypatch.setenv("PRISMREC_MATERIALIZE__SCORE_MEMORY_MB", "0")
    served.predict(None, request, {"top_k": 5})  # read at load: a change later does not reach a loaded model
    assert budgets == [7, 7]
    with pytest.raises(ConfigError, match="materialize.score_memory_mb must be at least 1"):
        served_model()


def test_similar_items_shortlisted_in_bf16_are_the_float32_neighbours():
    """On a CPU with native bf16 the items x items product runs in bf16 to shortlist 2k neighbours a
    row, ranked by float32 cosines: the lists and scores of float32 throughout, bar near-ties."""
    recommender = small_recommender(0.0, n_items=300)
    exact = recommender.similar_items(10, memory_mb=1)
    recommender.bf16 = True
    shortlisted = recommender.similar_items(10, memory_mb=0.05)  # blocks too
    assert np.array_equal(shortlisted[0], exact[0])
    same = (shortlisted[1] == exact[1]).all(1)
    assert same.mean() >= 0.98, same.mean()
    assert np.allclose(shortlisted[2][same], exact[2][same], atol=1e-6)  # float32 cosines, not bf16's
    assert (np.diff(shortlisted[2], axis=1) <= 1e-7).all()  # best first
