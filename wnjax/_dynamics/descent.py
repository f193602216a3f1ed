"""Gradient descent and SGD with any optax optimizer, run in compiled ``lax.scan`` chunks.

Each step computes ``log L`` and ``grad log L`` on the (mini)batch, forms the gradient that the
optimizer sees (``grad L = L grad log L`` for ``objective='loss'``, ``grad log L`` for
``objective='log_loss'``), and calls ``optimizer.update(g, state, params, value=L,
log_value=log L)``, so that loss-reading transforms can use either. A Python loop drives the
chunks: it stops at the target log loss, at divergence or at ``num_steps``, and an interrupt
keeps everything computed so far.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

import wnjax._runtime.interrupt as _interrupt
from wnjax._nets.dense import apply_batch
from wnjax._runtime.errors import InvalidInput, WnjaxError
from wnjax._dynamics.flow import summaries
from wnjax._losses import Loss, get_loss
from wnjax._nets.parameterize import Parameterized, as_parameterized, restore_type
from wnjax._runtime.validate import cast_floats, check_data, check_options, check_outputs, common_dtype

STOP_RUNNING, STOP_TARGET, STOP_MAX_STEPS, STOP_DIVERGED = 0, 1, 2, 3


class GDFailed(WnjaxError, RuntimeError):
    """A GD run diverged; ``.result`` holds everything computed before it did."""

    def __init__(self, message: str, result: "GDResult"):
        super().__init__(message)
        self.result = result


class GDResult(eqx.Module):
    """The outcome of ``gradient_descent``; all fields are arrays.

    - `steps`: the step index of each save point;
    - `log_loss`: full-data ``log L`` at the save points;
    - `summaries`: diagnostics at the save points (see ``wnjax.summaries``);
    - `states`: the model at each save point, or ``None``;
    - `final`, `final_log_loss`: the last model (same type as the input) and its ``log L``; a
      diverged run keeps its last state whose loss is finite and below the divergence level;
    - `num_steps`: steps taken; `stop_code`: 1 target reached, 2 ``num_steps`` done,
      3 diverged, 0 interrupted.

    ``gradient_descent`` trims the save arrays to the points saved, so every entry is a value.
    ``traced_gradient_descent`` (fixed shapes, under ``vmap``) pads them: ``steps == -1`` marks
    padding, whose values are NaN; select ``steps >= 0`` before reading them.
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
    def interrupted(self) -> Array:
        """True when SIGINT or SIGTERM stopped the run (after the chunk in progress)."""
        return self.stop_code == STOP_RUNNING

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
            STOP_MAX_STEPS: f"GD ran its num_steps = {k} steps (log L = {v:.6g}).{self.stall}",
            STOP_DIVERGED: f"GD diverged after {k} steps: the loss became non-finite or rose far "
            f"above its start (log L = {v:.6g} at the kept state). Lower the learning rate; the "
            "result keeps the last finite state.",
        }[int(code)]

    @property
    def stall(self) -> str:
        """A sentence when ``log L`` stopped decreasing over the last half of the run (fell by
        less than 1e-3 of its fall before), else ``''``."""
        steps, log_l = np.asarray(self.steps), np.asarray(self.log_loss)
        if steps.ndim != 1 or log_l.ndim != 1:
            return ""
        keep = steps >= 0
        steps, log_l = steps[keep], log_l[keep]
        if steps.size < 3 or not np.all(np.isfinite(log_l)):
            return ""
        mid = int(np.flatnonzero(steps <= steps[-1] // 2)[-1])
        before, after = log_l[0] - log_l[mid], log_l[mid] - log_l[-1]
        if mid == 0 or after > 1e-3 * max(before, 0.0) + 1e-9 * (1.0 + abs(log_l[-1])):
            return ""
        return (
            f" The loss stopped decreasing: log L fell by {after:.3g} over the last half of "
            f"the steps (by {before:.3g} before). Is the data separable? Non-separable data, or "
            "an all-zero row of X, keeps L above a positive floor."
        )


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


def _undone(opt_state) -> Array:
    """Whether a backtracking ``loss_normalized_sgd`` in ``opt_state`` just undid its step."""
    from wnjax._dynamics.schedules import LossNormalizedState

    states = jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, LossNormalizedState))
    flags = [s.just_undone for s in states if isinstance(s, LossNormalizedState)]
    return jnp.any(jnp.stack(flags)) if flags else jnp.asarray(False)


