"""A cost model of one full-batch GD step on a bias-free MLP, and the machine's measured peaks.

FLOPs per step, from the shapes ``sizes = [d, w_1, ..., 1]`` and ``n`` points (matmuls only;
elementwise work is lower order):

- forward: ``2 n sum_l a_l b_l``;
- backward, weight gradients: ``2 n sum_l a_l b_l``;
- backward, activation gradients (every layer but the first): ``2 n sum_{l>1} a_l b_l``.

Bytes per step (lower bound of the traffic): the weights read twice and written once, their
gradient written once, and each layer's activations written by the forward pass and read back
(twice) by the backward pass, 8 bytes per float64 number.

The reference products (the peak, the matmul kinds) run at the precision wnjax traces its models
with: true float32 in float32 (``wnjax._runtime.precision``), never a GPU's TensorFloat-32.
"""

from __future__ import annotations

import numpy as np
from _common import median_time


def _matmul(a, b):
    """``a @ b`` in true float32 (or float64): wnjax's precision."""
    import jax
    import jax.numpy as jnp

    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def layer_shapes(d: int, width: int, depth: int) -> list[tuple[int, int]]:
    sizes = [d] + [width] * (depth - 1) + [1]
    return list(zip(sizes[:-1], sizes[1:]))


def gd_step_flops(n: int, d: int, width: int, depth: int) -> float:
    """Matmul FLOPs of one GD step (forward + backward), counted from the shapes."""
    prods = [a * b for a, b in layer_shapes(d, width, depth)]
    return 2.0 * n * (2 * sum(prods) + sum(prods[1:]))


def gd_step_bytes(n: int, d: int, width: int, depth: int, itemsize: int = 8) -> float:
    """A lower bound of the bytes moved by one GD step."""
    shapes = layer_shapes(d, width, depth)
    weights = sum(a * b for a, b in shapes)
    activations = n * (d + sum(b for _, b in shapes))
    return float(itemsize * (4 * weights + 3 * activations))


def _median_call(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call (``_common.median_time``)."""
    return float(median_time(fn, repeats=repeats, warmup=1)["median"])


def peak_matmul_flops(size: int = 2048, dtype=None, repeats: int = 5) -> dict:
    """Measured FLOP/s of a large ``jnp.dot`` (``2 size^3`` FLOPs), median of ``repeats``."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.result_type(float)
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (size, size), dtype)
    b = jax.random.normal(k2, (size, size), dtype)
    dot = jax.jit(_matmul)
    t = _median_call(lambda: dot(a, b).block_until_ready(), repeats)
    return {
        "flops_per_s": 2.0 * size**3 / t,
        "size": size,
        "dtype": str(jnp.dtype(dtype)),
        "seconds": t,
    }


def gd_loop_vs_peak(
    width: int,
    n: int,
    *,
    d: int = 10,
    depth: int = 3,
    rounds: int = 5,
    peak_size: int = 2048,
    target_s: float = 0.3,
    max_steps: int = 2000,
    lr: float = 1e-4,
) -> dict:
    """Seconds per step of wnjax's compiled GD loop, and its fraction of the matmul peak.

    The loop is ``traced_gradient_descent`` (the program ``gradient_descent`` runs chunk by chunk)
    with ``S`` steps in one compiled call, ``S`` chosen so that a call takes ~``target_s`` at
    100 GFLOP/s. Each round times one call of the loop right after one ``peak_size^2``
    ``jnp.dot``; the fraction is the median over rounds of ``(FLOPs/step)/(s/step)/peak``, so a
    drift of the machine's speed between rounds cancels.
    """
    import statistics
    import time

    import jax
    import jax.numpy as jnp

    import wnjax
    from wnjax._dynamics.batched import traced_gradient_descent

    X = jax.random.normal(jax.random.key(n), (n, d))
    y = jnp.where(X[:, 0] >= 0, 1.0, -1.0)
    m = wnjax.MLP(
        d,
        width,
        depth,
        activation="relu2",
        init_scale=min(1.0, (16 / width) ** 0.25),
        key=jax.random.key(1),
    )
    flops = gd_step_flops(n, d, width, depth)
    S = int(min(max_steps, max(4, target_s * 1e11 / flops)))
    loop = jax.jit(
        lambda m: (
            traced_gradient_descent(
                m,
                X,
                y,
                num_steps=S,
                learning_rate=lr,
                degree=3.0,
                n_save=2,
                chunk_size=S,
                diagnostics=False,
                diverge_above=1e9,
            ).final_log_loss
        )
    )
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (peak_size, peak_size), jnp.result_type(float))
    b = jax.random.normal(k2, (peak_size, peak_size), jnp.result_type(float))
    dot = jax.jit(_matmul)
    loop(m).block_until_ready()
    dot(a, b).block_until_ready()
    peaks, steps, fractions = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        t1 = time.perf_counter()
        loop(m).block_until_ready()
        t2 = time.perf_counter()
        peaks.append(2.0 * peak_size**3 / (t1 - t0))
        steps.append((t2 - t1) / S)
        fractions.append(flops / steps[-1] / peaks[-1])
    return {
        "width": width,
        "n": n,
        "depth": depth,
        "steps": S,
        "rounds": rounds,
        "step_s": statistics.median(steps),
        "peak_flops_per_s_here": statistics.median(peaks),
        "fraction_of_peak": statistics.median(fractions),
        "fraction_range": [min(fractions), max(fractions)],
        "flops": flops,
        "bytes": gd_step_bytes(n, d, width, depth),
    }


