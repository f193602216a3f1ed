"""Gradient flow: ``wnjax.gradient_flow`` (diffrax Dopri5) against PyTorch + torchdiffeq dopri5.

The same bias-free MLP (d -> width -> 1, ReLU^2, so the field is smooth), the same data and
initial weights, exponential loss summed over points, float64, the same rtol/atol, dopri5 in
both. The torch field is ``-grad L`` by autograd; the wnjax field is ``-L grad log L``.
Reported: wall time per solve after warm-up (median), the first call's extra time (compile),
steps, and the relative difference of the final weights, plus each one's error against a
tight-tolerance wnjax solve.

    python benchmarks/gf_vs_torchdiffeq.py [--quick]
"""

from __future__ import annotations

import _common as C


def problem(key, n: int, d: int, width: int):
    import jax
    import jax.numpy as jnp

    import wnjax

    k_x, k_w, k_m = jax.random.split(key, 3)
    X = jax.random.normal(k_x, (n, d))
    y = jnp.where(X @ jax.random.normal(k_w, (d,)) >= 0, 1.0, -1.0)
    model = wnjax.MLP(d, width, 2, activation="relu2", key=k_m)
    return model, X, y


def torch_solver(model, X, y, *, t1: float, rtol: float, atol: float):
    """A closure running torchdiffeq dopri5 on the same flow; returns (weights, stats)."""
    import numpy as np
    import torch
    from torchdiffeq import odeint

    W1 = torch.tensor(np.asarray(model.layers[0].weight))
    W2 = torch.tensor(np.asarray(model.layers[1].weight))
    Xt, yt = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y))
    shapes = [W1.shape, W2.shape]
    sizes = [W1.numel(), W2.numel()]
    theta0 = torch.cat([W1.reshape(-1), W2.reshape(-1)])

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nfe = self.accepted = self.rejected = 0

        def forward(self, t, theta):
            self.nfe += 1
            with torch.enable_grad():
                theta = theta.detach().requires_grad_(True)
                w1, w2 = (p.reshape(s) for p, s in zip(torch.split(theta, sizes), shapes))
                out = (torch.relu(Xt @ w1.T) ** 2 @ w2.T)[:, 0]
                loss = torch.exp(torch.logsumexp(-yt * out, 0))
                (g,) = torch.autograd.grad(loss, theta)
            return -g

        def callback_accept_step(self, t0, y0, dt):
            self.accepted += 1

        def callback_reject_step(self, t0, y0, dt):
            self.rejected += 1

    ts = torch.tensor([0.0, t1], dtype=torch.float64)

    def solve():
        field = Field()
        with torch.no_grad():
            path = odeint(field, theta0, ts, rtol=rtol, atol=atol, method="dopri5")
        return path[-1].numpy(), {"nfe": field.nfe, "accepted": field.accepted,
                                  "rejected": field.rejected}

    return solve


def flat(model):
    import numpy as np

    return np.concatenate([np.asarray(layer.weight).ravel() for layer in model.layers])


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--t1", type=float, default=None, help="flow horizon (plain time)")
    p.add_argument("--rtol", type=float, default=None, help="1e-8 (float64), 1e-5 (float32)")
    p.add_argument("--atol", type=float, default=None, help="1e-10 (float64), 1e-7 (float32)")
    args = p.parse_args()
    C.setup(args)
    # float32 cannot honour a tolerance near its epsilon (1.2e-7).
    args.rtol = args.rtol or (1e-5 if args.float32 else 1e-8)
    args.atol = args.atol or (1e-7 if args.float32 else 1e-10)
    ref_tol = dict(rtol=1e-7, atol=1e-9) if args.float32 else dict(rtol=1e-12, atol=1e-14)
    import diffrax
    import jax
    import numpy as np

    import wnjax

    n, d, width = (16, 4, 8) if args.quick else (64, 10, 32)
    t1 = args.t1 or (2.0 if args.quick else 50.0)
    repeats = 1 if args.quick else 7
    model, X, y = problem(jax.random.key(0), n, d, width)
    kw = dict(t1=t1, rtol=args.rtol, atol=args.atol, solver=diffrax.Dopri5(), n_save=2,
              save_states=False, degree=3.0, max_steps=1_000_000,
              diagnostics=False)

    def run_jax(**over):
        r = wnjax.gradient_flow(model, X, y, **{**kw, **over})
        jax.block_until_ready(r.final)
        return r

    first = C.first_call_time(run_jax)
    jt = C.median_time(run_jax, repeats=repeats, warmup=1)
    r = run_jax()
    w_jax = flat(r.final)
    ref = flat(run_jax(**ref_tol).final)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
    figures = {
        "problem": {"n": n, "d": d, "width": width, "depth": 2, "activation": "relu2",
                    "loss": "exponential", "t1": t1, "rtol": args.rtol, "atol": args.atol,
                    "reference_tolerances": ref_tol,
                    "final_log_loss": float(r.final_log_loss)},
        "wnjax": {"solve_s": jt["median"], "timing": jt, "compile_s": first - jt["median"],
                  "first_call_s": first, "steps": int(r.stats["num_steps"]),
                  "accepted": int(r.stats["num_accepted_steps"]),
                  "rejected": int(r.stats["num_rejected_steps"]),
                  "rel_err_vs_tight_reference": rel(w_jax, ref)},
        "gpu": C.gpu_status(),
    }
    rows = [{"impl": "wnjax (diffrax Dopri5)", "solve_s": jt["median"],
             "compile_s": first - jt["median"], "steps": figures["wnjax"]["steps"],
             "rel_err_vs_ref": figures["wnjax"]["rel_err_vs_tight_reference"]}]
    if C.has_torch():
        import torch

        solve = torch_solver(model, X, y, t1=t1, rtol=args.rtol, atol=args.atol)
        tt = C.median_time(solve, repeats=max(1, repeats // 2), warmup=0 if args.quick else 1)
        w_torch, stats = solve()
        figures["torchdiffeq"] = {"solve_s": tt["median"], "timing": tt,
                                  "steps": stats["accepted"] + stats["rejected"], **stats,
                                  "rel_err_vs_tight_reference": rel(w_torch, ref),
                                  "torch_threads": torch.get_num_threads()}
        figures["final_relative_difference"] = rel(w_jax, w_torch)
        figures["speedup"] = tt["median"] / jt["median"]
        rows.append({"impl": "torchdiffeq dopri5", "solve_s": tt["median"], "compile_s": 0.0,
                     "steps": figures["torchdiffeq"]["steps"],
                     "rel_err_vs_ref": figures["torchdiffeq"]["rel_err_vs_tight_reference"]})
    else:
        figures["torchdiffeq"] = "not measured: torch/torchdiffeq not installed"
    print(C.table(rows, ["impl", "solve_s", "compile_s", "steps", "rel_err_vs_ref"]))
    if "speedup" in figures:
        print(f"speedup {figures['speedup']:.1f}x (goal >= 30x); final relative difference "
              f"{figures['final_relative_difference']:.2e}")
    C.write_result("gf_vs_torchdiffeq", args, figures)


if __name__ == "__main__":
    main()
