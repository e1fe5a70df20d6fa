"""The map from an item's text vector to the id row its ratings would have taught (tasks.model.new_item_ids)."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.config import load_config
from tasks.errors import ConfigError
from tasks.model.network import ModelSpec, PrismRecNet
from tasks.model.new_item_ids import fit_id_from_text, predict_id_rows
from tasks.model.recommender import Recommender


def test_without_a_penalty_the_map_recovers_a_linear_relation_exactly():
    torch.manual_seed(0)
    text, true_map, offset = torch.randn(200, 12), torch.randn(12, 5), torch.randn(5)
    weights = fit_id_from_text(text, text @ true_map + offset, penalty=0.0)
    assert weights.shape == (13, 5)
    assert torch.allclose(weights[:-1], true_map, atol=1e-4) and torch.allclose(weights[-1], offset, atol=1e-4)
    fresh = torch.randn(3, 12)
    assert torch.allclose(predict_id_rows(fresh, weights), fresh @ true_map + offset, atol=1e-4)


def test_a_strong_penalty_leans_on_the_mean_id_row_and_never_shrinks_the_intercept():
    torch.manual_seed(1)
    text, ids = torch.randn(100, 12), torch.randn(100, 5) + 3.0
    weights = fit_id_from_text(text, ids, penalty=1e9)
    assert weights[:-1].abs().max() < 1e-5
    assert torch.allclose(predict_id_rows(torch.randn(4, 12), weights), ids.mean(0).expand(4, -1), atol=1e-4)
    # Fewer items than text dimensions and no penalty: still a solution, not a singular-matrix error.
    assert torch.isfinite(fit_id_from_text(text[:5], ids[:5], penalty=0.0)).all()


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="penalty must be >= 0"):
        fit_id_from_text(torch.randn(4, 3), torch.randn(4, 2), penalty=-1.0)
    with pytest.raises(ValueError, match="same, non-zero number"):
        fit_id_from_text(torch.randn(4, 3), torch.randn(3, 2), penalty=1.0)
    with pytest.raises(ConfigError, match="train.new_item_id_penalty must be >= 0"):
        load_config({"train.new_item_id_penalty": -1})
    assert load_config({"train.new_item_id_penalty": "none"}).train.new_item_id_penalty is None  # text alone


def test_the_recommender_gives_new_items_the_predicted_id_row_and_leaves_trained_items_alone():
    torch.manual_seed(2)
    trained, appended = 12, 4
    spec = ModelSpec(n_items=trained, max_history=8, dim=16, n_interests=2, user_layers=1, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True)
    net = PrismRecNet(spec)
    counts = np.r_[np.arange(trained) + 5, np.zeros(appended)]
    counts[3] = 0  # in the id table, never rated in training: new too
    items = pd.DataFrame({"idx": np.arange(1, trained + appended + 1), "item_id": np.arange(trained + appended) + 100,
                          "title": "Film", "genres": "Drama", "train_interactions": counts.astype(np.int64)})
    text = torch.randn(trained + appended + 1, 384)
    weights = torch.randn(385, 16)
    plain, mapped = Recommender(net, text, items), Recommender(net, text, items, id_from_text=weights)
    new_rows = torch.tensor([4, *range(trained + 1, trained + appended + 1)])
    assert torch.nonzero(mapped.is_new).flatten().tolist() == new_rows.tolist()
    with torch.no_grad():
        expected = net.text_projection(text[new_rows]) + predict_id_rows(text[new_rows], weights)
    assert torch.allclose(mapped.item_vectors[new_rows], expected, atol=1e-5)
    assert torch.allclose(plain.item_vectors[new_rows], net.text_projection(text[new_rows]).detach(), atol=1e-5)
    others = torch.ones(len(text), dtype=torch.bool)
    others[new_rows] = False
    assert torch.equal(mapped.item_vectors[others], plain.item_vectors[others])
