"""Update rules of the GD engine (``wnjax._dynamics.descent``): one call is one *update*.

A rule has ``init(params, hyperparams, static, X, y) -> state`` and
``update(params, state, k, static, X, y, key, hyperparams) -> (value, new_params, new_state,
finite, undo)``: ``value`` is ``log L`` at ``params`` on the update's batch (the full data when
``value_is_full``), ``finite`` says the new point is usable, ``undo`` flags an update that
undid a trial. Two rules:

- ``DescentRule``: GD/SGD with an optax optimizer, ``theta <- theta + optimizer.update(g, ...)``
  on the batch of update ``k``. A backtracking ``loss_normalized_sgd`` undoes a step by a
  further update (``retracts``: the undo takes back an accepted step);
- ``EpochBacktracking``: one update is one epoch of minibatch steps, judged on the full loss
  and kept or thrown away within the same update (``retracts`` is false).

The engine counts ``accepted`` steps (``+1`` per kept update, ``-1`` per retracting undo) and
``undone`` trials; ``accepted + undone`` are the *attempts*, which the step budget counts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from wnjax._dynamics.schedules import LossNormalizedState, backtrack_rate
from wnjax._losses import Loss
from wnjax._nets.dense import apply_batch
from wnjax._nets.parameterize import Frozen
from wnjax._runtime.tree import all_finite, tree_where


def build_optimizer(optimizer, hyperparams: dict) -> optax.GradientTransformationExtraArgs:
    """An optax transformation from a ready one, or from a factory called with ``hyperparams``."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optax.with_extra_args_support(optimizer)
    return optax.with_extra_args_support(optimizer(**hyperparams))


def batch_indices(key, k, n, batch_size):
    """The points of update ``k``: a slice of the permutation of epoch ``k // (n // B)``, drawn
    from ``fold_in(key, epoch)`` (the last ``n mod B`` points of each permutation are left out)."""
    per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, k // per_epoch), n)
    return jax.lax.dynamic_slice(perm, ((k % per_epoch) * batch_size,), (batch_size,))


def _loss_normalized_states(opt_state) -> list:
    return [
        s
        for s in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, LossNormalizedState)
        )
        if isinstance(s, LossNormalizedState)
    ]


def undone(opt_state) -> Array:
    """Whether a backtracking ``loss_normalized_sgd`` in ``opt_state`` just undid its step."""
    flags = [s.just_undone for s in _loss_normalized_states(opt_state)]
    return jnp.any(jnp.stack(flags)) if flags else jnp.asarray(False)


def may_undo(opt_state) -> bool:
    """Whether the optimizer state holds a ``loss_normalized_sgd`` state, whose backtracking
    undoes a step into a non-finite loss by itself."""
    return bool(_loss_normalized_states(opt_state))


def frozen_kept(updates):
    """``updates`` with those of ``Frozen`` layers zeroed: a frozen weight receives no gradient,
    and no optimizer term of its own (weight decay) moves it either."""

    def zero(node):
        if isinstance(node, Frozen):
            return jax.tree_util.tree_map(jnp.zeros_like, node)
        return node

    return jax.tree_util.tree_map(zero, updates, is_leaf=lambda x: isinstance(x, Frozen))


def descent_update(
    params,
    opt_state,
    k,
    static,
    X,
    y,
    key,
    optimizer,
    *,
    loss: Loss,
    batch_size: int | None,
    objective: str,
):
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
        idx = batch_indices(key, k, X.shape[0], batch_size)
        Xb, yb = X[idx], y[idx]

    def log_loss(q):
        return loss.log_loss(apply_batch(eqx.combine(q, static), Xb), yb)

    value, g = jax.value_and_grad(log_loss)(params)
    if objective == "loss":
        g = jax.tree_util.tree_map(lambda x: jnp.exp(value) * x, g)
    updates, opt_state = optimizer.update(
        g, opt_state, params, value=jnp.exp(value), log_value=value
    )
    new_params = eqx.apply_updates(params, frozen_kept(updates))
    finite = all_finite(new_params) & (jnp.isfinite(value) | undone(opt_state))
    return value, new_params, opt_state, finite


