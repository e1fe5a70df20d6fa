"""Training windows: a user's history cut into overlapping inputs, each target trained once."""

from __future__ import annotations


def training_windows(histories, users, max_history: int, all_positions: bool, context: int = 0) -> list:
    """Training windows of at most max_history + 1 items, as (window, fresh) pairs: inputs are a
    window's items, targets the next item at each position (SASRec style), and only the last
    `fresh` targets are trained on. With all_positions every interaction is a target once: a long
    history is cut, from its end, into windows that overlap by `context` + 1 items, and a target
    is trained in the earliest window that holds it, so each one sees at least `context` earlier
    items (or all of them, near the start of a history). context 0: windows overlap by one item."""
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
            windows.append((window, len(window) - 1 if first else stride))
            if first:
                break
            end -= stride
    return windows


def window_context(overlap: float, max_history: int) -> int:
    """Earlier items every training target sees at least: a share of the window, below its length."""
    return min(max_history - 1, round(overlap * max_history))


def training_batches(windows, batch_size: int, max_history: int, pin: bool = False):
    """(inputs, targets) batches [B, max_history] of `windows`, in order; a target trained in
    another window is 0 (no loss). `pin`: in page-locked memory, so that the copy to a GPU runs
    asynchronously."""
    from tasks.model.network import pad_left

    for start in range(0, len(windows), batch_size):
        chosen = windows[start:start + batch_size]
        targets = pad_left([w[1:] for w, _ in chosen], max_history)
        for row, (_, fresh) in enumerate(chosen):
            targets[row, : max_history - fresh] = 0  # trained in another window (0: no loss)
        inputs = pad_left([w[:-1] for w, _ in chosen], max_history)
        yield (inputs.pin_memory(), targets.pin_memory()) if pin else (inputs, targets)

