"""Scaling of wnjax GD: time per step against width, number of points, seeds and steps.

A bias-free MLP d -> w -> w -> 1 (ReLU^2, depth 3, so the cost grows like ``n w^2``), full
batch, exponential loss, float64. The time per step is that of wnjax's compiled GD loop
(``_perfmodel.gd_loop_vs_peak``: median over rounds of one call of ``S`` steps, each call ~0.3 s
at 100 GFLOP/s, right after a peak ``jnp.dot``); the fixed cost of a ``gradient_descent`` call
(validation, set-up, dispatch) shows in the steps sweep. Exponents are fitted on log-log axes
over the upper half of each sweep, and each size's time is split by the cost model of
``_perfmodel.py`` into compute (FLOPs / peak), memory (bytes / bandwidth, for working sets
beyond the cache), dispatch/loop overhead (up to the smallest size's step, the loop's floor) and
the rest (kernels below peak in cache, memory passes beyond the counted lower bound outside
it), with the peak FLOP/s and bandwidth measured in the same run.

    python benchmarks/scaling.py [--quick]
"""

from __future__ import annotations

import json
import os

import _common as C
import _perfmodel as P


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw scaling.png from the results file of the last run, timing nothing",
    )
    args = p.parse_args()
    if args.plot_only:
        out = args.out or C.RESULTS
        with open(os.path.join(out, f"{C.result_name('scaling', args.float32)}.json")) as f:
            doc = json.load(f)
        print(
            "wrote",
            plot(out, doc["width"], doc["points"], doc["seeds"], doc["steps"], doc["exponents"]),
        )
        return
    C.setup(args)
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import wnjax
    from wnjax._dynamics.batched import traced_gradient_descent

    d, depth, lr = 10, 3, 1e-4
    if args.quick:
        widths, points, seeds, steps_list = [8, 16], [16, 32], [1, 2], [10, 20]
        repeats = 1
    else:
        widths, points, seeds = (
            [16, 64, 256, 1024, 4096],
            [16, 64, 256, 1024, 4096, 16384],
            [1, 4, 16, 64, 256],
        )
        steps_list, repeats = [10, 100, 1000, 10000], 5
    base_n, base_w = (16, 16) if args.quick else (256, 256)

    def data(n):  # the same data as P.gd_step_time
        X = jax.random.normal(jax.random.key(n), (n, d))
        return X, jnp.where(X[:, 0] >= 0, 1.0, -1.0)

    def model(w, key=None):
        key = jax.random.key(1) if key is None else key
        # Scaled so the initial outputs stay O(1) at every width.
        return wnjax.MLP(
            d, w, depth, activation="relu2", init_scale=min(1.0, (16 / w) ** 0.25), key=key
        )

    cache = {}

    def per_step(w, n):
        if (w, n) not in cache:
            cache[(w, n)] = P.gd_loop_vs_peak(
                w,
                n,
                d=d,
                depth=depth,
                rounds=repeats,
                peak_size=512 if args.quick else 2048,
                max_steps=20 if args.quick else 2000,
                lr=lr,
            )
        return dict(cache[(w, n)])

    peak = P.peak_matmul_flops(512 if args.quick else 2048, repeats=repeats + 2)
    bw = P.memory_bandwidth(16 * 2**20 if args.quick else 256 * 2**20, repeats=repeats + 2)
    width_rows = [per_step(w, base_n) for w in widths]
    point_rows = [per_step(base_w, n) for n in points]
    # The loop's per-step floor: the smallest size's step, where the work itself is negligible.
    floor_s = min(r["step_s"] for r in width_rows + point_rows)
    for r in width_rows + point_rows:
        r["gflops_per_s"] = r["flops"] / r["step_s"] / 1e9
        r.update(
            P.attribute_share(
                r["step_s"],
                r["flops"],
                r["bytes"],
                peak["flops_per_s"],
                bw["bytes_per_s"],
                floor_s=floor_s,
            )
        )

    X, y = data(64)
    seed_rows = []
    S = 10 if args.quick else 1000
    for B in seeds:
        ms = eqx.filter_vmap(lambda k: model(32, k))(jax.random.split(jax.random.key(2), B))
        fn = jax.jit(
            jax.vmap(
                lambda m: (
                    traced_gradient_descent(
                        m,
                        X,
                        y,
                        num_steps=S,
                        learning_rate=lr,
                        degree=3.0,
                        n_save=4,
                        chunk_size=S,
                        diagnostics=False,
                    ).final_log_loss
                )
            )
        )
        t = C.median_time(lambda: jax.block_until_ready(fn(ms)), repeats=repeats)["median"]
        seed_rows.append(
            {
                "seeds": B,
                "width": 32,
                "n": 64,
                "steps": S,
                "total_s": t,
                "per_seed_step_s": t / S / B,
            }
        )

    m = model(32)
    step_rows = []
    for k in steps_list:
        f = lambda: jax.block_until_ready(  # noqa: E731
            wnjax.gradient_descent(
                m,
                X,
                y,
                num_steps=k,
                learning_rate=lr,
                degree=3.0,
                n_save=4,
                chunk_size=10 if args.quick else 1000,
                diagnostics=False,
            ).final_log_loss
        )
        t = C.median_time(f, repeats=repeats)["median"]
        step_rows.append({"steps": k, "width": 32, "n": 64, "total_s": t, "per_step_s": t / k})

    def upper(rows, key, val):
        half = rows[len(rows) // 2 - (len(rows) % 2 == 0) :] if len(rows) > 2 else rows
        return P.fit_exponent([r[key] for r in half], [r[val] for r in half])

    exps = {
        "width (time/step ~ width^k, upper half)": upper(width_rows, "width", "step_s"),
        "points (time/step ~ n^k, upper half)": upper(point_rows, "n", "step_s"),
        "seeds (total time ~ seeds^k, upper half)": upper(seed_rows, "seeds", "total_s"),
        "steps (total time ~ steps^k, upper half)": upper(step_rows, "steps", "total_s"),
        "width, all sizes": P.fit_exponent(widths, [r["step_s"] for r in width_rows]),
        "points, all sizes": P.fit_exponent(points, [r["step_s"] for r in point_rows]),
    }
    print(
        f"peak matmul {peak['flops_per_s'] / 1e9:.1f} GFLOP/s, bandwidth "
        f"{bw['bytes_per_s'] / 1e9:.1f} GB/s"
    )
    cols = ["width", "n", "steps", "step_s", "fraction_of_peak", "gflops_per_s", "cost"]
    print(C.table(width_rows, cols))
    print(C.table(point_rows, cols))
    print(C.table(seed_rows, ["seeds", "total_s", "per_seed_step_s"]))
    print(C.table(step_rows, ["steps", "total_s", "per_step_s"]))
    for k, v in exps.items():
        print(f"exponent, {k}: {v:.2f}")
    out = args.out or (os.path.join(C.RESULTS, "quick") if args.quick else C.RESULTS)
    png = plot(out, width_rows, point_rows, seed_rows, step_rows, exps)
    C.write_result(
        "scaling",
        args,
        {
            "problem": {
                "d": d,
                "depth": depth,
                "activation": "relu2",
                "loss": "exponential",
                "width_sweep_n": base_n,
                "points_sweep_width": base_w,
            },
            "peak_matmul": peak,
            "bandwidth": bw,
            "width": width_rows,
            "points": point_rows,
            "seeds": seed_rows,
            "steps": step_rows,
            "exponents": exps,
            "plot": os.path.basename(png),
            "gpu": C.gpu_status(),
        },
    )


def plot(out, width_rows, point_rows, seed_rows, step_rows, exps) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.lines  # noqa: F401  (Line2D for the legend)
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = [
        (
            width_rows,
            "width",
            "step_s",
            "width",
            "time per GD step (s)",
            exps["width (time/step ~ width^k, upper half)"],
        ),
        (
            point_rows,
            "n",
            "step_s",
            "points n",
            "time per GD step (s)",
            exps["points (time/step ~ n^k, upper half)"],
        ),
        (
            seed_rows,
            "seeds",
            "per_seed_step_s",
            "seeds (vmapped)",
            "time per seed-step (s)",
            exps["seeds (total time ~ seeds^k, upper half)"] - 1,
        ),
        (
            step_rows,
            "steps",
            "total_s",
            "steps",
            "time per call (s)",
            exps["steps (total time ~ steps^k, upper half)"],
        ),
    ]
    colors = {
        "dispatch/loop overhead": "tab:gray",
        "compute": "tab:blue",
        "memory": "tab:red",
        "compute below peak (small kernels)": "tab:cyan",
        "memory beyond the counted passes": "tab:orange",
    }
    for ax, (rows, kx, ky, xl, yl, k) in zip(axes, panels):
        xs, ys = [r[kx] for r in rows], [r[ky] for r in rows]
        ax.loglog(xs, ys, "-", color="0.6")
        for x, y_, r in zip(xs, ys, rows):  # each size coloured by where its time goes
            ax.plot(x, y_, "o", color=colors.get(r.get("cost"), "black"))
        if ky == "per_seed_step_s":  # a flat cost: show a decade either way, not the noise
            mid = np.sqrt(min(ys) * max(ys))
            ax.set_ylim(mid / 10, mid * 10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"upper-half slope {k:.2f}")
        ax.grid(True, which="both", alpha=0.3)
    seen = {r["cost"] for r in width_rows + point_rows}
    handles = [
        matplotlib.lines.Line2D([], [], marker="o", ls="", color=c, label=name)
        for name, c in colors.items()
        if name in seen
    ]
    fig.legend(
        handles=handles,
        fontsize=8,
        loc="lower center",
        ncol=len(handles),
        title="where the time goes (cost model of _perfmodel.attribute_share)",
        title_fontsize=8,
        frameon=False,
    )
    fig.suptitle("wnjax GD scaling (bias-free ReLU^2 MLP, depth 3, float64, CPU)")
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    path = os.path.join(out, "scaling.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
