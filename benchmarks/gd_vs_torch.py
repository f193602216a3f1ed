"""GD: ``wnjax.gradient_descent`` (and its vmapped/sharded forms over seeds) against PyTorch eager
loops.

The same bias-free MLP as ``gf_vs_torchdiffeq.py`` (d -> width -> 1, ReLU^2), full batch,
exponential loss summed over points, plain GD ``w <- w - eta grad L``, float64. Time per
seed-step for 1 seed and for many seeds:

- wnjax, 1 seed: ``wnjax.gradient_descent`` (compiled chunks of ``chunk_size`` steps);
- wnjax, S seeds on one device: ``jax.jit(jax.vmap(traced_gradient_descent))``;
- wnjax, S seeds sharded: ``wnjax.sweep``'s compiled program (a vmapped block per device, the
  same single-device program on each, dispatched asynchronously) over every device; on a CPU the
  script exposes each core as a JAX device
  (``--xla_force_host_platform_device_count``), a GPU is one device. For contrast, the plain
  ``jit(vmap)`` program with its seed axis on a ``NamedSharding`` (GSPMD): its ``while_loop``
  stop test reduces over all seeds, so the devices meet at every step. ``wnjax.sweep`` itself is
  run once too (its own run time reported apart). All forms must give the same final losses;
- torch, 1 seed: an eager loop (forward, ``backward``, in-place update under ``no_grad``), with
  torch's default intra-op threads (all cores);
- torch, S seeds: (a) the same eager loop run seed after seed (the usual research loop), and
  (b) one eager loop over stacked weights with ``torch.func.vmap(torch.func.grad(...))``.

The machine's speed drifts on a shared VM, so all candidates are timed in interleaved rounds
(``_common.interleaved``): each round times every candidate once, and a speedup is the median
over rounds of that round's ratio. Compilation happens in a warm-up call and is reported apart.

    python benchmarks/gd_vs_torch.py [--quick] [--rounds R] [--host-devices N]
"""

from __future__ import annotations

import _common as C
from gf_vs_torchdiffeq import problem


def torch_gd(W1s, W2s, X, y, *, lr: float, steps: int):
    """Eager GD on each seed in turn; returns the final weights."""
    import torch

    out = []
    for W1, W2 in zip(W1s, W2s):
        w1, w2 = W1.clone().requires_grad_(True), W2.clone().requires_grad_(True)
        for _ in range(steps):
            f = (torch.relu(X @ w1.T) ** 2 @ w2.T)[:, 0]
            loss = torch.exp(torch.logsumexp(-y * f, 0))
            loss.backward()
            with torch.no_grad():
                w1 -= lr * w1.grad
                w2 -= lr * w2.grad
            w1.grad = None
            w2.grad = None
        out.append((w1.detach(), w2.detach()))
    return out


