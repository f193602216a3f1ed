"""Roofline of wnjax GD: FLOPs per step from the shapes against the measured peak matmul FLOP/s.

A bias-free MLP d -> w -> w -> 1 (ReLU^2), ``n`` points, full batch, float64. The FLOPs of one
step are counted from the shapes (``_perfmodel.gd_step_flops``) and cross-checked against
XLA's own count of the compiled value-and-grad (``cost_analysis``). The step is wnjax's compiled
GD loop (``_perfmodel.gd_loop_vs_peak``); the peak is a large ``jnp.dot`` timed in the same run,
in each round right before the loop (the VM's speed drifts, so each round gives its own
fraction ``(FLOPs/step) / (s/step) / peak``, and the median over rounds is reported).

Where the rest goes: at each width the three matmul kinds of a hidden layer (forward ``NT``,
activation gradient ``NN``, weight gradient ``TN``) are timed on their own, and the step's
matmuls are re-costed at those speeds (``gemm_model_fraction_of_peak``). On XLA's CPU backend
the ``TN`` product (contracting the points axis, the major axis of both operands) runs at
about 40% of the speed of the others, and the same product on an explicitly transposed copy
runs at full speed: ``wnjax.MLP`` computes its weight gradients that way (``wnjax._nets.dense``),
and
``gemm_model_fraction_of_peak_plain_tn`` shows what the plain product would allow.

    python benchmarks/roofline.py [--quick]
"""

from __future__ import annotations

import _common as C
import _perfmodel as P


def xla_flops(n: int, d: int, width: int, depth: int) -> float | None:
    """XLA's FLOP count of one ``value_and_grad`` of the log loss (None if unavailable)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import wnjax

    X = jnp.ones((n, d))
    y = jnp.ones(n)
    m = wnjax.MLP(d, width, depth, activation="relu2", key=jax.random.key(0))
    params, static = eqx.partition(m, eqx.is_inexact_array)
    f = jax.jit(
        jax.value_and_grad(lambda p: wnjax.log_loss(eqx.combine(p, static), X, y, "exponential"))
    )
    try:
        cost = f.lower(params).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])
    except Exception:  # cost analysis is backend-dependent
        return None


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="points")
    args = p.parse_args()
    C.setup(args)
    d, depth = 10, 3
    n = args.n or (32 if args.quick else 256)
    widths = [16, 64] if args.quick else [64, 256, 1024, 2048, 4096]
    repeats = 1 if args.quick else 5
    rounds = 1 if args.quick else 7
    peak = P.peak_matmul_flops(512 if args.quick else 2048, repeats=repeats + 2)
    bw = P.memory_bandwidth(16 * 2**20 if args.quick else 256 * 2**20, repeats=repeats + 2)
    rows = []
    for w in widths:
        r = P.gd_loop_vs_peak(
            w,
            n,
            d=d,
            depth=depth,
            rounds=rounds,
            peak_size=512 if args.quick else 2048,
            max_steps=20 if args.quick else 2000,
        )
        local = {"flops_per_s": r["peak_flops_per_s_here"]}
        r["xla_flops"] = xla_flops(n, d, w, depth)
        r["achieved_gflops"] = r["flops"] / r["step_s"] / 1e9
        r["gemm_fraction_of_peak"] = r["gemm_model_step_s"] = None
        r["gemm_model_fraction_of_peak"] = r["gemm_model_fraction_of_peak_plain_tn"] = None
        if args.quick or 2 * n * w * w >= 1e8:  # below, a lone matmul times its dispatch
            rates = P.gemm_kinds(n, w, repeats=3 if w >= 2048 else repeats)
            r["gemm_fraction_of_peak"] = {k: v / local["flops_per_s"] for k, v in rates.items()}
            # The step if its matmuls ran at the measured speed of their kind: what XLA's
            # GEMMs allow.
            model_s = P.gemm_model_seconds(n, d, w, depth, rates)
            r["gemm_model_step_s"] = model_s
            r["gemm_model_fraction_of_peak"] = r["flops"] / model_s / local["flops_per_s"]
            # ... and with the weight gradient as the plain TN product (a bare jax.vmap model).
            r["gemm_model_fraction_of_peak_plain_tn"] = (
                r["flops"]
                / P.gemm_model_seconds(n, d, w, depth, rates, weight_grad="TN")
                / local["flops_per_s"]
            )
        r.update(
            P.attribute_share(
                r["step_s"], r["flops"], r["bytes"], local["flops_per_s"], bw["bytes_per_s"]
            )
        )
        rows.append(r)
        g = r["gemm_fraction_of_peak"]
        print(
            f"width {w}: {r['fraction_of_peak']:.0%} of peak"
            + (
                "; matmul kinds NT/NN/TN "
                + "/".join(f"{g[k]:.0%}" for k in ("NT", "NN", "TN"))
                + f" (TN via a transposed copy {g['TN via copy']:.0%}); the step's matmuls at "
                f"those speeds: {r['gemm_model_fraction_of_peak']:.0%} (with the plain TN: "
                f"{r['gemm_model_fraction_of_peak_plain_tn']:.0%})"
                if g
                else ""
            ),
            flush=True,
        )
    print(
        f"peak matmul ({peak['dtype']}, {peak['size']}^2): {peak['flops_per_s'] / 1e9:.1f} "
        f"GFLOP/s; bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s"
    )
    print(
        C.table(
            rows,
            [
                "width",
                "n",
                "flops",
                "xla_flops",
                "step_s",
                "achieved_gflops",
                "fraction_of_peak",
                "gemm_model_fraction_of_peak",
                "cost",
            ],
        )
    )
    compute_rows = [r for r in rows if r["cost"] == "compute"]
    C.write_result(
        "roofline",
        args,
        {
            "problem": {"n": n, "d": d, "depth": depth, "activation": "relu2"},
            "peak_matmul": peak,
            "bandwidth": bw,
            "widths": rows,
            "gemm_kinds": P.GEMM_KINDS,
            "min_fraction_where_compute_dominates": (
                min(r["fraction_of_peak"] for r in compute_rows) if compute_rows else None
            ),
            "gpu": C.gpu_status(),
        },
    )


if __name__ == "__main__":
    main()
