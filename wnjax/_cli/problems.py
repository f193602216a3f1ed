"""``wnjax problems``: run the problem zoo and print one row per problem as it finishes.

Each problem (``wnjax.problems``) integrates its gradient flow with the library's defaults and
compares the end with a reference computed without the flow. The table has the problem's
name, the solver's steps, the wall time (compilation included), the error, the tolerance and
whether the check passed. ``<out>/results.json`` holds ``{"metadata": ..., "results": [...]}``:
the size, seed, solver, JAX version, backend and float dtype, then one
``ProblemResult.as_dict()`` per problem (non-finite numbers written as ``null``). A problem
that raises is a failed row carrying the exception's message. The exit status is 0 when every
problem passes, else 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

HELP = "run the problem zoo: implicit-bias theorems checked against independent references"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        choices=("test", "full"),
        default="full",
        help="problem size: 'test' (small, quick) or 'full' (default)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these problems (default: all of them)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initial weights")
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "problems"),
        help="results directory (default: runs/problems)",
    )
    parser.add_argument(
        "--solver",
        default=None,
        help="override the default solver (a wnjax.gradient_flow solver name)",
    )


def _failed(name: str, error: BaseException, wall: float, problem=None):
    """A failed ``ProblemResult`` for a problem that raised."""
    from wnjax.problems import ProblemResult

    return ProblemResult(
        name=name,
        steps=0,
        wall_s=wall,
        final_log_loss=math.nan,
        reached_target=False,
        error=math.nan,
        tolerance=math.nan if problem is None else float(problem.tolerance),
        passed=False,
        metric="" if problem is None else problem.metric,
        message=f"{type(error).__name__}: {error}",
        stats={},
    )


def run_one(name: str, size: str, seed: int, overrides: dict):
    """``wnjax.problems.run(make(name, size, seed), **overrides)``; an exception becomes a failed
    row with its message."""
    from wnjax import problems

    start = time.perf_counter()
    problem = None
    try:
        problem = problems.make(name, size, seed)
        return problems.run(problem, **overrides)
    except Exception as e:  # noqa: BLE001 - reported as a failed row, not a traceback
        return _failed(name, e, time.perf_counter() - start, problem)


def _row(cells, widths) -> str:
    return "  ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths))
    )


def metadata(args: argparse.Namespace) -> dict:
    """The run's settings and environment: size, seed, solver, JAX version, backend, dtype."""
    import jax
    import jax.numpy as jnp

    return {
        "size": args.size,
        "seed": args.seed,
        "solver": args.solver or "default",
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "dtype": str(jnp.dtype(jnp.result_type(float))),
    }


def run(args: argparse.Namespace) -> int:
    from wnjax import problems
    from wnjax._sweeps.store import atomic_write_bytes
    from wnjax.experiments._report import json_text

    names = list(args.only) if args.only else problems.names()
    unknown = [n for n in names if n not in problems.names()]
    if unknown:
        from wnjax._runtime.errors import InvalidInput

        raise InvalidInput(
            f"unknown problem(s) {unknown}; choose from {problems.names()} "
            "(--only NAME ..., or leave --only out for all)."
        )
    overrides = {} if args.solver is None else {"solver": args.solver}
    header = ("problem", "steps", "wall [s]", "error", "tolerance", "pass")
    widths = (max(len(header[0]), *(len(n) for n in names)), 9, 9, 10, 10, 5)
    print(f"wnjax problems: size={args.size}, seed={args.seed}, solver={args.solver or 'default'}")
    print(_row(header, widths))
    sys.stdout.flush()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = []
    for name in names:
        r = run_one(name, args.size, args.seed, overrides)
        results.append(r)
        line = _row(
            (
                r.name,
                r.steps,
                f"{r.wall_s:.2f}",
                f"{r.error:.3e}",
                f"{r.tolerance:.1e}",
                "yes" if r.passed else "NO",
            ),
            widths,
        )
        if not r.passed:
            line += f"  {r.message}"
        print(line)
        sys.stdout.flush()
        # after every problem, so that a stopped run keeps what it has done
        record = {"metadata": metadata(args), "results": [r.as_dict() for r in results]}
        atomic_write_bytes(path, json_text(record, indent=2).encode())
    passed = sum(r.passed for r in results)
    print(f"{passed}/{len(results)} passed; results: {path}")
    return 0 if passed == len(results) else 1
