"""``wnjax problems``: run the problem zoo and print one row per problem as it finishes.

Each problem (``wnjax.problems``) integrates its gradient flow with the library's defaults and
compares the end with a reference computed without the flow. The table has the problem's
name, the solver's steps, the wall time (compilation included), the error, the tolerance and
whether the check passed. ``<out>/results.json`` holds ``{"metadata": ..., "results": [...],
"partial": ...}``: the size, seed, solver, JAX version, backend and float dtype, then one
``ProblemResult.as_dict()`` per problem (non-finite numbers written as ``null``), and whether
problems are missing (true while the run goes on, with the ones ``not_run``). A problem
that raises is a failed row carrying the exception's message. The exit status is 0 when every
problem passes, else 1.

SIGINT/SIGTERM stop the run before the next problem (a solve in progress stops at its next
check, its row marked ``interrupted``, with no verdict): ``results.json`` stays partial, a
PARTIAL line names what finished, and the exit status is 128 + the signal.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import wnjax._runtime.interrupt as _interrupt

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
    row with its message; ``None`` when a stop request came while the problem was built."""
    from wnjax import problems

    start = time.perf_counter()
    problem = None
    try:
        problem = problems.make(name, size, seed)
        if _interrupt.requested():
            return None
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


def _pass_cell(r) -> str:
    if r.interrupted:
        return "stopped"
    return "yes" if r.passed else "NO"


def run(args: argparse.Namespace) -> int:
    from wnjax import problems
    from wnjax._sweeps.store import atomic_write_bytes, writable_dir
    from wnjax.experiments._report import json_text

    names = list(args.only) if args.only else problems.names()
    unknown = [n for n in names if n not in problems.names()]
    if unknown:
        from wnjax._runtime.errors import InvalidInput

        raise InvalidInput(
            f"unknown problem(s) {unknown}; choose from {problems.names()} "
            "(--only NAME ..., or leave --only out for all)."
        )
    writable_dir(args.out)
    overrides = {} if args.solver is None else {"solver": args.solver}
    header = ("problem", "steps", "wall [s]", "error", "tolerance", "pass")
    widths = (max(len(header[0]), *(len(n) for n in names)), 9, 9, 10, 10, 5)
    print(f"wnjax problems: size={args.size}, seed={args.seed}, solver={args.solver or 'default'}")
    print(_row(header, widths))
    sys.stdout.flush()
    path = os.path.join(args.out, "results.json")
    meta = metadata(args)
    results = []

    def write(partial: bool) -> None:
        record = {"metadata": meta, "results": [r.as_dict() for r in results], "partial": partial}
        if partial:
            record["not_run"] = names[len(results) :]
        atomic_write_bytes(path, json_text(record, indent=2).encode())

    def summary() -> str:
        done = [r.name for r in results if not r.interrupted]
        cut = [r.name for r in results if r.interrupted]
        return (
            "PARTIAL: interrupted (SIGINT/SIGTERM); finished: "
            + (", ".join(done) or "none")
            + (f"; stopped early (no verdict): {', '.join(cut)}" if cut else "")
            + f"; not run: {', '.join(names[len(results) :]) or 'none'}. "
            f"{path} holds the finished rows, marked partial."
        )

    def on_timeout() -> None:  # a problem still compiling when the grace period ends
        write(True)
        print(summary())

    with _interrupt.handling(on_timeout=on_timeout):
        for name in names:
            if _interrupt.requested():
                break
            r = run_one(name, args.size, args.seed, overrides)
            if r is None:
                break
            results.append(r)
            cells = (r.name, r.steps, f"{r.wall_s:.2f}", f"{r.error:.3e}", f"{r.tolerance:.1e}")
            line = _row((*cells, _pass_cell(r)), widths)
            if not r.passed:
                line += f"  {r.message}"
            print(line)
            sys.stdout.flush()
            # after every problem, so that a stopped run keeps what it has done
            write(len(results) < len(names) or r.interrupted)
    if len(results) < len(names) or any(r.interrupted for r in results):
        _interrupt.stopping()
        write(True)
        print(summary())
        sys.stdout.flush()
        return _interrupt.exit_code()
    passed = sum(bool(r.passed) for r in results)
    print(f"{passed}/{len(results)} passed; results: {path}")
    return 0 if passed == len(results) else 1