GEMM_KINDS = {
    # The three matmuls of a dense layer ``Z = A W^T`` (A: n x in, W: out x in, row-major),
    # named by which operand is read transposed, as XLA sees them under ``vmap`` over points:
    "NT": "forward  Z = A W^T",
    "NN": "backward dA = dZ W",
    "TN": "backward dW = dZ^T A (contracts the points axis, the major axis of both)",
}


def gemm_kinds(n: int, width: int, repeats: int = 7) -> dict:
    """Measured FLOP/s of the three matmul kinds of a ``width x width`` layer on ``n`` points.

    Timed in interleaved rounds (median), ``2 n width^2`` FLOPs each. XLA's CPU backend runs the
    ``TN`` kind (the weight gradient) well below the other two; an explicitly transposed copy of
    ``dZ`` (``TN via copy``) shows what the same product costs when it is handed over as ``NN``.
    """
    import statistics
    import time

    import jax
    import jax.numpy as jnp

    dtype = jnp.result_type(float)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    A = jax.random.normal(k1, (n, width), dtype)
    B = jax.random.normal(k2, (n, width), dtype)
    W = jax.random.normal(k3, (width, width), dtype)
    ob = jax.lax.optimization_barrier
    fns = {
        "NT": (jax.jit(lambda a, w: _matmul(a, w.T)), (A, W)),
        "NN": (jax.jit(lambda a, w: _matmul(a, w)), (A, W)),
        "TN": (jax.jit(lambda a, b: _matmul(a.T, b)), (A, B)),
        "TN via copy": (jax.jit(lambda a, b: _matmul(ob(jnp.transpose(a)), b)), (A, B)),
    }
    for f, args in fns.values():
        f(*args).block_until_ready()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, (f, args) in fns.items():
            t0 = time.perf_counter()
            f(*args).block_until_ready()
            times[k].append(time.perf_counter() - t0)
    flops = 2.0 * n * width * width
    return {k: flops / statistics.median(v) for k, v in times.items()}


def gemm_model_seconds(
    n: int, d: int, width: int, depth: int, rates: dict, weight_grad: str = "TN via copy"
) -> float:
    """Seconds of one GD step's matmuls if each ran at its kind's measured rate ``rates``.

    ``weight_grad`` names the kind used for ``dW``: ``"TN via copy"`` is what ``wnjax.MLP``
    runs on CPU (``wnjax._nets.dense.dense``), ``"TN"`` what a plain ``jax.vmap`` of the model
    gives.
    """
    shapes = layer_shapes(d, width, depth)
    t = 0.0
    for i, (a, b) in enumerate(shapes):
        f = 2.0 * n * a * b
        t += f / rates["NT"] + f / rates[weight_grad] + (f / rates["NN"] if i > 0 else 0.0)
    return t


