"""Two versions of the training step's code, timed in one process, in alternating blocks of steps.

    python -m bench.step_ab --before REV --swap MODULE:NAME[,NAME...] [--swap ...] [--dataset ml-1m]
                            [--blocks 10] [--steps 20] [--set stage.KEY=VALUE ...]

Separate training processes on a 2-core virtual machine differ by 10-15 % in steps per second, so a
change worth a few per cent is lost in `bench.step_time`'s spread. Here one training (the setup of
bench.profile_step: the worker's, on the quality benchmark's split) runs `--blocks` pairs of blocks
of `--steps` steps, alternating the checkout's code with REV's, in turns (ABBA). For each `--swap`,
the module's source at REV (`git show REV:path`) is loaded beside the current module and the named
functions or classes are swapped in for REV's blocks; the code calls them through the module at run
time, so a swapped name takes effect at the next step. Prints each block's ms a step, the medians
and their ratio; nothing is written.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from bench.profile_step import step_setup, with_worker_allocator
from tasks.cli import setting_arg

ROOT = Path(__file__).resolve().parent.parent


def swap_arg(text: str) -> tuple[str, list[str]]:
    """`tasks.model.layers:attention,dropout` -> (module, names)."""
    module, sep, names = text.partition(":")
    if not sep or not module or not names:
        raise argparse.ArgumentTypeError(f"expected MODULE:NAME[,NAME...], e.g. tasks.model.layers:dropout; got {text!r}")
    return module, [name for name in names.split(",") if name]


def module_at(revision: str, module: str) -> ModuleType:
    """`module` as its source stood at git `revision`, loaded under another name."""
    path = module.replace(".", "/") + ".py"
    try:
        source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"cannot read {path} at {revision}: {error.stderr.strip()}") from None
    name = f"_before_{revision}_{module}".replace(".", "_")
    loaded = ModuleType(name)
    loaded.__file__ = str(ROOT / path)
    sys.modules[name] = loaded  # dataclasses look their module up while the source runs
    exec(compile(source, f"{revision}:{path}", "exec"), loaded.__dict__)  # noqa: S102 - the project's own source
    return loaded


def versions(revision: str, swaps: list[tuple[str, list[str]]]) -> dict[str, list[tuple[ModuleType, str, object]]]:
    """{"before": [(module, name, REV's object)], "after": [(module, name, current object)]}."""
    chosen: dict[str, list] = {"before": [], "after": []}
    for module_name, names in swaps:
        current, before = importlib.import_module(module_name), module_at(revision, module_name)
        for name in names:
            if not hasattr(before, name) or not hasattr(current, name):
                raise SystemExit(f"{module_name}.{name} is missing at {revision} or in the checkout")
            chosen["before"].append((current, name, getattr(before, name)))
            chosen["after"].append((current, name, getattr(current, name)))
    return chosen


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the code to compare with")
    parser.add_argument("--swap", action="append", required=True, type=swap_arg, metavar="MODULE:NAME[,NAME]")
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--blocks", type=int, default=10, help="blocks of each version")
    parser.add_argument("--steps", type=int, default=20, help="timed steps a block (after 3 untimed)")
    parser.add_argument("--set", dest="settings", action="append", default=[], type=setting_arg,
                        metavar="stage.KEY=VALUE", help="a setting over the dataset's selected ones (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with_worker_allocator("bench.step_ab", argv, dict(args.settings))
    chosen = versions(args.before, args.swap)
    setup = step_setup(args.dataset, dict(args.settings))
    times: dict[str, list[float]] = {"before": [], "after": []}
    for block in range(args.blocks):
        for label in ("before", "after") if block % 2 == 0 else ("after", "before"):
            for module, name, value in chosen[label]:
                setattr(module, name, value)
            for _ in range(3):
                setup.step()
            started = time.perf_counter()
            for _ in range(args.steps):
                setup.step()
            times[label].append((time.perf_counter() - started) / args.steps * 1000)
    for module, name, value in chosen["after"]:
        setattr(module, name, value)
    medians = {label: statistics.median(values) for label, values in times.items()}
    for label, values in times.items():
        print(f"{label:>6} ({args.before if label == 'before' else 'checkout'}): median {medians[label]:.1f} ms a "
              f"step; blocks {' '.join(f'{v:.0f}' for v in values)}")
    ratios = [b / a for b, a in zip(times["before"], times["after"], strict=True)]
    print(f"speed-up {medians['before'] / medians['after']:.3f}x (median before / median after); block pairs "
          f"{min(ratios):.2f}-{max(ratios):.2f}x")
    return {"times": times, "medians": medians}


if __name__ == "__main__":
    main()