def _may_undo(opt_state) -> bool:
    """Whether the optimizer state holds a ``loss_normalized_sgd`` state, whose backtracking
    undoes a step into a non-finite loss by itself."""
    from wnjax._dynamics.schedules import LossNormalizedState

    return any(isinstance(s, LossNormalizedState) for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, LossNormalizedState)))


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def descent_update(params, opt_state, k, static, X, y, key, optimizer, *, loss: Loss,
                   batch_size: int | None, objective: str):
    """One GD/SGD step ``theta <- theta + optimizer.update(g, ...)`` on the batch of step ``k``.

    ``g = L grad log L = grad L`` (``objective='loss'``) or ``grad log L`` (``'log_loss'``), both
    on the batch; ``optimizer.update`` also receives ``value=L`` and ``log_value=log L``.

    **Returns:** ``(log L on the batch, new params, new optimizer state, finite)``: ``finite``
    says the new params are finite, and so is ``log L`` unless the optimizer undid the step
    (``log L`` is NaN where an overflowed step is being undone by backtracking).
    """
    if batch_size is None:
        Xb, yb = X, y
    else:
        idx = _batch_indices(key, k, X.shape[0], batch_size)
        Xb, yb = X[idx], y[idx]

    def log_loss(q):
        return loss.log_loss(apply_batch(eqx.combine(q, static), Xb), yb)

    value, g = jax.value_and_grad(log_loss)(params)
    if objective == "loss":
        g = jax.tree_util.tree_map(lambda x: jnp.exp(value) * x, g)
    updates, opt_state = optimizer.update(
        g, opt_state, params, value=jnp.exp(value), log_value=value
    )
    new_params = eqx.apply_updates(params, updates)
    finite = _all_finite(new_params) & (jnp.isfinite(value) | _undone(opt_state))
    return value, new_params, opt_state, finite


