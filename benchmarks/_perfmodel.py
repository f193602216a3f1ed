"""A cost model of one full-batch GD step on a bias-free MLP, and the machine's measured peaks.

FLOPs per step, from the shapes ``sizes = [d, w_1, ..., 1]`` and ``n`` points (matmuls only;
elementwise work is lower order):

- forward: ``2 n sum_l a_l b_l``;
- backward, weight gradients: ``2 n sum_l a_l b_l``;
- backward, activation gradients (every layer but the first): ``2 n sum_{l>1} a_l b_l``.

Bytes per step (lower bound of the traffic): the weights read twice and written once, their
gradient written once, and each layer's activations written by the forward pass and read back
(twice) by the backward pass, 8 bytes per float64 number.
"""

from __future__ import annotations


import numpy as np
from _common import median_time


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
    dot = jax.jit(jnp.dot)
    t = _median_call(lambda: dot(a, b).block_until_ready(), repeats)
    return {"flops_per_s": 2.0 * size**3 / t, "size": size, "dtype": str(jnp.dtype(dtype)),
            "seconds": t}


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
    return {"bytes_per_s": 3.0 * m * jnp.dtype(dtype).itemsize / t, "array_bytes": int(n_bytes),
            "seconds": t}


def attribute(step_s: float, flops: float, n_bytes: float, floor_s: float, peak: float,
              bandwidth: float) -> str:
    """Where a step's time goes: the largest of overhead floor, compute and memory times."""
    parts = {"dispatch/loop overhead": floor_s, "compute": flops / peak,
             "memory": n_bytes / bandwidth}
    return max(parts, key=parts.get)


def fit_exponent(x, t) -> float:
    """Slope of ``log t`` against ``log x`` (least squares)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(t, float)), 1)[0])


CACHE_BYTES = 4 * 2**20  # working sets below this stay in cache: no DRAM traffic counted


def attribute_share(step_s: float, flops: float, n_bytes: float, peak: float,
                    bandwidth: float) -> dict:
    """Shares of a step's time: compute ``flops/peak``, memory ``bytes/bandwidth`` (only for
    working sets beyond the cache), and the rest, dispatch/loop overhead; plus the largest."""
    compute = min(1.0, flops / peak / step_s)
    memory = min(1.0, (n_bytes / bandwidth if n_bytes > CACHE_BYTES else 0.0) / step_s)
    overhead = max(0.0, 1.0 - compute - memory)
    shares = {"dispatch/loop overhead": overhead, "compute": compute, "memory": memory}
    return {"shares": shares, "cost": max(shares, key=shares.get)}


def gd_step_time(width: int, n: int, *, d: int = 10, depth: int = 3, repeats: int = 5,
                 max_steps: int = 2000, lr: float = 1e-4) -> dict:
    """Seconds per ``wnjax.gradient_descent`` step, by difference: ``(T(2S) - T(S)) / S``.

    Both calls reuse one compiled chunk of ``S`` steps, so the fixed cost of a call cancels; it
    is returned as ``call_overhead_s``. ``S`` is chosen so that a call does ~2 GFLOP.
    """
    import jax
    import jax.numpy as jnp

    import wnjax

    X = jax.random.normal(jax.random.key(n), (n, d))
    y = jnp.where(X[:, 0] >= 0, 1.0, -1.0)
    m = wnjax.MLP(d, width, depth, activation="relu2", init_scale=min(1.0, (16 / width) ** 0.25),
                  key=jax.random.key(1))
    flops = gd_step_flops(n, d, width, depth)
    S = int(min(max_steps, max(4, 2e9 / flops)))
    kw = dict(learning_rate=lr, degree=3.0, n_save=4, chunk_size=S, diverge_above=1e9)

    def call(k):
        return lambda: jax.block_until_ready(
            wnjax.gradient_descent(m, X, y, num_steps=k, **kw).final_log_loss)

    if flops > 1e9:  # a call takes seconds: fewer repeats
        repeats = min(repeats, 2)
    tS = _median_call(call(S), repeats)
    t2S = _median_call(call(2 * S), repeats)
    by_difference = t2S > 1.05 * tS
    # Timing noise can swamp the difference; then report the (upper-bound) mean over 2S steps.
    step = (t2S - tS) / S if by_difference else t2S / (2 * S)
    return {"width": width, "n": n, "depth": depth, "steps": S, "step_s": step,
            "by_difference": bool(by_difference),
            "call_overhead_s": tS - S * step, "flops": flops,
            "bytes": gd_step_bytes(n, d, width, depth)}
