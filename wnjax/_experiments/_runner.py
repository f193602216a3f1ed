"""Seeds in one compiled program: vmapped GD/SGD with per-seed data, and vmapped gradient flow.

``wnjax.gradient_descent_batched`` shares one data set between runs and evaluates its save-point
summaries inside every step (a vmapped ``cond`` runs both branches). The experiments need
per-seed data (lin-sep draws its points from the seed), minibatches and log-loss checkpoints, so
this runner scans plain steps and records full-data diagnostics only at chunk ends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._descent import build_optimizer, descent_update
from .._flow import FlowResult, gradient_flow
from .._losses import Loss, get_loss


def _where(c, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def _log_loss(params, static, X, y, loss: Loss) -> Array:
    return loss.log_loss(jax.vmap(eqx.combine(params, static))(X), y)


@eqx.filter_jit
def _chunk(carry, static, X, y, hp, keys, *, loss, optimizer, length, batch_size, objective,
           summarize):
    """``length`` steps of every run (vmapped), then full-data summaries of each run."""

    def one(c, X, y, hp, key):
        opt = build_optimizer(optimizer, hp)

        def step(c, _):
            running = ~c["done"]
            value, new, opt_state, finite = descent_update(
                c["params"], c["opt_state"], c["k"], static, X, y, key, opt,
                loss=loss, batch_size=batch_size, objective=objective,
            )
            at_target = (batch_size is None) & (value <= c["target"])
            bad = ~finite | (value > c["diverge_above"])
            take = running & ~at_target & ~bad
            c = dict(c)
            c["params"] = _where(take, new, c["params"])
            c["opt_state"] = _where(take, opt_state, c["opt_state"])
            c["k"] = c["k"] + take.astype(c["k"].dtype)
            c["diverged"] = c["diverged"] | (running & bad)
            c["reached"] = c["reached"] | (running & at_target)
            c["done"] = c["done"] | at_target | bad | (c["k"] >= c["num_steps"])
            return c, None

        c, _ = jax.lax.scan(step, c, None, length=length)
        full = _log_loss(c["params"], static, X, y, loss)
        if batch_size is not None:
            hit = ~c["done"] & (full <= c["target"])
            c["reached"] = c["reached"] | hit
            c["done"] = c["done"] | hit
        out = summarize(eqx.combine(c["params"], static), X, y)
        out["log_loss"] = full
        return c, out

    return jax.vmap(one)(carry, X, y, hp, keys)


class BatchedRun(eqx.Module):
    """Outcome of ``run_gd``; a leading axis over seeds everywhere but ``history``'s.

    - `history`: dict of arrays ``(n_records, seeds, ...)``: full-data ``log_loss`` and the
      ``summarize`` outputs after each chunk; `steps`: ``(n_records, seeds)`` steps taken then;
    - `final`: the stacked final models; `num_steps`, `reached`, `diverged`: per seed;
    - `checkpoints`: per checkpoint target, the stacked models at the first chunk end where the
      full-data ``log L`` was at or below it (``None`` entries for targets no seed reached), with
      `checkpoint_log_loss` and `checkpoint_steps` (``nan``/``-1`` where a seed never got there).
    """

    history: dict
    steps: np.ndarray
    final: PyTree
    num_steps: np.ndarray
    reached: np.ndarray
    diverged: np.ndarray
    checkpoints: tuple
    checkpoint_log_loss: np.ndarray
    checkpoint_steps: np.ndarray


def _per_seed(x, seeds: int):
    x = jnp.asarray(x)
    return jnp.broadcast_to(x, (seeds,) + x.shape)


def run_gd(
    models: PyTree,
    X: Array,
    y: Array,
    *,
    per_seed_data: bool = False,
    num_steps: int,
    learning_rate: float,
    optimizer=optax.sgd,
    hyperparams: dict | None = None,
    loss: str | Loss = "exponential",
    target_log_loss: float | None = None,
    checkpoints: Sequence[float] = (),
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    objective: str = "loss",
    chunk_size: int = 100,
    summarize: Callable | None = None,
    diverge_above: float = 50.0,
) -> BatchedRun:
    """GD or minibatch SGD on a batch of models with per-seed data, one vmapped program.

    Each seed follows ``theta <- theta + optimizer.update(g, ...)``, ``g = grad L`` (or
    ``grad log L`` for ``objective='log_loss'``), as in ``wnjax.gradient_descent``; a seed stops
    at ``target_log_loss`` (full batch: checked every step; minibatch: at chunk ends), on
    divergence or after ``num_steps``, and stays frozen while the others go on.

    **Arguments:**
    - `models`: stacked models (``eqx.filter_vmap`` over keys), plain or ``Parameterized``.
    - `X`, `y`: shared data ``(n, ...)``, or per-seed data ``(seeds, n, ...)`` with
      ``per_seed_data=True``.
    - `num_steps`, `learning_rate`, `optimizer`, `hyperparams`, `loss`, `objective`: as for
      ``wnjax.gradient_descent``.
    - `target_log_loss`: stop a seed once it reaches it.
    - `checkpoints`: full-data ``log L`` values at which to keep the model (chunk resolution).
    - `batch_size`, `key`: minibatch SGD; each seed reshuffles with its own key.
    - `chunk_size`: steps between records (and between checkpoint checks).
    - `summarize`: ``f(model, X, y) -> dict`` of diagnostics recorded at chunk ends.
    - `diverge_above`: a seed whose ``log L`` exceeds its start by this much has diverged.

    **Returns:** a ``BatchedRun``.
    """
    loss_obj = get_loss(loss)
    params, static = eqx.partition(models, eqx.is_inexact_array)
    seeds = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    if not per_seed_data:
        X, y = _per_seed(X, seeds), _per_seed(y, seeds)
    if batch_size is not None and key is None:
        raise ValueError("minibatch SGD needs a PRNG key: pass key=jax.random.key(...).")
    keys = jax.random.split(jax.random.key(0) if key is None else key, seeds)
    dtype = jnp.asarray(X).dtype
    hp = dict(hyperparams or {})
    hp["learning_rate"] = learning_rate
    hp = {
        k: _per_seed(jnp.asarray(v, dtype), seeds)
        if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in hp.items()
    }
    statics = {k: v for k, v in hp.items() if not isinstance(v, jax.Array)}
    traced = {k: v for k, v in hp.items() if isinstance(v, jax.Array)}
    opt_factory = optimizer
    if statics and not isinstance(optimizer, optax.GradientTransformation):
        opt_factory = functools.partial(optimizer, **statics)
    log_l0 = eqx.filter_vmap(lambda q, X, y: _log_loss(q, static, X, y, loss_obj))(params, X, y)
    opt0 = jax.vmap(lambda q, h: build_optimizer(opt_factory, h).init(q))(params, traced)
    carry = {
        "params": params,
        "opt_state": opt0,
        "k": jnp.zeros(seeds, int),
        "done": jnp.zeros(seeds, bool),
        "reached": jnp.zeros(seeds, bool),
        "diverged": jnp.zeros(seeds, bool),
        "target": _per_seed(-jnp.inf if target_log_loss is None else target_log_loss, seeds).astype(dtype),
        "num_steps": _per_seed(num_steps, seeds),
        "diverge_above": log_l0 + diverge_above,
    }
    summarize = summarize or (lambda m, X, y: {})
    run = functools.partial(
        _chunk, loss=loss_obj, optimizer=opt_factory, length=int(min(chunk_size, num_steps)),
        batch_size=batch_size, objective=objective, summarize=summarize,
    )
    targets = list(checkpoints)
    ck_params = [None] * len(targets)
    ck_loss = np.full((len(targets), seeds), np.nan)
    ck_steps = -np.ones((len(targets), seeds), int)
    records, steps = [], []
    while True:
        carry, out = run(carry, static, X, y, traced, keys)
        out = jax.tree_util.tree_map(np.asarray, out)
        records.append(out)
        k = np.asarray(carry["k"])
        steps.append(k)
        for j, t in enumerate(targets):
            new = (ck_steps[j] < 0) & (out["log_loss"] <= t)
            if new.any():
                ck_loss[j] = np.where(new, out["log_loss"], ck_loss[j])
                ck_steps[j] = np.where(new, k, ck_steps[j])
                mask = jnp.asarray(new)
                old = carry["params"] if ck_params[j] is None else ck_params[j]
                ck_params[j] = jax.vmap(_where)(mask, carry["params"], old)
        if bool(np.all(np.asarray(carry["done"]))):
            break
    history = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *records)
    return BatchedRun(
        history=history,
        steps=np.stack(steps),
        final=eqx.combine(carry["params"], static),
        num_steps=np.asarray(carry["k"]),
        reached=np.asarray(carry["reached"]),
        diverged=np.asarray(carry["diverged"]),
        checkpoints=tuple(None if q is None else eqx.combine(q, static) for q in ck_params),
        checkpoint_log_loss=ck_loss,
        checkpoint_steps=ck_steps,
    )


def run_flow(
    models: PyTree, X: Array, y: Array, *, per_seed_data: bool = False, **kwargs
) -> FlowResult:
    """``wnjax.gradient_flow`` vmapped over stacked models and per-seed (or shared) data.

    Keyword arguments go to ``gradient_flow`` (pass ``degree=`` explicitly: it cannot be
    measured on traced data). ``throw`` is off; check ``result.ok`` per seed.
    """
    params, static = eqx.partition(models, eqx.is_inexact_array)
    seeds = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    if not per_seed_data:
        X, y = _per_seed(X, seeds), _per_seed(y, seeds)
    kwargs.setdefault("throw", False)

    @eqx.filter_jit
    def go(params, X, y):
        return jax.vmap(lambda q, X, y: gradient_flow(eqx.combine(q, static), X, y, **kwargs))(
            params, X, y
        )

    return go(params, X, y)
