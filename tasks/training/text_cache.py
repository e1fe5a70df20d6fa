"""The item texts as training feeds them to the text tower.

The frozen lower layers of MiniLM run once per item, before training; their hidden states are
kept on the training device, and each step runs only the fine-tuned top layers, only for the
items it refreshes. The pooled vectors of every item are recomputed at each epoch's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.model.text_tower import encode_frozen

BATCH = 512  # items per forward pass when every item's vector is recomputed


@dataclass(frozen=True)
class TextStates:
    """Frozen hidden states [N+1, T, 384] and token masks [N+1, T] of every item's text; row 0 is
    the padding item, T the longest text's tokens."""

    states: torch.Tensor
    masks: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.states.shape[1]


def cache_text_states(texts: list[str], tokenizer, encoder, n_trainable: int, max_tokens: int,
                      device: torch.device) -> TextStates:
    """Run the encoder's frozen layers over `texts` (item 1..N) once, on the CPU; keep the states
    on `device`."""
    states, masks = encode_frozen(texts, tokenizer, encoder, n_trainable, max_tokens)
    longest = int(masks.sum(1).max())  # drop all-padding token columns: they cost time and change nothing
    pad_state, pad_mask = torch.zeros(1, longest, states.shape[-1]), torch.ones(1, longest, dtype=masks.dtype)
    return TextStates(states=torch.cat([pad_state, states[:, :longest]]).to(device),
                      masks=torch.cat([pad_mask, masks[:, :longest]]).to(device))


def text_vectors(net, text: TextStates) -> torch.Tensor:
    """Every item's pooled text vector [N+1, 384] through `net`'s text tower, without gradient (the
    network goes back to training mode after)."""
    with torch.no_grad():
        net.eval()
        vectors = torch.cat([net.text_tower(text.states[i:i + BATCH], text.masks[i:i + BATCH])
                             for i in range(0, len(text.states), BATCH)])
        net.train()
    return vectors
