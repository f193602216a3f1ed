"""Run every benchmark (``make bench``); ``--quick`` and ``--float32`` pass through.

    python benchmarks/run_all.py [--quick] [--float32] [--only NAME ...]
    python benchmarks/run_all.py --gpu        # on a GPU: the GPU set in float64 and float32
    python benchmarks/run_all.py --gpu --float32   # the GPU set in float32 only

Runs on a GPU write ``results/NAME.gpu-float64.json`` and ``NAME.gpu-float32.json`` beside the
CPU figures (``_common.result_name``). The GPU set runs each script in float64 and then in
float32, the most wanted script first. ``--deadline SECONDS`` bounds the whole run: a script
still running then is stopped, and none starts with under 20 s left; ``--archive FILE`` writes
the results folder as a ``.tar.gz`` after every script, so that a run stopped from outside keeps
what it finished.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = [
    "seeds_one_program",
    "gf_vs_torchdiffeq",
    "gd_vs_torch",
    "gd_block_step",
    "linsep_pipeline",
    "scaling",
    "roofline",
    "compile_codegen",
]
GPU_SCRIPTS = [
    "seeds_one_program",
    "gf_vs_torchdiffeq",
    "gd_vs_torch",
    "roofline",
    "scaling",
]


def archive(folder: str, path: str) -> None:
    """Write ``folder`` as the ``.tar.gz`` ``path`` (through a temporary file, so that ``path``
    always holds a whole archive)."""
    tmp = f"{path}.part"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(folder, arcname=os.path.basename(os.path.normpath(folder)))
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", default=None, choices=SCRIPTS)
    p.add_argument("--float32", action="store_true")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU set, each in float64 and float32 (with --float32: float32 only)",
    )
    p.add_argument("--out", default=None)
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole run")
    p.add_argument("--archive", default=None, help="a .tar.gz of --out after every script")
    args = p.parse_args()
    if args.archive and not args.out:
        p.error("--archive needs --out")
    start = time.perf_counter()
    failed = []
    if args.gpu:
        dtypes = (True,) if args.float32 else (False, True)
        runs = [(n, f32) for n in args.only or GPU_SCRIPTS for f32 in dtypes]
    else:
        runs = [(n, args.float32) for n in args.only or SCRIPTS]
    for name, f32 in runs:
        cmd = [sys.executable, os.path.join(HERE, f"{name}.py")]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--float32"] if f32 else []
        cmd += ["--out", args.out] if args.out else []
        name = f"{name} (float32)" if f32 else name
        left = None if args.deadline is None else args.deadline - (time.perf_counter() - start)
        if left is not None and left < 20:
            print(f"=== {name}: not started, {left:.0f} s left ===", flush=True)
            failed.append(name)
            continue
        print(f"=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            code = subprocess.run(cmd, timeout=left).returncode
        except subprocess.TimeoutExpired:
            code = "stopped at the deadline"
        print(f"=== {name}: exit {code} in {time.perf_counter() - t0:.1f} s ===", flush=True)
        if code:
            failed.append(name)
        if args.archive and os.path.isdir(args.out):
            archive(args.out, args.archive)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
