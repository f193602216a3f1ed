"""lin-sep with the paper's schedule: wnjax against a PyTorch re-implementation of its loop.

The problem of docs/theory.md §4: 4 points in R^2, a bias-free 2-layer ReLU^2 net with 8 hidden
neurons, EWN on every neuron (8 hidden + 1 output), exponential loss summed over points, GD with
step ``eta0 / L^(1 - 1/30)`` and backtracking (a rise in the loss undoes the step and divides
``eta0`` by 1.1; a fall multiplies it by 1.1), run to log L = -300, float64.

The PyTorch loop is written from that description (no code copied): an ``nn.Module`` holding
``(a_u, v_u)``, ``loss.backward()``, a manual in-place update, one loss/gradient evaluation per
epoch. wnjax runs ``gradient_descent(ewn(MLP), optimizer=wnjax.loss_normalized_sgd, ...)``, one
seed, and the same vmapped over many seeds. Reported: time per epoch, epochs to the target,
and the wall time of ``wnjax reproduce lin-sep --seeds 100`` (compile and figures included)
against one torch EWN seed. wnjax's ``epochs`` are accepted steps; its ``calls`` add two for each
undone step (the step and its undo), which is what the torch loop's epoch count counts, and the
per-epoch times of both are per call (one loss and gradient evaluation).

Two schedules: a *grown* one (``eta0 = 0.1``, grown by 1.1 after each successful step: tens of
epochs; ``--lr``) and the *paper-length* one, ``wnjax reproduce lin-sep``'s default (``eta0 =
0.01``, never grown: ~500-1,800 epochs per seed, like the paper's 653; ``--paper-lr``), which
times the per-epoch cost over a run as long as the paper's. ``wnjax reproduce lin-sep --seeds
100`` is timed with both.

    python benchmarks/linsep_pipeline.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import _common as C

POWER = 1.0 - 1.0 / 30.0


def torch_linsep(X, y, W1, W2, *, lr: float, target: float, max_epochs: int, shrink=1.1, grow=1.1):
    """EWN GD with eta = lr / L^(1-1/30) and backtracking, in eager PyTorch.

    **Returns:** (epochs run, final log L).
    """
    import torch

    class EWNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            n1, n2 = W1.norm(dim=1), W2.norm(dim=1)
            self.a1 = torch.nn.Parameter(n1.log())
            self.v1 = torch.nn.Parameter(W1 / n1[:, None])
            self.a2 = torch.nn.Parameter(n2.log())
            self.v2 = torch.nn.Parameter(W2 / n2[:, None])

        def forward(self, x):
            w1 = self.a1.exp()[:, None] * self.v1 / self.v1.norm(dim=1, keepdim=True)
            w2 = self.a2.exp()[:, None] * self.v2 / self.v2.norm(dim=1, keepdim=True)
            return (torch.relu(x @ w1.T) ** 2 @ w2.T)[:, 0]

    net = EWNNet()
    params = list(net.parameters())
    prev = [p.detach().clone() for p in params]
    prev_loss = float("inf")
    epoch = 0
    log_loss = float("nan")
    while epoch < max_epochs:
        epoch += 1
        loss = torch.exp(-y * net(X)).sum()
        log_loss = float(torch.log(loss.detach()))
        if log_loss <= target:
            break
        value = float(loss.detach())
        if value > prev_loss:  # backtrack: undo the last step, shrink eta0
            with torch.no_grad():
                for p, q in zip(params, prev):
                    p.copy_(q)
            lr /= shrink
            continue
        if value < prev_loss:  # the last step succeeded: grow eta0
            lr *= grow
        net.zero_grad()
        loss.backward()
        with torch.no_grad():
            eta = lr / value**POWER
            for p, q in zip(params, prev):
                q.copy_(p)
                p -= eta * p.grad
            prev_loss = value
    return epoch, log_loss


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=None, help="seeds of the vmapped wnjax run")
    p.add_argument(
        "--paper-lr", type=float, default=0.01, help="eta0 of the paper-length schedule (no growth)"
    )
    p.add_argument(
        "--skip-reproduce",
        action="store_true",
        help="do not time `wnjax reproduce lin-sep --seeds 100`",
    )
    args = p.parse_args()
    C.setup(args)
    import equinox as eqx
    import jax
    import numpy as np

    import wnjax
    from wnjax._dynamics.batched import traced_gradient_descent

    target = -20.0 if args.quick else -300.0
    max_epochs = 2_000 if args.quick else 30_000
    seeds = args.seeds or (4 if args.quick else 100)
    repeats = 1 if args.quick else 5
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    mk = lambda k: wnjax.MLP(2, 8, 2, activation="relu2", key=k)  # noqa: E731
    model = mk(jax.random.key(1))
    fig = {
        "problem": {
            "target_log_loss": target,
            "lr": args.lr,
            "power": POWER,
            "backtracking": True,
            "max_epochs": max_epochs,
        },
        "gpu": C.gpu_status(),
    }
    rows = []
    schedule = getattr(wnjax, "loss_normalized_sgd", None)
    if schedule is None:
        fig["wnjax"] = "not measured: wnjax.loss_normalized_sgd does not exist yet"
    else:
        kw = dict(
            num_steps=max_epochs,
            learning_rate=args.lr,
            optimizer=schedule,
            hyperparams=dict(power=POWER, backtracking=True),
            target_log_loss=target,
            degree=3.0,
        )
        p0 = wnjax.ewn(model)

        def one_seed(**over) -> dict:
            """One EWN seed through ``wnjax.gradient_descent``: epochs, time, compile time."""

            def call():
                r = wnjax.gradient_descent(p0, X, y, **{**kw, **over})
                jax.block_until_ready(r.final)
                return r

            first = C.first_call_time(call)
            t = C.median_time(call, repeats=repeats)
            r = call()
            # An undone step is two optimizer calls (the step, then its undo); the torch loop
            # counts each as an epoch, so "calls" is the count to set beside its epochs.
            calls = int(r.num_steps) + 2 * int(r.num_undone)
            return {
                "epochs": int(r.num_steps),
                "undone": int(r.num_undone),
                "calls": calls,
                "final_log_loss": float(r.final_log_loss),
                "run_s": t["median"],
                "per_epoch_us": 1e6 * t["median"] / calls,
                "compile_s": first - t["median"],
                "timing": t,
            }

        one = one_seed()
        models = eqx.filter_vmap(lambda k: wnjax.ewn(mk(k)))(
            jax.random.split(jax.random.key(2), seeds)
        )
        Xs, ys = jax.vmap(wnjax.data.lin_sep)(jax.random.split(jax.random.key(3), seeds))
        many_fn = jax.jit(
            jax.vmap(lambda m, a, b: traced_gradient_descent(m, a, b, **kw).num_steps)
        )
        many = lambda: jax.block_until_ready(many_fn(models, Xs, ys))  # noqa: E731
        firstS = C.first_call_time(many)
        tS = C.median_time(many, repeats=repeats)
        stepsS = np.asarray(many())
        paper = {
            "learning_rate": args.paper_lr,
            "grow": 1.0,
            **one_seed(
                learning_rate=args.paper_lr,
                hyperparams=dict(power=POWER, backtracking=True, grow=1.0),
            ),
        }
        fig["wnjax"] = {
            "1": one,
            str(seeds): {
                "epochs_median": float(np.median(stepsS)),
                "epochs_max": int(stepsS.max()),
                "run_s": tS["median"],
                "per_seed_epoch_us": 1e6 * tS["median"] / seeds / int(stepsS.max()),
                "compile_s": firstS - tS["median"],
                "timing": tS,
            },
            "1_paper_length": paper,
        }
        rows += [
            {"impl": "wnjax, 1 seed", **one},
            {
                "impl": f"wnjax, {seeds} seeds vmapped",
                "epochs": int(stepsS.max()),
                "run_s": tS["median"],
                "per_epoch_us": fig["wnjax"][str(seeds)]["per_seed_epoch_us"],
            },
            {"impl": f"wnjax, 1 seed, eta0={args.paper_lr} no growth", **paper},
        ]
    if C.has_torch():
        import torch

        Xt, yt = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y))
        W1 = torch.tensor(np.asarray(model.layers[0].weight))
        W2 = torch.tensor(np.asarray(model.layers[1].weight))

        def torch_seed(lr: float, grow: float) -> dict:
            """One EWN seed of the eager PyTorch loop: epochs and time."""
            run = lambda: torch_linsep(
                Xt,
                yt,
                W1,
                W2,
                lr=lr,
                target=target,  # noqa: E731
                max_epochs=max_epochs,
                grow=grow,
            )
            t = C.median_time(run, repeats=max(1, repeats // 2 + 1), warmup=0 if args.quick else 1)
            epochs, final = run()
            return {
                "learning_rate": lr,
                "grow": grow,
                "epochs": epochs,
                "final_log_loss": final,
                "run_s": t["median"],
                "per_epoch_us": 1e6 * t["median"] / epochs,
                "timing": t,
                "threads": torch.get_num_threads(),
            }

        fig["torch"] = torch_seed(args.lr, 1.1)
        fig["torch_paper_length"] = torch_seed(args.paper_lr, 1.0)
        rows += [
            {"impl": "torch eager, 1 seed", **fig["torch"]},
            {
                "impl": f"torch eager, 1 seed, eta0={args.paper_lr} no growth",
                **fig["torch_paper_length"],
            },
        ]
        if isinstance(fig["wnjax"], dict):
            fig["speedup_per_epoch_paper_length"] = (
                fig["torch_paper_length"]["per_epoch_us"]
                / fig["wnjax"]["1_paper_length"]["per_epoch_us"]
            )
            fig["speedup_per_epoch"] = (
                fig["torch"]["per_epoch_us"] / fig["wnjax"]["1"]["per_epoch_us"]
            )
            fig["speedup_per_seed_epoch_vmapped"] = (
                fig["torch"]["per_epoch_us"] / fig["wnjax"][str(seeds)]["per_seed_epoch_us"]
            )
    else:
        fig["torch"] = "not measured: torch not installed"
    # The default is the paper-length schedule (eta0 = 0.01 never grown); the other one grows
    # eta0 = 0.1 after each good step up to 1.
    fig["reproduce_lin_sep_100_seeds"] = reproduce_time(args)
    fig["reproduce_lin_sep_100_seeds_grown"] = reproduce_time(args, ("--lr", "0.1", "--cap", "1"))
    print(C.table(rows, ["impl", "epochs", "run_s", "per_epoch_us"]))
    for key in ("reproduce_lin_sep_100_seeds", "reproduce_lin_sep_100_seeds_grown"):
        rep = fig[key]
        if isinstance(rep, dict):
            print(f"`{rep['command']}`: {rep['wall_s']:.1f} s (rc {rep['returncode']})")
    C.write_result("linsep_pipeline", args, fig)


def reproduce_time(args, extra: tuple[str, ...] = ()) -> dict | str:
    """Wall time of ``wnjax reproduce lin-sep --seeds 100 [extra]`` in a fresh process."""
    if args.quick or args.skip_reproduce:
        return "not measured: skipped (--quick or --skip-reproduce)"
    from wnjax.experiments._reproduce import EXPERIMENTS

    if "lin-sep" not in EXPERIMENTS:
        return "not measured: `wnjax reproduce lin-sep` is not registered yet"
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "wnjax",
            "reproduce",
            "--seeds",
            "100",
            "--out",
            out,
            "lin-sep",
            *extra,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        wall = time.perf_counter() - t0
    return {
        "command": " ".join(["wnjax reproduce lin-sep --seeds 100", *extra]),
        "wall_s": wall,
        "returncode": proc.returncode,
        "stderr_tail": proc.stderr[-2000:],
    }


if __name__ == "__main__":
    main()
