"""The parts of the training loop: what trains, one epoch of steps, one epoch's validation.

`tasks.training.worker` strings them together. Each rank runs the same code on its own shard;
DDP averages the gradients, and `Distributed` sums the validation counts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tasks.config import TrainConfig
from tasks.model.network import (
    SCORE_MEMORY_MB,
    ModelSpec,
    PrismRecNet,
    pad_history,
    rows_within,
    softmax_cross_entropy,
)
from tasks.training.records import LIVE, EpochStats, ValidationTotals, choose_weights
from tasks.training.runtime import Distributed
from tasks.training.schedule import ema_multi_avg_fn, plateau_scheduler
from tasks.training.text_cache import TextStates, text_vectors
from tasks.training.windows import training_windows, window_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochPlan:
    """The training windows of every user, and the steps each epoch takes per rank."""

    windows: list
    steps: int  # per epoch, after train.max_steps_per_epoch
    full_steps: int  # per epoch over every window

    def epoch_windows(self, epoch: int, seed: int, batch_size: int, dist: Distributed) -> list:
        """This rank's windows for `epoch`, in training order: a seeded shuffle of all of them, split
        between the ranks, cut to the epoch's steps."""
        order = np.random.default_rng(seed + epoch).permutation(len(self.windows))
        return [self.windows[i] for i in np.array_split(order, dist.world)[dist.rank][: self.steps * batch_size]]


def plan_epochs(histories: list, cfg: TrainConfig, max_history: int, world: int) -> EpochPlan:
    windows = training_windows(histories, range(len(histories)), max_history, cfg.all_positions,
                               window_context(cfg.window_overlap, max_history))
    full_steps = math.ceil(len(windows) / world / cfg.batch_size)
    steps = min(full_steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else full_steps
    return EpochPlan(windows=windows, steps=steps, full_steps=full_steps)


@dataclass
class Training:
    """What trains: the network, its DDP wrapper, the optimizer, the learning-rate plateau (None:
    constant rates) and the weight average (None: off)."""

    cfg: TrainConfig
    net: PrismRecNet
    model: nn.Module  # `net`, or DDP around it: the training forward pass goes through this
    optimizer: torch.optim.Optimizer
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    ema: torch.optim.swa_utils.AveragedModel | None
    device: torch.device
    bf16: bool  # autocast the training steps to bf16

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def build_training(spec: ModelSpec, encoder, cfg: TrainConfig, dist: Distributed, steps_per_epoch: int,
                   bf16: bool) -> Training:
    """The network (its text tower from `encoder`'s top layers), AdamW with a gentler rate for the
    pretrained layers, the plateau schedule and the weight average."""
    net = PrismRecNet(spec, encoder).to(dist.device)
    # The network has no buffers to sync; on a GPU each rank's replica lives on its own device.
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids) if dist.ddp else net
    lm_ids = {id(p) for p in net.text_tower.parameters()}
    other = [p for p in net.parameters() if id(p) not in lm_ids]
    # fused: one kernel a tensor instead of a dozen passes (ML-100K's 53 tensors: 6.7 -> 1.8 ms a step on 2 CPU cores).
    optimizer = torch.optim.AdamW([{"params": other, "lr": cfg.lr},
                                   {"params": list(net.text_tower.parameters()), "lr": cfg.lm_lr}],
                                  weight_decay=cfg.weight_decay, fused=dist.device.type in ("cpu", "cuda"))
    plateau = plateau_scheduler(optimizer, cfg.lr_patience, cfg.lr_floor) if cfg.lr_patience is not None else None
    ema = None
    if cfg.ema_epochs:
        decay = max(0.0, 1.0 - 1.0 / (cfg.ema_epochs * steps_per_epoch))
        ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(decay, cfg.ema_warmup))
        log.info("weights averaged over ~%.1f epochs (EMA decay %.5f per step%s)", cfg.ema_epochs, decay,
                 ", warmed up over the first steps" if cfg.ema_warmup else "")
    return Training(cfg, net, model, optimizer, plateau, ema, dist.device, bf16)


