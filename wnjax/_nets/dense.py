"""Models applied to a whole batch of points, with a dense product whose weight gradient is fast.

wnjax models are per-example functions. Vmapped over the points, a layer ``z = W x`` becomes
``Z = X W^T`` and its weight gradient ``dW = dZ^T X``: a product contracted along the points
axis, which is the major axis of both operands. XLA's CPU backend runs that kind of product at
about 40% of its usual matmul speed (``benchmarks/roofline.py`` measures it). ``dense`` computes
the same product and gradients, but hands the weight gradient over as ``(dZ^T) X`` with ``dZ^T``
copied out first, which runs at full speed; on other platforms it is the plain product.

Every model evaluation here (``apply_batch``, ``apply_each``, ``dense`` and its gradients) runs
its 32-bit products in true float32 (``wnjax._runtime.precision``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array

from wnjax._runtime.precision import float32_matmuls


def _weight_grad(G: Array, X: Array) -> Array:
    """``dW = G^T X``; on CPU from an explicitly transposed copy of ``G``."""

    def cpu(G, X):
        return jax.lax.optimization_barrier(jnp.transpose(G)) @ X

    def default(G, X):
        return G.T @ X

    return jax.lax.platform_dependent(G, X, cpu=cpu, default=default)


@jax.custom_vjp
def dense(X: Array, W: Array) -> Array:
    """``X W^T`` for points ``X`` of shape ``(n, in)`` and a weight ``W`` of shape ``(out, in)``.

    Reverse mode: ``dX = G W`` and ``dW = G^T X``. Forward-over-reverse (Hessians, implicit ODE
    solvers' Jacobians of ``grad L``) works; plain forward mode does not (a ``custom_vjp``), so
    code that needs ``jax.jvp`` of a model's outputs calls ``apply_each`` instead.
    """
    with float32_matmuls():
        return X @ W.T


def _dense_fwd(X: Array, W: Array):
    with float32_matmuls():
        return X @ W.T, (X, W)


def _dense_bwd(res, G: Array):
    X, W = res
    with float32_matmuls():
        return G @ W, _weight_grad(G, X)


dense.defvjp(_dense_fwd, _dense_bwd)


def apply_batch(model, X: Array) -> Array:
    """``[f(x_1), ..., f(x_n)]``: ``model.batched(X)`` where the model has it, else
    ``apply_each(model, X)``. Both give the same numbers; ``batched`` is faster to
    differentiate. Products in true float32 (``float32_matmuls``)."""
    batched = getattr(model, "batched", None)
    if not callable(batched):
        return apply_each(model, X)
    with float32_matmuls():
        return batched(X)


def apply_each(model, X: Array) -> Array:
    """``jax.vmap(model)(X)``, differentiable in every mode (``jax.jvp`` included), with products
    in true float32 (``float32_matmuls``)."""
    with float32_matmuls():
        return jax.vmap(model)(X)
