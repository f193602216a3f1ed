"""Cost of a seed sweep against the number of seeds S, its workers and 8 forced CPU devices.

For a lin-sep-size run (2-layer ReLU^2 MLP of width 8 with EWN on the 4 lin-sep points):

- GF: ``wnjax.gradient_flow``, plain time, ``t1`` fixed, rtol 1e-8 (1e-5 in float32);
- GD: ``wnjax.traced_gradient_descent``, a fixed number of steps.

For each S in 1, 4, 16, 64, 256, 1024 (``--max-seeds``), ``wnjax.sweep`` of S seeds: a first
call (compilation, or loading from the persistent cache, timed apart by the sweep as
``compile_seconds``), then ``--repeats`` calls, of which the median of the sweep's own
``elapsed`` (compiled execution, without compilation) is reported, per seed and per seed-step.
Run in child processes: one CPU device with ``wnjax.sweep``'s default workers (one block at
once per core), the same with one worker (one block at a time), and 8 forced host devices (which
share the same cores: the overhead of dealing blocks out to devices, not a speed-up). Every
configuration must give every seed the same final log L, bit for bit.

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

# (name, forced host devices, workers per device: None for wnjax.sweep's default)
CONFIGS = (
    ("one_device", 1, None),
    ("one_device_one_worker", 1, 1),
    ("eight_forced_cpu_devices", 8, None),
)
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

    from wnjax._sweeps.sweep import _workers_per_device

    grid = {"init_scale": [1.0]}
    workers = _workers_per_device(jax.devices(), args.workers)
    out = {
        "devices": jax.device_count(),
        "workers_per_device": workers,
        "batch_size": args.batch_size,
        "runs": {},
    }
    for name, fn in (("gf", flow), ("gd", descent)):
        rows = []
        for S in seeds:
            # a block of at most S lanes, a chunk of one block per worker or up to 256 rows
            batch = min(args.batch_size, S)
            chunk = max(batch * jax.device_count() * workers, min(S, 256))

            def call():
                return wnjax.sweep(
                    fn,
                    S,
                    grid,
                    batch_size=batch,
                    chunk_size=chunk,
                    workers=workers,
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
                f"[{out['devices']} dev x {workers}] {name} S={S:5d}: {median:8.4f} s, "
                f"{row['per_seed_ms']:8.3f} ms/seed, {row['per_seed_step_us']:7.3f} us/seed-step",
                file=sys.stderr,
                flush=True,
            )
        out["runs"][name] = rows
    return out


def child(args, name: str, devices: int, workers: int | None) -> dict:
    """``measure`` in a child process with ``devices`` forced host devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name]
    cmd += ["--max-seeds", str(args.max_seeds), "--batch-size", str(args.batch_size)]
    cmd += ["--repeats", str(args.repeats)]
    cmd += ["--workers", str(workers)] if workers else []
    cmd += ["--quick"] if args.quick else []
    cmd += ["--float32"] if args.float32 else []
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the child {name} exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--max-seeds", type=int, default=None, help="largest S (default 1024; 4 quick)")
    p.add_argument("--batch-size", type=int, default=None, help="vmap width (default 32; 8 quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per S (5; 1 quick)")
    p.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.max_seeds = args.max_seeds or (4 if args.quick else 1024)
    args.batch_size = args.batch_size or (8 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 5)
    seeds = [s for s in (1, 4, 16, 64, 256, 1024, 4096) if s <= args.max_seeds]
    if args.child:
        C.setup(args)
        print(json.dumps(measure(args, seeds)))
        return
    runs = {name: child(args, name, devices, workers) for name, devices, workers in CONFIGS}
    # The same seeds give the same numbers on any number of devices or workers, bit for bit.
    finals = [
        [x for kind in r["runs"] for row in r["runs"][kind] for x in row.pop("final_log_loss")]
        for r in runs.values()
    ]
    diff = max(abs(a - b) for other in finals[1:] for a, b in zip(finals[0], other))
    base = runs["one_device"]
    rows = []
    for kind in base["runs"]:
        for i, row in enumerate(base["runs"][kind]):
            line = {
                "run": kind,
                "S": row["seeds"],
                "us/seed-step": round(row["per_seed_step_us"], 3),
            }
            for name, r in runs.items():
                line[f"{name} ms/seed"] = round(r["runs"][kind][i]["per_seed_ms"], 3)
            rows.append(line)
    print(C.table(rows, list(rows[0])))
    print(f"largest difference of a seed's final log L between the configurations: {diff:.3g}")
    C.write_result(
        "sweep_scaling",
        args,
        {
            "what": (
                "wnjax.sweep of S seeds of a lin-sep-size EWN run: median of the sweep's "
                "elapsed (compiled execution) over the repeats, per configuration"
            ),
            "settings": {
                "max_seeds": args.max_seeds,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "gd_steps": 200 if args.quick else GD_STEPS,
                "configurations": {n: {"devices": d, "workers": w} for n, d, w in CONFIGS},
            },
            **runs,
            "max_abs_diff_final_log_loss": diff,
            "gpu": "not measured: this benchmark times forced CPU host devices",
        },
    )


if __name__ == "__main__":
    main()