def sampled_softmax(cfg: TrainConfig, n_items: int) -> bool:
    """Whether the loss samples negatives (train.negatives) rather than scoring the whole catalogue."""
    return 0 < cfg.negatives < n_items


def train_epoch(training: Training, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], text_cache: torch.Tensor,
                text: TextStates, steps: int, rng: np.random.Generator,
                report: Callable[[int, float], None] | None = None) -> EpochStats:
    """One epoch of steps over `batches` (inputs, targets), starting from every item's text vectors
    `text_cache`; `report(step, mean loss)` after each step (progress)."""
    started = time.time()
    loss_sum, overlap_sum = 0.0, 0.0
    wins = torch.zeros(training.cfg.n_interests, dtype=torch.long, device=training.device)
    for step, (inputs, targets) in enumerate(batches, 1):
        loss, overlap, step_wins, text_cache = train_step(training, inputs, targets, text_cache, text, rng)
        loss_sum, overlap_sum = loss_sum + loss, overlap_sum + overlap
        wins += step_wins
        if report is not None:
            report(step, loss_sum / step)
    won = (wins.float() / wins.sum().clamp(min=1)).tolist()
    return EpochStats(loss=loss_sum / max(steps, 1), interest_cosine=overlap_sum / max(steps, 1),
                      targets_won=won, seconds=time.time() - started)


def train_step(training: Training, inputs: torch.Tensor, targets: torch.Tensor, text_cache: torch.Tensor,
               text: TextStates, rng: np.random.Generator) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """One optimizer step: (softmax loss, mean interest cosine, targets won per interest, the text
    cache with the refreshed items' new vectors)."""
    cfg, device = training.cfg, training.device
    n_items = training.net.spec.n_items
    sampled = sampled_softmax(cfg, n_items)
    inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)  # pinned on a GPU
    refresh = torch.unique(targets[targets > 0])  # the text tower runs for these items, with gradient
    if len(refresh) > cfg.lm_items_per_step:
        refresh = refresh[torch.as_tensor(rng.permutation(len(refresh))[: cfg.lm_items_per_step], device=device)]
    # bf16 autocast where the hardware does bf16 natively (the matmuls dominate).
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=training.bf16):
        keep = targets > 0
        negatives = torch.randint(1, n_items + 1, (cfg.negatives,), device=device) if sampled else None
        logits, fresh, overlap, wins = training.model(
            inputs, keep, text_cache, refresh, text.states[refresh], text.masks[refresh],
            targets=targets, negatives=negatives)
    # Sampled softmax puts each position's target in column 0.
    labels = torch.zeros_like(targets[keep]) if sampled else targets[keep]
    loss = softmax_cross_entropy(logits, labels)
    loss_value, overlap_value = loss.item(), overlap.mean().item()
    if cfg.interest_diversity:
        # Only pairs that point the same way are penalised: orthogonal is apart enough, and a plain
        # mean would reward pointing away from each other.
        loss = loss + cfg.interest_diversity * overlap.clamp(min=0).mean()
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(training.net.parameters(), 1.0)
    training.optimizer.step()
    if training.ema is not None:
        training.ema.update_parameters(training.net)
    text_cache = text_cache.index_put((refresh,), fresh.detach().to(text_cache.dtype))
    return loss_value, overlap_value, wins, text_cache


def progress_logger(epoch: int, planned: int, steps: int, train_started: float) -> Callable[[int, float], None]:
    """A `report` for train_epoch that logs every 10th step and the last: loss, rate and ETA."""
    def report(step: int, mean_loss: float) -> None:
        if step % 10 and step != steps:
            return
        done = (epoch - 1) * steps + step
        rate = done / (time.time() - train_started)
        remaining = planned * steps - done  # an upper bound: early stopping may end sooner
        log.info("epoch %d/%d step %d/%d loss %.4f (%.2f steps/s, ETA %.0fs)", epoch, planned, step, steps,
                 mean_loss, rate, remaining / max(rate, 1e-9))
    return report


