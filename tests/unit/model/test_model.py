"""The user tower and the training windows, on small synthetic inputs (no language model needed)."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from tasks.model.interests import InterestExtractor
from tasks.model.layers import use_bf16
from tasks.model.network import (
    BestInterestScore,
    ModelSpec,
    PrismRecNet,
    pad_left,
    softmax_cross_entropy,
)
from tasks.training.schedule import cosine_factor, ema_decay, ema_multi_avg_fn, planned_epochs
from tasks.training.windows import training_batches, training_windows, window_context


def spec(k: int = 3, length: int = 6) -> ModelSpec:
    return ModelSpec(n_items=20, max_history=length, dim=16, n_interests=k, user_layers=2, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True)


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


def test_cosine_anneals_from_the_start_rate_to_the_floor():
    assert cosine_factor(0, 100, 0.01) == pytest.approx(1.0)
    assert cosine_factor(50, 100, 0.01) == pytest.approx(0.505)
    assert cosine_factor(100, 100, 0.01) == pytest.approx(0.01)
    assert cosine_factor(250, 100, 0.01) == pytest.approx(0.01)  # past the plan: stays at the floor
    factors = [cosine_factor(s, 100, 0.0) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(factors))


def test_cosine_over_the_last_share_holds_the_start_rate_until_then():
    assert cosine_factor(0, 100, 0.01, share=0.25) == pytest.approx(1.0)
    assert cosine_factor(75, 100, 0.01, share=0.25) == pytest.approx(1.0)  # the anneal starts here
    assert cosine_factor(87.5, 100, 0.01, share=0.25) == pytest.approx(0.505)  # halfway down the tail
    assert cosine_factor(100, 100, 0.01, share=0.25) == pytest.approx(0.01)
    factors = [cosine_factor(s, 100, 0.0, share=0.3) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(factors))
    assert factors[:70] == [1.0] * 70


def test_decay_share_is_checked():
    from tasks.config import load_config
    from tasks.errors import ConfigError

    assert load_config({"train.schedule": "cosine", "train.lr_decay_share": 0.3}).train.lr_decay_share == 0.3
    with pytest.raises(ConfigError, match=r"train.lr_decay_share must be in \(0, 1\], got 0.0"):
        load_config({"train.schedule": "cosine", "train.lr_decay_share": 0.0})
    # ignored by the plateau schedule, so refused there rather than silently dropped
    with pytest.raises(ConfigError, match="shapes the cosine schedule only: add train.schedule=cosine"):
        load_config({"train.lr_decay_share": 0.3})


def test_plateau_halves_both_rates_down_to_the_floor():
    from tasks.training.schedule import plateau_scheduler

    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": [net.weight], "lr": 2e-3}, {"params": [net.bias], "lr": 5e-5}])
    plateau = plateau_scheduler(optimizer, patience=1, floor=0.1)
    seen = []
    for metric in [0.10, 0.20, 0.20, 0.20] + [0.15] * 12:  # better twice, then never again
        plateau.step(metric)
        seen.append([group["lr"] for group in optimizer.param_groups])
    assert seen[2] == [2e-3, 5e-5]  # one stalled epoch is within patience
    assert seen[3] == pytest.approx([1e-3, 2.5e-5])  # the second halves both groups
    assert seen[-1] == pytest.approx([2e-4, 5e-6])  # and they stop at lr_floor of their start


def test_planned_epochs_fit_the_budget():
    assert planned_epochs(40, 0, 0.0, 600.0) == 40  # nothing timed yet: the cap
    assert planned_epochs(40, 3, 300.0, None) == 40  # no budget: the cap
    assert planned_epochs(40, 2, 200.0, 1000.0) == 10  # 100 s an epoch, 800 s left: 8 more
    assert planned_epochs(6, 2, 200.0, 1000.0) == 6  # never past the cap
    assert planned_epochs(40, 5, 520.0, 600.0) == 5  # another epoch would overrun: stop at 5
    assert planned_epochs(40, 1, 900.0, 600.0) == 1  # the first epoch alone overran


def test_ema_warmup_follows_the_recent_steps_then_reaches_the_full_horizon():
    assert ema_decay(0.999, 0, warmup=False) == ema_decay(0.999, 10**6, warmup=False) == 0.999
    assert ema_decay(0.999, 0, warmup=True) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay(0.999, 90, warmup=True) == pytest.approx(0.91)  # ~ the last 11 steps
    assert ema_decay(0.999, 10**6, warmup=True) == 0.999  # capped at the configured horizon
    # Through torch's AveragedModel: weights that step 0, 1, 2, ... are averaged with these decays,
    # in each of its parameter groups (it calls the update once per device and dtype).
    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False).double())
    for warmup in (False, True):
        ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(0.99, warmup))
        expected = None
        for step in range(200):
            with torch.no_grad():
                for layer in net:
                    layer.weight.fill_(float(step))
            ema.update_parameters(net)
            d = ema_decay(0.99, step, warmup)  # AveragedModel copies the first and counts it as one
            expected = float(step) if expected is None else d * expected + (1 - d) * step
        averaged = [layer.weight.item() for layer in ema.module]
        assert averaged == [pytest.approx(expected, rel=1e-5)] * 2
        lag = 199 - averaged[0]
        # Full horizon: lags ~1 / (1 - 0.99) = 100 steps behind (less, from the start); warmed
        # up: about 200 / 9 ~ 22 steps behind.
        assert (lag > 80) if not warmup else (15 < lag < 30)


def test_bf16_setting_is_respected():
    assert use_bf16("bf16", torch.device("cpu")) and not use_bf16("fp32", torch.device("cpu"))


@pytest.mark.parametrize("k,routing,keys", [(1, "attention", "state"), (4, "attention", "state"),
                                            (4, "cluster", "state"), (4, "attention", "item")])
def test_interests_see_only_the_past(k, routing, keys):
    torch.manual_seed(0)
    extractor = InterestExtractor(16, k, 6, 2, 2, 0.0, routing, keys).eval()
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
    logits, long_term, fresh, overlap, wins = net(histories, keep, cache, refresh, None, None, long_term=True)
    assert logits.shape == (7, 21) and long_term.shape == (7, 21) and fresh.shape == (2, 384)
    assert wins is None  # no targets given
    assert (long_term <= logits + 1e-5).all()  # the best of all interests is at least the best long-term one
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


def test_item_bias_offsets_an_item_alike_under_every_interest():
    torch.manual_seed(0)
    plain = PrismRecNet(spec(k=3)).eval()
    biased = PrismRecNet(dataclasses.replace(spec(k=3), item_bias=True)).eval()
    biased.load_state_dict({**plain.state_dict(), "item_bias": torch.zeros(21)})
    with torch.no_grad():
        biased.item_bias[7] = 2.5
    cache, histories = torch.randn(21, 384), pad_left([np.array([1, 2, 3]), np.array([4, 5])], 6)
    keep = histories > 0
    targets = torch.where(keep, 9, 0)
    full, *_ = plain(histories, keep, cache, torch.tensor([1]), None, None, targets=targets)
    full_biased, *_ = biased(histories, keep, cache, torch.tensor([1]), None, None, targets=targets)
    assert torch.allclose(full_biased - full, biased.item_bias.detach().expand_as(full))
    negatives = torch.tensor([7, 8])  # sampled softmax: target column first, then the negatives
    sampled, *_ = plain(histories, keep, cache, torch.tensor([1]), None, None, targets=targets, negatives=negatives)
    sampled_biased, *_ = biased(histories, keep, cache, torch.tensor([1]), None, None, targets=targets,
                                negatives=negatives)
    assert torch.allclose(sampled_biased - sampled, torch.tensor([0.0, 2.5, 0.0]).expand_as(sampled))
    items = plain.item_vectors(cache)
    per_interest, *_ = plain.interest_scores(histories, items)
    per_interest_biased, *_ = biased.interest_scores(histories, items)
    assert torch.allclose((per_interest_biased - per_interest)[..., 7], torch.full((2, 3), 2.5))
    assert torch.allclose(per_interest_biased[..., :7], per_interest[..., :7])


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


@pytest.mark.parametrize("k,routing,keys", [(1, "attention", "state"), (4, "attention", "state"),
                                            (4, "cluster", "state"), (4, "attention", "item")])
def test_last_only_equals_the_last_position_of_the_full_pass(k, routing, keys):
    torch.manual_seed(0)
    extractor = InterestExtractor(16, k, 6, 2, 2, 0.0, routing, keys).eval()
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


def test_window_overlap_outside_its_range_is_a_clear_config_error():
    from tasks.config import load_config
    from tasks.errors import ConfigError

    assert load_config({"train.window_overlap": 0.5}).train.window_overlap == 0.5
    with pytest.raises(ConfigError, match=r"train.window_overlap must be in \[0, 1\), got 1.0"):
        load_config({"train.window_overlap": 1.0})


def test_routed_training_scores_the_catalogue_under_the_interest_nearest_the_target():
    torch.manual_seed(0)
    best = PrismRecNet(spec(k=3)).eval()
    routed = PrismRecNet(dataclasses.replace(spec(k=3), training_scores="routed")).eval()
    routed.load_state_dict(best.state_dict())
    histories = pad_left([np.array([1, 2, 3, 4, 5]), np.array([6, 7])], 6)
    targets = pad_left([np.array([2, 3, 4, 5, 9]), np.array([7, 11])], 6)
    keep, cache, refresh = targets > 0, torch.randn(21, 384), torch.tensor([1])
    logits, *_ = routed(histories, keep, cache, refresh, None, None, targets=targets)
    best_logits, *_ = best(histories, keep, cache, refresh, None, None, targets=targets)
    items = best.item_vectors(cache)
    interests, _ = best.interests(histories, items, with_attention=False)
    per_interest = best.match(interests[keep], items)  # [P, K, N+1]
    wanted = targets[keep]
    nearest = per_interest[torch.arange(len(wanted)), :, wanted].argmax(1)
    assert torch.allclose(logits, per_interest[torch.arange(len(wanted)), nearest], atol=1e-5)
    # Each row is one interest's scores: never above the best-of-K ones, equal at the target.
    assert (logits <= best_logits + 1e-5).all()
    assert torch.allclose(logits.gather(1, wanted[:, None]), best_logits.gather(1, wanted[:, None]), atol=1e-5)
    assert (logits < best_logits - 1e-3).any()  # elsewhere another interest often wins
    negatives = torch.tensor([9, 12, 3, 20])  # sampled softmax routes the same way
    sampled, *_ = routed(histories, keep, cache, refresh, None, None, targets=targets, negatives=negatives)
    hit = negatives[None] == wanted[:, None]
    assert torch.allclose(sampled[:, 0], logits.gather(1, wanted[:, None])[:, 0], atol=1e-5)
    assert torch.allclose(sampled[:, 1:][~hit], logits[:, negatives][~hit], atol=1e-5)
    # Only the chosen interests get a gradient through the logits.
    routed.train()
    logits, *_ = routed(histories, keep, cache, refresh, None, None, targets=targets)
    softmax_cross_entropy(logits, wanted).backward()
    assert all(p.grad is not None for p in routed.text_projection.parameters())


def test_routed_training_scores_are_a_clear_config_choice():
    from tasks.config import load_config
    from tasks.errors import ConfigError

    assert load_config({"train.training_scores": "routed"}).train.training_scores == "routed"
    with pytest.raises(ConfigError, match="train.training_scores must be best or routed, got 'nearest'"):
        load_config({"train.training_scores": "nearest"})
