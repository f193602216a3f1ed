"""Gradient descent as one traced program, so that it vmaps over seeds and configs.

``gradient_descent`` drives its compiled chunks from Python (to stop early, call back and catch
interrupts), which cannot run under ``jax.vmap``. ``traced_gradient_descent`` runs the same
chunk (``_descent._run_chunk``) inside a ``lax.while_loop`` until every run has stopped: under
``vmap`` a finished run is frozen by the chunk's own ``running`` mask while the others go on.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._descent import (
    STOP_RUNNING,
    GDResult,
    _init_carry,
    _run_chunk,
    _to_result,
    build_optimizer,
    save_steps,
)
from ._flow import _auto_degree
from ._losses import Loss, get_loss
from ._parameterize import as_parameterized
from ._validate import check_data, check_outputs


def _as_number(v, dtype):
    """Python numbers and arrays become arrays of ``dtype`` (traced); bools and strings stay."""
    if isinstance(v, bool) or isinstance(v, str):
        return v
    if isinstance(v, (int, float, jax.Array)):
        return jnp.asarray(v, dtype)
    return v


def traced_gradient_descent(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    num_steps: int,
    learning_rate: float | Array | None = None,
    optimizer=optax.sgd,
    hyperparams: dict | None = None,
    loss: str | Loss = "exponential",
    target_log_loss: float | Array | None = None,
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    objective: str = "loss",
    n_save: int = 64,
    save_states: bool = False,
    chunk_size: int = 1000,
    degree: float | Array | None = None,
    diverge_above: float = 50.0,
) -> GDResult:
    """GD/SGD ``theta <- theta + optimizer.update(g, ...)`` as one traceable, vmappable program.

    The same steps, stopping rules and saved summaries as ``wnjax.gradient_descent``, but the
    loop over chunks is a ``lax.while_loop``: call it under ``jax.jit``/``jax.vmap`` (as
    ``wnjax.sweep`` does), with traced models, learning rates and targets. There is no callback,
    no interrupt handling and no ``throw``: read ``result.stop_code`` / ``result.ok``.

    **Arguments:** as ``wnjax.gradient_descent``; ``num_steps``, ``n_save``, ``chunk_size`` and
    ``batch_size`` must be Python ints (they fix array shapes).

    **Returns:** a ``GDResult``.
    """
    if objective not in ("loss", "log_loss"):
        raise ValueError(f"objective must be 'loss' or 'log_loss', got {objective!r}.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive Python int (it fixes shapes), got {num_steps!r}.")
    loss_obj = get_loss(loss)
    X, y = check_data(X, y, loss_obj)
    p = as_parameterized(model)
    check_outputs(p, X, y, loss_obj)
    if batch_size is not None:
        if not 0 < batch_size <= X.shape[0]:
            raise ValueError(f"batch_size must be in 1..{X.shape[0]}, got {batch_size}.")
        if key is None:
            raise ValueError("minibatch SGD needs a PRNG key: pass key=jax.random.key(...).")
    key = jax.random.key(0) if key is None else key
    dtype = X.dtype
    hp = dict(hyperparams or {})
    if learning_rate is not None:
        hp["learning_rate"] = learning_rate
    if isinstance(optimizer, optax.GradientTransformation) and hp:
        raise ValueError(
            "learning_rate/hyperparams go with an optimizer factory (optimizer=optax.sgd); "
            "this optimizer is already built, so its numbers are fixed."
        )
    if not isinstance(optimizer, optax.GradientTransformation) and "learning_rate" not in hp:
        raise ValueError("pass learning_rate=... (or hyperparams) for the optimizer factory.")
    hp = {k: _as_number(v, dtype) for k, v in hp.items()}
    if degree is None:
        degree = _auto_degree(p, X, loss_obj)
    params, static = eqx.partition(p, eqx.is_inexact_array)
    log_l0 = loss_obj.log_loss(jax.vmap(p)(X), y)
    numbers = {
        "target": jnp.asarray(-jnp.inf if target_log_loss is None else target_log_loss, dtype),
        "num_steps": jnp.asarray(num_steps),
        "diverge_above": log_l0 + diverge_above,
        "degree": jnp.asarray(degree, dtype),
        "save_at": jnp.asarray(save_steps(num_steps, n_save)),
        "hyperparams": hp,
    }
    carry = _init_carry(
        params, static, X, y, loss_obj, build_optimizer(optimizer, hp), n_save, save_states,
        numbers["degree"],
    )
    # A carry of fixed types: the chunk must map it to exactly the same avals.
    carry = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.result_type(x)), carry)
    statics = dict(
        loss=loss_obj,
        optimizer=optimizer,
        chunk_size=int(min(chunk_size, num_steps)),
        batch_size=batch_size,
        objective=objective,
        save_states=save_states,
    )

    def body(c):
        out = _run_chunk(c, static, X, y, numbers, key, **statics)
        return jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), out, c)

    carry = jax.lax.while_loop(lambda c: c["stop"] == STOP_RUNNING, body, carry)
    return _to_result(carry, static, model, save_states)
