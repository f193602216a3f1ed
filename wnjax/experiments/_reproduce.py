"""``wnjax reproduce NAME``: one command per experiment of the seed papers.

Each experiment is a module listed in ``EXPERIMENTS``. It provides ``DESCRIPTION`` (one line),
``add_arguments(parser)`` for its own flags, and ``run(args) -> dict`` which writes figures,
``metrics.json`` and ``report.md`` under ``args.out`` and returns the metrics.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

from wnjax._cli import positive_int
import wnjax._runtime.interrupt as _interrupt
from wnjax._runtime.errors import InvalidInput
from wnjax._sweeps.store import atomic_write_bytes, writable_dir

HELP = "reproduce an experiment of the seed papers (figures, metrics.json, report.md)"

EXPERIMENTS: dict[str, str] = {
    # name: module; each experiment registers itself with one line here.
    "simple-traj": "wnjax.experiments._simple_traj",
    "lin-sep": "wnjax.experiments._lin_sep",
    "xor": "wnjax.experiments._xor",
    "conv-rate": "wnjax.experiments._conv_rate",
    "pruning": "wnjax.experiments._pruning",
    "small-init": "wnjax.experiments._small_init",
    "tensor-regression": "wnjax.experiments._tensor_regression",
    "tensor-classification": "wnjax.experiments._tensor_classification",
    "diagonal-wn": "wnjax.experiments._diagonal_wn",
}


def names() -> list[str]:
    """The experiments' names, as ``reproduce`` and ``wnjax reproduce`` take them."""
    return list(EXPERIMENTS)


def _load(name: str):
    return importlib.import_module(EXPERIMENTS[name])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="experiment name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    parser.add_argument("--seeds", type=positive_int, default=5,
                        help="number of seeds (vmapped)")
    parser.add_argument("--full", action="store_true", help="the paper's sizes (slow)")
    # Experiment-specific flags are parsed from the remaining arguments.
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def experiment_parser(name: str, **defaults) -> argparse.ArgumentParser:
    """The argument parser of experiment ``name``: the common flags and its own."""
    if name not in EXPERIMENTS:
        raise InvalidInput(
            f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} "
            f"(`wnjax reproduce --list` describes them)."
        )
    sub = argparse.ArgumentParser(prog=f"wnjax reproduce {name}")
    sub.add_argument("--out", default=defaults.get("out"))
    sub.add_argument("--seeds", type=positive_int, default=defaults.get("seeds", 5))
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
    ``runs/NAME``), which is checked for writability first. SIGINT/SIGTERM stop the experiment
    early: what had finished is written and the report says PARTIAL.
    """
    from wnjax._runtime.validate import check_options

    check_options(seeds=seeds)
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
    writable_dir(args.out)
    started = time.time()
    with _interrupt.handling():
        metrics = _load(name).run(args)
        if _interrupt.requested():
            mark_partial(args.out, started)
    return metrics


def mark_partial(out: str, started: float) -> bool:
    """Mark the ``report.md`` written into ``out`` since ``started`` as PARTIAL (an interrupted
    experiment whose later stages ran on cut-short runs), unless it says so already; return
    whether this run wrote a report at all."""
    path = os.path.join(out, "report.md")
    if not os.path.exists(path) or os.path.getmtime(path) < started - 1.0:
        return False
    with open(path) as f:
        text = f.read()
    if "PARTIAL" not in text:
        note = ("**PARTIAL**: interrupted (SIGINT/SIGTERM); runs in progress at the signal "
                "stopped early, so the numbers below may be incomplete.\n\n")
        atomic_write_bytes(path, (note + text).encode())
    return True


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
    rest = [a for a in args.rest if a != "--debug"]  # wnjax's own flag, also after NAME
    args.debug = getattr(args, "debug", False) or len(rest) < len(args.rest)
    extra = sub.parse_args(rest)
    for key, value in vars(extra).items():
        setattr(args, key, value)
    args.out = args.out or os.path.join("runs", args.name)
    writable_dir(args.out)
    started = time.time()

    def partial():
        if mark_partial(args.out, started):
            print(f"PARTIAL: interrupted; {args.out} holds what had finished (report.md names "
                  "what is missing).")
        else:
            print("interrupted before any result had finished; nothing was written.")

    with _interrupt.handling(on_timeout=partial):
        metrics = module.run(args)
    if _interrupt.requested():
        _interrupt.stopping()
        partial()
        return _interrupt.exit_code()
    print(f"wrote {args.out}/report.md, metrics.json and figures")
    failed = _failed_runs(metrics)
    if failed:
        print(f"some runs failed: {', '.join(failed)} (see {args.out}/metrics.json).")
        return 1
    return 0


def _failed_runs(metrics, path: str = "") -> list[str]:
    """The paths of ``ok`` entries in ``metrics`` (nested dicts) that hold a false value."""
    if not isinstance(metrics, dict):
        return []
    out = []
    for key, value in metrics.items():
        where = f"{path}.{key}" if path else str(key)
        if key == "ok" and not _all_true(value):
            out.append(where)
        elif isinstance(value, dict):
            out += _failed_runs(value, where)
    return out


def _all_true(value) -> bool:
    if isinstance(value, dict):
        return all(_all_true(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_true(v) for v in value)
    try:
        import numpy as np

        return bool(np.all(np.asarray(value)))
    except Exception:  # not a truth value: not a failure flag
        return True