# Steps per block of the fast path (see ``_run_chunk``): a block that has to be redone with the
# per-step stopping rules costs at most this many extra steps, once per run.
FAST_BLOCK = 128


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
    """Advance by up to ``chunk_size`` steps, recording the summaries at every save step on the way.

    The steps between two save steps (a *segment*) run in blocks of ``FAST_BLOCK`` plain steps:
    no stop logic per step, only a running flag of whether some step would have stopped the run
    (target reached, loss non-finite or above ``diverge_above``) and, at the end of the block,
    whether the parameters are still finite (a non-finite parameter stays non-finite under an
    additive update) and their loss is still good. A clean block is kept; a flagged block is
    discarded and rerun step by step with the stopping rules, so the run stops at exactly the
    step a step-by-step loop stops at, with the state before that step. The last step of the
    run also goes step by step.

    The (costly) summaries are evaluated once per save point, never per step, also under
    ``vmap``; with a minibatch the full-data target is checked at the end of each segment. A
    stopped run records its final state once.
    """
    optimizer = build_optimizer(optimizer, numbers["hyperparams"])
    save_at = numbers["save_at"]
    n_save = save_at.shape[0]
    full_batch = batch_size is None

    def log_loss_on(params, Xb, yb):
        return loss.log_loss(apply_batch(eqx.combine(params, static), Xb), yb)

    def update(params, opt_state, k):
        return descent_update(
            params, opt_state, k, static, X, y, key, optimizer,
            loss=loss, batch_size=batch_size, objective=objective,
        )

    def stops(value, finite):
        """``(at_target, blew_up)`` for a step from a state whose (batch) log loss is ``value``."""
        at_target = full_batch & (value <= numbers["target"])
        blew_up = ~finite | (value > numbers["diverge_above"])
        return at_target, blew_up

    may_undo = _may_undo(carry["opt_state"])

    def bad(params, k):
        """Whether the state's log loss on step ``k``'s batch is non-finite or above the
        divergence level (never, for an optimizer that undoes such steps itself)."""
        if may_undo:
            return jnp.asarray(False)
        if full_batch:
            Xb, yb = X, y
        else:
            idx = _batch_indices(key, k, X.shape[0], batch_size)
            Xb, yb = X[idx], y[idx]
        value = log_loss_on(params, Xb, yb)
        return ~(jnp.isfinite(value) & (value <= numbers["diverge_above"]))

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
        """One step with the stopping rules (the exact path). A step into a state whose loss
        is non-finite or above the divergence level is not taken: the run stops as diverged
        with its last good state."""
        value, new_params, opt_state, finite = update(c["params"], c["opt_state"], c["k"])
        at_target, blew_up = stops(value, finite)
        blew_up = blew_up | (~at_target & bad(new_params, c["k"] + 1))
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

    def fast_block(f, lim):
        """Up to ``FAST_BLOCK`` plain steps (while ``k < lim``); whether none would have stopped."""
        params, opt_state, k, last, _ = f
        m = jnp.minimum(lim - k, FAST_BLOCK)

        def body(i, b):
            params, opt_state, halt, last = b
            value, params, opt_state, _ = update(params, opt_state, k + i)
            at_target, blew_up = stops(value, jnp.isfinite(value))
            return params, opt_state, halt | at_target | blew_up, value

        params, opt_state, halt, last = jax.lax.fori_loop(
            0, m, body, (params, opt_state, jnp.asarray(False), last)
        )
        clean = ~halt & _all_finite(params) & ~bad(params, k + m.astype(k.dtype))
        return (params, opt_state, k + m.astype(k.dtype), last, clean)

    def advance(c, until):
        """Steps until ``k == until`` or a stop: fast blocks, then the exact path."""
        lim = jnp.minimum(until, numbers["num_steps"] - 1)  # the run's last step: exact path
        f = (c["params"], c["opt_state"], c["k"], c["last_log_loss"], jnp.asarray(True))
        f = jax.lax.while_loop(
            lambda f: f[4] & (f[2] < lim),
            lambda f: _keep_if_clean(fast_block(f, lim), f),
            f,
        )
        c = dict(c)
        c["params"], c["opt_state"], c["k"], c["last_log_loss"], _ = f
        return jax.lax.while_loop(
            lambda c: (c["stop"] == STOP_RUNNING) & (c["k"] < until), step, c
        )

    def segment(c, end):
        c = advance(c, jnp.minimum(next_save(c), end))
        if not full_batch:  # minibatch: the full-data target, checked at each segment's end
            full = log_loss_on(c["params"], X, y)
            hit = (c["stop"] == STOP_RUNNING) & (full <= numbers["target"])
            c["stop"] = jnp.where(hit, STOP_TARGET, c["stop"])
        return maybe_record(c)

    carry = maybe_record(carry)
    end = carry["k"] + numbers["chunk_size"].astype(carry["k"].dtype)
    carry = jax.lax.while_loop(
        lambda c: (c["stop"] == STOP_RUNNING) & (c["k"] < end), lambda c: segment(c, end), carry
    )
    carry = dict(carry)
    carry["final_log_loss"] = log_loss_on(carry["params"], X, y)
    return maybe_record(carry)


def _keep_if_clean(new, old):
    """The fast path's state after a block if the block was clean, else the state before it (and
    the flag that sends the rest of the segment to the exact path)."""
    clean = new[4]
    kept = _tree_where(clean, new[:4], old[:4])
    return (*kept, clean)


def _cutter(n: int | None):
    """A function that cuts the leading axis of every array in a tree to ``n`` (on the host,
    so that no length compiles a program of its own); the identity for ``n=None``."""
    if n is None:
        return lambda tree: tree

    def cut_one(a):
        if not isinstance(a, jax.Array):
            return a
        host = np.asarray(a)[:n]
        return jax.device_put(host, a.sharding if len(a.devices()) == 1 else None)

    def cut(tree):
        return jax.tree_util.tree_map(cut_one, tree)

    return cut


