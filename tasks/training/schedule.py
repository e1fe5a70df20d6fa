"""The learning-rate schedule, the wall-clock plan and the weight average (EMA) of a training run."""

from __future__ import annotations


def plateau_scheduler(optimizer, patience: int, floor: float):
    """Halve every group's rate after `patience` epochs without a better validation NDCG@10,
    never below `floor` of the group's start rate (train.lr_patience, train.lr_floor)."""
    import torch

    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=patience,
        min_lr=[group["lr"] * floor for group in optimizer.param_groups])


def planned_epochs(cap: int, epochs_done: int, elapsed: float, budget: float | None) -> int:
    """Epochs the run will have when it ends: the cap, or fewer when a wall-clock budget (seconds)
    leaves no room for as many at the pace so far (validation included). Never below epochs_done:
    equal means stop now."""
    if budget is None or epochs_done == 0:
        return cap
    per_epoch = elapsed / epochs_done
    fit = epochs_done + int(max(0.0, budget - elapsed) // per_epoch)
    return max(epochs_done, min(cap, fit))


def ema_decay(decay: float, updates: int, warmup: bool) -> float:
    """The EMA decay for the update after `updates` earlier ones. With warm-up (TensorFlow's
    ExponentialMovingAverage with num_updates): min(decay, (1 + n) / (10 + n)), so the average
    spans about the last ~11 % of the steps taken (n / 9) until that reaches the full horizon
    1 / (1 - decay): early on it follows the fast-improving weights instead of lagging them."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def ema_multi_avg_fn(decay: float, warmup: bool):
    """`multi_avg_fn` for torch's AveragedModel: without warm-up torch's own EMA update; with it
    the same foreach lerp with the decay of `ema_decay`. AveragedModel copies the first weights
    (n = 1) and calls this from its second update on, once per device/dtype group of parameters;
    the count is kept here per group, not read from its `n_averaged` tensor, which on a GPU would
    cost a device sync a step."""
    import torch

    if not warmup:
        return torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    updates: dict[int, int] = {}

    @torch.no_grad()
    def update(averaged: list, current: list, _n_averaged) -> None:
        group = averaged[0].data_ptr()  # the averaged weights' storage: the same at every update
        n = updates[group] = updates.get(group, 0) + 1
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay(decay, n, warmup=True))
    return update

