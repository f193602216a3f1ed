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


def experiment_parser(name: str, **defaults) -> argparse.ArgumentParser:
    """The argument parser of experiment ``name``: the common flags and its own."""
    if name not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} "
            f"(`wnjax reproduce --list` describes them)."
        )
    sub = argparse.ArgumentParser(prog=f"wnjax reproduce {name}")
    sub.add_argument("--out", default=defaults.get("out"))
    sub.add_argument("--seeds", type=int, default=defaults.get("seeds", 5))
    sub.add_argument("--full", action="store_true", default=defaults.get("full", False))
    _load(name).add_arguments(sub)
    return sub


def experiment_options(name: str) -> set[str]:
    """The options ``reproduce(name, ...)`` accepts: the common ones and the experiment's flags."""
    return set(vars(experiment_parser(name).parse_args([])))


def show_run(out: str) -> None:
    """Display ``out/report.md`` and the PNG figures beside it: rendered in Jupyter, the report
    as plain text (and the figure paths) elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, Markdown, display
    except ImportError:
        get_ipython = None
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    figures = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(report))
        for name in figures:
            display(Image(os.path.join(out, name)))
    else:
        print(report)
        print("figures:", ", ".join(os.path.join(out, n) for n in figures))


def reproduce(name: str, *, seeds: int = 5, out: str | None = None, full: bool = False,
              **options) -> dict:
    """Run experiment ``name`` as ``wnjax reproduce NAME`` does and return its metrics.

    ``options`` are the experiment's own flags with ``-`` written as ``_`` (for example
    ``reproduce("lin-sep", seeds=3, dynamics="flow", max_steps=2000)``); unknown ones raise.
    Writes the figures, ``metrics.json`` and ``report.md`` under ``out`` (default
    ``runs/NAME``).
    """
    parser = experiment_parser(name, out=out, seeds=seeds, full=full)
    args = parser.parse_args([])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(
            f"experiment {name!r} has no option(s) {unknown}; its options are "
            f"{sorted(k for k in vars(args) if k not in ('out', 'seeds', 'full'))}."
        )
    for key, value in options.items():
        setattr(args, key, value)
    args.name = name
    args.out = args.out or os.path.join("runs", name)
    os.makedirs(args.out, exist_ok=True)
    return _load(name).run(args)


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
    # The common flags may also come after NAME; they keep the values parsed before it.
    sub = experiment_parser(args.name, out=args.out, seeds=args.seeds, full=args.full)
    extra = sub.parse_args(args.rest)
    for key, value in vars(extra).items():
        setattr(args, key, value)
    args.out = args.out or os.path.join("runs", args.name)
    os.makedirs(args.out, exist_ok=True)
    module.run(args)
    print(f"wrote {args.out}/report.md, metrics.json and figures")
    return 0
