"""``wnjax equivalence``: check numerically that EWN gradient flow equals unnormalized flow with
per-neuron rate ``||w_u||^2`` (``wnjax.equivalence_check``), print the report (or JSON), and exit 0
when EWN matches and SWN differs, 1 otherwise.

SIGINT/SIGTERM stop the check at its next safe point: the finished runs' numbers are printed
with ``"interrupted": true`` (JSON) or a PARTIAL line (report) and no verdict, and the exit
status is 128 + the signal.
"""

from __future__ import annotations

import argparse
import json

from wnjax._cli import positive_float, positive_int

HELP = "check numerically that EWN gradient flow = unnormalized flow with rate ||w_u||^2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--n", type=positive_int, default=16, help="number of points")
    parser.add_argument(
        "--d", type=positive_int, default=4, help="input dimension (CNN: image side)"
    )
    parser.add_argument("--width", type=positive_int, default=8)
    parser.add_argument("--depth", type=positive_int, default=2, help="number of weight layers")
    parser.add_argument("--activation", default="relu2")
    parser.add_argument("--loss", default="exponential")
    parser.add_argument("--t1", type=positive_float, default=10.0, help="flow horizon")
    parser.add_argument(
        "--rtol", type=positive_float, default=None, help="default: 1e-10 (float32: 1e-5)"
    )
    parser.add_argument(
        "--atol", type=positive_float, default=None, help="default: 1e-12 (float32: 1e-7)"
    )
    parser.add_argument("--etas", type=positive_float, nargs="+", default=[0.01, 0.005, 0.0025])
    parser.add_argument(
        "--gd-horizon", type=positive_float, default=1.0, help="T = k eta for the GD checks"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import jax

    import wnjax._runtime.interrupt as _interrupt
    from wnjax._analysis.equivalence import equivalence_check, format_report

    def on_timeout() -> None:  # still compiling when the grace period ends
        if args.json:
            print(json.dumps({"interrupted": True, "equivalent": None, "swn_differs": None}))
        else:
            print("PARTIAL: interrupted (SIGINT/SIGTERM) before the check finished; no verdict.")

    with _interrupt.handling(on_timeout=on_timeout):
        r = equivalence_check(
            jax.random.key(args.seed),
            model=args.model,
            n=args.n,
            d=args.d,
            width=args.width,
            depth=args.depth,
            activation=args.activation,
            loss=args.loss,
            t1=args.t1,
            rtol=args.rtol,
            atol=args.atol,
            etas=tuple(args.etas),
            horizon=args.gd_horizon,
        )
    if r["interrupted"]:
        _interrupt.stopping()
    print(json.dumps(r) if args.json else format_report(r))
    if r["interrupted"]:
        return _interrupt.exit_code()
    return 0 if (r["equivalent"] and r["swn_differs"]) else 1
