"""Cost of a seed sweep against the number of seeds S, and 8 forced CPU devices against 1.

For a lin-sep-size run (2-layer ReLU^2 MLP of width 8 with EWN on the 4 lin-sep points):

- GF: ``wnjax.gradient_flow``, plain time, ``t1`` fixed, Tsit5 with rtol 1e-8;
- GD: ``wnjax.traced_gradient_descent``, a fixed number of steps.

For each S in 1, 4, 16, 64, 256, 1024 (``--max-seeds``), the wall time of ``wnjax.sweep`` of S
seeds, after a warm-up call that compiles (compile time is reported separately). Per-seed cost is
``time / S``. Run twice, in subprocesses: with 1 device and with 8 forced host devices (which
share the same cores, so this measures overhead, not speed-up).

    python benchmarks/sweep_scaling.py            # writes benchmarks/results/sweep_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(devices: int, seeds: list[int], batch_size: int, repeats: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import wnjax

    X, y = wnjax.data.lin_sep(jax.random.key(0))

    def flow(key, cfg):
        model = wnjax.MLP(2, 8, 2, activation="relu2", init_scale=cfg["init_scale"], key=key)
        r = wnjax.gradient_flow(
            wnjax.ewn(model),
            X,
            y,
            t1=50.0,
            rtol=1e-8,
            atol=1e-10,
            n_save=16,
            save_states=False,
            max_steps=20000,
            throw=False,
        )
        return {
            "final_log_loss": r.final_log_loss,
            "num_steps": r.stats["num_steps"],
            "log_loss": r.log_loss,
        }

    def descent(key, cfg):
        model = wnjax.MLP(2, 8, 2, activation="relu2", init_scale=cfg["init_scale"], key=key)
        r = wnjax.traced_gradient_descent(
            wnjax.ewn(model), X, y, num_steps=2000, learning_rate=0.05, n_save=16, chunk_size=500
        )
        return {"final_log_loss": r.final_log_loss, "log_loss": r.log_loss}

    grid = {"init_scale": [1.0]}
    out = {"devices": devices, "batch_size": batch_size, "runs": {}}
    for name, fn in (("gf", flow), ("gd", descent)):
        rows = []
        for S in seeds:
            chunk = max(batch_size * devices, min(S, 256))
            t0 = time.perf_counter()
            first = wnjax.sweep(
                fn,
                S,
                grid,
                batch_size=min(batch_size, S),
                chunk_size=chunk,
                devices=devices,
                progress=False,
            )
            compile_and_run = time.perf_counter() - t0
            times = [first.elapsed]
            for _ in range(repeats):
                times.append(
                    wnjax.sweep(
                        fn,
                        S,
                        grid,
                        batch_size=min(batch_size, S),
                        chunk_size=chunk,
                        devices=devices,
                        progress=False,
                    ).elapsed
                )
            best = min(times[1:]) if repeats else times[0]
            row = {
                "seeds": S,
                "seconds": best,
                "per_seed_ms": 1e3 * best / S,
                "first_call_seconds": compile_and_run,
            }
            if name == "gf":
                row["mean_num_steps"] = float(first.table["num_steps"].mean())
            rows.append(row)
            print(
                f"[{devices} dev] {name} S={S:5d}: {best:8.3f} s, "
                f"{row['per_seed_ms']:8.3f} ms/seed",
                flush=True,
            )
        out["runs"][name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-seeds", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seeds = [s for s in (1, 4, 16, 64, 256, 1024, 4096) if s <= args.max_seeds]
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, seeds, args.batch_size, args.repeats)))
        return
    results = []
    for devices in (1, 8):
        env = dict(
            os.environ,
            XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={devices}",
        )
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(devices),
            "--max-seeds",
            str(args.max_seeds),
            "--batch-size",
            str(args.batch_size),
            "--repeats",
            str(args.repeats),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(proc.returncode)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT ") :]))
    one, eight = results
    ratio = {
        name: [
            {"seeds": a["seeds"], "eight_over_one": b["seconds"] / a["seconds"]}
            for a, b in zip(one["runs"][name], eight["runs"][name])
        ]
        for name in one["runs"]
    }
    import jax

    record = {
        "what": "wall time of wnjax.sweep of S seeds (best of repeats, compiled), lin-sep EWN MLP",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
        },
        "one_device": one,
        "eight_forced_cpu_devices": eight,
        "eight_over_one": ratio,
        "gpu": "not measured: this benchmark times forced CPU host devices",
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "sweep_scaling.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