def memory_bandwidth(n_bytes: int = 256 * 2**20, repeats: int = 5) -> dict:
    """Measured bytes/s of ``a + b`` on large arrays (2 reads, 1 write)."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.result_type(float)
    m = n_bytes // jnp.dtype(dtype).itemsize
    a = jnp.ones(m, dtype)
    b = jnp.ones(m, dtype)
    add = jax.jit(jnp.add)
    t = _median_call(lambda: add(a, b).block_until_ready(), repeats)
    return {
        "bytes_per_s": 3.0 * m * jnp.dtype(dtype).itemsize / t,
        "array_bytes": int(n_bytes),
        "seconds": t,
    }


def attribute(
    step_s: float, flops: float, n_bytes: float, floor_s: float, peak: float, bandwidth: float
) -> str:
    """Where a step's time goes: the largest of overhead floor, compute and memory times."""
    parts = {
        "dispatch/loop overhead": floor_s,
        "compute": flops / peak,
        "memory": n_bytes / bandwidth,
    }
    return max(parts, key=parts.get)


def fit_exponent(x, t) -> float:
    """Slope of ``log t`` against ``log x`` (least squares)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(t, float)), 1)[0])


CACHE_BYTES = 4 * 2**20  # working sets below this stay in cache: no DRAM traffic counted


def attribute_share(
    step_s: float,
    flops: float,
    n_bytes: float,
    peak: float,
    bandwidth: float,
    floor_s: float | None = None,
) -> dict:
    """Shares of a step's time: compute ``flops/peak``, memory ``bytes/bandwidth`` (only for
    working sets beyond the cache), dispatch/loop overhead, and the rest; plus the largest.

    The overhead is the part of the unexplained time up to ``floor_s``, the per-step floor of
    the compiled loop measured in the same run (its smallest size). What lies beyond it is
    named for its likely cause: for a working set in cache, kernels running below the peak
    (small matmuls, elementwise fusions on one core); beyond the cache, memory passes beyond the
    lower bound of ``gd_step_bytes``. Without ``floor_s`` all unexplained time is overhead.
    """
    compute = min(1.0, flops / peak / step_s)
    memory = min(1.0, (n_bytes / bandwidth if n_bytes > CACHE_BYTES else 0.0) / step_s)
    rest = max(0.0, 1.0 - compute - memory)
    overhead = rest if floor_s is None else min(rest, floor_s / step_s)
    other = (
        "compute below peak (small kernels)"
        if n_bytes <= CACHE_BYTES
        else "memory beyond the counted passes"
    )
    shares = {
        "dispatch/loop overhead": overhead,
        "compute": compute,
        "memory": memory,
        other: rest - overhead,
    }
    return {"shares": shares, "cost": max(shares, key=shares.get)}


def gd_step_time(
    width: int,
    n: int,
    *,
    d: int = 10,
    depth: int = 3,
    repeats: int = 5,
    max_steps: int = 2000,
    lr: float = 1e-4,
) -> dict:
    """Seconds per ``wnjax.gradient_descent`` step, by difference: ``(T(2S) - T(S)) / S``.

    Both calls reuse one compiled chunk of ``S`` steps, so the fixed cost of a call cancels; it
    is returned as ``call_overhead_s``. ``S`` is chosen so that a call does ~2 GFLOP.
    """
    import jax
    import jax.numpy as jnp

    import wnjax

    X = jax.random.normal(jax.random.key(n), (n, d))
    y = jnp.where(X[:, 0] >= 0, 1.0, -1.0)
    m = wnjax.MLP(
        d,
        width,
        depth,
        activation="relu2",
        init_scale=min(1.0, (16 / width) ** 0.25),
        key=jax.random.key(1),
    )
    flops = gd_step_flops(n, d, width, depth)
    S = int(min(max_steps, max(4, 2e9 / flops)))
    kw = dict(
        learning_rate=lr, degree=3.0, n_save=4, chunk_size=S, diverge_above=1e9, diagnostics=False
    )

    def call(k):
        return lambda: jax.block_until_ready(
            wnjax.gradient_descent(m, X, y, num_steps=k, **kw).final_log_loss
        )

    if flops > 1e9:  # a call takes seconds: fewer repeats
        repeats = min(repeats, 2)
    tS = _median_call(call(S), repeats)
    t2S = _median_call(call(2 * S), repeats)
    by_difference = t2S > 1.05 * tS
    # Timing noise can swamp the difference; then report the (upper-bound) mean over 2S steps.
    step = (t2S - tS) / S if by_difference else t2S / (2 * S)
    return {
        "width": width,
        "n": n,
        "depth": depth,
        "steps": S,
        "step_s": step,
        "by_difference": bool(by_difference),
        "call_overhead_s": tS - S * step,
        "flops": flops,
        "bytes": gd_step_bytes(n, d, width, depth),
    }
