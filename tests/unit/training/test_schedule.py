"""The learning-rate plateau, the wall-clock plan and the weight average (tasks.training.schedule)."""

import pytest
import torch

from tasks.training.schedule import ema_decay, ema_multi_avg_fn, planned_epochs


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
