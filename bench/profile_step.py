"""Where a training step's time goes: torch's profiler over real steps of the pipeline's training.

    python -m bench.profile_step [--dataset ml-1m] [--steps 30] [--warmup 10] [--validation]
                                 [--set stage.KEY=VALUE ...]

Builds what `tasks.training.worker` builds (one process under the workers' allocator, the dataset's
selected settings of bench.quality over the pipeline defaults, the frozen MiniLM states from the cache) on the quality
benchmark's split, runs `--warmup` steps, then `--steps` steps under `torch.profiler`, and prints
the operators by their own CPU time. With `--validation` it profiles one epoch-end validation
instead (the live weights and their average, over every validation user), after the warm-up steps.
Nothing is written; `make bench-step-time` measures steps per second before and after a change, and
`bench.step_ab` compares two versions of the step's code within one process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from tasks.cli import setting_arg  # `stage.field=value`, refused with an example otherwise

log = logging.getLogger("bench.profile_step")


def with_worker_allocator(module: str, argv: list[str] | None, settings: dict[str, Any]) -> None:
    """Re-run this benchmark (`python -m module argv`) under the allocator a training worker gets
    (train.allocator, tasks.training.launcher.allocator_env), unless it already runs under it. The
    steps allocate their [positions, items] scores afresh: under glibc each one faults its pages in
    again (a ~40 MB product took ~1.7x as long as under jemalloc), which a worker never pays."""
    from tasks.config import load_config
    from tasks.training.launcher import allocator_env

    # train.allocator as the worker's config resolves it: a --set value, else PRISMREC_TRAIN__ALLOCATOR, else auto.
    extra = allocator_env(load_config(settings).train.allocator, dict(os.environ))
    if extra:
        log.info("re-running under the workers' allocator: %s", " ".join(f"{k}={v}" for k, v in extra.items()))
        os.execve(sys.executable, [sys.executable, "-m", module, *(sys.argv[1:] if argv is None else argv)],
                  {**os.environ, **extra})


@dataclass
class StepSetup:
    """A training as the worker builds it, ready to step: `step()` runs one optimizer step."""

    training: Any
    text: Any
    text_cache: Any
    batches: Any
    rng: Any
    sequences: Any
    max_history: int
    dist: Any

    def step(self) -> None:
        from tasks.training.loop import train_step

        inputs, targets = next(self.batches)
        _, _, _, self.text_cache = train_step(self.training, inputs, targets, self.text_cache, self.text, self.rng)


def step_setup(dataset: str, settings: dict[str, Any]) -> StepSetup:
    """The worker's training on the quality benchmark's split of `dataset`, with its selected settings
    and `settings` over them; batches cycle through the first epoch's windows."""
    from tasks.training.launcher import ONEDNN_CACHE

    # The workers' oneDNN primitive cache (read at the first bf16 product, so set before any runs):
    # with the library's larger default, a profile would hide the compiling a worker's small cache redoes.
    for key, value in ONEDNN_CACHE.items():
        os.environ.setdefault(key, value)

    import itertools

    import numpy as np
    import torch

    from bench.quality import dataset_settings, prepare
    from tasks.config import load_config
    from tasks.data.prepare import load_dataset
    from tasks.model.layers import use_bf16
    from tasks.model.network import ModelSpec
    from tasks.model.text_tower import load_language_model
    from tasks.training.loop import build_training, plan_epochs
    from tasks.training.runtime import Distributed
    from tasks.training.text_cache import cache_text_states, text_vectors
    from tasks.training.windows import training_batches

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = {**dataset_settings(dataset), "database.app_schema": "bench_" + dataset.replace("-", ""), **settings}
    config = load_config(overrides)
    cfg, max_history = config.train, config.prepare.max_history
    dataset_dir = prepare(config, dataset, config.paths.home / "bench" / dataset)
    sequences, items = load_dataset(dataset_dir)
    torch.set_num_threads(cfg.threads_per_proc or os.cpu_count())
    torch.manual_seed(cfg.seed)
    dist = Distributed.from_environment()
    tokenizer, encoder = load_language_model()
    text = cache_text_states(items["description"].tolist(), tokenizer, encoder, cfg.lm_trainable_layers,
                             cfg.max_text_tokens, dist.device, config.paths.text_states)
    plan = plan_epochs(sequences.histories(2), cfg, max_history, dist.world)
    training = build_training(ModelSpec.from_config(cfg, sequences.n_items, max_history), encoder, cfg, dist,
                              plan.steps, use_bf16(cfg.precision, dist.device))
    text_cache = text_vectors(training.net, text)
    training.net.train()
    windows = plan.epoch_windows(1, cfg.seed, cfg.batch_size, dist)
    batches = itertools.cycle(list(training_batches(windows, cfg.batch_size, max_history)))
    return StepSetup(training, text, text_cache, batches, np.random.default_rng(cfg.seed), sequences, max_history,
                     dist)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--steps", type=int, default=30, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the profiled ones")
    parser.add_argument("--set", dest="settings", action="append", default=[], type=setting_arg,
                        metavar="stage.KEY=VALUE", help="a setting over the dataset's selected ones (repeatable)")
    parser.add_argument("--validation", action="store_true", help="profile an epoch-end validation, not steps")
    parser.add_argument("--rows", type=int, default=25, help="operators shown")
    parser.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with_worker_allocator("bench.profile_step", argv, dict(args.settings))

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from tasks.training.loop import validate_epoch, validation_users

    setup = step_setup(args.dataset, dict(args.settings))
    training = setup.training
    for _ in range(args.warmup):
        setup.step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        if args.validation:
            users = validation_users(setup.sequences.n_users, training.cfg.validation_users, training.cfg.seed)
            with record_function("validation"):
                validate_epoch(training, setup.text_cache, setup.text, setup.sequences, users, setup.max_history,
                               setup.dist)
        else:
            for _ in range(args.steps):
                with record_function("step"):
                    setup.step()
    seconds = time.perf_counter() - started
    what = (f"{seconds:.1f} s for a validation of {len(users)} users" if args.validation
            else f"{seconds / args.steps * 1000:.0f} ms a step ({args.steps} steps)")
    cfg = training.cfg
    print(f"\n{args.dataset}, {cfg.batch_size} windows of {setup.max_history}, K={cfg.n_interests}, "
          f"{'bf16' if training.bf16 else 'fp32'} matmuls, {torch.get_num_threads()} threads: {what} "
          "under the profiler\n")
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total",
                                                                    row_limit=args.rows, max_name_column_width=40,
                                                                    max_shapes_column_width=70))


if __name__ == "__main__":
    main()
