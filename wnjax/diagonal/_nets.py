"""Diagonal linear nets ``x = u^L - v^L`` for sparse recovery, and their weight normalizations.

The net holds ``w = (u, v)`` in the weight of one bias-free ``eqx.nn.Linear``, so the library's
neuron machinery (``swn``, ``ewn``, neuron norms, the flow and GD runners) applies unchanged.
Called on one row ``a_i`` of the measurement matrix ``A`` it returns ``<a_i, x(w)>``, so that
``wnjax.get_loss('square')`` on ``(A, y)`` is ``1/2 ||A x - y||^2``.

How ``w`` is split into neurons (``grouping``) decides what weight normalization means:

- ``'whole'``: one neuron ``w in R^{2d}``; SWN of it is the polar form ``w = r theta``
  (``r = g``, ``theta = v/||v||``): ``polar_wn``;
- ``'coordinate'``: ``2d`` scalar neurons ``u_i``, ``v_i``: per-coordinate SWN/EWN
  (``coordinate_wn``);
- ``'factor'``: two neurons, ``u`` and ``v``.

For ``L = 2``, along the polar WN flow
``dw/dt = -[eta_r theta theta^T + eta_theta r^2 (I - theta theta^T)] grad L`` the ratio
``u_i v_i(t) / u_i v_i(0)`` is the same for every ``i`` (``uv_ratio``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._nets.parameterize import Parameterized, ewn, swn, to_standard
from wnjax._runtime.errors import InvalidInput

GROUPINGS = ("whole", "coordinate", "factor")


def _weight_shape(dim: int, grouping: str) -> tuple[int, int]:
    return {"whole": (1, 2 * dim), "coordinate": (2 * dim, 1), "factor": (2, dim)}[grouping]


class DiagonalNet(eqx.Module):
    """The depth-``L`` diagonal linear net ``x = u^L - v^L`` (elementwise), read out as ``<a, x>``.

    ``layer.weight`` stores ``w = (u, v)`` (``2d`` numbers) in the shape that ``grouping``
    gives: ``(1, 2d)`` for ``'whole'``, ``(2d, 1)`` for ``'coordinate'``, ``(2, d)`` for
    ``'factor'``. The net is ``L``-homogeneous in ``w``.
    """

    layer: eqx.nn.Linear
    dim: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    grouping: str = eqx.field(static=True)

    def flat(self) -> Array:
        """``w = (u, v)`` as one vector of length ``2d``."""
        return self.layer.weight.reshape(-1)

    def u(self) -> Array:
        return self.flat()[: self.dim]

    def v(self) -> Array:
        return self.flat()[self.dim :]

    def signal(self) -> Array:
        """The recovered vector ``x = u^L - v^L``."""
        return self.u() ** self.depth - self.v() ** self.depth

    def __call__(self, a: Array) -> Array:
        """``<a, x>`` for one measurement row ``a`` of shape ``(d,)``."""
        return jnp.dot(a, self.signal())


def _from_flat(w: Array, dim: int, depth: int, grouping: str) -> DiagonalNet:
    if grouping not in GROUPINGS:
        raise InvalidInput(f"grouping must be one of {GROUPINGS}, got {grouping!r}.")
    shape = _weight_shape(dim, grouping)
    layer = eqx.nn.Linear(shape[1], shape[0], use_bias=False, key=jax.random.key(0))
    layer = eqx.tree_at(lambda l: l.weight, layer, jnp.reshape(w, shape))
    return DiagonalNet(layer=layer, dim=dim, depth=depth, grouping=grouping)


def diagonal_net(
    dim: int,
    *,
    depth: int = 2,
    alpha: float | Array = 1.0,
    grouping: str = "whole",
    u0: Array | None = None,
    v0: Array | None = None,
    dtype=None,
) -> DiagonalNet:
    """A diagonal linear net ``x = u^L - v^L`` started at ``u(0) = v(0) = alpha 1`` (so ``x(0) =
    0``).

    **Arguments:**
    - `dim`: the signal dimension ``d``.
    - `depth`: ``L >= 2``.
    - `alpha`: the init scale (a positive number; may be a traced array under ``vmap``).
    - `grouping`: ``'whole'``, ``'coordinate'`` or ``'factor'`` (see the module docstring).
    - `u0`, `v0`: explicit initial vectors of shape ``(d,)`` instead of ``alpha 1``.
    - `dtype`: float dtype (default: JAX's default float).

    **Returns:** a ``DiagonalNet``.
    """
    if int(depth) != depth or depth < 2:
        raise InvalidInput(f"depth must be an integer L >= 2 (x = u^L - v^L), got {depth!r}.")
    if int(dim) != dim or dim < 1:
        raise InvalidInput(f"dim must be a positive integer, got {dim!r}.")
    if not isinstance(alpha, jax.core.Tracer) and not np.all(np.asarray(alpha) > 0):
        raise InvalidInput(f"alpha must be positive (u(0) = v(0) = alpha), got {alpha!r}.")
    dtype = dtype or jnp.result_type(float)
    u = alpha * jnp.ones(dim, dtype) if u0 is None else jnp.asarray(u0, dtype)
    v = alpha * jnp.ones(dim, dtype) if v0 is None else jnp.asarray(v0, dtype)
    if u.shape != (dim,) or v.shape != (dim,):
        raise InvalidInput(f"u0 and v0 must have shape ({dim},), got {u.shape} and {v.shape}.")
    return _from_flat(jnp.concatenate([u, v]), int(dim), int(depth), grouping)


def _as_net(model: PyTree) -> DiagonalNet:
    net = to_standard(model)
    if not isinstance(net, DiagonalNet):
        raise InvalidInput(
            f"expected a DiagonalNet (or a parameterization of one), got {type(net).__name__}; "
            "build one with wnjax.diagonal.net(dim, depth=..., alpha=...)."
        )
    return net


def regroup(model: PyTree, grouping: str) -> DiagonalNet:
    """The same net (same ``w``) with its weight split into neurons by ``grouping``."""
    net = _as_net(model)
    return _from_flat(net.flat(), net.dim, net.depth, grouping)


def diagonal_signal(model: PyTree) -> Array:
    """``x = u^L - v^L`` of a ``DiagonalNet`` or of any parameterization of one."""
    return _as_net(model).signal()


def polar_wn(model: PyTree) -> Parameterized:
    """Polar weight normalization ``w = r theta`` of a diagonal net, ``w = (u, v) in R^{2d}``.

    It is SWN of the single neuron ``w``: ``r = g = ||w||`` and ``theta = v/||v||`` with
    ``||v(0)|| = 1``. Give it separate rates with ``wnjax.diagonal.polar_rates`` (flow) or
    ``wnjax.diagonal.polar_sgd`` (GD).
    """
    return swn(regroup(model, "whole"))


def coordinate_wn(model: PyTree, kind: str = "ewn") -> Parameterized:
    """Per-coordinate weight normalization: each ``u_i`` and ``v_i`` is its own neuron.

    ``kind='ewn'``: ``u_i = exp(a_i) sign(v_i)``, whose flow is ``du_i/dt = -u_i^2 dL/du_i``;
    ``kind='swn'``: ``u_i = g_i sign(v_i)``, whose flow equals the plain flow (a scalar's
    direction cannot move).
    """
    if kind not in ("ewn", "swn"):
        raise InvalidInput(f"kind must be 'ewn' or 'swn', got {kind!r}.")
    net = regroup(model, "coordinate")
    return ewn(net) if kind == "ewn" else swn(net)


def uv_products(model: PyTree) -> Array:
    """``u_i v_i`` for every coordinate ``i``."""
    net = _as_net(model)
    return net.u() * net.v()


def uv_ratio(model: PyTree, initial: PyTree) -> Array:
    """``u_i v_i(t) / u_i v_i(0)`` per coordinate.

    For ``L = 2`` it equals ``exp(-2 int_0^t c)`` for every ``i`` along the polar WN flow, with
    ``c = (eta_r/r^2 - eta_theta) L <A x - y, A x>`` (differentiate ``log(u_i v_i)``); plain
    gradient
    flow keeps it at 1.
    """
    return uv_products(model) / uv_products(initial)


def invariant_spread(ratios: Array) -> Array:
    """``max_i ratio_i / min_i ratio_i - 1`` over the last axis: 0 when the ratio is common."""
    return jnp.max(ratios, axis=-1) / jnp.min(ratios, axis=-1) - 1.0


def effective_alpha(model: PyTree, initial: PyTree) -> Array:
    """``beta = alpha sqrt(mean_i uv_ratio_i)``: the init scale of the plain flow that WN mimics (L
    = 2)."""
    net0 = _as_net(initial)
    alpha = jnp.sqrt(jnp.mean(uv_products(net0)))
    return alpha * jnp.sqrt(jnp.mean(uv_ratio(model, initial)))


def sparse_problem(
    key: PRNGKeyArray, dim: int = 100, n_measurements: int = 40, sparsity: int = 5, dtype=None
) -> tuple[Array, Array, Array]:
    """A compressed-sensing instance: ``A_ij ~ N(0, 1/N)``, ``x*`` ``k``-sparse, ``y = A x*``.

    The support is uniform among the ``k``-subsets and the nonzeros are ``N(0, 1)``.

    **Returns:** ``(A, y, x_star)`` with shapes ``(N, d)``, ``(N,)``, ``(d,)``.
    """
    if not 0 < sparsity <= dim:
        raise InvalidInput(f"sparsity k must be in 1..{dim}, got {sparsity}.")
    if n_measurements < 1:
        raise InvalidInput(f"n_measurements must be positive, got {n_measurements}.")
    dtype = dtype or jnp.result_type(float)
    k_a, k_s, k_x = jax.random.split(key, 3)
    A = jax.random.normal(k_a, (n_measurements, dim), dtype) / jnp.sqrt(n_measurements)
    support = jax.random.permutation(k_s, dim)[:sparsity]
    x_star = jnp.zeros(dim, dtype).at[support].set(jax.random.normal(k_x, (sparsity,), dtype))
    return A, A @ x_star, x_star


def relative_error(x: Array, x_star: Array) -> Array:
    """``||x - x*|| / ||x*||`` over the last axis."""
    return jnp.linalg.norm(x - x_star, axis=-1) / jnp.linalg.norm(x_star, axis=-1)
