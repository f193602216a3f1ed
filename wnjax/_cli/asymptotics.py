"""``wnjax asymptotics``: lin-sep under loss-normalized gradient flow, EWN vs SWN vs standard.

Runs ``d theta/ds = -grad log L`` to a target ``log L`` (default -300) and writes under
``--out`` (default ``runs/asymptotics/``): relative norms against ``log t``, the relation plots
(``log ||grad_u L||`` against ``log ||w_u||`` with the ``x + y = const`` and ``y - x = const``
lines), the normalized margin, the alignment, and ``diagnostics.json`` with the final values.
Exit 1 if a run failed.
"""

from __future__ import annotations

import argparse
import os

from wnjax._cli import positive_int

HELP = "lin-sep under loss-normalized gradient flow to a target log L: figures + diagnostics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", type=float, default=-300.0, help="target log L (default -300)")
    parser.add_argument("--seed", type=int, default=0, help="data and init seed")
    parser.add_argument("--width", type=positive_int, default=8, help="hidden neurons (default 8)")
    parser.add_argument("--n-save", type=positive_int, default=64, help="save levels of log L")
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=1_000_000,
        help="solver step budget (SWN to -10,000 takes about 540,000)",
    )
    parser.add_argument(
        "--solver",
        default="auto",
        help="auto (default: wnjax.AutoSwitch, explicit Tsit5 or Dopri5 while the flow is "
        "not stiff, Kvaerno5 while it is), tsit5, or stiff (Kvaerno5)",
    )
    parser.add_argument("--threshold", type=float, default=0.1, help="survivor relative norm")
    parser.add_argument("--out", default=os.path.join("runs", "asymptotics"), help="output folder")


def run(args: argparse.Namespace) -> int:
    from wnjax._analysis.asymptotics import figures, lin_sep_asymptotics
    from wnjax._sweeps.store import atomic_write_bytes
    from wnjax.experiments._report import json_text

    os.makedirs(args.out, exist_ok=True)

    def on_run(name, r, seconds):
        print(f"{name:9s} {args.solver}: {r.message} ({seconds:.1f} s with compilation)")

    runs, report, X, y = lin_sep_asymptotics(
        target=args.target,
        seed=args.seed,
        width=args.width,
        n_save=args.n_save,
        max_steps=args.max_steps,
        solver=args.solver,
        threshold=args.threshold,
        on_run=on_run,
    )
    report["figures"] = figures(runs, X, y, args.out)
    path = os.path.join(args.out, "diagnostics.json")
    atomic_write_bytes(path, json_text(report, indent=2).encode())
    print(f"wrote {path} and {len(report['figures'])} figures")
    failed = [name for name, r in runs.items() if not bool(r.ok)]
    if failed:
        print(f"failed runs: {', '.join(failed)}; their figures show the partial results.")
        return 1
    return 0
