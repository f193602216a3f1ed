"""Gradient flow: ``wnjax.gradient_flow`` against PyTorch + torchdiffeq dopri5.

Part 1, the fixed-method comparison: diffrax Dopri5 against torchdiffeq dopri5.
Part 2, the default path: ``wnjax.gradient_flow(wnjax.ewn(net), ...)`` with every default
(solver, diagnostics) at rtol 1e-10, against torchdiffeq dopri5 on the same EWN flow (autograd
through ``w_u = exp(a_u) v_u/||v_u||``), timed in interleaved rounds with two pieces of it: the
default's explicit method alone (``explicit_only``: no stiffness test) and a bare
``diffrax.diffeqsolve`` of the same field with that method on the flat weight vector
(``bare_diffrax``: no saves, diagnostics or stop polling; the floor of diffrax's per-step cost),
each with the voluntary context switches of a run (XLA:CPU handing work to a second thread);
the same again in a child process with one XLA:CPU thread (``PJRT_NPROC=1``); then the cost of one
vector-field evaluation ``-grad L`` on the EWN net, wnjax's against a hand-written closed-form
gradient of the same net (the floor), both run 20,000 times inside one compiled loop.

The same bias-free MLP (d -> width -> 1, ReLU^2: the field is continuous, with kinks where a
pre-activation changes sign), the same data and
initial weights, exponential loss summed over points, float64, the same rtol/atol, dopri5 in
both. The torch field is ``-grad L`` by autograd; the wnjax field is ``-L grad log L``.
Reported: wall time per solve after warm-up (median), the first call's extra time (compile),
steps, and the relative difference of the final weights, plus each one's error against a
tight-tolerance wnjax solve.

    python benchmarks/gf_vs_torchdiffeq.py [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import _common as C

# XLA:CPU sizes its thread pool from this variable (default: every core). The default path is
# also timed in a child process with one thread: XLA:CPU runs a while-loop body's independent
# operations on several threads, and on a model this small the hand-offs cost more than they save.
ONE_THREAD = {"PJRT_NPROC": "1"}


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
        return path[-1].numpy(), {
            "nfe": field.nfe,
            "accepted": field.accepted,
            "rejected": field.rejected,
        }

    return solve


def torch_ewn_solver(model, X, y, *, t1: float, rtol: float, atol: float):
    """torchdiffeq dopri5 on the EWN flow of a 2-layer net: the state is ``(a_1, v_1, a_2, v_2)``
    and the field is ``-grad L`` by autograd through ``W = exp(a) v/||v||`` row by row."""
    import numpy as np
    import torch
    from torchdiffeq import odeint

    Ws = [np.asarray(layer.weight) for layer in model.layers]
    parts = []
    for W in Ws:
        norms = np.linalg.norm(W, axis=1)
        parts += [torch.tensor(np.log(norms)), torch.tensor(W / norms[:, None])]
    shapes = [q.shape for q in parts]
    sizes = [q.numel() for q in parts]
    theta0 = torch.cat([q.reshape(-1) for q in parts])
    Xt, yt = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y))

    def weight(a, v):
        return torch.exp(a)[:, None] * v / torch.linalg.norm(v, dim=1, keepdim=True)

    class Field(torch.nn.Module):
        def forward(self, t, theta):
            with torch.enable_grad():
                theta = theta.detach().requires_grad_(True)
                a1, v1, a2, v2 = (q.reshape(s) for q, s in zip(torch.split(theta, sizes), shapes))
                out = (torch.relu(Xt @ weight(a1, v1).T) ** 2 @ weight(a2, v2).T)[:, 0]
                loss = torch.exp(torch.logsumexp(-yt * out, 0))
                (g,) = torch.autograd.grad(loss, theta)
            return -g

    ts = torch.tensor([0.0, t1], dtype=torch.float64)

    def solve():
        with torch.no_grad():
            return odeint(Field(), theta0, ts, rtol=rtol, atol=atol, method="dopri5")[-1].numpy()

    return solve


def ewn_field_floor(model, X, y, evals: int, rounds: int) -> dict:
    """Time per evaluation of wnjax's EWN field and of a closed-form one (medians of rounds)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    import wnjax
    from wnjax._dynamics.flow import _flat_grad_loss
    from wnjax._losses import get_loss

    params, static = eqx.partition(wnjax.ewn(model), eqx.is_inexact_array)
    theta0, unravel = ravel_pytree(params)
    loss = get_loss("exponential")

    def field(theta):  # gradient_flow's plain-time field on its flat weight vector
        return -_flat_grad_loss(theta, unravel, static, X, y, loss, None)

    def closed_form(th):
        """-grad L for f(x) = W2 relu(W1 x)^2, W = exp(a) v/||v||, L = sum exp(-y f)."""
        a1, v1, a2, v2 = th
        n1 = jnp.linalg.norm(v1, axis=1, keepdims=True)
        n2 = jnp.linalg.norm(v2, axis=1, keepdims=True)
        u1, u2 = v1 / n1, v2 / n2
        W1, W2 = jnp.exp(a1)[:, None] * u1, jnp.exp(a2)[:, None] * u2
        Z = X @ W1.T
        R = jnp.maximum(Z, 0.0)
        H = R * R
        go = -y * jnp.exp(-y * (H @ W2.T)[:, 0])  # dL/df_i
        gW2 = go[None, :] @ H
        gW1 = ((go[:, None] * W2) * 2.0 * R).T @ X

        def back(gW, a, u, nv):  # chain rule through W = exp(a) u, u = v/||v||
            ga = jnp.sum(gW * u, 1) * jnp.exp(a)
            gu = jnp.exp(a)[:, None] * gW
            return -ga, -(gu - jnp.sum(gu * u, 1, keepdims=True) * u) / nv

        ga1, gv1 = back(gW1, a1, u1, n1)
        ga2, gv2 = back(gW2, a2, u2, n2)
        return ga1, gv1, ga2, gv2

    layers = params.layers
    th = (layers[0].a, layers[0].v, layers[1].a, layers[1].v)
    g = unravel(field(theta0))
    mine = (g.layers[0].a, g.layers[0].v, g.layers[1].a, g.layers[1].v)
    agree = max(
        float(jnp.max(jnp.abs(p - q)) / jnp.max(jnp.abs(q))) for p, q in zip(mine, closed_form(th))
    )

    def looped(f):
        def run(x0):
            def body(i, x):
                return jax.tree_util.tree_map(lambda a, b: a + 1e-12 * b, x, f(x))

            return jax.lax.fori_loop(0, evals, body, x0)

        return jax.jit(run)

    run_mine, run_floor = looped(field), looped(closed_form)
    jax.block_until_ready(run_mine(theta0))
    jax.block_until_ready(run_floor(th))
    times = C.interleaved(
        {
            "wnjax": lambda: jax.block_until_ready(run_mine(theta0)),
            "floor": lambda: jax.block_until_ready(run_floor(th)),
        },
        rounds=rounds,
    )
    ratios = [a / b for a, b in zip(times["wnjax"], times["floor"])]
    return {
        "evals_per_round": evals,
        "wnjax_us": C.summary(times["wnjax"], 1e6 / evals),
        "floor_us": C.summary(times["floor"], 1e6 / evals),
        "ratio": C.summary(ratios),
        "max_relative_difference": agree,
    }


