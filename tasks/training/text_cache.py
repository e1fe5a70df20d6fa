"""The item texts as training feeds them to the text tower.

The frozen lower layers of MiniLM run once per item, before training; their hidden states are
kept on the training device, and each step runs only the fine-tuned top layers, only for the
items it refreshes. The pooled vectors of every item are recomputed at each epoch's end.

The frozen states depend only on the texts, the model's weights, how many layers are frozen and
the token cap, so they are kept on disk (`<PRISMREC_HOME>/cache/text-states/`, keyed by a hash of
all four): a weekly retraining on an unchanged catalogue reads them instead of running the encoder.
The training items and the new items (placed by their text after training) are two entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.model.text_tower import encode_frozen, model_identity, pretrained_path

log = logging.getLogger(__name__)

BATCH = 512  # items per forward pass when every item's vector is recomputed
KEEP = 8  # entries kept on disk, the most recently used: a training stores two (its items, its new items)


@dataclass(frozen=True)
class TextStates:
    """Frozen hidden states [N+1, T, 384] and token masks [N+1, T] of every item's text; row 0 is
    the padding item, T the longest text's tokens (1 with no layer to fine-tune: pooled vectors,
    tasks.model.text_tower.encode_frozen)."""

    states: torch.Tensor
    masks: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.states.shape[1]


def cache_text_states(texts: list[str], tokenizer, encoder, n_trainable: int, max_tokens: int,
                      device: torch.device, cache_dir: Path | None = None) -> TextStates:
    """Run the encoder's frozen layers over `texts` (item 1..N) once, on the CPU, or read what an
    earlier run stored in `cache_dir` for the same inputs; keep the states on `device`."""
    states, masks = frozen_states(texts, tokenizer, encoder, n_trainable, max_tokens, cache_dir)
    return TextStates(states=states.to(device), masks=masks.to(device))


def frozen_states(texts: list[str], tokenizer, encoder, n_trainable: int, max_tokens: int,
                  cache_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen layers' states [N+1, T, 384] and masks [N+1, T] of `texts` (row 0: the padding
    item), T the longest text's tokens. A stored entry is mapped from its file, not read into memory."""
    path = cache_dir / f"{cache_key(texts, n_trainable, max_tokens)}.pt" if cache_dir else None
    if path is not None and path.exists():
        try:
            stored = torch.load(path, weights_only=True, mmap=True)
            states, masks = stored["states"], stored["masks"]
        except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as error:  # torn or foreign: compute afresh
            log.warning("ignoring the unreadable text-state cache %s (%s)", path, error)
        else:
            log.info("frozen MiniLM states read from %s", path)
            try:
                os.utime(path)  # most recently used: kept longest
            except OSError:  # a cache shared read-only: read, not kept fresh
                pass
            return states, masks
    states, masks = encode_frozen(texts, tokenizer, encoder, n_trainable, max_tokens, padding_row=True)
    if path is not None:
        try:
            store(path, states, masks)
        except OSError as error:  # a cache is a saving, never a reason to fail a training
            log.warning("could not keep the frozen MiniLM states in %s (%s): training goes on without the cache; "
                        "point paths.cache at a writable folder to keep them for the next training", cache_dir, error)
    return states, masks


def cache_key(texts: list[str], n_trainable: int, max_tokens: int) -> str:
    """A hash of everything the frozen states depend on: the texts, the weights, the frozen layers' count, the token cap."""
    weights = sorted((f.name, f.stat().st_size) for f in pretrained_path().iterdir() if f.is_file())
    identity = {"model": model_identity(), "files": weights, "torch": torch.__version__,
                "trainable_layers": n_trainable, "max_tokens": max_tokens, "layout": "padding row, longest text"}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def store(path: Path, states: torch.Tensor, masks: torch.Tensor) -> None:
    """Write atomically (ranks of one run may race: both write the same bytes), then keep the KEEP newest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        torch.save({"states": states, "masks": masks}, partial)
        os.replace(partial, path)
    except OSError:  # a full disk, say: leave no half-written file behind
        partial.unlink(missing_ok=True)
        raise
    for old in sorted(path.parent.glob("*.pt"), key=lambda f: f.stat().st_mtime, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)


def text_vectors(net, text: TextStates) -> torch.Tensor:
    """Every item's pooled text vector [N+1, 384] through `net`'s text tower, without gradient (the
    network goes back to training mode after)."""
    with torch.no_grad():
        net.eval()
        vectors = torch.cat([net.text_tower(text.states[i:i + BATCH], text.masks[i:i + BATCH])
                             for i in range(0, len(text.states), BATCH)])
        net.train()
    return vectors
