"""Run every benchmark (``make bench``); ``--quick`` and ``--float32`` pass through.

    python benchmarks/run_all.py [--quick] [--float32] [--only NAME ...]
    python benchmarks/run_all.py --gpu        # on a GPU: 1, 2, 4 and 5 in float64 and float32

Runs on a GPU write ``results/NAME.gpu-float64.json`` and ``NAME.gpu-float32.json`` beside the
CPU figures (``_common.result_name``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = [
    "gf_vs_torchdiffeq",
    "gd_vs_torch",
    "gd_block_step",
    "linsep_pipeline",
    "scaling",
    "roofline",
]
GPU_SCRIPTS = [
    "gf_vs_torchdiffeq",
    "gd_vs_torch",
    "scaling",
    "roofline",
]  # benchmarks 1, 2, 4 and 5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", default=None, choices=SCRIPTS)
    p.add_argument("--float32", action="store_true")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU set: benchmarks 1, 2, 4, 5, each in float64 and float32",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    failed = []
    if args.gpu:
        runs = [(n, f32) for f32 in (False, True) for n in args.only or GPU_SCRIPTS]
    else:
        runs = [(n, args.float32) for n in args.only or SCRIPTS]
    for name, f32 in runs:
        cmd = [sys.executable, os.path.join(HERE, f"{name}.py")]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--float32"] if f32 else []
        cmd += ["--out", args.out] if args.out else []
        name = f"{name} (float32)" if f32 else name
        print(f"=== {name} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        print(f"=== {name}: exit {code} in {time.perf_counter() - t0:.1f} s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
