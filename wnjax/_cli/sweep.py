"""``wnjax sweep CONFIG.toml``: a seed sweep of a flow or GD run, from a TOML file or flags.

The config (see ``examples/sweep.toml``)::

    [sweep]      seeds, batch_size, chunk_size, out, dynamics ('flow' | 'descent'),
                 run ('module:function', optional), plot (trajectories to plot)
    [data]       name = 'lin_sep' and seed, or path = 'data.npz' (arrays X, y)
    [model]      MLP settings: width, depth, activation, init_scale; parameterization
    [dynamics]   keyword arguments of wnjax.gradient_flow / wnjax.traced_gradient_descent
    [grid]       name = [values]: any model or dynamics setting, swept over their product

Float grid axes (init_scale, learning_rate, rtol, ...) are vmapped inside one compiled program;
the others (width, depth, parameterization, ...) compile one program per combination.

Every value is checked, and every grid cell traced, before the results directory is written.
Rerunning a command resumes it; rerunning it with more seeds (``--seeds N`` after fewer) keeps
the stored rows and computes only the new ones. A directory whose chunks were computed with
other versions of wnjax, jax, jaxlib, equinox, diffrax, optax or numpy (or another git revision
of wnjax) is refused, unless ``--allow-version-change``.

Multi-host: run the same command on every host with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (passed to ``jax.distributed.initialize``), or with no flags
on a cluster that JAX detects (SLURM, TPU pods). Process 0 writes the store, on a filesystem
that all hosts share.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import itertools
import math
import os
import sys
import tomllib
from typing import Any

from wnjax._cli import positive_int
from wnjax._runtime.errors import InvalidInput

HELP = "run a seed sweep from a TOML config (vmapped blocks spread over devices, resumable)"

MODEL_KEYS = ("width", "depth", "activation", "init_scale", "out_size")
PARAMETERIZATIONS = ("ewn", "swn", "standard")
DYNAMICS = ("flow", "descent")
TABLES = ("sweep", "data", "model", "dynamics", "grid")
SWEEP_KEYS = (
    "out",
    "seeds",
    "batch_size",
    "chunk_size",
    "dynamics",
    "run",
    "plot",
    "plot_x",
    "static",
)
DATA_KEYS = ("name", "seed", "path")
# Arguments the built-in run sets itself, so [dynamics] may not.
_FIXED = {
    "flow": ("model", "X", "y", "degree", "throw", "save_states"),
    "descent": ("model", "X", "y", "degree"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML config (see examples/sweep.toml)")
    parser.add_argument("--out", help="results directory (overrides [sweep] out)")
    parser.add_argument(
        "--seeds", type=positive_int, help="number of seeds (overrides [sweep] seeds)"
    )
    parser.add_argument("--batch-size", type=positive_int, help="rows per vmapped block")
    parser.add_argument("--chunk-size", type=positive_int, help="rows per stored chunk")
    parser.add_argument(
        "--devices",
        type=positive_int,
        help="use N devices (on CPU: force N host devices; default: all GPUs, or one per core)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, as TOML: --set grid.width=[8,16] --set dynamics.t1=1e4",
    )
    parser.add_argument("--overwrite", action="store_true", help="discard stored results")
    parser.add_argument(
        "--allow-version-change",
        action="store_true",
        help="resume results stored by other versions of wnjax, jax, jaxlib, equinox, diffrax, "
        "optax or numpy, or another git revision of wnjax (the manifest records each resume)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--coordinator", help="multi-host: coordinator HOST:PORT")
    parser.add_argument(
        "--num-processes", type=positive_int, help="multi-host: number of processes"
    )
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")


def load_config(path: str | None, overrides: list[str]) -> dict:
    """The TOML config with ``SECTION.KEY=VALUE`` overrides applied (values parsed as TOML),
    checked by ``check_config`` and ``check_values``."""
    settings: dict = {}
    if path is not None:
        from wnjax._runtime.errors import InvalidInput

        try:
            with open(path, "rb") as f:
                settings = tomllib.load(f)
        except OSError as err:
            raise InvalidInput(
                f"cannot read the sweep config {path!r}: {err.strerror}; give the path of a TOML "
                "file (examples/sweep.toml shows one)."
            ) from err
        except tomllib.TOMLDecodeError as err:
            raise InvalidInput(f"the sweep config {path!r} is not valid TOML: {err}.") from err
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set takes SECTION.KEY=VALUE, got {item!r}.")
        section, name = key.split(".", 1)
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare string
        settings.setdefault(section, {})[name] = parsed
    check_config(settings)
    check_values(settings)
    return settings


def dynamics_keys(kind: str) -> tuple[str, ...]:
    """The ``[dynamics]`` keys of the built-in run: the keyword arguments of
    ``wnjax.gradient_flow`` (``kind='flow'``) or ``wnjax.traced_gradient_descent``
    (``'descent'``) that it does not set itself."""
    if kind == "flow":
        from wnjax._dynamics.flow import gradient_flow as fn
    else:
        from wnjax._dynamics.batched import traced_gradient_descent as fn
    return tuple(k for k in inspect.signature(fn).parameters if k not in _FIXED[kind])


def check_config(settings: dict) -> None:
    """Raise ``InvalidInput`` for an unknown table or key, naming it and the closest valid name.

    With a custom ``[sweep] run``, only ``[sweep]`` and ``[data]`` are checked: the other tables
    are the run's own.
    """
    sweep_table = settings.get("sweep", {})
    custom = isinstance(sweep_table, dict) and "run" in sweep_table
    if not custom:
        _check_names("table", list(settings), TABLES, "the config")
    for table, value in settings.items():
        if table in TABLES and not isinstance(value, dict):
            raise InvalidInput(f"[{table}] must be a table, got {table} = {value!r}.")
    _check_names("key", list(sweep_table), SWEEP_KEYS, "[sweep]")
    _check_names("key", list(settings.get("data", {})), DATA_KEYS, "[data]")
    if custom:
        return
    kind = sweep_table.get("dynamics", "flow")
    if kind not in DYNAMICS:
        raise InvalidInput(f"[sweep] dynamics must be one of {DYNAMICS}, got {kind!r}.")
    dynamics = dynamics_keys(kind)
    model = (*MODEL_KEYS, "parameterization")
    _check_names("key", list(settings.get("model", {})), model, "[model]")
    _check_names(
        "key", list(settings.get("dynamics", {})), dynamics, f"[dynamics] (dynamics = {kind!r})"
    )
    _check_names("key", list(settings.get("grid", {})), (*model, *dynamics), "[grid]")


# Saved trajectories of the built-in run, which [sweep] plot and plot_x may name.
TRAJECTORIES = {
    "flow": ("log_loss", "normalized_margin", "neuron_norms", "log_t"),
    "descent": ("log_loss", "normalized_margin", "neuron_norms", "steps"),
}


def check_values(settings: dict) -> None:
    """Raise ``InvalidInput`` for a bad value of the built-in run: in ``[model]``,
    ``[dynamics]``, any value of a ``[grid]`` axis (float axes are traced in the sweep, so their
    values are checked only here), or a ``[sweep] plot`` name. A custom ``[sweep] run`` checks
    its own."""
    from wnjax._nets.models import get_activation
    from wnjax._runtime.validate import check_options

    sweep_table = settings.get("sweep", {})
    if "run" in sweep_table:
        return
    kind = sweep_table.get("dynamics", "flow")
    grid = settings.get("grid", {})

    def values(table: str, key: str) -> list[tuple[str, Any]]:
        """``(where, value)`` of ``key`` in ``[table]`` and on its grid axis."""
        out = []
        if key in settings.get(table, {}):
            out.append((f"[{table}] {key}", settings[table][key]))
        axis = grid.get(key, [])
        for v in axis if isinstance(axis, list) else [axis]:
            out.append((f"[grid] {key}", v))
        return out

    for key in ("width", "depth", "out_size"):
        for where, v in values("model", key):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInput(
                    f"{where}: {key} must be a positive integer, got {v!r}; give e.g. "
                    f"{key} = {8 if key == 'width' else 2 if key == 'depth' else 1}."
                )
    for where, v in values("model", "init_scale"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v == 0:
            raise InvalidInput(
                f"{where}: init_scale must be a finite, nonzero number, got {v!r}; give e.g. "
                "init_scale = 1.0 (it multiplies the initial weights)."
            )
    for where, v in values("model", "activation"):
        try:
            if not isinstance(v, str):
                raise ValueError(f"activation must be a name, got {v!r}.")
            get_activation(v)
        except ValueError as err:
            raise InvalidInput(f"{where}: {err}") from None
    for where, v in values("model", "parameterization"):
        if v not in PARAMETERIZATIONS:
            raise InvalidInput(
                f"{where}: parameterization must be one of {PARAMETERIZATIONS}, got {v!r}."
            )
    for key in dynamics_keys(kind):
        for where, v in values("dynamics", key):
            try:
                check_options(**{key: v})
            except KeyError:  # an option without a numeric rule: checked when traced
                break
            except InvalidInput as err:
                raise InvalidInput(f"{where}: {err}") from None
    if kind == "flow":
        number = (int, float)
        for (_, time), (w0, t0), (w1, t1) in itertools.product(
            values("dynamics", "time") or [("", "plain")],
            values("dynamics", "t0") or [("", 0.0)],
            values("dynamics", "t1") or [("", 1.0)],  # gradient_flow's defaults
        ):
            start = t0 if time == "plain" else 0.0
            if isinstance(t1, number) and isinstance(start, number) and t1 <= start:
                what = f"t0 = {t0}" if time == "plain" else f"0 (time = {time!r})"
                raise InvalidInput(
                    f"{w1 or w0}: t1 must exceed {what}, got t1 = {t1}; give a later end time."
                )
    plots = sweep_table.get("plot", [])
    named = [("plot", n) for n in (plots if isinstance(plots, list) else [plots])]
    named += [("plot_x", sweep_table["plot_x"])] if "plot_x" in sweep_table else []
    for key, name in named:
        if name not in TRAJECTORIES[kind]:
            raise InvalidInput(
                f"[sweep] {key}: no trajectory {name!r} in a {kind!r} sweep; saved: "
                f"{', '.join(TRAJECTORIES[kind])}."
            )


def _check_names(what: str, names: list, valid, where: str) -> None:
    for name in names:
        if name in valid:
            continue
        close = difflib.get_close_matches(str(name), list(valid), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise InvalidInput(f"unknown {what} {name!r} in {where}{hint} Valid: {', '.join(valid)}.")


def load_data(data: dict):
    """``(X, y)`` from ``[data]``: ``name = 'lin_sep'`` (with ``seed``) or ``path`` to an npz."""
    import jax
    import numpy as np

    from wnjax.data._sets import lin_sep

    if "path" in data:
        try:
            with np.load(data["path"]) as f:
                return jax.numpy.asarray(f["X"]), jax.numpy.asarray(f["y"])
        except (OSError, ValueError, KeyError) as err:
            raise InvalidInput(
                f"[data] path = {data['path']!r} cannot be read ({err}); give an .npz file with "
                "arrays X and y."
            ) from None
    name = data.get("name", "lin_sep")
    if name != "lin_sep":
        raise InvalidInput(f"unknown data set {name!r}: use name = 'lin_sep' or path = 'file.npz'.")
    return lin_sep(jax.random.key(int(data.get("seed", 0))))


def make_run(settings: dict, X, y):
    """The built-in run function: an MLP, a parameterization, then a flow or GD run.

    Grid values override ``[model]`` and ``[dynamics]``; keys in ``MODEL_KEYS`` and
    ``parameterization`` go to the model, the rest to the dynamics.
    """
    import jax

    import wnjax._nets.parameterize as _parameterize
    from wnjax._analysis.diagnostics import summaries
    from wnjax._dynamics.batched import traced_gradient_descent
    from wnjax._dynamics.flow import gradient_flow
    from wnjax._losses import get_loss
    from wnjax._nets.models import MLP, homogeneity_degree

    kind = settings.get("sweep", {}).get("dynamics", "flow")
    if kind not in DYNAMICS:
        raise ValueError(f"[sweep] dynamics must be one of {DYNAMICS}, got {kind!r}.")
    model_fixed = dict(settings.get("model", {}))
    dyn_fixed = dict(settings.get("dynamics", {}))
    loss = get_loss(dyn_fixed.get("loss", "exponential"))

    def run(key, cfg):
        model_cfg = {**model_fixed, **{k: v for k, v in cfg.items() if k in MODEL_KEYS}}
        name = cfg.get("parameterization", model_cfg.pop("parameterization", "ewn"))
        dyn = {**dyn_fixed}
        dyn.update(
            {k: v for k, v in cfg.items() if k not in MODEL_KEYS and k != "parameterization"}
        )
        if name not in PARAMETERIZATIONS:
            raise InvalidInput(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {name!r}."
            )
        build = dict(
            in_size=X.shape[1],
            width=int(model_cfg.get("width", 8)),
            depth=int(model_cfg.get("depth", 2)),
            out_size=int(model_cfg.get("out_size", 1)),
            activation=model_cfg.get("activation", "relu"),
        )
        with jax.ensure_compile_time_eval():  # the degree depends on the architecture only
            degree = homogeneity_degree(MLP(**build, key=jax.random.key(0)), X[:8], rtol=1e-5)
        model = MLP(**build, init_scale=model_cfg.get("init_scale", 1.0), key=key)
        p = getattr(_parameterize, name)(model)
        if kind == "flow":
            r = gradient_flow(p, X, y, degree=degree, throw=False, save_states=False, **dyn)
            extra = {"final_log_t": r.final_log_t, "num_steps": r.stats["num_steps"]}
            traj = {"log_t": r.log_t}
        else:
            r = traced_gradient_descent(p, X, y, degree=degree, **dyn)
            extra = {"num_steps": r.num_steps, "stop_code": r.stop_code}
            traj = {"steps": r.steps}
        final = summaries(r.final, X, y, loss, degree)
        return {
            "final_log_loss": r.final_log_loss,
            "final_min_margin": final["min_margin"],
            "final_normalized_margin": final["normalized_margin"],
            "final_weight_norm": final["weight_norm"],
            "ok": r.ok,
            "reached_target": r.reached_target,
            **extra,
            "log_loss": r.log_loss,
            "normalized_margin": r.summaries["normalized_margin"],
            "neuron_norms": r.summaries["neuron_norms"],
            **traj,
        }

    return run


def _custom_run(spec: str, settings: dict, X, y):
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"[sweep] run must be 'module:function', got {spec!r}.")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(settings, X, y)


def run(args: argparse.Namespace) -> int:
    import jax

    if args.coordinator or args.num_processes:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    from wnjax._sweeps.sweep import plot_bands, sweep

    settings = load_config(args.config, args.set)
    sw = dict(settings.get("sweep", {}))
    out = args.out or sw.get("out")
    if out is None:
        raise InvalidInput("give a results directory: [sweep] out = '...' or --out DIR.")
    seeds = args.seeds if args.seeds is not None else sw.get("seeds", 8)
    X, y = load_data(settings.get("data", {}))
    if "run" in sw:
        fn, run_name = _custom_run(sw["run"], settings, X, y), sw["run"]
    else:
        fn, run_name = make_run(settings, X, y), f"wnjax.sweep_cli:{sw.get('dynamics', 'flow')}"
    # Everything that changes the numbers is in the manifest; where results go is not.
    identity = {k: v for k, v in settings.items() if k not in ("sweep", "grid")}
    identity["sweep"] = {k: v for k, v in sw.items() if k in ("dynamics", "run")}
    import wnjax._runtime.interrupt as _interrupt

    def partial():
        print(
            f"PARTIAL: interrupted; the finished chunks are stored in {out}/chunks (no "
            "table.csv yet). Rerun the same command to resume."
        )

    with _interrupt.handling(on_timeout=partial if jax.process_index() == 0 else None):
        result = sweep(
            fn,
            seeds,
            settings.get("grid", {}),
            out=out,
            static=sw.get("static"),
            batch_size=args.batch_size or sw.get("batch_size", 16),
            chunk_size=args.chunk_size or sw.get("chunk_size"),
            devices=args.devices,
            config=identity,
            run_name=run_name,
            overwrite=args.overwrite,
            allow_version_change=args.allow_version_change,
            progress=not args.no_progress,
        )
    if result.interrupted:
        if jax.process_index() == 0:
            partial()
            if len(result):
                print(
                    result.summary(
                        [k for k in ("final_log_loss", "num_steps", "ok") if k in result.table]
                        or None
                    )
                )
            sys.stdout.flush()
        return _interrupt.exit_code()
    if jax.process_index() != 0:
        return 0
    for name in sw.get("plot", []):
        x = sw.get("plot_x")
        plot_bands(result, name, x=x, out=os.path.join(out, f"band_{name.replace('/', '_')}.png"))
    has_target = any("target_log_loss" in settings.get(k, {}) for k in ("dynamics", "grid"))
    scalars = [
        k
        for k in ("final_log_loss", "final_normalized_margin", "num_steps", "reached_target", "ok")
        if k in result.table and (k != "reached_target" or has_target)
    ]
    print(
        f"{len(result)} runs ({len(result.cells)} compiled cells) in {result.elapsed:.1f} s "
        f"on {args.devices or len(jax.devices())} device(s); table: {out}/table.csv"
    )
    print(result.summary(scalars or None))
    failed = 0
    if "ok" in result.table:
        import numpy as np

        ok = np.asarray(result.table["ok"], bool)
        failed = int(np.sum(~ok))
        if failed:
            print(f"{failed} of {len(result)} runs failed (ok = 0 in the table).")
        if has_target and "reached_target" in result.table:
            short = int(np.sum(ok & ~np.asarray(result.table["reached_target"], bool)))
            if short:
                print(
                    f"{short} of {len(result)} runs ended without reaching the target "
                    "(reached_target = 0, ok = 1: a stall at a stationary point, or the end "
                    "of the clock t1)."
                )
    sys.stdout.flush()
    return 1 if failed else 0
