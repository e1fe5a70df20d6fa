"""Training windows: a user's history cut into overlapping inputs, each target trained once."""

from __future__ import annotations

import torch


def training_windows(histories, users, max_history: int, all_positions: bool, context: int = 0) -> list:
    """Training windows of at most max_history + 1 items, as (window, fresh, age) triples: inputs are
    a window's items, targets the next item at each position (SASRec style), and only the last
    `fresh` targets are trained on; `age` is how many of the user's interactions come after the
    window's last one (0 for the window that ends the history). With all_positions every interaction
    is a target once: a long history is cut, from its end, into windows that overlap by `context` + 1
    items, and a target is trained in the earliest window that holds it, so each one sees at least
    `context` earlier items (or all of them, near the start of a history). context 0: windows overlap
    by one item."""
    stride = max_history - context
    windows = []
    for u in users:
        history = histories[u]
        end = len(history)
        while end >= 2:
            start = max(0, end - max_history - 1)
            window = history[start:end]
            # The window that reaches back to the start of the history trains all its targets.
            first = start == 0 or not all_positions
            windows.append((window, len(window) - 1 if first else stride, len(history) - end))
            if first:
                break
            end -= stride
    return windows


def window_context(overlap: float, max_history: int) -> int:
    """Earlier items every training target sees at least: a share of the window, below its length."""
    return min(max_history - 1, round(overlap * max_history))


def recency_weights(ages: torch.Tensor, half_life: float | None, floor: float) -> torch.Tensor | None:
    """Loss weights of targets `ages` interactions before the end of their user's history: floor +
    (1 - floor) * 2^(-age / half_life), so the latest targets weigh 1 and the oldest `floor` (None
    without a half-life: every target weighs the same)."""
    if half_life is None:
        return None
    return floor + (1.0 - floor) * torch.exp2(-ages.float() / half_life)


def training_batches(windows, batch_size: int, max_history: int, pin: bool = False,
                     half_life: float | None = None, floor: float = 0.0):
    """(inputs, targets, weights) batches [B, max_history] of `windows`, in order; a target trained in
    another window is 0 (no loss). `weights`: each target's loss weight by its recency
    (recency_weights; None when every target weighs the same). `pin`: in page-locked memory, so that
    the copy to a GPU runs asynchronously."""
    from tasks.model.network import pad_left

    for start in range(0, len(windows), batch_size):
        chosen = windows[start:start + batch_size]
        targets = pad_left([w[1:] for w, _, _ in chosen], max_history)
        for row, (_, fresh, _) in enumerate(chosen):
            targets[row, : max_history - fresh] = 0  # trained in another window (0: no loss)
        inputs = pad_left([w[:-1] for w, _, _ in chosen], max_history)
        # Right-aligned: the last column holds each window's last target.
        ages = torch.tensor([age for _, _, age in chosen])[:, None] + torch.arange(max_history - 1, -1, -1)
        weights = recency_weights(ages, half_life, floor)
        if pin:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
            weights = None if weights is None else weights.pin_memory()
        yield inputs, targets, weights
