"""New items: catalogue titles outside the training universe join the trained model, placed by their text.

Training learns on the 5-core items (docs/protocol.md). A title added to the catalogue yesterday, or
one with too few ratings for the filter, is still an item users should be offered: the training
worker runs its description through the frozen MiniLM layers with the rest of the catalogue, and
after training through the chosen checkpoint's fine-tuned top layers; its pooled text vector is
appended to the model, with no id row and zero training interactions. Scoring then treats it like
any item the model never saw in training (tasks.model.recommender: its text, plus the id row that
`add_id_from_text`'s map, fitted on the trained items, predicts from that text), and publishing
flags it as new. Done inside the worker, which has the language model loaded already.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.layout import ModelFiles
from tasks.training.text_cache import TextStates, text_vectors

log = logging.getLogger(__name__)

# `year` and `interactions` (in the snapshot; a new item's few) feed the new-item head (tasks.model.new_item_head).
MODEL_ITEM_COLUMNS = ["idx", "item_id", "title", "genres", "year", "interactions", "train_interactions"]


def finish_model(files: ModelFiles, new: pd.DataFrame | None, states: TextStates | None, net,
                 id_penalty: float | None) -> None:
    """After training, with one read and one write of the checkpoint: append the `new` items (the dataset's
    new_items, their frozen `states`; None: none) and, given `id_penalty`, fit the text-to-id map."""
    checkpoint = torch.load(files.checkpoint, map_location="cpu", weights_only=False)
    items = pd.read_parquet(files.items).sort_values("idx").reset_index(drop=True)
    appended = append_new_items(checkpoint, items, new, states, net) if new is not None and len(new) else None
    fitted = id_penalty is not None and add_id_from_text(checkpoint, appended if appended is not None else items,
                                                         id_penalty)
    if appended is not None or fitted:
        _replace(files.checkpoint, lambda path: torch.save(checkpoint, path))
    if appended is not None:
        _replace(files.items, lambda path: appended.to_parquet(path, index=False))


def append_new_items(checkpoint: dict, items: pd.DataFrame, new: pd.DataFrame, states: TextStates, net
                     ) -> pd.DataFrame | None:
    """Append `new` items (their frozen `states`) to `checkpoint` (in place), their text vectors from its
    weights (`net` gives the network's shape); returns the model's item table with them, or None when
    the model holds them all already."""
    fresh = ~new["item_id"].isin(items["item_id"]).to_numpy()
    if not fresh.any():
        return None
    chosen = copy.deepcopy(net)
    chosen.load_state_dict(checkpoint["state_dict"])
    rows_of = torch.as_tensor(np.concatenate([[True], fresh]), device=states.states.device)  # row 0: padding
    vectors = text_vectors(chosen, TextStates(states.states[rows_of], states.masks[rows_of]))[1:].cpu()
    cached = checkpoint["item_text_vectors"]
    checkpoint["item_text_vectors"] = torch.cat([cached, vectors.to(cached.dtype)])
    new = new[fresh].reset_index(drop=True)
    first = int(items["idx"].max()) + 1
    rows = new.assign(idx=np.arange(first, first + len(new)), train_interactions=0)[MODEL_ITEM_COLUMNS]
    checkpoint["item_ids"] = np.concatenate([np.asarray(checkpoint["item_ids"]), rows["item_id"].to_numpy()])
    log.info("added %d new items to the model, placed by their text (%d had a few interactions, "
             "too few for the 5-core filter)", len(rows), int((new["interactions"] > 0).sum()))
    return pd.concat([items.reindex(columns=MODEL_ITEM_COLUMNS), rows], ignore_index=True)


def add_id_from_text(checkpoint: dict, items: pd.DataFrame, penalty: float) -> bool:
    """Fit the map from text vectors to id rows on the model's trained items (tasks.model.new_item_ids)
    and keep it in `checkpoint` (`id_from_text`), for the Recommender to give every new item the id row
    its text predicts. False (nothing changed) when the model has no id rows or no trained items."""
    from tasks.model.new_item_ids import fit_id_from_text

    id_rows = checkpoint["state_dict"].get("id_embedding.weight")
    if id_rows is None:
        return False
    trained = items[(items["train_interactions"] > 0) & (items["idx"] < len(id_rows))]["idx"].to_numpy(np.int64)
    if not len(trained):
        return False
    rows = torch.from_numpy(trained.copy())
    checkpoint["id_from_text"] = fit_id_from_text(checkpoint["item_text_vectors"][rows].float(),
                                                  id_rows[rows].float(), penalty)
    log.info("fitted the map from text to id rows on %d trained items (ridge penalty %g): new items get "
             "the id row their text predicts", len(trained), penalty)
    return True


def _replace(path: Path, write) -> None:
    """Write beside `path`, then move over it: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    partial.replace(path)