def validation_users(n_users: int, limit: int | None, seed: int) -> np.ndarray:
    """The users each epoch validates on: all, or a sorted random sample of `limit` (train.validation_users)
    drawn from `seed`, so every epoch and every rank sees the same users."""
    if limit is None or limit >= n_users:
        return np.arange(n_users)
    return np.sort(np.random.default_rng(seed).choice(n_users, size=limit, replace=False))


def validate(net: PrismRecNet, text_cache: torch.Tensor, sequences, users, max_history: int, device: torch.device,
             batch_size: int = 512, bf16: bool = False) -> torch.Tensor:
    """(sum of NDCG@10, sum of HR@10, count) on the validation targets of `users`, as a float64
    tensor on `device` (nccl reduces GPU tensors only). At most `batch_size` users a pass, fewer
    where their scores would pass tasks.model.network.SCORE_MEMORY_MB (a large catalogue). `bf16`:
    the user tower in bf16, as the training steps run it (float32 scores; the gate's evaluation and
    publishing resolve train.precision the same way, tasks.model.recommender.Recommender.load)."""
    from tasks.evaluation.metrics import mask_history, rank_targets

    batch_size = rows_within(SCORE_MEMORY_MB, net.spec.n_interests * len(text_cache), batch_size)  # [K, N+1] a user

    net.eval()
    histories = sequences.histories(2)
    targets = sequences.targets("valid")
    # Longest first, so each pass pads only to its own longest history (pad_history); the totals are sums.
    users = np.asarray(users)[np.argsort([-len(histories[u]) for u in users], kind="stable")]
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        items = net.item_vectors(text_cache)
        for start in range(0, len(users), batch_size):
            chosen = users[start:start + batch_size]
            batch_hist = [histories[u] for u in chosen]
            scores, *_ = net.score_last(pad_history(batch_hist, max_history).to(device), items, with_attention=False,
                                        bf16=bf16)
            target = torch.as_tensor(targets[chosen], dtype=torch.long, device=device)
            ranks, _ = rank_targets(mask_history(scores.float(), batch_hist, target), target)
            ranks = torch.as_tensor(ranks, dtype=torch.float64, device=device)
            totals += torch.stack([
                torch.where(ranks < 10, 1.0 / torch.log2(ranks + 2), torch.zeros_like(ranks)).sum(),
                (ranks < 10).double().sum(), torch.tensor(float(len(chosen)), dtype=torch.float64, device=device)])
    net.train()
    return totals


@dataclass(frozen=True)
class EpochValidation:
    """Validation of the live weights and of their average (None without averaging), with the
    item text vectors each was scored with."""

    live: ValidationTotals
    averaged: ValidationTotals | None
    live_cache: torch.Tensor
    averaged_cache: torch.Tensor | None

    @property
    def weights(self) -> str:
        return choose_weights(self.live, self.averaged)

    def chosen(self, training: Training) -> tuple[nn.Module, torch.Tensor]:
        """The epoch's model and its item text vectors (what a checkpoint saves)."""
        if self.weights == LIVE:
            return training.net, self.live_cache
        return training.ema.module, self.averaged_cache


def validate_epoch(training: Training, live_cache: torch.Tensor, text: TextStates, sequences, users,
                   max_history: int, dist: Distributed) -> EpochValidation:
    """Validation NDCG@10 and HR@10 over every rank's `users`, of the live weights (their text
    vectors `live_cache`) and of the weight average."""
    averaged = averaged_cache = None
    if training.ema is not None:
        averaged_cache = text_vectors(training.ema.module, text)
        averaged = dist.sum(validate(training.ema.module, averaged_cache, sequences, users, max_history,
                                     training.device, bf16=training.bf16))
    live = dist.sum(validate(training.net, live_cache, sequences, users, max_history, training.device,
                             bf16=training.bf16))
    return EpochValidation(live=ValidationTotals(*live.tolist()),
                           averaged=ValidationTotals(*averaged.tolist()) if averaged is not None else None,
                           live_cache=live_cache, averaged_cache=averaged_cache)
