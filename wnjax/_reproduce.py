"""``wnjax reproduce NAME``: one command per experiment of the seed papers.

Each experiment is a module listed in ``EXPERIMENTS``. It provides ``DESCRIPTION`` (one line),
``add_arguments(parser)`` for its own flags, and ``run(args) -> dict`` which writes figures,
``metrics.json`` and ``report.md`` under ``args.out`` and returns the metrics.
"""

from __future__ import annotations

import argparse
import importlib
import os

HELP = "reproduce an experiment of the seed papers (figures, metrics.json, report.md)"

EXPERIMENTS: dict[str, str] = {
    # name: module; each experiment registers itself with one line here.
    "simple-traj": "wnjax._experiments.simple_traj",
    "lin-sep": "wnjax._experiments.lin_sep",
    "xor": "wnjax._experiments.xor",
    "conv-rate": "wnjax._experiments.conv_rate",
    "pruning": "wnjax._experiments.pruning",
    "small-init": "wnjax._experiments.small_init",
    "tensor-regression": "wnjax._experiments.tensor_regression",
    "tensor-classification": "wnjax._experiments.tensor_classification",
    "diagonal-wn": "wnjax._experiments.diagonal_wn",
}


def _load(name: str):
    return importlib.import_module(EXPERIMENTS[name])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="experiment name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (vmapped)")
    parser.add_argument("--full", action="store_true", help="the paper's sizes (slow)")
    # Experiment-specific flags are parsed from the remaining arguments.
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        for name in EXPERIMENTS:
            print(f"{name:24s} {_load(name).DESCRIPTION}")
        return 0
    if args.name not in EXPERIMENTS:
        raise SystemExit(
            f"unknown experiment {args.name!r}; `wnjax reproduce --list` shows "
            f"{', '.join(EXPERIMENTS) or 'none yet'}."
        )
    module = _load(args.name)
    sub = argparse.ArgumentParser(prog=f"wnjax reproduce {args.name}")
    # The common flags may also come after NAME; they keep the values parsed before it.
    sub.add_argument("--out", default=args.out)
    sub.add_argument("--seeds", type=int, default=args.seeds)
    sub.add_argument("--full", action="store_true", default=args.full)
    module.add_arguments(sub)
    extra = sub.parse_args(args.rest)
    for key, value in vars(extra).items():
        setattr(args, key, value)
    args.out = args.out or os.path.join("runs", args.name)
    os.makedirs(args.out, exist_ok=True)
    module.run(args)
    print(f"wrote {args.out}/report.md, metrics.json and figures")
    return 0
