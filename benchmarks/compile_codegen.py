"""XLA:CPU's default code generation against the quicker one the test suite compiles under
(``wnjax._runtime.cache.QUICK_CPU_CODEGEN``: legacy fusion emitters, LLVM -O0).

Each round starts one fresh process per code generation (interleaved, the order reversed every
other round), with the persistent compilation cache off, and each process times:

- ``first``: the first call of ``gradient_flow`` on an EWN ReLU^2 MLP 5-8-1 (n = 16) to
  ``log L = -300`` in normalized time, every other default: tracing, compiling and running the
  solve, what a researcher waits for on a new problem;
- ``step``: the median warm solve of the default path of ``gf_vs_torchdiffeq.py`` (EWN 10-32-1
  ReLU^2, n = 64, rtol 1e-10, t1 = 50), per accepted step;
- ``mnist_step`` (unless ``--quick``): the same per step for an EWN 784-32-1 ReLU^2 MLP on 200
  MNIST test images (3 against 5), a net whose steps are matrix products, if the data are found
  (``--mnist DIR``, default ``../shared/data/mnist``).

Reported: medians over rounds and the medians of the per-round ratios quick / default.

    python benchmarks/compile_codegen.py [--quick] [--rounds N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import _common as C

CHILD = r"""
import gzip, json, os, statistics, sys, time
import numpy as np
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import wnjax

def solve_time(net, X, y, **kw):
    r = wnjax.gradient_flow(net, X, y, **kw)
    jax.block_until_ready(r.log_loss)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        r = wnjax.gradient_flow(net, X, y, **kw)
        jax.block_until_ready(r.log_loss)
        times.append(time.perf_counter() - t0)
    steps = int(r.stats["num_accepted_steps"])
    return statistics.median(times) / steps, steps

out = {}
X = jax.random.normal(jax.random.key(0), (16, 5))
y = jnp.sign(X[:, 0] + 0.3 * X[:, 1])
net = wnjax.ewn(wnjax.MLP(5, 8, 2, activation="relu2", key=jax.random.key(1)))
t0 = time.perf_counter()
r = wnjax.gradient_flow(net, X, y, target_log_loss=-300.0, time="normalized")
jax.block_until_ready(r.log_loss)
out["first"] = time.perf_counter() - t0
assert bool(r.ok), r.message

X = jax.random.normal(jax.random.key(0), (64, 10))
y = jnp.sign(X[:, 0] + 0.3 * X[:, 1])
net = wnjax.ewn(wnjax.MLP(10, 32, 2, activation="relu2", key=jax.random.key(1)))
out["step"], out["steps"] = solve_time(net, X, y, t1=50.0, rtol=1e-10)

mnist = sys.argv[1]
if mnist:
    def idx(name, skip):
        with gzip.open(os.path.join(mnist, name)) as f:
            return np.frombuffer(f.read(), np.uint8)[skip:]
    images = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784) / 255.0
    labels = idx("t10k-labels-idx1-ubyte.gz", 8)
    keep = np.flatnonzero((labels == 3) | (labels == 5))[:200]
    X = jnp.asarray(images[keep])
    y = jnp.asarray(np.where(labels[keep] == 3, 1.0, -1.0))
    net = wnjax.ewn(wnjax.MLP(784, 32, 2, activation="relu2", key=jax.random.key(1)))
    out["mnist_step"], out["mnist_steps"] = solve_time(net, X, y, t1=20.0)
print("RESULT " + json.dumps(out))
"""

MODES = ("default", "quick")


def _flags(mode: str) -> str:
    """``XLA_FLAGS`` of a run: none (XLA's defaults) or the quicker code generation's."""
    from wnjax._runtime.cache import quick_codegen_flags

    return quick_codegen_flags() if mode == "quick" else ""


def _child(mode: str, mnist: str) -> dict:
    env = dict(os.environ, WNJAX_COMPILATION_CACHE="0", JAX_PLATFORMS="cpu", XLA_FLAGS=_flags(mode))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mnist], capture_output=True, text=True, env=env
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="default 5 (1 with --quick)")
    p.add_argument("--mnist", default=os.path.join(C.HERE, "..", "..", "shared", "data", "mnist"))
    args = p.parse_args()
    if args.float32:
        raise SystemExit("compile_codegen.py runs in float64 only")
    C.setup(args)
    rounds = args.rounds or (1 if args.quick else 5)
    mnist = "" if args.quick or not os.path.isdir(args.mnist) else os.path.abspath(args.mnist)
    runs = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            runs[mode].append(_child(mode, mnist))
        print(
            f"round {r + 1}: "
            + ", ".join(
                f"{m} first {runs[m][-1]['first']:.2f} s, step {runs[m][-1]['step'] * 1e6:.1f} us"
                for m in MODES
            ),
            flush=True,
        )
    keys = [k for k in ("first", "step", "mnist_step") if k in runs["default"][0]]
    fig = {
        "flags": {m: _flags(m) for m in MODES},
        "seconds": {m: {k: C.summary([x[k] for x in runs[m]]) for k in keys} for m in MODES},
        "steps": {k: runs["default"][0][k + "s"] for k in keys if k != "first"},
        "quick_over_default": {
            k: statistics.median(q[k] / d[k] for q, d in zip(runs["quick"], runs["default"]))
            for k in keys
        },
    }
    rows = [
        {
            "what": k,
            "default": fig["seconds"]["default"][k]["median"],
            "quick": fig["seconds"]["quick"][k]["median"],
            "quick/default": fig["quick_over_default"][k],
        }
        for k in keys
    ]
    print(C.table(rows, ["what", "default", "quick", "quick/default"]))
    C.write_result("compile_codegen", args, {**fig, "rounds": rounds, "gpu": C.gpu_status()})


if __name__ == "__main__":
    main()
