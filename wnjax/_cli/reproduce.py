"""``wnjax reproduce NAME``: one command per experiment of the seed papers.

The flags of ``NAME`` are built from the fields of its ``Options`` dataclass (see
``wnjax.experiments._options``): ``max_steps`` -> ``--max-steps``, a ``bool`` -> ``--x`` (or
``--no-x`` when its default is true), a tuple -> one or more values, ``choices`` and ``help``
from the field's metadata, ``positive`` -> a positive number. The common flags ``--seeds``,
``--out`` and ``--full`` may come before or after ``NAME``. An experiment module without
``Options`` adds its own flags with ``add_arguments(parser)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import wnjax._runtime.interrupt as _interrupt
from wnjax._cli import ArgumentParser, positive_float, positive_int
from wnjax.experiments import _reproduce
from wnjax.experiments._options import COMMON, Common, field_types, flag

HELP = "reproduce an experiment of the seed papers (figures, metrics.json, report.md)"


class _Formatter(argparse.HelpFormatter):
    """Help that shows each flag's default, unless it is ``None``, a bool, or the help text
    speaks of its default already."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if (
            not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or "default" in text
        ):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def add_option_arguments(
    parser: argparse.ArgumentParser,
    cls,
    defaults: dict | None = None,
    only: tuple[str, ...] | None = None,
) -> None:
    """Add one flag per field of the options dataclass ``cls`` (or per field named in ``only``)
    to ``parser``, with the field's default unless ``defaults`` gives another."""
    defaults = defaults or {}
    kinds = field_types(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        kind, meta = kinds[f.name], f.metadata
        default = defaults.get(f.name, f.default)
        help_ = meta.get("help", "").replace("%", "%%") or None
        if help_ and "only" in meta:
            help_ += f" [only with {flag(meta['only'][0])} {meta['only'][1]}]"
        if kind.base is bool and not kind.many:
            if f.default is True:
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"),
                    dest=f.name,
                    action="store_false",
                    default=default,
                    help=None if help_ is None else f"turn off (on by default): {help_}",
                )
            else:
                parser.add_argument(flag(f.name), action="store_true", default=default, help=help_)
            continue
        kw = {"default": default, "help": help_}
        if kind.base is int:
            kw["type"] = positive_int if meta.get("positive") else int
        elif kind.base is float:
            kw["type"] = positive_float if meta.get("positive") else float
        if meta.get("choices") is not None:
            kw["choices"] = meta["choices"]
        if kind.many:
            kw["nargs"] = "+"
        parser.add_argument(flag(f.name), **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="experiment name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument(
        "--all",
        action="store_true",
        help="run every experiment at its default size and write the scorecard "
        "(OUT/index.md, OUT/metrics.json; OUT defaults to runs/scorecard)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --all: read the finished runs under OUT instead of running them again "
        "(a run marked PARTIAL, or run with other options or arithmetic, is run again)",
    )
    add_option_arguments(parser, Common)
    # None: not given (an experiment then takes Common's default; --all each experiment's own).
    parser.set_defaults(seeds=None)
    # Experiment-specific flags are parsed from the remaining arguments.
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def experiment_parser(name: str, **defaults) -> argparse.ArgumentParser:
    """The argument parser of experiment ``name``: the common flags and its own, with the
    common flags' defaults taken from ``defaults``."""
    module = _reproduce.load(name)
    sub = ArgumentParser(
        prog=f"wnjax reproduce {name}",
        description=getattr(module, "DESCRIPTION", None),
        formatter_class=_Formatter,
    )
    cls = getattr(module, "Options", None)
    if cls is not None:
        add_option_arguments(sub, cls, defaults)
        return sub
    add_option_arguments(sub, Common, defaults)
    module.add_arguments(sub)
    return sub


def parse_options(name: str, argv: list[str], **defaults):
    """Experiment ``name``'s options from the command-line arguments ``argv``: its ``Options``,
    or an ``argparse.Namespace`` for a module with ``add_arguments``."""
    parsed = experiment_parser(name, **defaults).parse_args(argv)
    cls = _reproduce.options_class(name)
    return parsed if cls is None else cls(**vars(parsed))


