"""Cost of a seed sweep against the number of seeds S, and 8 forced CPU devices against 1.

For a lin-sep-size run (2-layer ReLU^2 MLP of width 8 with EWN on the 4 lin-sep points):

- GF: ``wnjax.gradient_flow``, plain time, ``t1`` fixed, rtol 1e-8 (1e-5 in float32);
- GD: ``wnjax.traced_gradient_descent``, a fixed number of steps.

For each S in 1, 4, 16, 64, 256, 1024 (``--max-seeds``), ``wnjax.sweep`` of S seeds: a first
call (compilation, or loading from the persistent cache, timed apart by the sweep as
``compile_seconds``), then ``--repeats`` calls, of which the median of the sweep's own
``elapsed`` (compiled execution, without compilation) is reported, per seed and per seed-step.
Run twice, in child processes: with 1 device and with 8 forced host devices (which share the
same cores, so this measures the overhead of dealing blocks out to devices, not a speed-up).

    python benchmarks/sweep_scaling.py [--quick] [--float32] [--max-seeds S]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

DEVICE_COUNTS = (1, 8)
GD_STEPS = 2000


def measure(args, seeds: list[int]) -> dict:
    """The sweeps of one child process (its device count set by ``XLA_FLAGS``)."""
    import jax
    import jax.numpy as jnp

    import wnjax

    X, y = wnjax.data.lin_sep(jax.random.key(0))
    X = X.astype(jnp.float32 if args.float32 else jnp.float64)
    y = y.astype(X.dtype)
    tol = dict(rtol=1e-5, atol=1e-7) if args.float32 else dict(rtol=1e-8, atol=1e-10)
    gd_steps = 200 if args.quick else GD_STEPS

    def flow(key, cfg):
        model = wnjax.MLP(2, 8, 2, activation="relu2", init_scale=cfg["init_scale"], key=key)
        r = wnjax.gradient_flow(
            wnjax.ewn(model),
            X,
            y,
            t1=50.0,
            **tol,
            n_save=16,
            save_states=False,
            max_steps=20000,
            throw=False,
        )
        return {"final_log_loss": r.final_log_loss, "num_steps": r.stats["num_steps"]}

    def descent(key, cfg):
        model = wnjax.MLP(2, 8, 2, activation="relu2", init_scale=cfg["init_scale"], key=key)
        r = wnjax.traced_gradient_descent(
            wnjax.ewn(model),
            X,
            y,
            num_steps=gd_steps,
            learning_rate=0.05,
            n_save=16,
            chunk_size=max(gd_steps // 4, 1),
        )
        return {"final_log_loss": r.final_log_loss}

    grid = {"init_scale": [1.0]}
    out = {"devices": jax.device_count(), "batch_size": args.batch_size, "runs": {}}
    for name, fn in (("gf", flow), ("gd", descent)):
        rows = []
        for S in seeds:

            def call():
                return wnjax.sweep(
                    fn,
                    S,
                    grid,
                    batch_size=min(args.batch_size, S),
                    chunk_size=max(args.batch_size * jax.device_count(), min(S, 256)),
                    progress=False,
                )

            t0 = time.perf_counter()
            first = call()
            first_wall = time.perf_counter() - t0
            elapsed = [call().elapsed for _ in range(args.repeats)]
            median = statistics.median(elapsed)
            steps = float(first.table["num_steps"].mean()) if name == "gf" else float(gd_steps)
            row = {
                "seeds": S,
                "seconds": C.summary(elapsed),
                "per_seed_ms": 1e3 * median / S,
                "per_seed_step_us": 1e6 * median / (S * steps),
                "mean_steps": steps,
                "first_call_seconds": first_wall,
                "compile_seconds": first.compile_seconds,
                # every seed's result, to compare across device counts (not written to the file)
                "final_log_loss": first.table["final_log_loss"].tolist(),
            }
            rows.append(row)
            print(
                f"[{out['devices']} dev] {name} S={S:5d}: {median:8.4f} s, "
                f"{row['per_seed_ms']:8.3f} ms/seed, {row['per_seed_step_us']:7.3f} us/seed-step",
                file=sys.stderr,
                flush=True,
            )
        out["runs"][name] = rows
    return out


def child(args, devices: int) -> dict:
    """``measure`` in a child process with ``devices`` forced host devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(devices)]
    cmd += ["--max-seeds", str(args.max_seeds), "--batch-size", str(args.batch_size)]
    cmd += ["--repeats", str(args.repeats)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--float32"] if args.float32 else []
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {devices}-device child exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--max-seeds", type=int, default=None, help="largest S (default 1024; 16 quick)")
    p.add_argument("--batch-size", type=int, default=None, help="vmap width (default 32; 8 quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per S (default 5)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.max_seeds = args.max_seeds or (16 if args.quick else 1024)
    args.batch_size = args.batch_size or (8 if args.quick else 32)
    args.repeats = args.repeats or (2 if args.quick else 5)
    seeds = [s for s in (1, 4, 16, 64, 256, 1024, 4096) if s <= args.max_seeds]
    if args.child:
        C.setup(args)
        print(json.dumps(measure(args, seeds)))
        return
    one, eight = (child(args, d) for d in DEVICE_COUNTS)
    ratio = {
        name: [
            {
                "seeds": a["seeds"],
                "eight_over_one": b["seconds"]["median"] / a["seconds"]["median"],
            }
            for a, b in zip(one["runs"][name], eight["runs"][name])
        ]
        for name in one["runs"]
    }
    # The same seeds give the same numbers on any number of devices, bit for bit.
    finals = {
        d: [x for name in r["runs"] for row in r["runs"][name] for x in row.pop("final_log_loss")]
        for d, r in zip(DEVICE_COUNTS, (one, eight))
    }
    diff = max(abs(a - b) for a, b in zip(*finals.values()))
    rows = [
        {
            "run": name,
            "S": a["seeds"],
            "1 dev ms/seed": round(a["per_seed_ms"], 3),
            "1 dev us/seed-step": round(a["per_seed_step_us"], 3),
            "8 dev ms/seed": round(b["per_seed_ms"], 3),
            "8/1": round(b["seconds"]["median"] / a["seconds"]["median"], 2),
        }
        for name in one["runs"]
        for a, b in zip(one["runs"][name], eight["runs"][name])
    ]
    print(C.table(rows, list(rows[0])))
    print(f"largest difference of a seed's final log L, 8 devices against 1: {diff:.3g}")
    C.write_result(
        "sweep_scaling",
        args,
        {
            "what": (
                "wnjax.sweep of S seeds of a lin-sep-size EWN run: median of the sweep's "
                "elapsed (compiled execution) over the repeats, with 1 and 8 forced host devices"
            ),
            "settings": {
                "max_seeds": args.max_seeds,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "gd_steps": 200 if args.quick else GD_STEPS,
            },
            "one_device": one,
            "eight_forced_cpu_devices": eight,
            "eight_over_one": ratio,
            "max_abs_diff_final_log_loss_8_vs_1": diff,
            "gpu": "not measured: this benchmark times forced CPU host devices",
        },
    )


if __name__ == "__main__":
    main()