def build_optimizer(optimizer, hyperparams: dict) -> optax.GradientTransformationExtraArgs:
    """An optax transformation from a ready one, or from a factory called with ``hyperparams``."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optax.with_extra_args_support(optimizer)
    return optax.with_extra_args_support(optimizer(**hyperparams))


@eqx.filter_jit
def _init_carry(
    params, static, X, y, loss, optimizer, hyperparams, n_save, save_states, degree, diagnostics,
    diverge_above,
):
    """The loop state at step 0 (parameters, optimizer state, empty save buffers), the initial
    full-data ``log L`` and the divergence level ``log L(0) + diverge_above``, in one compiled
    call."""
    optimizer = build_optimizer(optimizer, hyperparams)
    log_l0 = loss.log_loss(apply_batch(eqx.combine(params, static), X), y)
    # Only the shapes of the summaries are needed to allocate the save buffers.
    example = eqx.filter_eval_shape(
        lambda q: summaries(eqx.combine(q, static), X, y, loss, degree, diagnostics), params
    )
    if save_states:
        example["state"] = params
    saved = jax.tree_util.tree_map(
        lambda v: jnp.full((n_save,) + jnp.shape(v), jnp.nan, v.dtype), example
    )
    carry = {
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
    return carry, log_l0, log_l0 + diverge_above


def _as_number(v, dtype):
    """Numbers become traced arrays of ``dtype`` (host NumPy arrays for Python numbers: no eager
    dispatch); bools, strings and other objects stay static."""
    if isinstance(v, (bool, str)):
        return v
    if isinstance(v, jax.Array):
        return jnp.asarray(v, dtype)
    if isinstance(v, (int, float)):
        return np.asarray(v, dtype)
    return v


def _host_int(v):
    """An integer for the compiled program, as a host array of JAX's default integer type."""
    if isinstance(v, jax.Array):
        return jnp.asarray(v)
    return np.asarray(v, jax.dtypes.canonicalize_dtype(np.int64))


