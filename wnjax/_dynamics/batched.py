"""Gradient descent as one traced program, so that it vmaps over seeds and configs.

``gradient_descent`` drives its compiled chunks from Python (to stop early, call back and catch
interrupts), which cannot run under ``jax.vmap``. ``traced_gradient_descent`` runs the same
chunk (``_descent._run_chunk``) inside a ``lax.while_loop`` until every run has stopped: under
``vmap`` a finished run is frozen by the chunk's own ``running`` mask while the others go on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._dynamics.descent import STOP_RUNNING, GDResult, _run_chunk, _to_result, prepare_run
from wnjax._losses import Loss


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
    diverge_above: float = 200.0,
    diagnostics: bool = True,
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
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive Python int (it fixes shapes), got {num_steps!r}.")
    carry, static, X, y, numbers, key, statics = prepare_run(
        model, X, y, num_steps=num_steps, learning_rate=learning_rate, optimizer=optimizer,
        hyperparams=hyperparams, loss=loss, target_log_loss=target_log_loss,
        batch_size=batch_size, key=key, objective=objective, n_save=n_save,
        save_states=save_states, chunk_size=chunk_size, degree=degree,
        diverge_above=diverge_above, diagnostics=diagnostics,
    )
    # A carry of fixed types: the chunk must map it to exactly the same avals.
    carry = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.result_type(x)), carry)

    def body(c):
        out = _run_chunk(c, static, X, y, numbers, key, **statics)
        return jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), out, c)

    carry = jax.lax.while_loop(lambda c: c["stop"] == STOP_RUNNING, body, carry)
    return _to_result(carry, static, model, save_states)
