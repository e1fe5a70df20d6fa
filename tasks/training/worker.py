"""Fine-tuning worker: one script, single-process or under `torchrun` (DDP: gloo on CPU, nccl on GPU).

Reads top to bottom: set up DDP from the environment, cache the frozen lower layers of the
language model, train the item and user towers (softmax over the catalogue, or over sampled
negatives), validate each epoch on NDCG@10, keep the best checkpoint, stop early or when the
time budget runs out (one process, local rank 0 of node 0, writes and logs), then append the
catalogue's new items, placed by their text (tasks.training.new_items). `tasks.training.launcher.launch_training`
starts this module under torchrun; the model folder's files are `tasks.layout.ModelFiles`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.config import TrainConfig
from tasks.layout import MODEL_FORMAT, ModelFiles
from tasks.training.records import (
    BestSoFar,
    EpochStats,
    epoch_log_line,
    epoch_record,
    run_summary,
    stop_reason,
)
from tasks.training.schedule import planned_epochs

if TYPE_CHECKING:  # the torch-side modules load in main(), not at import
    import numpy as np
    import pandas as pd

    from tasks.data.prepare import Sequences
    from tasks.training.loop import EpochPlan, EpochValidation, Training
    from tasks.training.runtime import Distributed
    from tasks.training.text_cache import TextStates

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch

    from tasks.data.prepare import load_dataset, load_new_items
    from tasks.model.layers import use_bf16
    from tasks.model.network import ModelSpec
    from tasks.model.text_tower import load_language_model
    from tasks.training.loop import build_training, plan_epochs, sampled_softmax
    from tasks.training.runtime import Distributed
    from tasks.training.text_cache import cache_text_states

    parser = argparse.ArgumentParser(description="PrismRec fine-tuning (run under torchrun)")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    files = ModelFiles(args.out)
    settings = json.loads(files.settings.read_text())
    cfg, max_history = TrainConfig(**settings["train"]), settings["max_history"]

    dist = Distributed.from_environment()
    dist.start()
    logging.basicConfig(level=logging.INFO if dist.master else logging.WARNING,
                        format=f"rank{dist.rank} %(message)s", stream=sys.stdout)
    log.info("%d process(es) on %d node(s), this one on %s%s", dist.world, cfg.nnodes, dist.device,
             f" ({dist.backend})" if dist.ddp else "")
    torch.manual_seed(cfg.seed)  # same init on every rank; DDP also broadcasts rank 0's weights
    rng = np.random.default_rng(cfg.seed + dist.rank)

    sequences, items = load_dataset(args.dataset)
    tokenizer, encoder = load_language_model()
    started = time.time()
    bf16 = use_bf16(cfg.precision, dist.device)
    cache_dir = Path(settings["text_state_cache"]) if settings.get("text_state_cache") else None
    text = cache_text_states(items["description"].tolist(), tokenizer, encoder, cfg.lm_trainable_layers,
                             cfg.max_text_tokens, dist.device, cache_dir)
    log.info("frozen MiniLM states for %d items (%d tokens) ready in %.1fs",
             sequences.n_items, text.tokens, time.time() - started)
    # The catalogue's items outside the training universe: placed by their text after training (rank 0
    # alone writes the model). Their states are cached too: a growing catalogue has many of them.
    new_items = load_new_items(args.dataset)
    new_text = (cache_text_states(new_items["description"].astype(str).tolist(), tokenizer, encoder,
                                  cfg.lm_trainable_layers, cfg.max_text_tokens, dist.device, cache_dir)
                if dist.master and len(new_items) else None)

    histories = sequences.histories(2)
    plan = plan_epochs(histories, cfg, max_history, dist.world)
    log.info("%d training windows (%d targets), %d steps per epoch, %s matmuls", len(plan.windows),
             sum(fresh for _, fresh in plan.windows), plan.full_steps, "bf16" if bf16 else "fp32")
    training = build_training(ModelSpec.from_config(cfg, sequences.n_items, max_history), encoder, cfg, dist,
                              plan.steps, bf16)
    del encoder  # the text tower holds the layers it fine-tunes
    log.info("loss: softmax over %s", f"{cfg.negatives} sampled negatives"
             if sampled_softmax(cfg, sequences.n_items) else "the whole catalogue")

    history, best_ndcg, stopped_by = fit(training, text, sequences, plan, max_history, dist, rng, files)
    if dist.master:
        write_outputs(files, items, histories, sequences.n_items, history)
        from tasks.training.new_items import finish_model

        finish_model(files, new_items if new_text is not None else None, new_text, training.net,
                     cfg.new_item_id_penalty)
        summary = run_summary(history, best_ndcg, stopped_by, time.time() - started, dist.world, plan.full_steps)
        files.summary.write_text(json.dumps(summary, indent=2))
    dist.stop()


def fit(training: Training, text: TextStates, sequences: Sequences, plan: EpochPlan, max_history: int,
        dist: Distributed, rng: np.random.Generator, files: ModelFiles) -> tuple[list[dict], float, str]:
    """The epochs: train, validate, keep the best checkpoint, stop early or on the time budget.
    Returns the epochs' records, the best validation NDCG@10 and why the run stopped."""
    import numpy as np

    from tasks.training.loop import progress_logger, train_epoch, validate_epoch, validation_users
    from tasks.training.runtime import peak_gpu_mib, peak_rss_mib
    from tasks.training.text_cache import text_vectors
    from tasks.training.windows import training_batches

    cfg = training.cfg
    users = validation_users(sequences.n_users, cfg.validation_users, cfg.seed)
    if len(users) < sequences.n_users:
        log.info("validating each epoch on %d of %d users (train.validation_users)", len(users), sequences.n_users)
    shard = np.array_split(users, dist.world)[dist.rank]  # this rank's validation users
    budget = 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    text_cache = text_vectors(training.net, text)
    history, best, planned, train_started = [], BestSoFar(), cfg.epochs, time.time()
    for epoch in range(1, cfg.epochs + 1):
        batches = training_batches(plan.epoch_windows(epoch, cfg.seed, cfg.batch_size, dist), cfg.batch_size,
                                   max_history, pin=dist.device.type == "cuda")
        report = progress_logger(epoch, planned, plan.steps, train_started) if dist.master else None
        epoch_started, lr = time.time(), training.lr
        stats = across_ranks(train_epoch(training, batches, text_cache, text, plan.steps, rng, report), dist)
        text_cache = text_vectors(training.net, text)
        validation = validate_epoch(training, text_cache, text, sequences, shard, max_history, dist)
        # Every rank's own peak, the largest of them recorded.
        peak, gpu = dist.max(peak_rss_mib()), peak_gpu_mib(dist.device)
        record = epoch_record(epoch, stats, validation.live, validation.averaged, lr, plan.steps,
                              time.time() - epoch_started, peak, None if gpu is None else dist.max(gpu))
        history.append(record)
        if training.plateau is not None:
            training.plateau.step(record["valid_ndcg@10"])
        improved = best.update(record["valid_ndcg@10"])
        if improved and dist.master:
            save_checkpoint(files, training, validation, record, sequences.item_ids)
        if dist.master:  # the history first: the launcher reads it when it sees the epoch's line
            files.history.write_text(json.dumps(history, indent=2))
            log.info("%s", epoch_log_line(record, improved, time.time() - train_started))
        # Rank 0's clock decides for every rank: DDP needs the same steps and rates everywhere.
        planned = int(dist.from_master(planned_epochs(cfg.epochs, epoch, time.time() - train_started, budget)))
        stopped_by = stop_reason(epoch, best.stale, cfg.patience, planned, cfg.epochs)
        if stopped_by == "early stopping":
            log.info("early stop: no improvement for %d epochs", best.stale)
        elif stopped_by == "time budget":
            log.info("time budget of %s minutes: another epoch would overrun it, stopping after epoch %d",
                     cfg.max_minutes, epoch)
        if stopped_by is not None:
            return history, best.ndcg, stopped_by
    return history, best.ndcg, "epochs"


