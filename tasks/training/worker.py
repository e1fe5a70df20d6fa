"""Fine-tuning worker: one script, single-process or under `torchrun` (DDP: gloo on CPU, nccl on GPU).

Reads top to bottom: set up DDP from the environment, cache the frozen lower layers of the
language model, train the item and user towers with full softmax over the catalogue,
validate each epoch on NDCG@10, keep the best checkpoint (rank 0 alone writes and logs).
`tasks.training.launcher.launch_training` starts this module under torchrun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from tasks.config import TrainConfig
from tasks.training.launcher import CHECKPOINT
from tasks.training.schedule import ema_multi_avg_fn, planned_epochs, plateau_scheduler
from tasks.training.windows import training_batches, training_windows, window_context

log = logging.getLogger(__name__)

HISTORY = "history.json"  # one record per epoch: loss and validation metrics
SUMMARY = "training.json"


def validate(net, text_cache, sequences, users, max_history, device, batch_size=512):
    """(sum of NDCG@10, sum of HR@10, count) on the validation targets of `users`."""
    import torch

    from tasks.evaluation.metrics import mask_history, rank_targets
    from tasks.model.network import pad_left

    net.eval()
    histories = sequences.histories(2)
    targets = sequences.targets("valid")
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # on the device: nccl reduces GPU tensors only
    with torch.no_grad():
        items = net.item_vectors(text_cache)
        for start in range(0, len(users), batch_size):
            chosen = users[start:start + batch_size]
            batch_hist = [histories[u] for u in chosen]
            scores, *_ = net.score_last(pad_left(batch_hist, max_history).to(device), items, with_attention=False)
            target = torch.as_tensor(targets[chosen], dtype=torch.long, device=device)
            ranks, _ = rank_targets(mask_history(scores.float(), batch_hist, target), target)
            ranks = torch.as_tensor(ranks, dtype=torch.float64, device=device)
            totals += torch.stack([
                torch.where(ranks < 10, 1.0 / torch.log2(ranks + 2), torch.zeros_like(ranks)).sum(),
                (ranks < 10).double().sum(), torch.tensor(float(len(chosen)), dtype=torch.float64, device=device)])
    net.train()
    return totals


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tasks.data.prepare import load_dataset
    from tasks.model.layers import use_bf16
    from tasks.model.network import ModelSpec, PrismRecNet, softmax_cross_entropy
    from tasks.model.text_tower import encode_frozen, load_language_model

    parser = argparse.ArgumentParser(description="PrismRec fine-tuning (run under torchrun)")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = json.loads((args.out / "train_config.json").read_text())
    cfg = TrainConfig(**settings["train"])
    max_history = settings["max_history"]

    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if ddp:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    master = rank == 0
    logging.basicConfig(level=logging.INFO if master else logging.WARNING,
                        format=f"rank{rank} %(message)s", stream=sys.stdout)
    torch.manual_seed(cfg.seed)  # same init on every rank; DDP also broadcasts rank 0's weights
    rng = np.random.default_rng(cfg.seed + rank)

    sequences, items = load_dataset(args.dataset)
    tokenizer, encoder = load_language_model()
    started = time.time()
    bf16 = use_bf16(cfg.precision, device)
    states, masks = encode_frozen(items["description"].tolist(), tokenizer, encoder,
                                  cfg.lm_trainable_layers, cfg.max_text_tokens)
    longest = int(masks.sum(1).max())  # drop all-padding token columns: they cost time and change nothing
    pad_state, pad_mask = torch.zeros(1, longest, states.shape[-1]), torch.ones(1, longest, dtype=masks.dtype)
    states = torch.cat([pad_state, states[:, :longest]]).to(device)  # row 0 = padding item
    masks = torch.cat([pad_mask, masks[:, :longest]]).to(device)
    log.info("cached frozen MiniLM states for %d items (%d tokens) in %.1fs",
             sequences.n_items, longest, time.time() - started)

    spec = ModelSpec.from_config(cfg, sequences.n_items, max_history)
    net = PrismRecNet(spec, encoder).to(device)
    del encoder
    model = DistributedDataParallel(net) if ddp else net  # the network has no buffers to sync
    lm_params = [p for p in net.text_tower.parameters()] if net.text_tower is not None else []
    lm_ids = {id(p) for p in lm_params}
    other = [p for p in net.parameters() if id(p) not in lm_ids]
    optimizer = torch.optim.AdamW([{"params": other, "lr": cfg.lr},
                                   {"params": lm_params, "lr": cfg.lm_lr}], weight_decay=cfg.weight_decay)

    # Halve both learning rates when validation NDCG@10 stalls (early stopping ends the run).
    plateau = plateau_scheduler(optimizer, cfg.lr_patience or 0, cfg.lr_floor)
    budget = 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    planned = cfg.epochs

    def refresh_all(module) -> torch.Tensor:
        with torch.no_grad():
            module.eval()
            vectors = torch.cat([module.text_tower(states[i:i + 512], masks[i:i + 512])
                                 for i in range(0, len(states), 512)]) if module.text_tower else None
            module.train()
        return vectors

    text_cache = refresh_all(net)
    histories = sequences.histories(2)
    windows = training_windows(histories, range(sequences.n_users), max_history, cfg.all_positions,
                               window_context(cfg.window_overlap, max_history))
    shard = np.array_split(np.arange(sequences.n_users), world)[rank]
    steps_per_epoch = full_steps = math.ceil(len(windows) / world / cfg.batch_size)  # full: before any cap
    log.info("%d training windows (%d targets), %d steps per epoch, %s matmuls", len(windows),
             sum(fresh for _, fresh in windows), steps_per_epoch, "bf16" if bf16 else "fp32")
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    sampled = 0 < cfg.negatives < sequences.n_items
    # Polyak averaging: `evaluated` is what validation, early stopping and the checkpoint see.
    ema, evaluated = None, net
    if cfg.ema_epochs:
        decay = max(0.0, 1.0 - 1.0 / (cfg.ema_epochs * steps_per_epoch))
        ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(decay, cfg.ema_warmup))
        evaluated = ema.module
        log.info("weights averaged over ~%.1f epochs (EMA decay %.5f per step%s)", cfg.ema_epochs, decay,
                 ", warmed up over the first steps" if cfg.ema_warmup else "")
    log.info("loss: softmax over %s", f"{cfg.negatives} sampled negatives" if sampled else "the whole catalogue")
    history, best, stale, stopped_by = [], -1.0, 0, "epochs"
    train_started = time.time()
    for epoch in range(1, cfg.epochs + 1):
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(windows))
        mine = [windows[i] for i in np.array_split(order, world)[rank][: steps_per_epoch * cfg.batch_size]]
        epoch_loss, epoch_overlap, epoch_started = 0.0, 0.0, time.time()
        epoch_wins = torch.zeros(cfg.n_interests, dtype=torch.long, device=device)
        for step, (inputs, targets) in enumerate(training_batches(mine, cfg.batch_size, max_history), 1):
            inputs, targets = inputs.to(device), targets.to(device)
            refresh = torch.unique(targets[targets > 0])
            if len(refresh) > cfg.lm_items_per_step:
                refresh = refresh[torch.as_tensor(rng.permutation(len(refresh))[: cfg.lm_items_per_step], device=device)]
            # bf16 autocast where the hardware does bf16 natively (the matmuls dominate).
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                keep = targets > 0
                negatives = (torch.randint(1, sequences.n_items + 1, (cfg.negatives,), device=device)
                             if sampled else None)
                logits, fresh, overlap, wins = model(
                    inputs, keep, text_cache, refresh, states[refresh], masks[refresh],
                    targets=targets, negatives=negatives)
            # Sampled softmax puts each position's target in column 0.
            labels = torch.zeros_like(targets[keep]) if sampled else targets[keep]
            loss = softmax_cross_entropy(logits, labels)
            epoch_loss, epoch_overlap = epoch_loss + loss.item(), epoch_overlap + overlap.mean().item()
            epoch_wins += wins
            if cfg.interest_diversity:
                # Only pairs that point the same way are penalised: orthogonal is apart enough, and
                # a plain mean would reward pointing away from each other.
                loss = loss + cfg.interest_diversity * overlap.clamp(min=0).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(net)
            text_cache = text_cache.index_put((refresh,), fresh.detach().to(text_cache.dtype))
            if master and (step % 10 == 0 or step == steps_per_epoch):
                done = (epoch - 1) * steps_per_epoch + step
                rate = done / (time.time() - train_started)
                remaining = planned * steps_per_epoch - done  # an upper bound: early stopping may end sooner
                log.info("epoch %d/%d step %d/%d loss %.4f (%.2f steps/s, ETA %.0fs)", epoch, planned, step,
                         steps_per_epoch, epoch_loss / step, rate, remaining / max(rate, 1e-9))
        steps_seconds = time.time() - epoch_started
        text_cache = refresh_all(net)
        evaluated_cache = refresh_all(evaluated) if ema is not None else text_cache
        totals = validate(evaluated, evaluated_cache, sequences, shard, max_history, device)
        live_totals = validate(net, text_cache, sequences, shard, max_history, device) if ema is not None else None
        if ddp:
            for reduced in (totals, live_totals):
                if reduced is not None:
                    dist.all_reduce(reduced)
        # With averaging, the better of the averaged and the live weights on validation is this
        # epoch's model: the average lags while the model still improves fast (the first epochs,
        # or all of a short budget), and leads once the live weights wander around a plateau.
        chosen, chosen_totals, chosen_cache, weights = evaluated, totals, evaluated_cache, "averaged"
        if ema is None:
            weights = "live"
        elif (live_totals[0] > totals[0]).item():
            chosen, chosen_totals, chosen_cache, weights = net, live_totals, text_cache, "live"
        valid_ndcg, valid_hr = (chosen_totals[0] / chosen_totals[2]).item(), (chosen_totals[1] / chosen_totals[2]).item()
        epoch_seconds = time.time() - epoch_started
        record = {"epoch": epoch, "train_loss": epoch_loss / max(steps_per_epoch, 1), "valid_ndcg@10": valid_ndcg,
                  "interest_cosine": epoch_overlap / max(steps_per_epoch, 1), "lr": optimizer.param_groups[0]["lr"],
                  "valid_hr@10": valid_hr, "seconds": epoch_seconds, "weights": weights,
                  # the training steps alone (the rest: refreshing the text vectors and validating)
                  "steps_per_second": steps_per_epoch / max(steps_seconds, 1e-9),
                  "validation_seconds": epoch_seconds - steps_seconds}
        # Which interest scores each training target highest, as shares of this epoch's targets:
        # an interest near 0 has stopped winning items, so the main loss no longer trains it.
        won = (epoch_wins.float() / epoch_wins.sum().clamp(min=1)).tolist()
        record |= {f"targets_won_interest_{k}": share for k, share in enumerate(won)}
        if ema is not None:  # both candidates, to see what the averaging adds
            record["valid_ndcg@10_averaged"] = (totals[0] / totals[2]).item()
            record["valid_ndcg@10_live"] = (live_totals[0] / live_totals[2]).item()
        history.append(record)
        if cfg.lr_patience is not None:
            plateau.step(valid_ndcg)
        improved = valid_ndcg > best
        if improved:
            best, stale = valid_ndcg, 0
            if master:
                torch.save({"spec": spec.to_dict(), "train_config": dataclasses.asdict(cfg), "epoch": epoch,
                            "state_dict": chosen.state_dict(), "item_text_vectors": chosen_cache.cpu(),
                            "item_ids": sequences.item_ids, "valid_ndcg@10": valid_ndcg, "weights": weights},
                           args.out / CHECKPOINT)
        else:
            stale += 1
        if master:
            live = (f" ({weights}; averaged {record['valid_ndcg@10_averaged']:.4f}, live {record['valid_ndcg@10_live']:.4f})"
                    if ema is not None else "")
            log.info("epoch %d: loss %.4f, interest cosine %.3f, targets won by interest %s: %s, valid NDCG@10 %.4f%s, "
                     "HR@10 %.4f%s (%.1fs, total %.0fs)",
                     epoch, record["train_loss"], record["interest_cosine"], f"0-{len(won) - 1}",
                     " / ".join(f"{share:.2f}" for share in won), valid_ndcg, live, valid_hr,
                     " (best, saved)" if improved else "",
                     record["seconds"], time.time() - train_started)
        if stale >= cfg.patience:
            if master:
                log.info("early stop: no improvement for %d epochs", stale)
            stopped_by = "early stopping"
            break
        # Rank 0's clock decides for every rank (DDP needs the same steps and rates everywhere);
        # nccl reduces GPU tensors only.
        elapsed = time.time() - train_started
        plan = torch.tensor([float(planned_epochs(cfg.epochs, epoch, elapsed, budget))], device=device)
        if ddp:
            dist.broadcast(plan, 0)
        planned = int(plan.item())
        if planned <= epoch < cfg.epochs:
            if master:
                log.info("time budget of %s minutes: another epoch would overrun it, stopping after epoch %d",
                         cfg.max_minutes, epoch)
            stopped_by = "time budget"
            break
    if master:
        popularity = np.bincount(np.concatenate(histories), minlength=sequences.n_items + 1)[1:]
        items.assign(train_interactions=popularity)[["idx", "item_id", "title", "genres", "train_interactions"]] \
            .to_parquet(args.out / "items.parquet", index=False)
        (args.out / HISTORY).write_text(json.dumps(history, indent=2))
        (args.out / SUMMARY).write_text(json.dumps({"best_valid_ndcg@10": best, "epochs_run": len(history),
                                                    "best_epoch": max(history, key=lambda r: r["valid_ndcg@10"])["epoch"],
                                                    "best_weights": max(history, key=lambda r: r["valid_ndcg@10"])["weights"],
                                                    "stopped_by": stopped_by,
                                                    "train_seconds": time.time() - started,
                                                    "world_size": world, "full_steps_per_epoch": full_steps},
                                                   indent=2))
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