def default_path(model, X, y, *, t1: float, rtol: float, atol: float, rounds: int) -> dict:
    """The default ``gradient_flow`` on the EWN net against torchdiffeq on the same flow."""
    import jax
    import numpy as np

    import wnjax
    from wnjax._dynamics.flow import kinked_field, smooth_field

    p = wnjax.ewn(model)

    def run_jax():
        r = wnjax.gradient_flow(p, X, y, t1=t1, rtol=rtol, atol=atol)
        jax.block_until_ready(r.final)
        return r

    first = C.first_call_time(run_jax)
    r = run_jax()
    out = {
        "t1": t1,
        "rtol": rtol,
        "atol": atol,
        "compile_s": None,
        "steps": int(r.stats["num_steps"]),
        "final_log_loss": float(r.final_log_loss),
    }
    explicit = wnjax.default_solver(rtol, kinks=kinked_field(p), smooth=smooth_field(p)).explicit
    pieces = _breakdown_runs(p, X, y, explicit, t1=t1, rtol=rtol, atol=atol)
    fns = {"wnjax": run_jax, **pieces}
    if C.has_torch():
        solve = torch_ewn_solver(model, X, y, t1=t1, rtol=rtol, atol=atol)
        solve()
        fns["torchdiffeq"] = solve
        w = flat(wnjax.to_standard(r.final))
        th = solve()
        n1 = model.layers[0].weight.shape
        a1, v1 = th[: n1[0]], th[n1[0] : n1[0] + n1[0] * n1[1]].reshape(n1)
        W1 = np.exp(a1)[:, None] * v1 / np.linalg.norm(v1, axis=1, keepdims=True)
        out["first_layer_relative_difference"] = float(
            np.linalg.norm(W1.ravel() - w[: W1.size]) / np.linalg.norm(W1)
        )
    times = C.interleaved(fns, rounds=rounds)
    out["wnjax_s"] = C.summary(times["wnjax"])
    out["compile_s"] = first - out["wnjax_s"]["median"]
    out["us_per_step"] = out["wnjax_s"]["median"] / out["steps"] * 1e6
    out["context_switches_per_run"] = _context_switches(run_jax)
    # The same flow without the pieces of the default path, in the same rounds: its explicit
    # method alone (no stiffness test), and a bare diffeqsolve of the same field with that method
    # on the flat state (no saves, diagnostics or stop polling).
    out["breakdown"] = {}
    for name in ("explicit_only", "bare_diffrax"):
        steps = int(fns[name]()[1])
        out["breakdown"][name] = {
            "method": type(explicit).__name__,
            "s": C.summary(times[name]),
            "steps": steps,
            "us_per_step": statistics.median(times[name]) / steps * 1e6,
            "context_switches_per_run": _context_switches(fns[name]),
        }
    if "torchdiffeq" in times:
        out["torchdiffeq_s"] = C.summary(times["torchdiffeq"])
        out["speedup"] = C.summary([b / a for a, b in zip(times["wnjax"], times["torchdiffeq"])])
    else:
        out["torchdiffeq_s"] = "not measured: torch/torchdiffeq not installed"
    return out


