"""New items: catalogue titles outside the training universe join the trained model, placed by their text.

Training learns on the 5-core items (docs/protocol.md). A title added to the catalogue yesterday, or
one with too few ratings for the filter, is still an item users should be offered: after training,
its description goes through the trained item tower (the frozen MiniLM layers, then the fine-tuned
top layers and the projection of the chosen checkpoint) and its vector is appended to the model,
with no id part and zero training interactions. Scoring then treats it like any item the model
never saw in training (tasks.model.recommender: text alone), and publishing flags it as new.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.data.prepare import load_new_items
from tasks.layout import ModelFiles

log = logging.getLogger(__name__)

MODEL_ITEM_COLUMNS = ["idx", "item_id", "title", "genres", "train_interactions"]


def add_new_items(dataset_dir: Path, model_dir: Path, text_state_cache: Path | None = None) -> int:
    """Append the dataset's new items to the model in `model_dir` (checkpoint and item table);
    returns how many were added. Idempotent: items the model already holds are skipped."""
    from tasks.model.network import ModelSpec, PrismRecNet
    from tasks.model.text_tower import load_language_model
    from tasks.training.text_cache import cache_text_states, text_vectors

    files = ModelFiles(Path(model_dir))
    items = pd.read_parquet(files.items).sort_values("idx").reset_index(drop=True)
    new = load_new_items(dataset_dir)
    new = new[~new["item_id"].isin(items["item_id"])].reset_index(drop=True)
    if new.empty:
        return 0
    checkpoint = torch.load(files.checkpoint, map_location="cpu", weights_only=False)
    spec = ModelSpec.from_dict(checkpoint["spec"])
    tokenizer, encoder = load_language_model()
    net = PrismRecNet(spec, encoder)
    net.load_state_dict(checkpoint["state_dict"])
    states = cache_text_states(new["description"].astype(str).tolist(), tokenizer, encoder,
                               spec.lm_trainable_layers, spec.max_text_tokens, torch.device("cpu"),
                               text_state_cache)
    vectors = text_vectors(net, states)[1:]  # row 0 is the padding item
    cached = checkpoint["item_text_vectors"]
    checkpoint["item_text_vectors"] = torch.cat([cached, vectors.to(cached.dtype)])
    first = int(items["idx"].max()) + 1
    rows = new.assign(idx=np.arange(first, first + len(new)), train_interactions=0)[MODEL_ITEM_COLUMNS]
    checkpoint["item_ids"] = np.concatenate([np.asarray(checkpoint["item_ids"]), rows["item_id"].to_numpy()])
    _replace(files.checkpoint, lambda path: torch.save(checkpoint, path))
    _replace(files.items, lambda path: pd.concat([items[MODEL_ITEM_COLUMNS], rows], ignore_index=True)
             .to_parquet(path, index=False))
    log.info("added %d new items to the model, placed by their text (%d had a few interactions, "
             "too few for the 5-core filter)", len(rows), int((new["interactions"] > 0).sum()))
    return len(rows)


def _replace(path: Path, write) -> None:
    """Write beside `path`, then move over it: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    partial.replace(path)
