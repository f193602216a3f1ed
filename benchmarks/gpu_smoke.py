"""wnjax on a GPU, checked against the CPU of the same machine before anything is timed.

Prints the versions and devices, then on the default (GPU) backend and on the CPU backend, in
float64: a default gradient flow (EWN 2-8-1 ReLU^2 on lin-sep, plain time to t1 = 50), 100 GD
steps, a vmapped 8-seed sweep of flows, and the EWN equivalence check
(``wnjax.flow_equivalence``); and in float32, 20 GD steps of a net wide enough for the GPU's
matmul library (``float32_gd_change``). Each GPU figure must agree with the CPU's: flow and
sweep final log losses to 1e-7 (relative where above 1), GD to 1e-10, the float32 weight change
to 2e-5 (TensorFloat-32 products, emulated on a CPU by rounding the inputs of every product,
move it by 2.2e-4), the equivalence error below 1e-6 on both. Exit code 3 on any disagreement;
the report goes to stdout and, with ``--out DIR``, to ``DIR/gpu_smoke.json``.

    python benchmarks/gpu_smoke.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib import metadata


def checks() -> dict:
    import jax
    import numpy as np

    import wnjax

    X, y = wnjax.data.lin_sep(jax.random.key(0))

    def model(key):
        return wnjax.ewn(wnjax.MLP(2, 8, 2, activation="relu2", key=key))

    def sweep_run(key, cfg):
        r = wnjax.gradient_flow(
            model(key), X, y, t1=50.0, n_save=4, save_states=False, max_steps=20000, throw=False
        )
        return {"final_log_loss": r.final_log_loss}

    out = {}
    t0 = time.perf_counter()
    flow = wnjax.gradient_flow(model(jax.random.key(1)), X, y, t1=50.0, rtol=1e-10, atol=1e-12)
    out["flow_final_log_loss"] = float(flow.final_log_loss)
    out["flow_num_steps"] = int(flow.stats["num_steps"])
    gd = wnjax.gradient_descent(model(jax.random.key(1)), X, y, num_steps=100, learning_rate=0.05)
    out["gd_final_log_loss"] = float(gd.final_log_loss)
    sw = wnjax.sweep(sweep_run, 8, batch_size=8, devices=1, progress=False)
    out["sweep_final_log_loss"] = np.asarray(sw.table["final_log_loss"]).tolist()
    eq = wnjax.flow_equivalence(wnjax.MLP(2, 8, 2, activation="relu2", key=jax.random.key(2)), X, y)
    out["ewn_max_rel_err"] = float(eq["ewn_max_rel_err"])
    out["swn_max_rel_err"] = float(eq["swn_max_rel_err"])
    out["float32_gd_weight_change"] = float32_gd_change()
    out["seconds"] = time.perf_counter() - t0
    return out


def float32_gd_change() -> list:
    """The change of the weights over 20 GD steps of a float32 10-256-256-1 ReLU^2 net on 512
    points: wide enough that a GPU hands its products to its matmul library, where
    TensorFloat-32 would show as relative differences ~1e-3 from the CPU."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import wnjax

    X = jax.random.normal(jax.random.key(0), (512, 10), jnp.float32)
    y = jnp.where(X[:, 0] >= 0, 1.0, -1.0).astype(jnp.float32)
    net = wnjax.MLP(10, 256, 3, activation="relu2", init_scale=0.5, key=jax.random.key(1))
    net = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, net
    )
    r = wnjax.gradient_descent(net, X, y, num_steps=20, learning_rate=1e-3, diagnostics=False)

    def flat(m):
        return np.concatenate([np.ravel(np.asarray(w.weight)) for w in wnjax.weight_layers(m)])

    return (flat(r.final) - flat(net)).tolist()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import wnjax

    report = {
        "versions": {
            k: metadata.version(k)
            for k in ("jax", "jaxlib", "equinox", "diffrax", "optax", "lineax", "numpy")
        },
        "wnjax_file": wnjax.__file__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    print(json.dumps(report, indent=1), flush=True)
    report["default"] = checks()
    print("default backend:", report["default"], flush=True)
    with jax.default_device(jax.devices("cpu")[0]):
        report["cpu"] = checks()
    print("cpu:", report["cpu"], flush=True)
    a, b = report["default"], report["cpu"]

    def rel(u, v):
        u, v = np.asarray(u), np.asarray(v)
        return float(np.max(np.abs(u - v) / np.maximum(np.abs(v), 1.0)))

    da, db = (
        np.asarray(a.pop("float32_gd_weight_change")),
        np.asarray(b.pop("float32_gd_weight_change")),
    )
    report["agreement"] = {
        "flow": rel(a["flow_final_log_loss"], b["flow_final_log_loss"]),
        "gd": rel(a["gd_final_log_loss"], b["gd_final_log_loss"]),
        "sweep": rel(a["sweep_final_log_loss"], b["sweep_final_log_loss"]),
        "float32_gd_weight_change": float(np.linalg.norm(da - db) / np.linalg.norm(db)),
    }
    ok = (
        report["agreement"]["flow"] < 1e-7
        and report["agreement"]["gd"] < 1e-10
        and report["agreement"]["sweep"] < 1e-7
        and report["agreement"]["float32_gd_weight_change"] < 2e-5
        and a["ewn_max_rel_err"] < 1e-6
        and b["ewn_max_rel_err"] < 1e-6
    )
    report["ok"] = ok
    print("agreement:", report["agreement"], "ok:", ok, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_smoke.json"), "w") as f:
            json.dump(report, f, indent=2)
    return 0 if ok else 3  # 1 is Python's own exit code on an error


if __name__ == "__main__":
    raise SystemExit(main())
