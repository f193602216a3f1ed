"""The experiments of the seed papers: their registry, their options and ``reproduce``.

Each experiment is a module listed in ``EXPERIMENTS``. It provides:

- ``DESCRIPTION``: one line;
- ``Options``: a frozen dataclass derived from ``_options.Common`` (``seeds``, ``out``, ``full``)
  whose own fields all have defaults, a help text in their metadata, and a line each in its
  docstring; ``wnjax reproduce NAME`` builds its flags from these fields (``max_steps`` ->
  ``--max-steps``, see ``_options``);
- ``run(options: Options) -> dict``: writes the figures, ``metrics.json`` and ``report.md`` under
  ``options.out`` and returns the metrics; ``metrics["verdicts"]`` lists the verdicts as data,
  ``{"claim", "verdict", "detail"}`` (``_report.judge``), rendered into the report by
  ``_report.render_verdicts``.

A module without ``Options`` keeps the argparse interface, ``add_arguments(parser)`` for its own
flags and ``run(args: argparse.Namespace) -> dict``; ``wnjax._cli.reproduce`` parses its flags.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import time
import warnings

import wnjax._runtime.interrupt as _interrupt
from wnjax._runtime.errors import InvalidInput, TargetMetAtStart
from wnjax._runtime.precision import in_float32
from wnjax._sweeps.store import atomic_write_bytes, writable_dir
from wnjax.experiments._finished import FOLDER as FINISHED
from wnjax.experiments._options import COMMON, Common

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


def load(name: str):
    """The module of experiment ``name``; ``InvalidInput`` naming the known ones otherwise."""
    if name not in EXPERIMENTS:
        raise InvalidInput(
            f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} "
            f"(`wnjax reproduce --list` describes them)."
        )
    return importlib.import_module(EXPERIMENTS[name])


def options_class(name: str) -> type[Common] | None:
    """The ``Options`` dataclass of experiment ``name``, or ``None`` for a module with the
    argparse interface."""
    return getattr(load(name), "Options", None)


def experiment_options(name: str) -> set[str]:
    """The options ``reproduce(name, ...)`` accepts: the common ones and the experiment's own."""
    cls = options_class(name)
    if cls is None:
        from wnjax._cli.reproduce import argparse_namespace

        return set(vars(argparse_namespace(name)))
    return {f.name for f in dataclasses.fields(cls)}


def make_options(name: str, **values) -> Common:
    """``Options(**values)`` of experiment ``name``: ``TypeError`` naming the valid options for an
    unknown one, ``InvalidInput`` for a bad value."""
    cls = options_class(name)
    if cls is None:
        raise TypeError(f"experiment {name!r} takes argparse arguments, not an Options dataclass.")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise InvalidInput(
            f"experiment {name!r} has no option(s) {unknown}; its options are "
            f"{sorted(k for k in valid if k not in COMMON)} and {list(COMMON)}."
        )
    return cls(**values)


def run_options(name: str, **values):
    """The options of a run of experiment ``name`` with ``values`` and the defaults: its
    ``Options`` (``make_options``), or for a module with the argparse interface its
    ``argparse.Namespace`` (with ``name`` set)."""
    if options_class(name) is not None:
        return make_options(name, **values)
    from wnjax._cli.reproduce import argparse_namespace

    opts = argparse_namespace(name, **values)
    opts.name = name
    return opts


def prepare(name: str, options):
    """``options`` (an ``Options`` or an ``argparse.Namespace``) with ``out`` set (``runs/NAME``
    when ``None``) to a folder checked for writability before anything is computed."""
    out = options.out or os.path.join("runs", name)
    writable_dir(out)
    if dataclasses.is_dataclass(options):
        return dataclasses.replace(options, out=out)
    options.out = out
    return options


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