def _context_switches(fn, runs: int = 3) -> float:
    """Voluntary context switches of this process per call of ``fn`` (``getrusage``): each is a
    thread that went to sleep waiting for another, as when XLA:CPU hands part of a loop body to
    a second thread and waits for it."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for _ in range(runs):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before) / runs


def _breakdown_runs(p, X, y, explicit, *, t1: float, rtol: float, atol: float) -> dict:
    """Timed callables, each returning ``(result, steps)``: ``gradient_flow`` with the default's
    ``explicit`` method alone (``explicit_only``: no stiffness test), and a bare
    ``diffrax.diffeqsolve`` (the same method, the same PID controller, ``SaveAt(t1=True)``) of
    the same field ``-L grad log L`` on the flat weight vector, the floor of what diffrax costs
    here."""
    import diffrax
    import equinox as eqx
    import jax
    from jax.flatten_util import ravel_pytree

    import wnjax
    from wnjax._dynamics.flow import _flat_grad_loss
    from wnjax._losses import get_loss

    loss = get_loss("exponential")
    params, static = eqx.partition(p, eqx.is_inexact_array)
    theta0, unravel = ravel_pytree(params)

    def field(t, theta, args):  # gradient_flow's plain-time field
        return -_flat_grad_loss(theta, unravel, static, X, y, loss, None)

    @jax.jit
    def bare(theta):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            explicit,
            0.0,
            t1,
            None,
            theta,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=100_000,
        )
        return sol.ys, sol.stats["num_steps"]

    def run_bare():
        ys, steps = bare(theta0)
        jax.block_until_ready(ys)
        return ys, steps

    def run_explicit():
        r = wnjax.gradient_flow(p, X, y, t1=t1, rtol=rtol, atol=atol, solver=explicit)
        jax.block_until_ready(r.final)
        return r, r.stats["num_steps"]

    run_bare(), run_explicit()  # compile
    return {"explicit_only": run_explicit, "bare_diffrax": run_bare}


def _one_thread_default_path(args) -> dict | str:
    """``default_path`` in a child process whose XLA:CPU thread pool has one thread
    (``ONE_THREAD``), torchdiffeq timed beside it in the same rounds (its own threads unchanged)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--default-path-only"]
    cmd += ["--float32"] if args.float32 else []
    cmd += ["--t1", str(args.t1)] if args.t1 else []
    child = subprocess.run(
        cmd, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, check=False
    )
    if child.returncode != 0:
        return f"not measured: the child process failed: {child.stderr.strip()[-300:]}"
    return {"env": ONE_THREAD, **json.loads(child.stdout.strip().splitlines()[-1])}


