"""Run every benchmark (``make bench``); ``--quick`` passes through for a smoke run.

    python benchmarks/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ["gf_vs_torchdiffeq", "gd_vs_torch", "linsep_pipeline", "scaling", "roofline"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", default=None, choices=SCRIPTS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    failed = []
    for name in args.only or SCRIPTS:
        cmd = [sys.executable, os.path.join(HERE, f"{name}.py")]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--out", args.out] if args.out else []
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