def run_module(module, options):
    """``module.run(options)`` with ``TargetMetAtStart`` raised as ``InvalidInput``: a run of an
    experiment whose target is met at its start would leave its verdicts judging untrained
    nets."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", TargetMetAtStart)
        try:
            return module.run(options)
        except TargetMetAtStart as met:
            raise InvalidInput(
                f"{met} (The experiment's verdicts would judge untrained nets.)"
            ) from None


@in_float32
def reproduce(
    name: str, *, seeds: int = 5, out: str | None = None, full: bool = False, **options
) -> dict:
    """Run experiment ``name`` as ``wnjax reproduce NAME`` does and return its metrics.

    ``options`` are the fields of the experiment's ``Options`` (its flags with ``-`` written as
    ``_``), e.g. ``reproduce("lin-sep", seeds=3, dynamics="flow", max_steps=2000)``; an unknown
    one raises ``TypeError`` naming the valid ones, a bad value ``InvalidInput``. Writes the
    figures, ``metrics.json`` and ``report.md`` under ``out`` (default ``runs/NAME``), checked
    for writability first. SIGINT/SIGTERM stop the experiment early: what had finished is
    written and the report says PARTIAL; the independent runs that had finished are kept in
    ``OUT/.finished/``, and a rerun with the same options into the same ``out`` takes them
    instead of running them again (``wnjax.experiments._finished``).
    """
    import jax

    if not jax.config.read("jax_enable_x64"):
        warnings.warn(
            f"reproduce({name!r}) runs in float32: jax_enable_x64 is off. `wnjax reproduce` runs "
            "float64 unless --float32; for its numbers call "
            "jax.config.update('jax_enable_x64', True) first.",
            UserWarning,
            stacklevel=2,
        )
    module = load(name)
    opts = prepare(name, run_options(name, seeds=seeds, out=out, full=full, **options))
    started = time.time()
    with _interrupt.handling():
        metrics = run_module(module, opts)
        if _interrupt.requested():
            mark_partial(opts.out, started)
        else:
            completed(opts.out)
    if isinstance(metrics, dict):
        metrics.update(record_run(name, opts, time.time() - started))
    return metrics


def completed(out: str) -> None:
    """A reproduction into ``out`` completed: drop the runs kept for a rerun
    (``wnjax.experiments._finished``)."""
    shutil.rmtree(os.path.join(out, FINISHED), ignore_errors=True)


def options_record(name: str, options) -> dict:
    """The settings of a run of experiment ``name`` with ``options`` (an ``Options`` or an
    ``argparse.Namespace``) as ``metrics.json`` holds them: each of its options
    (``experiment_options``) but ``out``, in JSON types."""
    import json

    from wnjax.experiments._report import json_text

    keys = sorted(experiment_options(name) - {"out"})
    return json.loads(json_text({k: getattr(options, k) for k in keys}))


def record_run(name: str, options, seconds: float) -> dict:
    """Add ``wall_seconds`` and ``options`` (``options_record``) to the ``metrics.json`` the run
    of experiment ``name`` with ``options`` wrote into ``options.out``; return the two
    entries."""
    import json

    entries = {"wall_seconds": seconds, "options": options_record(name, options)}
    path = os.path.join(options.out, "metrics.json")
    if not os.path.exists(path):
        return entries
    with open(path) as f:
        saved = json.load(f)
    if isinstance(saved, dict):
        saved.update(entries)
        atomic_write_bytes(path, json.dumps(saved, indent=1).encode())
    return entries


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
        note = (
            "**PARTIAL**: interrupted (SIGINT/SIGTERM); runs in progress at the signal "
            "stopped early, so the numbers below may be incomplete.\n\n"
        )
        atomic_write_bytes(path, (note + text).encode())
    return True


def failed_runs(metrics, path: str = "") -> list[str]:
    """The paths of ``ok`` entries in ``metrics`` (nested dicts) that hold a false value."""
    if not isinstance(metrics, dict):
        return []
    out = []
    for key, value in metrics.items():
        where = f"{path}.{key}" if path else str(key)
        if key == "ok" and not _all_true(value):
            out.append(where)
        elif isinstance(value, dict):
            out += failed_runs(value, where)
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
