"""Shared helpers of the benchmark scripts: set-up, timing, machine info, results files.

Every script times with ``median_time``: warm-up calls first (compilation happens there and is
timed separately), then the median of repeated calls, each ended by ``block_until_ready``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
GPU_NOT_MEASURED = "not measured: no GPU was lent to this task"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke runs")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    return p


def setup(args: argparse.Namespace) -> None:
    """float64 unless ``--float32``; set at the entry point, never at library import."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import jax

    jax.config.update("jax_enable_x64", not args.float32)


def force_host_devices(n: int | None = None) -> int:
    """Expose the CPU's cores as ``n`` JAX host devices (default: all cores), so that a seed
    sweep can shard its seeds over them. Must run before ``jax`` is imported; GPUs are unaffected.
    """
    if "jax" in sys.modules:
        raise RuntimeError("force_host_devices must be called before jax is imported")
    n = n or os.cpu_count() or 1
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return n


def interleaved(fns: dict[str, Callable[[], object]], *, rounds: int = 5) -> dict[str, list[float]]:
    """Wall times of each ``fns[name]()`` over ``rounds`` rounds, the calls of one round in turn.

    On a machine whose speed drifts (a shared VM), interleaving puts every candidate under the
    same conditions in each round, so per-round ratios are far steadier than ratios of timings
    taken minutes apart. Every other round runs the candidates in reverse order, so that no
    candidate always runs right after the same one (a wnjax flow timed right after a PyTorch
    solve ran ~6% slower than the same flow timed after another wnjax call). Call each ``fn``
    once beforehand to compile and warm it up.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(times: list[float], scale: float = 1.0) -> dict:
    """Median, min and max of ``times`` multiplied by ``scale``."""
    return {
        "median": statistics.median(times) * scale,
        "min": min(times) * scale,
        "max": max(times) * scale,
        "repeats": len(times),
    }


def gpu_status() -> str | dict:
    """What a results file says about the GPU: the device it ran on, or why there is none.

    On a GPU backend the file's figures are the GPU's; on CPU the GPU is "not measured".
    """
    import jax

    if jax.default_backend() == "cpu":
        return GPU_NOT_MEASURED
    devices = jax.devices()
    return {
        "measured": True,
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "count": len(devices),
    }


def result_name(name: str, float32: bool) -> str:
    """``NAME`` for the CPU float64 run; ``NAME.BACKEND-DTYPE`` otherwise (``NAME.gpu-float32``),
    so that GPU and float32 runs sit beside the CPU float64 figures instead of replacing them."""
    import jax

    backend = jax.default_backend()
    if backend == "cpu" and not float32:
        return name
    return f"{name}.{backend}-{'float32' if float32 else 'float64'}"


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """CPU, core count, load, and the versions of everything timed."""
    import jax

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": {
            k: _version(k)
            for k in (
                "wnjax",
                "jax",
                "jaxlib",
                "equinox",
                "diffrax",
                "optax",
                "numpy",
                "torch",
                "torchdiffeq",
            )
        },
        "gpu": gpu_status(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> dict:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls (seconds).

    ``fn`` must block until its result is ready (``jax.block_until_ready``).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "repeats": repeats,
    }


def first_call_time(fn: Callable[[], object]) -> float:
    """Wall time of the first call (compilation plus one execution), in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given columns."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_result(name: str, args: argparse.Namespace, payload: dict) -> str:
    """Write ``NAME.json`` (machine, versions, settings and figures); return its path.

    Quick runs go to ``results/quick/`` unless ``--out`` is given, so they never overwrite the
    full runs' numbers. GPU and float32 runs are named by ``result_name``.
    """
    out = args.out or (os.path.join(RESULTS, "quick") if args.quick else RESULTS)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{result_name(name, args.float32)}.json")
    doc = {
        "benchmark": name,
        "quick": bool(args.quick),
        "dtype": "float32" if args.float32 else "float64",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **payload,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=float)
    print(f"wrote {path}")
    return path
