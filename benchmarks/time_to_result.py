"""Time to first result: cold and warm runs of the CLI, and the cost of ``import wnjax``.

Each command runs in a fresh process, as a user would run it:

- ``wnjax reproduce lin-sep --seeds 100`` and ``wnjax demo``, each three ways per round:
  ``off`` (``WNJAX_COMPILATION_CACHE=0``: no persistent cache), ``cold`` (the cache in a fresh
  empty directory: every program is compiled and written) and ``warm`` (the same directory
  again: every program is read back). Rounds are interleaved (off, cold, warm, then the next
  round), so that a drift in the machine's speed touches all three alike; the figures are
  medians over rounds, and ``warm_over_cold`` is the median of the per-round ratios.
- ``python -c "import jax"`` against ``python -c "import wnjax"``, interleaved, median of
  ``--import-rounds``; reported with the heavy packages that ``import wnjax`` loaded.

Goals: a warm lin-sep run takes at most a third of a cold one; a warm ``wnjax demo`` under 15 s;
``import wnjax`` at most 0.3 s beyond ``import jax``. ``--quick`` (a smoke run): lin-sep with 4
seeds, one round, no demo.

    python benchmarks/time_to_result.py [--quick] [--rounds N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _common as C

HEAVY = (
    "equinox",
    "diffrax",
    "optax",
    "optimistix",
    "lineax",
    "scipy",
    "sklearn",
    "matplotlib",
    "tqdm",
    "wnjax._dynamics.flow",
    "wnjax._dynamics.descent",
    "wnjax.experiments",
)
MODES = ("off", "cold", "warm")


def _env(cache: str) -> dict:
    """The environment of a timed run: wnjax's cache at ``cache`` ('0': off), JAX's own cache
    settings removed (wnjax leaves a cache that JAX already has alone)."""
    env = dict(os.environ, MPLBACKEND="Agg", WNJAX_COMPILATION_CACHE=cache)
    for k in (
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
        "JAX_ENABLE_COMPILATION_CACHE",
    ):
        env.pop(k, None)
    return env


def _wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def _entries(path: str) -> dict:
    """JAX's entries and wnjax's kept programs (``programs/``) in the cache at ``path``."""
    files = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
    programs = [f for f in files if os.path.basename(os.path.dirname(f)) == "programs"]
    return {
        "entries": len(files) - len(programs),
        "programs": len(programs),
        "bytes": sum(os.path.getsize(f) for f in files),
    }


def cli_times(name: str, args_: list[str], rounds: int) -> dict:
    """``off``, ``cold`` and ``warm`` wall times of ``wnjax ARGS --out TMP``, interleaved."""
    times = {m: [] for m in MODES}
    cache_size = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            for mode in MODES:
                out = os.path.join(tmp, f"out-{mode}")
                cmd = [sys.executable, "-m", "wnjax", *args_, "--out", out]
                times[mode].append(_wall(cmd, _env("0" if mode == "off" else cache)))
                shutil.rmtree(out, ignore_errors=True)
            cache_size.append(_entries(cache))
        print(f"{name}: " + ", ".join(f"{m} {times[m][-1]:.1f} s" for m in MODES), flush=True)
    ratios = [w / c for w, c in zip(times["warm"], times["cold"])]
    return {
        "command": "wnjax " + " ".join(args_),
        **{m: C.summary(times[m]) for m in MODES},
        "warm_over_cold": statistics.median(ratios),
        "warm_over_cold_rounds": ratios,
        "cold_over_off": statistics.median(c / o for c, o in zip(times["cold"], times["off"])),
        "cache": cache_size[-1],
    }


def import_times(rounds: int) -> dict:
    """``import jax`` against ``import wnjax`` in fresh processes, interleaved."""
    probe = f"import sys, wnjax; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    fns = {
        "jax": [sys.executable, "-c", "import jax"],
        "wnjax": [sys.executable, "-c", "import wnjax"],
    }
    env = _env(tempfile.mkdtemp())
    for cmd in fns.values():  # warm the file system cache
        _wall(cmd, env)
    times = C.interleaved({k: (lambda c=c: _wall(c, env)) for k, c in fns.items()}, rounds=rounds)
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    shutil.rmtree(env["WNJAX_COMPILATION_CACHE"], ignore_errors=True)
    extra = [w - j for w, j in zip(times["wnjax"], times["jax"])]
    return {
        "jax": C.summary(times["jax"]),
        "wnjax": C.summary(times["wnjax"]),
        "wnjax_minus_jax_s": statistics.median(extra),
        "wnjax_minus_jax_rounds": extra,
        "heavy_modules_loaded": [m for m in loaded.split(",") if m],
    }


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="rounds of the CLI runs (default 3)")
    p.add_argument("--import-rounds", type=int, default=None, help="default 7")
    p.add_argument("--seeds", type=int, default=None, help="lin-sep seeds (default 100)")
    args = p.parse_args()
    C.setup(args)
    rounds = args.rounds or (1 if args.quick else 3)
    seeds = args.seeds or (4 if args.quick else 100)
    dtype = ["--float32"] if args.float32 else []
    fig = {"python_dont_write_bytecode": os.environ.get("PYTHONDONTWRITEBYTECODE")}
    fig["import"] = import_times(args.import_rounds or (2 if args.quick else 7))
    fig["lin_sep"] = cli_times(
        "lin-sep", ["reproduce", "lin-sep", "--seeds", str(seeds), *dtype], rounds
    )
    fig["goals"] = {
        "lin_sep_warm_at_most_a_third_of_cold": fig["lin_sep"]["warm_over_cold"] <= 1 / 3,
        "import_wnjax_at_most_0.3_s_beyond_jax": fig["import"]["wnjax_minus_jax_s"] <= 0.3,
    }
    jobs = ("lin_sep",)
    if args.quick:  # a smoke run: the demo's three fresh runs would double its time
        fig["demo"] = "not measured: --quick"
    else:
        fig["demo"] = cli_times("demo", ["demo", *dtype], rounds)
        fig["goals"]["demo_warm_under_15_s"] = fig["demo"]["warm"]["median"] < 15.0
        jobs += ("demo",)
    rows = [
        {
            "what": f"{k} {m}",
            "median_s": fig[k][m]["median"],
            "min_s": fig[k][m]["min"],
            "max_s": fig[k][m]["max"],
        }
        for k in jobs
        for m in MODES
    ]
    rows += [
        {
            "what": f"import {k}",
            "median_s": fig["import"][k]["median"],
            "min_s": fig["import"][k]["min"],
            "max_s": fig["import"][k]["max"],
        }
        for k in ("jax", "wnjax")
    ]
    print(C.table(rows, ["what", "median_s", "min_s", "max_s"]))
    print(
        "warm/cold: "
        + ", ".join(f"{k} {fig[k]['warm_over_cold']:.2f}" for k in jobs)
        + f"; import wnjax - import jax: {fig['import']['wnjax_minus_jax_s']:.3f} s; "
        + f"goals {fig['goals']}"
    )
    C.write_result("time_to_result", args, {**fig, "gpu": C.gpu_status()})


if __name__ == "__main__":
    main()