def across_ranks(stats: EpochStats, dist: Distributed) -> EpochStats:
    """The epoch's loss, interest cosine and targets won, averaged over every rank's shard (the same
    number of steps each), so that the history says the same whichever process writes it."""
    mean = dist.mean([stats.loss, stats.interest_cosine, *stats.targets_won])
    return dataclasses.replace(stats, loss=mean[0], interest_cosine=mean[1], targets_won=mean[2:])


def save_checkpoint(files: ModelFiles, training: Training, validation: EpochValidation, record: dict,
                    item_ids: np.ndarray) -> None:
    """The epoch's chosen weights with everything inference needs: spec, item text vectors, item ids."""
    import torch

    module, cache = validation.chosen(training)
    torch.save({"format": MODEL_FORMAT, "spec": training.net.spec.to_dict(),
                "train_config": dataclasses.asdict(training.cfg),
                "epoch": record["epoch"], "state_dict": module.state_dict(), "item_text_vectors": cache.cpu(),
                "item_ids": item_ids, "valid_ndcg@10": record["valid_ndcg@10"], "weights": record["weights"]},
               files.checkpoint)


def write_outputs(files: ModelFiles, items: pd.DataFrame, histories: list[np.ndarray], n_items: int,
                  history: list[dict]) -> None:
    """The item table (with each item's training interactions, for popularity and cold items) and
    the per-epoch history."""
    import numpy as np

    from tasks.training.new_items import MODEL_ITEM_COLUMNS

    popularity = np.bincount(np.concatenate(histories), minlength=n_items + 1)[1:]
    items.assign(train_interactions=popularity, interactions=popularity) \
        .reindex(columns=MODEL_ITEM_COLUMNS).to_parquet(files.items, index=False)
    files.history.write_text(json.dumps(history, indent=2))


if __name__ == "__main__":
    main()
