"""``wnjax asymptotics``: lin-sep under loss-normalized gradient flow, EWN vs SWN vs standard.

Runs ``d theta/ds = -grad log L`` to a target ``log L`` (default -300) and writes under
``--out`` (default ``runs/asymptotics/``): relative norms against ``log t``, the relation plots
(``log ||grad_u L||`` against ``log ||w_u||`` with the ``x + y = const`` and ``y - x = const``
lines), the normalized margin, the alignment, and ``diagnostics.json`` with the final values.
Exit 1 if a run failed.

SIGINT/SIGTERM stop the running flow at its next check and start no other: the runs so far
(the stopped one marked ``interrupted``) are drawn and written, ``diagnostics.json`` says
``"partial": true`` and lists the runs ``not_run``, a PARTIAL line names what finished, and the
exit status is 128 + the signal.
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
    import wnjax._runtime.interrupt as _interrupt
    from wnjax._analysis.asymptotics import PARAMETERIZATIONS, figures, lin_sep_asymptotics
    from wnjax._sweeps.store import atomic_write_bytes, writable_dir
    from wnjax.experiments._report import json_text

    writable_dir(args.out)
    path = os.path.join(args.out, "diagnostics.json")
    report: dict = {}

    def on_run(name, r, seconds):
        print(f"{name:9s} {args.solver}: {r.message} ({seconds:.1f} s with compilation)")

    def write(partial: bool) -> None:
        record = {**report, "runs": dict(report.get("runs", {})), "partial": partial}
        if partial:
            record["interrupted"] = True
            record["not_run"] = [k for k in PARAMETERIZATIONS if k not in record["runs"]]
        atomic_write_bytes(path, json_text(record, indent=2).encode())

    def summary(record: dict) -> str:
        runs = record.get("runs", {})
        done = [k for k, v in runs.items() if not v.get("interrupted")]
        cut = [k for k, v in runs.items() if v.get("interrupted")]
        return (
            "PARTIAL: interrupted (SIGINT/SIGTERM); finished: "
            + (", ".join(done) or "none")
            + (f"; stopped early: {', '.join(cut)}" if cut else "")
            + f"; not run: {', '.join(k for k in PARAMETERIZATIONS if k not in runs) or 'none'}. "
            + f"{path} holds the runs above, marked partial."
        )

    def on_timeout() -> None:  # a flow still compiling when the grace period ends
        write(True)
        print(summary(report))

    with _interrupt.handling(on_timeout=on_timeout):
        runs, report, X, y = lin_sep_asymptotics(
            target=args.target,
            seed=args.seed,
            width=args.width,
            n_save=args.n_save,
            max_steps=args.max_steps,
            solver=args.solver,
            threshold=args.threshold,
            on_run=on_run,
            report=report,
        )
    partial = bool(report["interrupted"])
    if partial:
        _interrupt.stopping()
    report["figures"] = figures(runs, X, y, args.out) if runs else []
    write(partial)
    print(f"wrote {path} and {len(report['figures'])} figures")
    if partial:
        print(summary(report))
        return _interrupt.exit_code()
    failed = [name for name, r in runs.items() if not bool(r.ok)]
    if failed:
        print(f"failed runs: {', '.join(failed)}; their figures show the partial results.")
        return 1
    return 0