def flat(model):
    import numpy as np

    return np.concatenate([np.asarray(layer.weight).ravel() for layer in model.layers])


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--t1", type=float, default=None, help="flow horizon (plain time)")
    p.add_argument("--rtol", type=float, default=None, help="1e-8 (float64), 1e-5 (float32)")
    p.add_argument("--atol", type=float, default=None, help="1e-10 (float64), 1e-7 (float32)")
    p.add_argument(
        "--default-path-only",
        action="store_true",
        help="time only the default path and print its figures as JSON (the one-thread child)",
    )
    args = p.parse_args()
    C.setup(args)
    if args.default_path_only:
        import jax

        model, X, y = problem(jax.random.key(0), 64, 10, 32)
        tight = dict(rtol=1e-6, atol=1e-8) if args.float32 else dict(rtol=1e-10, atol=1e-12)
        print(json.dumps(default_path(model, X, y, t1=args.t1 or 50.0, rounds=5, **tight)))
        return
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
    kw = dict(
        t1=t1,
        rtol=args.rtol,
        atol=args.atol,
        solver=diffrax.Dopri5(),
        n_save=2,
        save_states=False,
        degree=3.0,
        max_steps=1_000_000,
        diagnostics=False,
    )

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
        "problem": {
            "n": n,
            "d": d,
            "width": width,
            "depth": 2,
            "activation": "relu2",
            "loss": "exponential",
            "t1": t1,
            "rtol": args.rtol,
            "atol": args.atol,
            "reference_tolerances": ref_tol,
            "final_log_loss": float(r.final_log_loss),
        },
        "wnjax": {
            "solve_s": jt["median"],
            "timing": jt,
            "compile_s": first - jt["median"],
            "first_call_s": first,
            "steps": int(r.stats["num_steps"]),
            "accepted": int(r.stats["num_accepted_steps"]),
            "rejected": int(r.stats["num_rejected_steps"]),
            "rel_err_vs_tight_reference": rel(w_jax, ref),
        },
        "gpu": C.gpu_status(),
    }
    rows = [
        {
            "impl": "wnjax (diffrax Dopri5)",
            "solve_s": jt["median"],
            "compile_s": first - jt["median"],
            "steps": figures["wnjax"]["steps"],
            "rel_err_vs_ref": figures["wnjax"]["rel_err_vs_tight_reference"],
        }
    ]
    if C.has_torch():
        import torch

        solve = torch_solver(model, X, y, t1=t1, rtol=args.rtol, atol=args.atol)
        tt = C.median_time(solve, repeats=max(1, repeats // 2), warmup=0 if args.quick else 1)
        w_torch, stats = solve()
        figures["torchdiffeq"] = {
            "solve_s": tt["median"],
            "timing": tt,
            "steps": stats["accepted"] + stats["rejected"],
            **stats,
            "rel_err_vs_tight_reference": rel(w_torch, ref),
            "torch_threads": torch.get_num_threads(),
        }
        figures["final_relative_difference"] = rel(w_jax, w_torch)
        figures["speedup"] = tt["median"] / jt["median"]
        rows.append(
            {
                "impl": "torchdiffeq dopri5",
                "solve_s": tt["median"],
                "compile_s": 0.0,
                "steps": figures["torchdiffeq"]["steps"],
                "rel_err_vs_ref": figures["torchdiffeq"]["rel_err_vs_tight_reference"],
            }
        )
    else:
        figures["torchdiffeq"] = "not measured: torch/torchdiffeq not installed"
    print(C.table(rows, ["impl", "solve_s", "compile_s", "steps", "rel_err_vs_ref"]))
    tight = dict(rtol=1e-6, atol=1e-8) if args.float32 else dict(rtol=1e-10, atol=1e-12)
    figures["default_path"] = default_path(
        model, X, y, t1=t1, rounds=1 if args.quick else 5, **tight
    )
    figures["field_floor"] = ewn_field_floor(
        model, X, y, evals=200 if args.quick else 20_000, rounds=1 if args.quick else 7
    )
    if jax.default_backend() != "cpu":
        figures["default_path_one_xla_thread"] = "not measured: an XLA:CPU setting"
    elif not args.quick:
        figures["default_path_one_xla_thread"] = _one_thread_default_path(args)
    dp, ff = figures["default_path"], figures["field_floor"]
    bd = dp["breakdown"]
    ex, bare = bd["explicit_only"], bd["bare_diffrax"]
    print(
        f"the same flow, per step: {ex['method']} alone {ex['us_per_step']:.0f} us "
        f"({ex['steps']} steps, {ex['context_switches_per_run']:.0f} context switches a run); a "
        f"bare diffeqsolve of the field {bare['us_per_step']:.0f} us ({bare['steps']} steps, "
        f"{bare['context_switches_per_run']:.0f}); the default path "
        f"{dp['context_switches_per_run']:.0f} context switches a run"
    )
    print(
        f"default path (EWN, rtol {tight['rtol']:g}): {dp['wnjax_s']['median'] * 1e3:.1f} ms, "
        f"{dp['steps']} steps, {dp['us_per_step']:.0f} us/step"
        + (
            f"; torchdiffeq {dp['torchdiffeq_s']['median']:.2f} s, speedup "
            f"{dp['speedup']['median']:.1f}x (goal >= 50x)"
            if "speedup" in dp
            else ""
        )
    )
    one = figures.get("default_path_one_xla_thread")
    if isinstance(one, dict) and "speedup" in one:
        print(
            f"default path with one XLA:CPU thread (PJRT_NPROC=1): "
            f"{one['wnjax_s']['median'] * 1e3:.1f} ms, torchdiffeq "
            f"{one['torchdiffeq_s']['median']:.2f} s, speedup {one['speedup']['median']:.1f}x"
        )
    print(
        f"one field evaluation: wnjax {ff['wnjax_us']['median']:.2f} us, closed-form floor "
        f"{ff['floor_us']['median']:.2f} us, ratio {ff['ratio']['median']:.2f} (goal <= 3)"
    )
    if "speedup" in figures:
        print(
            f"speedup {figures['speedup']:.1f}x (goal >= 30x); final relative difference "
            f"{figures['final_relative_difference']:.2e}"
        )
    C.write_result("gf_vs_torchdiffeq", args, figures)


if __name__ == "__main__":
    main()
