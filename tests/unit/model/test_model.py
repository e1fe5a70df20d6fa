"""The network: its spec, the user tower and the training scores, on small synthetic inputs (no
language model needed)."""

import dataclasses

import numpy as np
import pytest
import torch

from tasks.model.interests import InterestExtractor
from tasks.model.layers import use_bf16
from tasks.model.network import (
    BestInterestScore,
    ModelSpec,
    PrismRecNet,
    pad_history,
    pad_left,
    softmax_cross_entropy,
)


def spec(k: int = 3, length: int = 6) -> ModelSpec:
    return ModelSpec(n_items=20, max_history=length, dim=16, n_interests=k, user_layers=2, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True)


def test_bf16_setting_is_respected():
    assert use_bf16("bf16", torch.device("cpu")) and not use_bf16("fp32", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32"):
        use_bf16("fp16", torch.device("cpu"))  # e.g. Recommender.load(path, "fp16"): refused, not float32 silently


@pytest.mark.parametrize("k", [1, 4])
def test_interests_see_only_the_past(k):
    torch.manual_seed(0)
    extractor = InterestExtractor(16, k, 6, 2, 2, 0.0).eval()
    history = torch.randn(1, 6, 16)
    pad = torch.tensor([[True, False, False, False, False, False]])
    interests, attention = extractor(history, pad)
    assert interests.shape == (1, 6, k, 16) and attention.shape == (1, 6, k, 6)
    changed = history.clone()
    changed[0, 4:] = torch.randn(2, 16)  # the last two items change
    again, _ = extractor(changed, pad)
    # Real positions before the change are untouched (padded positions are never read).
    assert torch.allclose(interests[0, 1:4], again[0, 1:4], atol=1e-5)
    assert not torch.allclose(interests[0, 5], again[0, 5], atol=1e-3)
    # Each interest's attention is a distribution over the real items up to t, never padding or the future.
    assert torch.allclose(attention[0, 1:].sum(-1), torch.ones(5, k), atol=1e-5)
    assert attention[0, 1:, :, 0].abs().max() < 1e-6
    assert attention[0, 2, :, 3:].abs().max() < 1e-6


def test_long_term_interests_differ_and_overlap_is_measured():
    torch.manual_seed(0)
    net = PrismRecNet(spec(k=3)).eval()
    items = net.item_vectors(torch.randn(21, 384))
    histories = pad_left([np.array([1, 2, 3, 4, 5]), np.array([6, 7])], 6)
    interests, _ = net.interests(histories, items)
    overlap = net.interest_overlap(interests[histories > 0][:, 1:], items[1:].mean(0))
    assert overlap.shape == (int((histories > 0).sum()), 2 * 1)  # K=3: two long-term interests, both orders
    assert -1.0 < overlap.mean().item() < 1.0  # distinct queries attend differently from the start
    scores, best, last, attention = net.score_last(histories, items)
    assert scores.shape == (2, 21) and last.shape == (2, 3, 16) and attention.shape == (2, 3, 6)
    assert set(best.unique().tolist()) <= {0, 1, 2}
    # Ranking alone (validation) skips the attention and scores alike.
    ranked, ranked_best, ranked_last, no_attention = net.score_last(histories, items, with_attention=False)
    assert no_attention is None
    assert torch.allclose(ranked, scores) and torch.equal(ranked_best, best) and torch.allclose(ranked_last, last)


def test_a_bf16_user_tower_still_gives_float32_scores_close_to_float32_inference():
    torch.manual_seed(0)
    net = PrismRecNet(spec(k=3, length=12)).eval()
    items = net.item_vectors(torch.randn(21, 384))
    histories = pad_left([np.arange(1, 12), np.array([6, 7, 9]), np.array([20, 3, 3, 5])], 12)
    exact, _, exact_last, _ = net.score_last(histories, items)
    scores, _, last, attention = net.score_last(histories, items, bf16=True)
    assert scores.dtype == last.dtype == attention.dtype == torch.float32
    # bf16 scores would hold 8 significant bits and tie; these differ as the interests do (~1e-2), no more
    assert len(scores[0].unique()) == 21
    assert torch.allclose(scores, exact, atol=0.1 * net.logit_scale / 20) and not torch.equal(scores, exact)
    assert torch.allclose(last, exact_last, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("k", [1, 3])
def test_best_interest_score_matches_autograd_amax(k):
    torch.manual_seed(0)
    interests = torch.randn(7, k, 5, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(7, 11, dtype=torch.float64)
    ours = BestInterestScore.apply(interests, items, torch.float64)
    reference = torch.einsum("pkd,nd->pkn", interests, items).amax(1)
    assert torch.allclose(ours, reference)
    grads = torch.autograd.grad((ours * weights).sum(), (interests, items))
    expected = torch.autograd.grad((reference * weights).sum(), (interests, items))
    assert all(torch.allclose(g, e) for g, e in zip(grads, expected))


def test_best_interest_score_in_bf16_routes_like_the_first_argmax():
    # Small integers are exact in bf16 (products and sums too), so ties are common and exact: each
    # tied item's gradient must go to the first interest that reaches the max, as the bit-pattern
    # routing in backward promises, and nowhere else.
    generator = torch.Generator().manual_seed(0)
    interests = torch.randint(-2, 3, (9, 3, 4), generator=generator).double()
    items = torch.randint(-2, 3, (13, 4), generator=generator).double()
    weights = torch.randint(-3, 4, (9, 13), generator=generator).double()
    a, b = interests.bfloat16().requires_grad_(), items.bfloat16().requires_grad_()
    ours = BestInterestScore.apply(a, b, torch.bfloat16)
    (ours * weights.bfloat16()).sum().backward()

    ra, rb = interests.clone().requires_grad_(), items.clone().requires_grad_()
    scores = torch.einsum("pkd,nd->pkn", ra, rb)
    first = scores.argmax(1, keepdim=True)  # documented: the first maximal index
    assert (scores == scores.amax(1, keepdim=True)).sum(1).gt(1).any()  # the data has ties
    reference = scores.gather(1, first).squeeze(1)
    (reference * weights).sum().backward()
    assert torch.equal(ours.double(), reference.detach())
    assert torch.equal(a.grad.double(), ra.grad) and torch.equal(b.grad.double(), rb.grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_softmax_cross_entropy_matches_torch(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(6, 9, dtype=torch.float64) * 4).to(dtype).requires_grad_()
    labels = torch.tensor([0, 8, 3, 3, 5, 1])
    loss = softmax_cross_entropy(logits, labels)
    loss.backward()
    reference_logits = logits.detach().double().requires_grad_()
    expected = torch.nn.functional.cross_entropy(reference_logits, labels)
    expected.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    assert torch.allclose(loss.double(), expected, atol=1e-6)
    tolerance = 1e-6 if dtype == torch.float64 else 4e-3  # softmax in float32; bf16 keeps 8 bits
    assert torch.allclose(logits.grad.double(), reference_logits.grad, atol=tolerance)
    assert torch.allclose(logits.grad.double().sum(1), torch.zeros(6, dtype=torch.float64), atol=8 * tolerance)


def test_training_forward_scores_only_real_positions():
    torch.manual_seed(0)
    net = PrismRecNet(spec(k=3))
    histories = pad_left([np.array([1, 2, 3, 4, 5]), np.array([6, 7])], 6)
    keep = histories > 0
    cache = torch.randn(21, 384)
    refresh = torch.tensor([2, 3])
    logits, fresh, overlap, wins = net(histories, keep, cache, refresh, None, None)
    assert logits.shape == (7, 21) and fresh.shape == (2, 384)
    assert wins is None  # no targets given
    items = net.item_vectors(cache)  # no text tower: the cache's rows are the text vectors
    per_interest = net.match(net.interests(histories, items, with_attention=False)[0][keep], items)
    assert torch.allclose(logits, per_interest.amax(1), atol=1e-5)  # each item under its best interest
    (logits.logsumexp(-1).mean() + overlap.clamp(min=0).mean()).backward()
    assert net.users.interest_queries.grad is not None and net.id_embedding.weight.grad.abs().sum() > 0


def test_training_forward_counts_the_interest_that_wins_each_target():
    torch.manual_seed(0)
    net = PrismRecNet(spec(k=3)).eval()  # eval: no dropout, so the recount below sees the same interests
    histories = pad_left([np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8])], 6)
    targets = pad_left([np.array([2, 3, 4, 5, 9]), np.array([7, 8, 10])], 6)
    keep = targets > 0
    cache = torch.randn(21, 384)
    *_, wins = net(histories, keep, cache, torch.tensor([2]), None, None, targets=targets)
    with torch.no_grad():
        items = net.item_vectors(cache)
        interests = net.interests(histories, items, with_attention=False)[0][keep]  # [P, K, d]
        cosine = torch.nn.functional.cosine_similarity(interests, items[targets[keep]][:, None], dim=-1)
    assert wins.tolist() == torch.bincount(cosine.argmax(1), minlength=3).tolist()
    assert wins.sum() == keep.sum() == 8


def test_logit_scale_scales_training_and_inference_scores_alike():
    torch.manual_seed(0)
    base = PrismRecNet(spec(k=3)).eval()
    hotter = PrismRecNet(dataclasses.replace(spec(k=3), logit_scale=5.0)).eval()
    hotter.load_state_dict(base.state_dict())
    cache, histories = torch.randn(21, 384), pad_left([np.array([1, 2, 3]), np.array([4, 5])], 6)
    keep = histories > 0
    targets = torch.where(keep, 9, 0)
    logits, *_ = base(histories, keep, cache, torch.tensor([1]), None, None, targets=targets)
    hotter_logits, *_ = hotter(histories, keep, cache, torch.tensor([1]), None, None, targets=targets)
    assert base.logit_scale == 20.0  # the default, which checkpoints without the field load with
    assert torch.allclose(hotter_logits, logits / 4, atol=1e-6)
    assert hotter_logits.abs().max() <= 5.0 + 1e-5  # cosines times the scale
    items = base.item_vectors(cache)
    scores, best, *_ = base.score_last(histories, items)
    hotter_scores, hotter_best, *_ = hotter.score_last(histories, items)
    assert torch.allclose(hotter_scores, scores / 4, atol=1e-6) and torch.equal(hotter_best, best)


def test_best_interest_score_gives_a_tie_to_one_interest():
    interests = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], requires_grad=True)  # two equal interests
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    BestInterestScore.apply(interests, items, torch.float32).sum().backward()
    # Each item's gradient goes to one interest (the first), never to both.
    assert interests.grad[0, 1].abs().sum() == 0 and interests.grad[0, 0].abs().sum() > 0
    assert torch.allclose(items.grad, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


@pytest.mark.parametrize("k", [1, 4])
def test_padding_to_the_longest_history_scores_as_padding_to_max_history(k):
    torch.manual_seed(0)
    net = PrismRecNet(dataclasses.replace(spec(k=k), max_history=40)).eval()
    items = net.item_vectors(torch.randn(21, 384))
    histories = [np.array([3, 1, 4, 1, 5, 9, 2, 6, 5]), np.array([7]), np.array([2, 7, 1, 8])]
    short = pad_history(histories, 40)
    assert short.shape == (3, 16)  # the longest (9) rounded up to a multiple of 8, not 40
    assert pad_history([np.arange(1, 60)], 40).shape == (1, 40)  # never past max_history
    full_scores, _, full_attention = net.interest_scores(pad_left(histories, 40), items)
    scores, _, attention = net.interest_scores(short, items)
    assert torch.allclose(scores, full_scores, atol=1e-5)
    assert torch.allclose(attention, full_attention[..., -16:], atol=1e-6)
    assert full_attention[..., :-16].abs().max() == 0  # the extra padding was never attended


@pytest.mark.parametrize("k", [1, 4])
def test_last_only_equals_the_last_position_of_the_full_pass(k):
    torch.manual_seed(0)
    extractor = InterestExtractor(16, k, 6, 2, 2, 0.0).eval()
    history = torch.randn(2, 6, 16)
    pad = torch.tensor([[True, True, False, False, False, False], [False] * 6])
    interests, attention = extractor(history, pad)
    last, last_attention = extractor(history, pad, last_only=True)
    assert last.shape == (2, 1, k, 16) and last_attention.shape == (2, 1, k, 6)
    assert torch.allclose(last[:, 0], interests[:, -1], atol=1e-5)
    assert torch.allclose(last_attention[:, 0], attention[:, -1], atol=1e-5)


def test_sampled_logits_put_the_target_first_and_mask_accidental_hits():
    torch.manual_seed(0)
    net = PrismRecNet(spec(k=3)).eval()
    histories = pad_left([np.array([1, 2, 3, 4, 5]), np.array([6, 7])], 6)
    targets = pad_left([np.array([2, 3, 4, 5, 9]), np.array([7, 11])], 6)
    keep, cache, refresh = targets > 0, torch.randn(21, 384), torch.tensor([1])
    full, *_ = net(histories, keep, cache, refresh, None, None)
    negatives = torch.tensor([9, 12, 3, 20])
    sampled, *_ = net(histories, keep, cache, refresh, None, None, targets=targets, negatives=negatives)
    wanted = targets[keep]
    assert sampled.shape == (7, 5)
    assert torch.allclose(sampled[:, 0], full.gather(1, wanted[:, None])[:, 0], atol=1e-5)
    hit = negatives[None] == wanted[:, None]
    assert hit.any() and (sampled[:, 1:][hit] < -1e30).all()
    assert torch.allclose(sampled[:, 1:][~hit], full[:, negatives][~hit], atol=1e-5)


def test_spec_from_config_takes_the_network_settings_and_round_trips():
    from tasks.config import load_config

    train = load_config({"train.n_interests": 3, "train.dim": 32, "train.logit_scale": 10.0,
                         "train.interest_balance": 0.5, "train.lm_trainable_layers": 0, "train.user_ffn": 4}).train
    built = ModelSpec.from_config(train, n_items=20, max_history=6)
    assert (built.n_items, built.max_history, built.n_interests, built.dim) == (20, 6, 3, 32)
    assert (built.logit_scale, built.interest_balance, built.lm_trainable_layers) == (10.0, 0.5, 0)
    assert (built.user_layers, built.user_heads, built.dropout) == (train.user_layers, train.user_heads, train.dropout)
    assert ModelSpec.from_dict(built.to_dict()) == built
    assert PrismRecNet(built).users.context.layers[0].linear1.out_features == 4 * 32  # the feed-forward width
    older = {key: value for key, value in built.to_dict().items() if key != "user_ffn"}
    assert ModelSpec.from_dict(older).user_ffn == 2  # a checkpoint from before the setting: the width it had


def test_a_feed_forward_width_below_one_is_refused():
    from tasks.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.user_ffn"):
        load_config({"train.user_ffn": 0})


def test_spec_of_an_older_checkpoint_loads_when_its_removed_options_were_neutral():
    from tasks.errors import RegistryError

    saved = {**spec().to_dict(), "interest_routing": "attention", "interest_keys": "state",
             "interest_scale": False, "item_bias": False,
             # training-only options: the network scores alike whatever they were
             "id_dropout": 0.1, "training_scores": "routed"}
    assert ModelSpec.from_dict(saved) == spec()
    with pytest.raises(RegistryError, match="interest_routing='cluster'.*retrain"):
        ModelSpec.from_dict({**saved, "interest_routing": "cluster"})
    with pytest.raises(RegistryError, match="item_bias=True"):
        ModelSpec.from_dict({**saved, "item_bias": True})
    with pytest.raises(RegistryError, match="unknown field 'experts'"):
        ModelSpec.from_dict({**saved, "experts": 8})


@pytest.mark.parametrize("setting", ["interest_routing", "interest_keys", "interest_scale", "item_bias",
                                     "long_term_loss", "training_scores", "id_dropout", "mlm_epochs", "mlm_lr",
                                     "schedule", "lr_decay_share"])
def test_removed_settings_are_refused_by_name(setting):
    from tasks.config import load_config
    from tasks.errors import ConfigError

    with pytest.raises(ConfigError, match=f"unknown setting 'train.{setting}'"):
        load_config({f"train.{setting}": "1"})


def test_a_step_that_refreshes_no_text_vectors_is_refused():
    from tasks.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.lm_items_per_step must be at least 1.*lm_trainable_layers=0"):
        load_config({"train.lm_items_per_step": 0})
    assert load_config({"train.lm_items_per_step": 1}).train.lm_items_per_step == 1
