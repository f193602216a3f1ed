"""Roofline of wnjax GD: FLOPs per step from the shapes against the measured peak matmul FLOP/s.

A bias-free MLP d -> w -> w -> 1 (ReLU^2), ``n`` points, full batch, float64. The FLOPs of one
step are counted from the shapes (``_perfmodel.gd_step_flops``) and cross-checked against
XLA's own count of the compiled value-and-grad (``cost_analysis``). The peak is a large
``jnp.dot`` timed in the same run. The achieved fraction is ``(FLOPs/step) / (s/step) / peak``.

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
    f = jax.jit(jax.value_and_grad(
        lambda p: wnjax.log_loss(eqx.combine(p, static), X, y, "exponential")))
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
    peak = P.peak_matmul_flops(512 if args.quick else 2048, repeats=repeats + 2)
    bw = P.memory_bandwidth(16 * 2**20 if args.quick else 256 * 2**20, repeats=repeats + 2)
    rows = []
    for w in widths:
        r = P.gd_step_time(w, n, d=d, depth=depth, repeats=repeats,
                           max_steps=20 if args.quick else 2000)
        r["xla_flops"] = xla_flops(n, d, w, depth)
        r["achieved_gflops"] = r["flops"] / r["step_s"] / 1e9
        r["fraction_of_peak"] = r["flops"] / r["step_s"] / peak["flops_per_s"]
        r.update(P.attribute_share(r["step_s"], r["flops"], r["bytes"], peak["flops_per_s"],
                                   bw["bytes_per_s"]))
        rows.append(r)
    print(f"peak matmul ({peak['dtype']}, {peak['size']}^2): {peak['flops_per_s'] / 1e9:.1f} "
          f"GFLOP/s; bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s")
    print(C.table(rows, ["width", "n", "flops", "xla_flops", "step_s", "achieved_gflops",
                         "fraction_of_peak", "cost"]))
    compute_rows = [r for r in rows if r["cost"] == "compute"]
    C.write_result("roofline", args, {
        "problem": {"n": n, "d": d, "depth": depth, "activation": "relu2"},
        "peak_matmul": peak, "bandwidth": bw, "widths": rows,
        "min_fraction_where_compute_dominates": (
            min(r["fraction_of_peak"] for r in compute_rows) if compute_rows else None),
        "gpu": C.GPU_NOT_MEASURED})


if __name__ == "__main__":
    main()
