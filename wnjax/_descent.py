"""Gradient descent and SGD with any optax optimizer, run in compiled ``lax.scan`` chunks.

Each step computes ``log L`` and ``grad log L`` on the (mini)batch, forms the gradient that the
optimizer sees (``grad L = L grad log L`` for ``objective='loss'``, ``grad log L`` for
``objective='log_loss'``), and calls ``optimizer.update(g, state, params, value=L,
log_value=log L)``, so that loss-reading transforms can use either. A Python loop drives the
chunks: it stops at the target log loss, at divergence or at ``num_steps``, and an interrupt
keeps everything computed so far.
"""

from __future__ import annotations

import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._flow import summaries
from ._losses import Loss, get_loss
from ._parameterize import Parameterized, as_parameterized, restore_type
from ._validate import check_data, check_outputs

STOP_RUNNING, STOP_TARGET, STOP_MAX_STEPS, STOP_DIVERGED = 0, 1, 2, 3


class GDFailed(RuntimeError):
    """A GD run diverged; ``.result`` holds everything computed before it did."""

    def __init__(self, message: str, result: "GDResult"):
        super().__init__(message)
        self.result = result


class GDResult(eqx.Module):
    """The outcome of ``gradient_descent``; all fields are arrays.

    - `steps`: the step index of each save point (``-1`` past the end);
    - `log_loss`: full-data ``log L`` at the save points;
    - `summaries`: diagnostics at the save points (see ``wnjax.summaries``);
    - `states`: the model at each save point, or ``None``;
    - `final`, `final_log_loss`: the last model (same type as the input) and its ``log L``;
    - `num_steps`: steps taken; `stop_code`: 1 target reached, 2 ``num_steps`` done,
      3 diverged, 0 interrupted.
    """

    steps: Array
    log_loss: Array
    summaries: dict
    states: Any
    final: Any
    final_log_loss: Array
    num_steps: Array
    stop_code: Array
    opt_state: Any

    @property
    def ok(self) -> Array:
        return (self.stop_code == STOP_TARGET) | (self.stop_code == STOP_MAX_STEPS)

    @property
    def reached_target(self) -> Array:
        return self.stop_code == STOP_TARGET

    @property
    def message(self) -> str:
        code = np.asarray(self.stop_code)
        if code.ndim:
            return f"{int(np.asarray(self.ok).sum())}/{code.size} runs succeeded"
        k, v = int(self.num_steps), float(self.final_log_loss)
        return {
            STOP_RUNNING: f"GD was interrupted after {k} steps (log L = {v:.6g}); the partial "
            "result is kept.",
            STOP_TARGET: f"GD reached the target log loss in {k} steps (log L = {v:.6g}).",
            STOP_MAX_STEPS: f"GD ran its num_steps = {k} steps (log L = {v:.6g}).",
            STOP_DIVERGED: f"GD diverged after {k} steps: the loss became non-finite or rose far "
            f"above its start (log L = {v:.6g} at the kept state). Lower the learning rate; the "
            "result keeps the last finite state.",
        }[int(code)]


def save_steps(num_steps: int, n_save: int) -> np.ndarray:
    """``n_save`` step indices: 0, then log-spaced up to ``num_steps`` (padded with ``-1``)."""
    steps = np.unique(np.round(np.geomspace(1, max(num_steps, 1), max(n_save - 1, 1))).astype(int))
    steps = np.concatenate([[0], steps])[:n_save]
    return np.concatenate([steps, -np.ones(n_save - steps.size, int)])


def _batch_indices(key, k, n, batch_size):
    per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, k // per_epoch), n)
    return jax.lax.dynamic_slice(perm, ((k % per_epoch) * batch_size,), (batch_size,))


