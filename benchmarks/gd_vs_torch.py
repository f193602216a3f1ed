"""GD: ``wnjax.gradient_descent`` (and its vmapped form over seeds) against PyTorch eager loops.

The same bias-free MLP as ``gf_vs_torchdiffeq.py`` (d -> width -> 1, ReLU^2), full batch,
exponential loss summed over points, plain GD ``w <- w - eta grad L``, float64. Time per
seed-step for 1 seed and for many seeds:

- wnjax, 1 seed: ``wnjax.gradient_descent`` (compiled chunks of ``chunk_size`` steps, the
  default 64 save points recorded inside them);
- wnjax, S seeds: ``jax.jit(jax.vmap(traced_gradient_descent))``, one compiled program;
- torch, 1 seed: an eager loop (forward, ``backward``, in-place update under ``no_grad``);
- torch, S seeds: (a) the same eager loop run seed after seed, and (b) one eager loop over
  stacked weights with ``torch.func.vmap(torch.func.grad(...))``. The speedup is quoted
  against the faster of the two.

    python benchmarks/gd_vs_torch.py [--quick]
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
    args = p.parse_args()
    C.setup(args)
    import equinox as eqx
    import jax
    import numpy as np

    import wnjax
    from wnjax._batched import traced_gradient_descent

    n, d, width = (16, 4, 8) if args.quick else (64, 10, 32)
    seeds = args.seeds or (4 if args.quick else 64)
    steps = 100 if args.quick else 2000
    torch_steps = 20 if args.quick else 300
    repeats = 1 if args.quick else 3
    model, X, y = problem(jax.random.key(0), n, d, width)
    keys = jax.random.split(jax.random.key(1), seeds)
    models = eqx.filter_vmap(lambda k: problem(k, n, d, width)[0])(keys)
    kw = dict(num_steps=steps, learning_rate=args.lr, degree=3.0, diagnostics=False)

    def one():
        r = wnjax.gradient_descent(model, X, y, **kw)
        return jax.block_until_ready(r.final)

    many_fn = jax.jit(jax.vmap(lambda m: traced_gradient_descent(m, X, y, **kw).final))

    def many():
        return jax.block_until_ready(many_fn(models))

    rows, fig = [], {"problem": {"n": n, "d": d, "width": width, "depth": 2,
                                 "activation": "relu2", "loss": "exponential", "lr": args.lr,
                                 "steps": steps, "torch_steps": torch_steps, "seeds": seeds},
                     "gpu": C.GPU_NOT_MEASURED}
    c1 = C.first_call_time(one)
    t1 = C.median_time(one, repeats=repeats)
    cS = C.first_call_time(many)
    tS = C.median_time(many, repeats=repeats)
    fig["wnjax"] = {
        "1": {"per_seed_step_us": 1e6 * t1["median"] / steps, "compile_s": c1 - t1["median"],
              "timing": t1},
        str(seeds): {"per_seed_step_us": 1e6 * tS["median"] / steps / seeds,
                     "compile_s": cS - tS["median"], "timing": tS},
    }
    rows += [{"impl": "wnjax", "seeds": 1, "per_seed_step_us": fig["wnjax"]["1"]["per_seed_step_us"]},
             {"impl": "wnjax vmap", "seeds": seeds,
              "per_seed_step_us": fig["wnjax"][str(seeds)]["per_seed_step_us"]}]
    if C.has_torch():
        import torch

        Xt, yt = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y))
        W1s = torch.tensor(np.asarray(models.layers[0].weight))
        W2s = torch.tensor(np.asarray(models.layers[1].weight))
        W1, W2 = torch.tensor(np.asarray(model.layers[0].weight)), torch.tensor(
            np.asarray(model.layers[1].weight))
        # Correctness: the same 'steps' steps from the same start, one seed.
        w1, w2 = torch_gd([W1], [W2], Xt, yt, lr=args.lr, steps=steps)[0]
        w_t = np.concatenate([w1.numpy().ravel(), w2.numpy().ravel()])
        final = wnjax.gradient_descent(model, X, y, **kw).final
        w_j = np.concatenate([np.asarray(final.layers[0].weight).ravel(),
                              np.asarray(final.layers[1].weight).ravel()])
        fig["final_relative_difference"] = float(np.linalg.norm(w_j - w_t) / np.linalg.norm(w_t))
        tt1 = C.median_time(lambda: torch_gd([W1], [W2], Xt, yt, lr=args.lr, steps=torch_steps),
                            repeats=repeats)
        ttl = C.median_time(lambda: torch_gd(W1s, W2s, Xt, yt, lr=args.lr, steps=torch_steps),
                            repeats=max(1, repeats // 2), warmup=0)
        ttv = C.median_time(lambda: torch_gd_vmap(W1s, W2s, Xt, yt, lr=args.lr,
                                                  steps=torch_steps), repeats=repeats)
        per = lambda t, s: 1e6 * t["median"] / torch_steps / s  # noqa: E731
        fig["torch"] = {
            "threads": torch.get_num_threads(),
            "1": {"eager_loop_per_seed_step_us": per(tt1, 1), "timing": tt1},
            str(seeds): {"eager_loop_per_seed_step_us": per(ttl, seeds), "timing_loop": ttl,
                         "func_vmap_per_seed_step_us": per(ttv, seeds), "timing_vmap": ttv},
        }
        best = min(per(ttl, seeds), per(ttv, seeds))
        fig["speedup"] = {"1": per(tt1, 1) / fig["wnjax"]["1"]["per_seed_step_us"],
                          str(seeds): best / fig["wnjax"][str(seeds)]["per_seed_step_us"]}
        rows += [{"impl": "torch eager", "seeds": 1, "per_seed_step_us": per(tt1, 1)},
                 {"impl": "torch eager, loop over seeds", "seeds": seeds,
                  "per_seed_step_us": per(ttl, seeds)},
                 {"impl": "torch eager, torch.func.vmap", "seeds": seeds,
                  "per_seed_step_us": per(ttv, seeds)}]
    else:
        fig["torch"] = "not measured: torch not installed"
    print(C.table(rows, ["impl", "seeds", "per_seed_step_us"]))
    if "speedup" in fig:
        print(f"speedup per seed-step: 1 seed {fig['speedup']['1']:.1f}x, {seeds} seeds "
              f"{fig['speedup'][str(seeds)]:.1f}x (goal >= 20x); final relative difference "
              f"{fig['final_relative_difference']:.2e}")
    C.write_result("gd_vs_torch", args, fig)


if __name__ == "__main__":
    main()
