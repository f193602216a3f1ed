"""Gradient descent as one traced program, so that it vmaps over seeds and configs.

``gradient_descent`` drives its compiled chunks from Python (to stop early, call back and catch
interrupts), which cannot run under ``jax.vmap``. ``traced_gradient_descent`` runs the same
chunk (``descent._run_chunk``) inside a ``lax.while_loop`` until every run has stopped: under
``vmap`` a stopped run is frozen by the loops' own predicates while the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._dynamics.descent import GDResult, _to_result, prepare_run, traced_run
from wnjax._losses import Loss
from wnjax._runtime.errors import InvalidInput
from wnjax._runtime.precision import in_float32


@in_float32
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
    checkpoints: Sequence[float] | Array = (),
    stop_stalled: bool = False,
    summarize: Callable | None = None,
) -> GDResult:
    """GD/SGD ``theta <- theta + optimizer.update(g, ...)`` as one traceable, vmappable program.

    The same steps, stopping rules and saved summaries as ``wnjax.gradient_descent``, but the
    loop over chunks is a ``lax.while_loop``: call it under ``jax.jit``/``jax.vmap`` (as
    ``wnjax.sweep`` does), with traced models, learning rates and targets. There is no callback,
    no interrupt handling and no ``throw``: read ``result.stop_code`` / ``result.ok``.

    **Arguments:** as ``wnjax.gradient_descent``; ``num_steps``, ``n_save``, ``chunk_size`` and
    ``batch_size`` must be Python ints (they fix array shapes), and so must the number of
    ``checkpoints`` levels (their values may be traced).

    **Returns:** a ``GDResult``.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise InvalidInput(
            f"num_steps must be a positive Python int (it fixes shapes), got {num_steps!r}."
        )
    carry, static, X, y, numbers, key, statics = prepare_run(
        model,
        X,
        y,
        num_steps=num_steps,
        learning_rate=learning_rate,
        optimizer=optimizer,
        hyperparams=hyperparams,
        loss=loss,
        target_log_loss=target_log_loss,
        batch_size=batch_size,
        key=key,
        objective=objective,
        n_save=n_save,
        save_states=save_states,
        chunk_size=chunk_size,
        degree=degree,
        diverge_above=diverge_above,
        diagnostics=diagnostics,
        checkpoints=checkpoints,
        stop_stalled=stop_stalled,
        summarize=summarize,
    )
    carry = traced_run(carry, static, X, y, numbers, key, statics)
    return _to_result(carry, static, model, save_states)