def _tree_where(c, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def descent_update(params, opt_state, k, static, X, y, key, optimizer, *, loss: Loss,
                   batch_size: int | None, objective: str):
    """One GD/SGD step ``theta <- theta + optimizer.update(g, ...)`` on the batch of step ``k``.

    ``g = L grad log L = grad L`` (``objective='loss'``) or ``grad log L`` (``'log_loss'``), both
    on the batch; ``optimizer.update`` also receives ``value=L`` and ``log_value=log L``.

    **Returns:** ``(log L on the batch, new params, new optimizer state, all finite)``.
    """
    if batch_size is None:
        Xb, yb = X, y
    else:
        idx = _batch_indices(key, k, X.shape[0], batch_size)
        Xb, yb = X[idx], y[idx]

    def log_loss(q):
        return loss.log_loss(jax.vmap(eqx.combine(q, static))(Xb), yb)

    value, g = jax.value_and_grad(log_loss)(params)
    if objective == "loss":
        g = jax.tree_util.tree_map(lambda x: jnp.exp(value) * x, g)
    updates, opt_state = optimizer.update(
        g, opt_state, params, value=jnp.exp(value), log_value=value
    )
    new_params = eqx.apply_updates(params, updates)
    return value, new_params, opt_state, jnp.isfinite(value) & _all_finite(new_params)


@eqx.filter_jit
def _run_chunk(
    carry: dict,
    static: Parameterized,
    X: Array,
    y: Array,
    numbers: dict,
    key: PRNGKeyArray,
    *,
    loss: Loss,
    optimizer,
    batch_size: int | None,
    objective: str,
    save_states: bool,
    diagnostics: bool = True,
) -> dict:
    """Advance to the next save step (at most ``chunk_size`` steps), recording summaries there.

    Steps run in a ``lax.while_loop``; the (costly) summaries are evaluated once per save point,
    never per step, also under ``vmap``. A stopped run records its final state once.
    """
    optimizer = build_optimizer(optimizer, numbers["hyperparams"])
    save_at = numbers["save_at"]
    n_save = save_at.shape[0]

    def log_loss_on(params, Xb, yb):
        return loss.log_loss(jax.vmap(eqx.combine(params, static))(Xb), yb)

    def next_save(c):
        target = save_at[jnp.minimum(c["save_idx"], n_save - 1)]
        ok = (c["save_idx"] < n_save) & (target >= 0)
        return jnp.where(ok, target, jnp.iinfo(c["k"].dtype).max)

    def record(c):
        out = summaries(eqx.combine(c["params"], static), X, y, loss, numbers["degree"], diagnostics)
        if save_states:
            out["state"] = c["params"]
        i = jnp.minimum(c["save_idx"], n_save - 1)
        c = dict(c)
        c["saved"] = jax.tree_util.tree_map(lambda buf, v: buf.at[i].set(v), c["saved"], out)
        c["saved_steps"] = c["saved_steps"].at[i].set(c["k"])
        c["save_idx"] = c["save_idx"] + 1
        return c

    def maybe_record(c):
        last = c["saved_steps"][jnp.maximum(c["save_idx"] - 1, 0)]
        fresh = (c["save_idx"] == 0) | (last != c["k"])
        stopped = c["stop"] != STOP_RUNNING
        due = fresh & (c["save_idx"] < n_save) & ((c["k"] == next_save(c)) | stopped)
        return jax.lax.cond(due, record, lambda c: c, c)

    def step(c):
        value, new_params, opt_state, finite = descent_update(
            c["params"], c["opt_state"], c["k"], static, X, y, key, optimizer,
            loss=loss, batch_size=batch_size, objective=objective,
        )
        at_target = (batch_size is None) & (value <= numbers["target"])
        blew_up = ~finite | (value > numbers["diverge_above"])
        new_stop = jnp.where(
            at_target,
            STOP_TARGET,
            jnp.where(
                blew_up,
                STOP_DIVERGED,
                jnp.where(c["k"] + 1 >= numbers["num_steps"], STOP_MAX_STEPS, STOP_RUNNING),
            ),
        )
        take = ~at_target & ~blew_up
        c = dict(c)
        c["params"] = _tree_where(take, new_params, c["params"])
        c["opt_state"] = _tree_where(take, opt_state, c["opt_state"])
        c["k"] = c["k"] + take.astype(c["k"].dtype)
        c["last_log_loss"] = jnp.where(jnp.isfinite(value), value, c["last_log_loss"])
        c["stop"] = new_stop
        return c

    carry = maybe_record(carry)
    until = jnp.minimum(next_save(carry), carry["k"] + numbers["chunk_size"])
    carry = jax.lax.while_loop(
        lambda c: (c["stop"] == STOP_RUNNING) & (c["k"] < until), step, carry
    )
    full = log_loss_on(carry["params"], X, y)
    carry["final_log_loss"] = full
    if batch_size is not None:
        hit = (carry["stop"] == STOP_RUNNING) & (full <= numbers["target"])
        carry["stop"] = jnp.where(hit, STOP_TARGET, carry["stop"])
    return maybe_record(carry)


def build_optimizer(optimizer, hyperparams: dict) -> optax.GradientTransformationExtraArgs:
    """An optax transformation from a ready one, or from a factory called with ``hyperparams``."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optax.with_extra_args_support(optimizer)
    return optax.with_extra_args_support(optimizer(**hyperparams))


@eqx.filter_jit
def _init_carry(
    params, static, X, y, loss, optimizer, hyperparams, n_save, save_states, degree, diagnostics
):
    """The loop state at step 0: parameters, optimizer state, empty save buffers (compiled once)."""
    optimizer = build_optimizer(optimizer, hyperparams)
    # Only the shapes of the summaries are needed to allocate the save buffers.
    example = eqx.filter_eval_shape(
        lambda q: summaries(eqx.combine(q, static), X, y, loss, degree, diagnostics), params
    )
    if save_states:
        example["state"] = params
    saved = jax.tree_util.tree_map(
        lambda v: jnp.full((n_save,) + jnp.shape(v), jnp.nan, v.dtype), example
    )
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "k": jnp.asarray(0),
        "stop": jnp.asarray(STOP_RUNNING),
        "save_idx": jnp.asarray(0),
        "saved": saved,
        "saved_steps": -jnp.ones(n_save, int),
        "last_log_loss": jnp.asarray(jnp.nan, X.dtype),
        "final_log_loss": jnp.asarray(jnp.nan, X.dtype),
    }


def _as_number(v, dtype):
    """Numbers become traced arrays of ``dtype``; bools, strings and other objects stay static."""
    if isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float, jax.Array)):
        return jnp.asarray(v, dtype)
    return v


def prepare_run(
    model, X, y, *, num_steps, learning_rate, optimizer, hyperparams, loss, target_log_loss,
    batch_size, key, objective, n_save, save_states, chunk_size, degree, diverge_above,
    diagnostics=True,
):
    """Validate a GD run's inputs; return ``(carry, static, X, y, numbers, key, statics)``.

    Shared by ``gradient_descent`` (Python-driven chunks) and ``traced_gradient_descent``
    (one traced loop). Works on traced models and numbers (checks needing values are skipped).
    """
    from ._flow import _auto_degree

    if objective not in ("loss", "log_loss"):
        raise ValueError(f"objective must be 'loss' or 'log_loss', got {objective!r}.")
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
    if not isinstance(log_l0, jax.core.Tracer) and not bool(jnp.isfinite(log_l0)):
        raise ValueError("the initial loss is not finite; check the data and the model.")
    numbers = {
        "target": jnp.asarray(-jnp.inf if target_log_loss is None else target_log_loss, dtype),
        "num_steps": jnp.asarray(num_steps),
        "diverge_above": log_l0 + diverge_above,
        "degree": jnp.asarray(degree, dtype),
        "save_at": jnp.asarray(save_steps(num_steps, n_save)),
        "chunk_size": jnp.asarray(chunk_size),
        "hyperparams": hp,
    }
    carry = _init_carry(
        params,
        static,
        X,
        y,
        loss_obj,
        optimizer,
        hp,
        n_save,
        save_states,
        numbers["degree"],
        diagnostics,
    )
    statics = dict(
        loss=loss_obj,
        optimizer=optimizer,
        batch_size=batch_size,
        objective=objective,
        save_states=save_states,
        diagnostics=diagnostics,
    )
    return carry, static, X, y, numbers, key, statics


def gradient_descent(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    num_steps: int,
    learning_rate: float | None = None,
    optimizer=optax.sgd,
    hyperparams: dict | None = None,
    loss: str | Loss = "exponential",
    target_log_loss: float | None = None,
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    objective: str = "loss",
    n_save: int = 64,
    save_states: bool = False,
    chunk_size: int = 1000,
    degree: float | None = None,
    diverge_above: float = 200.0,
    callback=None,
    throw: bool = True,
    diagnostics: bool = True,
) -> GDResult:
    """Run GD (or minibatch SGD) with an optax optimizer until a target, divergence or ``num_steps``.

    The step is ``theta <- theta + optimizer.update(g, ...)`` with ``g = grad L`` (or
    ``grad log L`` for ``objective='log_loss'``). ``L`` sums over points.

    **Arguments:**
    - `model`: an equinox model or a ``Parameterized`` one.
    - `X`, `y`: the data.
    - `num_steps`: the step budget.
    - `learning_rate`: passed to the optimizer factory as ``learning_rate``.
    - `optimizer`: an optax factory such as ``optax.sgd`` (default) or
      ``wnjax.neuron_rate_sgd`` (rate ``eta ||w_u||^2``), called inside the compiled program
      with ``learning_rate`` and ``hyperparams`` as traced arrays, so new values reuse the
      compiled program. A ready ``optax.GradientTransformation`` is accepted too; its
      numbers are then baked in, and each new instance compiles anew.
    - `hyperparams`: further keyword arguments of the factory (``momentum=0.9``, ...).
    - `loss`: a loss name or ``Loss``.
    - `target_log_loss`: stop once full-data ``log L`` reaches it (full batch: checked every step;
      minibatch: at the end of each chunk).
    - `batch_size`, `key`: minibatch SGD with a reshuffle every epoch, drawn from ``key``.
    - `objective`: ``'loss'`` or ``'log_loss'`` (the gradient that the optimizer sees).
    - `n_save`: log-spaced save points (``log L`` and summaries at each).
    - `save_states`: keep the model at the save points.
    - `chunk_size`: steps per compiled chunk.
    - `degree`: homogeneity degree for the normalized margin (measured if ``None``).
    - `diverge_above`: a run whose ``log L`` exceeds ``log L(0) + diverge_above`` has diverged.
    - `callback`: called with the chunk carry after each chunk (for checkpoints or progress).
    - `throw`: raise ``GDFailed`` on divergence instead of returning the partial result.
    - `diagnostics`: also save the asymptotic diagnostics at the save points (see
      ``wnjax.gradient_flow``).

    **Returns:** a ``GDResult``. Numbers (learning rates inside ``optimizer``, targets) are
    traced where optax keeps them as arrays, so repeated calls reuse the compiled chunk.
    """
    carry, static, X, y, numbers, key, statics = prepare_run(
        model, X, y, num_steps=num_steps, learning_rate=learning_rate, optimizer=optimizer,
        hyperparams=hyperparams, loss=loss, target_log_loss=target_log_loss,
        batch_size=batch_size, key=key, objective=objective, n_save=n_save,
        save_states=save_states, chunk_size=chunk_size, degree=degree,
        diverge_above=diverge_above, diagnostics=diagnostics,
    )
    try:
        while True:
            carry = _run_chunk(carry, static, X, y, numbers, key, **statics)
            if callback is not None:
                callback(carry)
            if int(carry["stop"]) != STOP_RUNNING:
                break
    except KeyboardInterrupt:
        warnings.warn("gradient_descent interrupted; returning the partial result.", stacklevel=2)
    result = _to_result(carry, static, model, save_states)
    if int(result.stop_code) == STOP_DIVERGED:
        if throw:
            raise GDFailed(result.message, result)
        warnings.warn(result.message, RuntimeWarning, stacklevel=2)
    return result


def _to_result(carry: dict, static, like, save_states: bool) -> GDResult:
    saved = dict(carry["saved"])
    states = saved.pop("state", None)
    final = eqx.combine(carry["params"], static)
    if states is not None:
        states = eqx.combine(states, static)
        if not isinstance(like, Parameterized):
            states = jax.vmap(lambda s: s.standard())(states)
    final_log_loss = carry["final_log_loss"]
    return GDResult(
        steps=carry["saved_steps"],
        log_loss=saved["log_loss"],
        summaries=saved,
        states=states,
        final=restore_type(final, like),
        final_log_loss=final_log_loss,
        num_steps=carry["k"],
        stop_code=carry["stop"],
        opt_state=carry["opt_state"],
    )