def prepare_run(
    model, X, y, *, num_steps, learning_rate, optimizer, hyperparams, loss, target_log_loss,
    batch_size, key, objective, n_save, save_states, chunk_size, degree, diverge_above,
    diagnostics=True, check_initial_loss=True,
):
    """Validate a GD run's inputs; return ``(carry, static, X, y, numbers, key, statics)``.

    Shared by ``gradient_descent`` (Python-driven chunks) and ``traced_gradient_descent``
    (one traced loop). Works on traced models and numbers (checks needing values are skipped).
    ``numbers['initial_log_loss']`` is ``log L(0)``; with ``check_initial_loss=False`` the caller
    checks it (``_check_initial_loss``) at its next host read instead of a read here.
    """
    from wnjax._dynamics.flow import _auto_degree

    if objective not in ("loss", "log_loss"):
        raise InvalidInput(f"objective must be 'loss' or 'log_loss', got {objective!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InvalidInput(f"chunk_size must be a positive int, got {chunk_size!r}.")
    hp = dict(hyperparams or {})
    if learning_rate is not None:
        hp["learning_rate"] = learning_rate
    check_options(num_steps=num_steps, n_save=n_save, learning_rate=hp.get("learning_rate"),
                  target_log_loss=target_log_loss, degree=degree, diverge_above=diverge_above)
    n_save = int(n_save)
    loss_obj = get_loss(loss)
    X, y = check_data(X, y, loss_obj)
    p = as_parameterized(model)
    check_outputs(p, X, y, loss_obj)
    # One float dtype for data and parameters: the loop's carry keeps its types.
    dtype = common_dtype(p, X)
    X, p = cast_floats(X, dtype), cast_floats(p, dtype)
    if jnp.issubdtype(y.dtype, jnp.floating):
        y = cast_floats(y, dtype)
    if batch_size is not None:
        if not 0 < batch_size <= X.shape[0]:
            raise InvalidInput(f"batch_size must be in 1..{X.shape[0]}, got {batch_size}.")
        if key is None:
            raise InvalidInput("minibatch SGD needs a PRNG key: pass key=jax.random.key(...).")
    key = _default_key() if key is None else key
    if isinstance(optimizer, optax.GradientTransformation) and hp:
        raise InvalidInput(
            "learning_rate/hyperparams go with an optimizer factory (optimizer=optax.sgd); "
            "this optimizer is already built, so its numbers are fixed."
        )
    if not isinstance(optimizer, optax.GradientTransformation) and "learning_rate" not in hp:
        raise InvalidInput("pass learning_rate=... (or hyperparams) for the optimizer factory.")
    hp = {k: _as_number(v, dtype) for k, v in hp.items()}
    if degree is None:
        degree = _auto_degree(p, X, loss_obj)
    params, static = eqx.partition(p, eqx.is_inexact_array)
    degree = jnp.asarray(degree, dtype) if isinstance(degree, jax.Array) else np.asarray(degree, dtype)
    carry, log_l0, diverge_level = _init_carry(
        params, static, X, y, loss_obj, optimizer, hp, n_save, save_states, degree, diagnostics,
        _as_number(diverge_above, dtype),
    )
    if check_initial_loss:
        _check_initial_loss(log_l0)
    numbers = {
        "target": _as_number(-np.inf if target_log_loss is None else target_log_loss, dtype),
        "num_steps": _host_int(num_steps),
        "diverge_above": diverge_level,
        "initial_log_loss": log_l0,
        "degree": degree,
        "save_at": _host_int(save_steps(num_steps, n_save)),
        "chunk_size": _host_int(chunk_size),
        "hyperparams": hp,
    }
    statics = dict(
        loss=loss_obj,
        optimizer=optimizer,
        batch_size=batch_size,
        objective=objective,
        save_states=save_states,
        diagnostics=diagnostics,
    )
    return carry, static, X, y, numbers, key, statics


def _check_initial_loss(log_l0) -> None:
    """Raise ``InvalidInput`` if the initial loss is not finite (one host read; skipped if
    traced)."""
    if not isinstance(log_l0, jax.core.Tracer) and not np.isfinite(np.asarray(log_l0)):
        raise InvalidInput("the initial loss is not finite; check the data and the model.")


_DEFAULT_KEY = []


def _default_key() -> PRNGKeyArray:
    """``jax.random.key(0)``, made once outside any trace (full-batch runs never read it)."""
    if _DEFAULT_KEY:
        return _DEFAULT_KEY[0]
    key = jax.random.key(0)
    if not isinstance(key, jax.core.Tracer):  # never keep a tracer beyond its trace
        _DEFAULT_KEY.append(key)
    return key


# chunk_size="auto": the first chunk's steps, the wall time under which the next chunk doubles,
# and the cap. Each chunk costs ~1 ms of dispatch (a 10-32-1 net's step is ~10 us on a CPU).
AUTO_CHUNK_START = 1000
AUTO_CHUNK_SECONDS = 0.25
AUTO_CHUNK_MAX = 2**20


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
    chunk_size: int | str = "auto",
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
      minibatch: at the end of each chunk). A run that ends short of it with a stalled loss
      warns (``GDResult.stall``: is the data separable?).
    - `batch_size`, `key`: minibatch SGD with a reshuffle every epoch, drawn from ``key``.
    - `objective`: ``'loss'`` or ``'log_loss'`` (the gradient that the optimizer sees).
    - `n_save`: log-spaced save points (``log L`` and summaries at each).
    - `save_states`: keep the model at the save points.
    - `chunk_size`: steps per compiled chunk; between chunks Python regains control (callback,
      Ctrl-C). ``"auto"``: ``AUTO_CHUNK_START`` steps first, then twice as many after every
      chunk that took less than ``AUTO_CHUNK_SECONDS``, up to ``AUTO_CHUNK_MAX`` (a chunk's
      length is a traced number: changing it does not recompile, nor change any step).
    - `degree`: homogeneity degree for the normalized margin (measured if ``None``; a model
      that is not homogeneous raises ``InvalidInput`` unless it is given).
    - `diverge_above`: a run whose ``log L`` exceeds ``log L(0) + diverge_above`` has diverged.
    - `callback`: called with the chunk carry after each chunk (for checkpoints or progress).
    - `throw`: raise ``GDFailed`` on divergence instead of returning the partial result.
    - `diagnostics`: also save the asymptotic diagnostics at the save points (see
      ``wnjax.gradient_flow``).

    **Returns:** a ``GDResult`` whose save arrays hold the saved points only. Numbers
    (learning rates inside ``optimizer``, targets) are traced where optax keeps them as arrays,
    so repeated calls reuse the compiled chunk.
    """
    auto = isinstance(chunk_size, str)
    if auto and chunk_size != "auto":
        raise InvalidInput(f"chunk_size must be a positive int or 'auto', got {chunk_size!r}.")
    carry, static, X, y, numbers, key, statics = prepare_run(
        model, X, y, num_steps=num_steps, learning_rate=learning_rate, optimizer=optimizer,
        hyperparams=hyperparams, loss=loss, target_log_loss=target_log_loss,
        batch_size=batch_size, key=key, objective=objective, n_save=n_save,
        save_states=save_states, chunk_size=AUTO_CHUNK_START if auto else chunk_size,
        degree=degree, diverge_above=diverge_above, diagnostics=diagnostics,
        check_initial_loss=False,
    )
    first = True
    # SIGINT/SIGTERM are recorded and end the run after the chunk in progress.
    with _interrupt.handling():
        try:
            while True:
                t0 = time.perf_counter()
                carry = _run_chunk(carry, static, X, y, numbers, key, **statics)
                stop = int(carry["stop"])  # waits for the chunk (and the initial loss) anyway
                if auto and time.perf_counter() - t0 < AUTO_CHUNK_SECONDS:
                    size = min(2 * int(numbers["chunk_size"]), AUTO_CHUNK_MAX)
                    numbers = {**numbers, "chunk_size": _host_int(size)}
                if first:  # a non-finite initial loss stops the run at step 0: bad input
                    _check_initial_loss(numbers["initial_log_loss"])
                    first = False
                if callback is not None:
                    callback(carry)
                if stop != STOP_RUNNING or _interrupt.requested():
                    break
        except KeyboardInterrupt:  # a second signal: the last finished chunk is kept
            pass
    if int(carry["stop"]) == STOP_RUNNING:
        warnings.warn("gradient_descent interrupted; returning the partial result.",
                      RuntimeWarning, stacklevel=2)
    result = _to_result(carry, static, model, save_states, trim=True)
    if int(result.stop_code) == STOP_DIVERGED:
        if throw:
            raise GDFailed(result.message, result)
        warnings.warn(result.message, RuntimeWarning, stacklevel=2)
    elif target_log_loss is not None and int(result.stop_code) == STOP_MAX_STEPS:
        stall = result.stall
        if stall:
            warnings.warn(f"GD did not reach target_log_loss = {target_log_loss}.{stall}",
                          RuntimeWarning, stacklevel=2)
    return result


def _to_result(carry: dict, static, like, save_states: bool, trim: bool = False) -> GDResult:
    """The ``GDResult`` of a final carry; ``trim``: save arrays cut to the points saved."""
    saved = dict(carry["saved"])
    steps = carry["saved_steps"]
    states = saved.pop("state", None)
    cut = _cutter(int(carry["save_idx"]) if trim else None)
    saved, steps = cut(saved), cut(steps)
    final = eqx.combine(carry["params"], static)
    if states is not None:
        if isinstance(like, Parameterized):
            states = eqx.combine(cut(states), static)
        else:  # standard() on the full buffers: one program whatever the number saved
            states = cut(jax.vmap(lambda s: s.standard())(eqx.combine(states, static)))
    final_log_loss = carry["final_log_loss"]
    return GDResult(
        steps=steps,
        log_loss=saved["log_loss"],
        summaries=saved,
        states=states,
        final=restore_type(final, like),
        final_log_loss=final_log_loss,
        num_steps=carry["k"],
        stop_code=carry["stop"],
        opt_state=carry["opt_state"],
    )