def torch_gd_vmap(W1s, W2s, X, y, *, lr: float, steps: int):
    """Eager GD on all seeds at once with ``torch.func.vmap(torch.func.grad(L))``."""
    import torch
    from torch.func import grad, vmap

    def loss(w1, w2):
        f = (torch.relu(X @ w1.T) ** 2 @ w2.T)[:, 0]
        return torch.exp(torch.logsumexp(-y * f, 0))

    g = vmap(grad(loss, argnums=(0, 1)))
    w1, w2 = W1s.clone(), W2s.clone()
    for _ in range(steps):
        g1, g2 = g(w1, w2)
        w1 = w1 - lr * g1
        w2 = w2 - lr * g2
    return w1, w2


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    p.add_argument(
        "--host-devices",
        type=int,
        default=None,
        help="CPU cores exposed as JAX devices for the sharded sweep (default: all)",
    )
    args = p.parse_args()
    C.force_host_devices(args.host_devices)
    C.setup(args)
    import statistics

    import equinox as eqx
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import wnjax
    from wnjax._dynamics.batched import traced_gradient_descent
    from wnjax._sweeps.sweep import _block_program

    n, d, width = (16, 4, 8) if args.quick else (64, 10, 32)
    steps = 100 if args.quick else 2000
    # One seed runs a researcher-sized run, so that the per-call cost (validation, set-up,
    # result; reported apart as call_overhead_ms) weighs as it does in practice.
    steps_one = 400 if args.quick else 20000
    torch_steps = 20 if args.quick else 300
    loop_steps = 10 if args.quick else 50  # per seed, for the (slow) loop over seeds
    rounds = args.rounds or (1 if args.quick else 9)
    ndev = len(jax.devices())
    base = 4 if args.quick else 64
    seeds = args.seeds or -(-base // ndev) * ndev  # a multiple of the devices
    if seeds % ndev:
        p.error(f"--seeds {seeds} must be a multiple of the {ndev} devices")
    model, X, y = problem(jax.random.key(0), n, d, width)
    keys = jax.vmap(jax.random.key)(np.arange(seeds))
    models = eqx.filter_vmap(lambda k: problem(k, n, d, width)[0])(keys)
    kw = dict(num_steps=steps, learning_rate=args.lr, degree=3.0, diagnostics=False)

    def one(k=steps_one):
        return jax.block_until_ready(
            wnjax.gradient_descent(model, X, y, **(kw | {"num_steps": k})).final
        )

    many_fn = jax.jit(jax.vmap(lambda m: traced_gradient_descent(m, X, y, **kw).final_log_loss))

    def many():
        return jax.block_until_ready(many_fn(models))

    mesh = Mesh(np.asarray(jax.devices()), ("seeds",))  # Auto axes: GSPMD splits the vmap
    sharding = NamedSharding(mesh, PartitionSpec("seeds"))
    models_gspmd = jax.device_put(models, sharding)

    def gspmd():
        return jax.block_until_ready(many_fn(models_gspmd))

    def sweep_run(key, cfg):
        m = problem(key, n, d, width)[0]
        return {"final_log_loss": traced_gradient_descent(m, X, y, **kw).final_log_loss}

    # wnjax.sweep's own compiled program (a vmapped block, compiled for each device), called
    # directly so that repeated calls reuse the compilations; one block of seeds per device.
    program = _block_program(sweep_run, {})
    block_args = [
        (jax.device_put(b, d), {})
        for b, d in zip(np.arange(seeds).reshape(ndev, -1), jax.devices())
    ]
    block_fns = []

    def sharded():
        if not block_fns:
            block_fns.extend(program.lower(*a).compile() for a in block_args)
        outs = [f(*a) for f, a in zip(block_fns, block_args)]  # asynchronous: all at once
        return {
            "final_log_loss": np.concatenate(
                [np.asarray(jax.block_until_ready(o)["final_log_loss"]) for o in outs]
            )
        }

    c1, cS = C.first_call_time(one), C.first_call_time(many)
    cD, cG = C.first_call_time(sharded), C.first_call_time(gspmd)
    fns = {
        "wnjax 1": one,
        "wnjax vmap": many,
        "wnjax sharded": sharded,
        "wnjax jit+sharding": gspmd,
    }
    # Every form runs the same seeds from the same start: their final losses must agree.
    sw = wnjax.sweep(sweep_run, seeds, batch_size=seeds // ndev, devices=ndev, progress=False)
    ref = np.asarray(many())
    agree = {
        "sharded": float(np.max(np.abs(np.asarray(sharded()["final_log_loss"]).ravel() - ref))),
        "jit+sharding": float(np.max(np.abs(np.asarray(gspmd()) - ref))),
        "sweep": float(np.max(np.abs(np.asarray(sw.table["final_log_loss"]) - ref))),
    }
    fig = {
        "problem": {
            "n": n,
            "d": d,
            "width": width,
            "depth": 2,
            "activation": "relu2",
            "loss": "exponential",
            "lr": args.lr,
            "steps": steps,
            "steps_one_seed": steps_one,
            "torch_steps": torch_steps,
            "torch_loop_steps_per_seed": loop_steps,
            "seeds": seeds,
        },
        "rounds": rounds,
        "devices": ndev,
        "max_abs_diff_final_log_loss_vs_vmap": agree,
        "wnjax_sweep_once": {
            "per_seed_step_us": 1e6 * sw.elapsed / steps / seeds,
            "compile_s": sw.compile_seconds,
            "note": "one wnjax.sweep call (a block per device); "
            "its own run time, compile excluded; not interleaved",
        },
        "gpu": C.gpu_status(),
    }
    per_step = {
        "wnjax 1": 1.0 / steps_one,
        "wnjax vmap": 1.0 / (steps * seeds),
        "wnjax sharded": 1.0 / (steps * seeds),
        "wnjax jit+sharding": 1.0 / (steps * seeds),
    }
    if C.has_torch():
        import torch

        Xt, yt = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y))
        W1s = torch.tensor(np.asarray(models.layers[0].weight))
        W2s = torch.tensor(np.asarray(models.layers[1].weight))
        W1, W2 = (
            torch.tensor(np.asarray(model.layers[0].weight)),
            torch.tensor(np.asarray(model.layers[1].weight)),
        )
        # Correctness: the same 'steps' steps from the same start, one seed.
        w1, w2 = torch_gd([W1], [W2], Xt, yt, lr=args.lr, steps=steps)[0]
        w_t = np.concatenate([w1.numpy().ravel(), w2.numpy().ravel()])
        final = one(steps)
        w_j = np.concatenate(
            [np.asarray(final.layers[0].weight).ravel(), np.asarray(final.layers[1].weight).ravel()]
        )
        fig["final_relative_difference"] = float(np.linalg.norm(w_j - w_t) / np.linalg.norm(w_t))
        fns |= {
            "torch eager 1": lambda: torch_gd([W1], [W2], Xt, yt, lr=args.lr, steps=torch_steps),
            "torch eager loop": lambda: torch_gd(W1s, W2s, Xt, yt, lr=args.lr, steps=loop_steps),
            "torch func.vmap": lambda: torch_gd_vmap(
                W1s, W2s, Xt, yt, lr=args.lr, steps=torch_steps
            ),
        }
        per_step |= {
            "torch eager 1": 1.0 / torch_steps,
            "torch eager loop": 1.0 / (loop_steps * seeds),
            "torch func.vmap": 1.0 / (torch_steps * seeds),
        }
        for name in ("torch eager 1", "torch eager loop", "torch func.vmap"):
            fns[name]()  # warm-up
        fig["torch"] = {"threads": torch.get_num_threads(), "version": torch.__version__}
    else:
        fig["torch"] = "not measured: torch not installed"
    times = C.interleaved(fns, rounds=rounds)
    # The fixed cost of a gradient_descent call: a 10-step run, minus its 10 steps.
    short = C.interleaved({"short": lambda: one(10)}, rounds=rounds)["short"]
    per_one = statistics.median(times["wnjax 1"]) / steps_one
    fig["call_overhead_ms"] = 1e3 * (statistics.median(short) - 10 * per_one)
    us = {k: [1e6 * t * per_step[k] for t in v] for k, v in times.items()}
    fig["per_seed_step_us"] = {k: C.summary(v) for k, v in us.items()}
    fig["compile_s"] = {
        "wnjax 1": c1 - min(times["wnjax 1"]),
        "wnjax vmap": cS - min(times["wnjax vmap"]),
        "wnjax sharded": cD - min(times["wnjax sharded"]),
        "wnjax jit+sharding": cG - min(times["wnjax jit+sharding"]),
    }

    def ratio(base: str, ours: str) -> dict:
        r = [b / o for b, o in zip(us[base], us[ours])]
        return {"median": statistics.median(r), "min": min(r), "max": max(r)}

    rows = [
        {
            "impl": k,
            "seeds": 1 if k.endswith(" 1") else seeds,
            "per_seed_step_us": fig["per_seed_step_us"][k]["median"],
            "min": fig["per_seed_step_us"][k]["min"],
            "max": fig["per_seed_step_us"][k]["max"],
        }
        for k in us
    ]
    print(C.table(rows, ["impl", "seeds", "per_seed_step_us", "min", "max"]))
    print(
        f"wnjax 1 seed: {steps_one} steps per call; the fixed cost of a call is "
        f"{fig['call_overhead_ms']:.2f} ms"
    )
    if C.has_torch():
        best = min(
            ("wnjax vmap", "wnjax sharded", "wnjax jit+sharding"),
            key=lambda k: fig["per_seed_step_us"][k]["median"],
        )
        fig["speedup"] = {
            "1 seed, vs torch eager": ratio("torch eager 1", "wnjax 1"),
            f"{seeds} seeds, sharded vs torch eager loop": ratio(
                "torch eager loop", "wnjax sharded"
            ),
            f"{seeds} seeds, vmap (1 device) vs torch eager loop": ratio(
                "torch eager loop", "wnjax vmap"
            ),
            f"{seeds} seeds, sharded vs torch.func.vmap": ratio("torch func.vmap", "wnjax sharded"),
            f"{seeds} seeds, vmap (1 device) vs torch.func.vmap": ratio(
                "torch func.vmap", "wnjax vmap"
            ),
        }
        goal = {
            "1": fig["speedup"]["1 seed, vs torch eager"]["median"],
            str(seeds): ratio("torch eager loop", best)["median"],
        }
        fig["goal_20x_vs_eager_loop"] = {k: {"speedup": v, "met": v >= 20} for k, v in goal.items()}
        fig["goal_20x_vs_eager_loop"][str(seeds)]["wnjax_form"] = best
        for k, v in fig["speedup"].items():
            print(f"speedup {k}: {v['median']:.1f}x (rounds: {v['min']:.1f} .. {v['max']:.1f})")
        print(
            f"goal >= 20x against the eager loop: 1 seed {goal['1']:.1f}x, {seeds} seeds "
            f"{goal[str(seeds)]:.1f}x; final relative difference "
            f"{fig['final_relative_difference']:.2e}; |d log L| vs vmap: "
            + ", ".join(f"{k} {v:.1e}" for k, v in agree.items())
        )
    C.write_result("gd_vs_torch", args, fig)


if __name__ == "__main__":
    main()
