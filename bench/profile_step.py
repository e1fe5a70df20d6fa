"""Where a training step's time goes: torch's profiler over real steps of the pipeline's training.

    python -m bench.profile_step [--dataset ml-1m] [--steps 30] [--warmup 10] [--validation]
                                 [--set stage.KEY=VALUE ...]

Builds what `tasks.training.worker` builds (one process, the dataset's selected settings of
bench.quality over the pipeline defaults, the frozen MiniLM states from the cache) on the quality
benchmark's split, runs `--warmup` steps, then `--steps` steps under `torch.profiler`, and prints
the operators by their own CPU time, and the step's forward, backward and optimizer shares. With
`--validation` it profiles one epoch-end validation instead (the live weights and their average,
over every validation user), after the warm-up steps.
Nothing is written; `make bench-step-time` measures steps per second before and after a change.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from tasks.cli import setting_arg  # `stage.field=value`, refused with an example otherwise

log = logging.getLogger("bench.profile_step")


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from bench.quality import dataset_settings, prepare
    from tasks.config import load_config
    from tasks.data.prepare import load_dataset
    from tasks.model.layers import use_bf16
    from tasks.model.network import ModelSpec
    from tasks.model.text_tower import load_language_model
    from tasks.training.loop import (
        build_training,
        plan_epochs,
        train_step,
        validate_epoch,
        validation_users,
    )
    from tasks.training.runtime import Distributed
    from tasks.training.text_cache import cache_text_states, text_vectors
    from tasks.training.windows import training_batches

    overrides = {**dataset_settings(args.dataset), "database.app_schema": "bench_" + args.dataset.replace("-", "")}
    overrides.update(dict(args.settings))
    config = load_config(overrides)
    cfg, max_history = config.train, config.prepare.max_history
    work = config.paths.home / "bench" / args.dataset
    dataset_dir = prepare(config, args.dataset, work)
    sequences, items = load_dataset(dataset_dir)
    torch.set_num_threads(cfg.threads_per_proc or os.cpu_count())
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    dist = Distributed.from_environment()
    tokenizer, encoder = load_language_model()
    text = cache_text_states(items["description"].tolist(), tokenizer, encoder, cfg.lm_trainable_layers,
                             cfg.max_text_tokens, dist.device, config.paths.text_states)
    plan = plan_epochs(sequences.histories(2), cfg, max_history, dist.world)
    bf16 = use_bf16(cfg.precision, dist.device)
    training = build_training(ModelSpec.from_config(cfg, sequences.n_items, max_history), encoder, cfg, dist,
                              plan.steps, bf16)
    text_cache = text_vectors(training.net, text)
    training.net.train()
    batches = iter(training_batches(plan.epoch_windows(1, cfg.seed, cfg.batch_size, dist), cfg.batch_size,
                                    max_history))

    for _ in range(args.warmup):
        inputs, targets = next(batches)
        _, _, _, text_cache = train_step(training, inputs, targets, text_cache, text, rng)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        if args.validation:
            users = validation_users(sequences.n_users, cfg.validation_users, cfg.seed)
            with record_function("validation"):
                validate_epoch(training, text_cache, text, sequences, users, max_history, dist)
        else:
            for _ in range(args.steps):
                inputs, targets = next(batches)
                with record_function("step"):
                    _, _, _, text_cache = train_step(training, inputs, targets, text_cache, text, rng)
    seconds = time.perf_counter() - started
    what = (f"{seconds:.1f} s for a validation of {len(users)} users" if args.validation
            else f"{seconds / args.steps * 1000:.0f} ms a step ({args.steps} steps)")
    print(f"\n{args.dataset}, {cfg.batch_size} windows of {max_history}, K={cfg.n_interests}, "
          f"{'bf16' if bf16 else 'fp32'} matmuls, {torch.get_num_threads()} threads: {what} under the profiler\n")
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total",
                                                                    row_limit=args.rows, max_name_column_width=40,
                                                                    max_shapes_column_width=70))


if __name__ == "__main__":
    main()