class DescentRule(eqx.Module):
    """GD/SGD with an optax optimizer (see ``descent_update``).

    **Arguments:** `loss`; `optimizer` (a factory called with the hyperparameters, or a ready
    transformation); `batch_size` (``None``: full batch); `objective` (``'loss'`` or
    ``'log_loss'``).
    """

    retracts: ClassVar[bool] = True

    loss: Loss
    optimizer: Any
    batch_size: int | None
    objective: str

    @property
    def value_is_full(self) -> bool:
        return self.batch_size is None

    def init(self, params, hyperparams, static, X, y):
        return build_optimizer(self.optimizer, hyperparams).init(params)

    def update(self, params, state, k, static, X, y, key, hyperparams):
        value, new, state, finite = descent_update(
            params,
            state,
            k,
            static,
            X,
            y,
            key,
            build_optimizer(self.optimizer, hyperparams),
            loss=self.loss,
            batch_size=self.batch_size,
            objective=self.objective,
        )
        return value, new, state, finite, undone(state)

    def guarded(self, state) -> bool:
        """Whether the engine guards the steps (fast unchecked blocks, and a step into a state
        whose loss is non-finite or above the divergence level ends the run): true unless the
        optimizer undoes such steps itself."""
        return not may_undo(state)

    def batch(self, X, y, key, k):
        """The data of update ``k``."""
        if self.batch_size is None:
            return X, y
        idx = batch_indices(key, k, X.shape[0], self.batch_size)
        return X[idx], y[idx]

    def record(self, state) -> dict:
        return {}


class EpochBacktracking(eqx.Module):
    """Minibatch SGD with ``eta = eta0 / L`` and epoch-level backtracking of ``eta0`` (Exp-WN's
    MNIST schedule); one update is one attempted epoch.

    From the last kept point ``theta_0``, with ``L_ref = L(theta_0)`` on the full data, the
    epoch runs ``ceil(n / B)`` minibatch steps ``theta <- theta - eta0 grad(L_b/|b|) /
    (L_ref/n)`` over the permutation ``fold_in(key, k)`` of update ``k`` (the last batch holds
    the remainder), then reads the full ``L``: the epoch is kept if ``L <= L_ref`` (and all is
    finite), else undone (``theta <- theta_0``); either way ``eta0 <- backtrack_rate(eta0,
    kept, grow, shrink, cap)``. ``finite`` is false once ``eta0 < min_rate`` (the run ends).

    **Arguments:** `loss`; `batch_size`; `grow`, `shrink`, `cap`; `min_rate`. The state is
    ``{"eta0", "log_ref"}``, ``eta0`` from ``hyperparams['learning_rate']``.
    """

    retracts: ClassVar[bool] = False
    value_is_full: ClassVar[bool] = True

    loss: Loss
    batch_size: int
    grow: float
    shrink: float
    cap: float
    min_rate: float

    def _log_loss(self, q, static, Xb, yb):
        return self.loss.log_loss(apply_batch(eqx.combine(q, static), Xb), yb)

    def init(self, params, hyperparams, static, X, y):
        log_l = self._log_loss(params, static, X, y)
        return {"eta0": jnp.asarray(hyperparams["learning_rate"], log_l.dtype), "log_ref": log_l}

    def update(self, params, state, k, static, X, y, key, hyperparams):
        n = X.shape[0]
        per_epoch, rest = divmod(n, self.batch_size)
        eta0, log_ref = state["eta0"], state["log_ref"]
        perm = jax.random.permutation(jax.random.fold_in(key, k), n)
        batches = perm[: per_epoch * self.batch_size].reshape(per_epoch, self.batch_size)

        def sgd_step(q, idx):
            # grad(L_b/B)/(L_ref/n) = exp(log L_b - log L_ref + log(n/B)) grad log L_b
            value, g = jax.value_and_grad(self._log_loss)(q, static, X[idx], y[idx])
            scale = eta0 * jnp.exp(value - log_ref + jnp.log(n / idx.shape[0]))
            return jax.tree_util.tree_map(lambda p, gi: p - scale * gi, q, g), None

        q, _ = jax.lax.scan(sgd_step, params, batches)
        if rest:  # the last, smaller batch: every point is visited once per epoch
            q, _ = sgd_step(q, perm[per_epoch * self.batch_size :])
        full = self._log_loss(q, static, X, y)
        kept = jnp.isfinite(full) & all_finite(q) & (full <= log_ref)
        eta0 = backtrack_rate(eta0, kept, self.grow, self.shrink, self.cap)
        new_state = {"eta0": eta0, "log_ref": jnp.where(kept, full, log_ref)}
        return log_ref, tree_where(kept, q, params), new_state, eta0 >= self.min_rate, ~kept

    def guarded(self, state) -> bool:
        return False

    def batch(self, X, y, key, k):
        return X, y

    def record(self, state) -> dict:
        return {"eta0": state["eta0"], "log_ref": state["log_ref"]}