def argparse_namespace(name: str, **options) -> argparse.Namespace:
    """The ``argparse.Namespace`` that an experiment with ``add_arguments`` takes: its defaults,
    then ``options``; ``InvalidInput`` naming the valid options for an unknown one."""
    from wnjax._runtime.errors import InvalidInput

    args = experiment_parser(name).parse_args([])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise InvalidInput(
            f"experiment {name!r} has no option(s) {unknown}; its options are "
            f"{sorted(k for k in vars(args) if k not in COMMON)} and {list(COMMON)}."
        )
    for key, value in options.items():
        setattr(args, key, value)
    if "seeds" in options:
        Common(seeds=args.seeds)  # the same check as an Options dataclass
    return args


def run_all(args: argparse.Namespace) -> int:
    """``wnjax reproduce --all``: every experiment, then the scorecard."""
    from wnjax.experiments._scorecard import scorecard

    seeds = args.seeds  # None: each experiment's default
    out = args.out or os.path.join("runs", "scorecard")
    card = scorecard(out=out, seeds=seeds, rerun=not args.reuse)
    counts = ", ".join(f"{n} {k}" for k, n in card["counts"].items())
    print(f"wrote {out}/index.md and metrics.json: {counts}")
    if card["partial"]:
        during = (
            f" during {card['interrupted']} (partial: no verdict)" if card["interrupted"] else ""
        )
        print(
            f"PARTIAL: interrupted{during}; finished: {', '.join(card['finished']) or 'none'}; "
            f"not run: {', '.join(card['not_run']) or 'none'}. `wnjax reproduce --all --reuse "
            f"--out {out}` runs the rest."
        )
        return _interrupt.exit_code()
    return 1 if card["errors"] else 0


def run(args: argparse.Namespace) -> int:
    if args.all:
        return run_all(args)
    if args.list or not args.name:
        for name in _reproduce.EXPERIMENTS:
            print(f"{name:24s} {_reproduce.load(name).DESCRIPTION}")
        return 0
    module = _reproduce.load(args.name)
    # wnjax's own flags, also after NAME (nothing has been computed yet, so float32 can
    # still be chosen here)
    rest = [a for a in args.rest if a not in ("--debug", "--float32")]
    args.debug = getattr(args, "debug", False) or "--debug" in args.rest
    if "--float32" in args.rest and not getattr(args, "float32", False):
        import jax

        args.float32 = True
        jax.config.update("jax_enable_x64", False)
    # The common flags may also come after NAME; they keep the values parsed before it.
    given = {k: getattr(args, k) for k in COMMON if k != "seeds" or args.seeds is not None}
    options = parse_options(args.name, rest, **given)
    if isinstance(options, argparse.Namespace):  # add_arguments: it reads the whole namespace
        options = argparse.Namespace(**{**vars(args), **vars(options)})
    options = _reproduce.prepare(args.name, options)
    out = options.out
    started = time.time()

    def partial():
        if _reproduce.mark_partial(out, started):
            print(
                f"PARTIAL: interrupted; {out} holds what had finished (report.md names "
                "what is missing); the same command run again goes on from the finished runs."
            )
        else:
            print("interrupted before any result had finished; nothing was written.")

    with _interrupt.handling(on_timeout=partial):
        metrics = _reproduce.run_module(module, options)
    if _interrupt.requested():
        _interrupt.stopping()
        partial()
        return _interrupt.exit_code()
    _reproduce.completed(out)
    if isinstance(metrics, dict):
        metrics.update(_reproduce.record_run(args.name, options, time.time() - started))
    print(f"wrote {out}/report.md, metrics.json and figures")
    verdicts = metrics.get("verdicts") if isinstance(metrics, dict) else None
    if isinstance(verdicts, list) and verdicts:
        counts = {}
        for v in verdicts:
            counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
        print("verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    failed = _reproduce.failed_runs(metrics)
    if failed:
        print(f"some runs failed: {', '.join(failed)} (see {out}/metrics.json).")
        return 1
    return 0
