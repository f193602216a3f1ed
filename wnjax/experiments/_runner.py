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

import wnjax._runtime.interrupt as _interrupt
from wnjax._nets.dense import apply_batch
from wnjax._dynamics.descent import _undone, build_optimizer, descent_update
from wnjax._dynamics.flow import FlowResult, gradient_flow
from wnjax._losses import Loss, get_loss


def _where(c, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def _log_loss(params, static, X, y, loss: Loss) -> Array:
    return loss.log_loss(apply_batch(eqx.combine(params, static), X), y)


def _no_summary(model, X, y) -> dict:
    return {}


class _Bound(eqx.Module):
    """An optimizer factory with its static (non-number) arguments bound; equal instances hash
    equal, so repeated runs reuse the compiled chunk (a ``functools.partial`` would not)."""

    factory: Callable = eqx.field(static=True)
    statics: tuple = eqx.field(static=True)

    def __call__(self, **hyperparams):
        return self.factory(**dict(self.statics), **hyperparams)


@eqx.filter_jit
def _init(params, static, X, y, traced, numbers, *, loss, optimizer) -> dict:
    """The loop state of every seed at step 0, in one compiled call."""
    seeds = jax.tree_util.tree_leaves(params)[0].shape[0]
    log_l0 = jax.vmap(lambda q, X, y: _log_loss(q, static, X, y, loss))(params, X, y)
    opt0 = jax.vmap(lambda q, h: build_optimizer(optimizer, h).init(q))(params, traced)
    flag = jnp.zeros(seeds, bool)
    return {
        "params": params,
        "opt_state": opt0,
        "k": jnp.zeros(seeds, int),  # optimizer updates: steps and undos
        "undone": jnp.zeros(seeds, int),
        "done": flag,
        "reached": flag,
        "diverged": flag,
        "stalled": flag,
        "target": jnp.broadcast_to(numbers["target"], (seeds,)).astype(X.dtype),
        "num_steps": jnp.broadcast_to(numbers["num_steps"], (seeds,)),
        "diverge_above": log_l0 + numbers["diverge_above"],
    }


# A seed has stalled when its loss is carried by dead points: points with margin 0 and zero
# margin gradient (for a bias-free ReLU^p net, a point on which every hidden unit is off, whose
# output is then exactly 0). Their floor F = n_dead * l(0) is above the target, and the live
# points add less than STALL_SHARE of it: no step moves a dead point, so log L can only creep
# towards log F. (A dead point could in principle come back to life as the weights turn; these
# seeds are reported as stalled, not as failures of the dynamics.)
STALL_SHARE = 1e-3
_DEAD = 1e-12  # |q_i| and ||theta|| ||grad q_i|| below _DEAD max_j |q_j|: a dead point


def _stalled(params, static, X, y, loss: Loss, target: Array) -> tuple[Array, Array]:
    """``(log L, stalled)`` on the full data; see ``STALL_SHARE``."""
    model = eqx.combine(params, static)
    out = apply_batch(model, X)
    value = loss.log_loss(out, y)
    q = loss.margins(out, y)

    def margin(p, x, yi):
        return loss.margins(eqx.combine(p, static)(x)[None], yi[None])[0]

    g = jax.vmap(jax.grad(margin), in_axes=(None, 0, 0))(params, X, y)
    gnorm = jnp.sqrt(sum(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1)
                         for x in jax.tree_util.tree_leaves(g)))
    wnorm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(params)))
    scale = _DEAD * jnp.max(jnp.abs(q))
    dead = (jnp.abs(q) <= scale) & (wnorm * gnorm <= scale)
    n_dead = jnp.sum(dead)
    log_floor = jnp.log(jnp.maximum(n_dead, 1)) + loss.log_loss(jnp.zeros_like(out[:1]), y[:1])
    stuck = (n_dead > 0) & (log_floor > target) & (log_floor >= value - STALL_SHARE)
    return value, stuck & jnp.isfinite(value)


@eqx.filter_jit
def _chunk(carry, static, X, y, hp, keys, *, loss, optimizer, length, batch_size, objective,
           summarize, stop_stalled=False):
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
            # A seed at its target stops here: its (discarded) next step may overflow harmlessly.
            bad = (~finite | (value > c["diverge_above"])) & ~at_target
            take = running & ~at_target & ~bad
            c = dict(c)
            c["params"] = _where(take, new, c["params"])
            c["opt_state"] = _where(take, opt_state, c["opt_state"])
            c["k"] = c["k"] + take.astype(c["k"].dtype)
            c["undone"] = c["undone"] + (take & _undone(opt_state)).astype(c["undone"].dtype)
            c["diverged"] = c["diverged"] | (running & bad)
            c["reached"] = c["reached"] | (running & at_target)
            attempts = c["k"] - c["undone"]  # accepted steps and undone ones
            c["done"] = c["done"] | at_target | bad | (attempts >= c["num_steps"])
            return c, None

        c, _ = jax.lax.scan(step, c, None, length=length)
        if stop_stalled:  # per-point margin gradients: only when asked for
            full, stuck = _stalled(c["params"], static, X, y, loss, c["target"])
        else:
            full, stuck = _log_loss(c["params"], static, X, y, loss), jnp.asarray(False)
        if batch_size is not None:
            hit = ~c["done"] & (full <= c["target"])
            c["reached"] = c["reached"] | hit
            c["done"] = c["done"] | hit
        stuck = stuck & ~c["done"] & (full > c["target"])
        c["stalled"] = c["stalled"] | stuck
        c["done"] = c["done"] | stuck
        out = summarize(eqx.combine(c["params"], static), X, y)
        out["log_loss"] = full
        return c, out

    return jax.vmap(one)(carry, X, y, hp, keys)


class BatchedRun(eqx.Module):
    """Outcome of ``run_gd``; a leading axis over seeds everywhere but ``history``'s.

    - `history`: dict of arrays ``(n_records, seeds, ...)``: full-data ``log_loss`` and the
      ``summarize`` outputs after each chunk; `steps`: ``(n_records, seeds)`` steps taken then;
    - `final`: the stacked final models; `num_steps`, `reached`, `diverged`, `stalled`: per seed
      (``stalled``: stopped at a point no step can improve, see ``STALL_SHARE``);
    - steps are accepted steps (epochs); `undone`: per seed, the steps that backtracking undid
      (not in `num_steps`: an undone step and its undo are two optimizer updates, no epoch);
    - `checkpoints`: per checkpoint target, the stacked models at the first chunk end where the
      full-data ``log L`` was at or below it (``None`` entries for targets no seed reached), with
      `checkpoint_log_loss` and `checkpoint_steps` (``nan``/``-1`` where a seed never got there);
    - `interrupted`: SIGINT/SIGTERM stopped the run at a chunk end, before every seed was done.
    """

    history: dict
    steps: np.ndarray
    final: PyTree
    num_steps: np.ndarray
    reached: np.ndarray
    diverged: np.ndarray
    stalled: np.ndarray
    checkpoints: tuple
    checkpoint_log_loss: np.ndarray
    checkpoint_steps: np.ndarray
    interrupted: bool = False
    undone: np.ndarray | None = None


def _epochs(carry) -> np.ndarray:
    """Accepted steps (epochs) per seed: ``k`` updates hold two per undone step (the step and
    its undo), so ``epochs = k - 2 undone``."""
    return np.asarray(carry["k"]) - 2 * np.asarray(carry["undone"])


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
    stop_stalled: bool = True,
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
    - `num_steps`: the budget of attempted steps per seed (accepted and undone).
    - `learning_rate`, `optimizer`, `hyperparams`, `loss`, `objective`: as for
      ``wnjax.gradient_descent``.
    - `target_log_loss`: stop a seed once it reaches it.
    - `checkpoints`: full-data ``log L`` values at which to keep the model (chunk resolution).
    - `batch_size`, `key`: minibatch SGD; each seed reshuffles with its own key.
    - `chunk_size`: steps between records (and between checkpoint checks).
    - `summarize`: ``f(model, X, y) -> dict`` of diagnostics recorded at chunk ends.
    - `diverge_above`: a seed whose ``log L`` exceeds its start by this much has diverged.
    - `stop_stalled`: stop a seed, flagged ``stalled``, at a chunk end where no step can lower
      its loss (``STALL_SHARE``), instead of spending ``num_steps`` on it.

    **Returns:** a ``BatchedRun``. SIGINT/SIGTERM end the run at the next chunk end, with
    ``interrupted`` set.
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
        opt_factory = _Bound(optimizer, tuple(sorted(statics.items())))
    numbers = {
        "target": np.asarray(-np.inf if target_log_loss is None else target_log_loss, dtype),
        "num_steps": np.asarray(num_steps),
        "diverge_above": np.asarray(diverge_above, dtype),
    }
    carry = _init(params, static, X, y, traced, numbers, loss=loss_obj, optimizer=opt_factory)
    run = functools.partial(
        _chunk, loss=loss_obj, optimizer=opt_factory, length=int(min(chunk_size, num_steps)),
        batch_size=batch_size, objective=objective, summarize=summarize or _no_summary,
        stop_stalled=bool(stop_stalled and loss_obj.margin_based),
    )
    targets = list(checkpoints)
    ck_params = [None] * len(targets)
    ck_loss = np.full((len(targets), seeds), np.nan)
    ck_steps = -np.ones((len(targets), seeds), int)
    records, steps = [], []
    interrupted = False
    with _interrupt.handling():  # SIGINT/SIGTERM stop the run at a chunk end
        while True:
            carry, out = run(carry, static, X, y, traced, keys)
            out = jax.tree_util.tree_map(np.asarray, out)  # waits for the chunk
            records.append(out)
            k = _epochs(carry)
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
            if _interrupt.requested():
                interrupted = True
                break
    history = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *records)
    return BatchedRun(
        history=history,
        steps=np.stack(steps),
        final=eqx.combine(carry["params"], static),
        num_steps=_epochs(carry),
        reached=np.asarray(carry["reached"]),
        diverged=np.asarray(carry["diverged"]),
        stalled=np.asarray(carry["stalled"]),
        checkpoints=tuple(None if q is None else eqx.combine(q, static) for q in ck_params),
        checkpoint_log_loss=ck_loss,
        checkpoint_steps=ck_steps,
        interrupted=interrupted,
        undone=np.asarray(carry["undone"]),
    )


def run_flow(
    models: PyTree, X: Array, y: Array, *, per_seed_data: bool = False, **kwargs
) -> FlowResult:
    """``wnjax.gradient_flow`` vmapped over stacked models and per-seed (or shared) data.

    Keyword arguments go to ``gradient_flow`` (pass ``degree=`` explicitly: it cannot be
    measured on traced data). ``throw`` is off; check ``result.ok`` per seed. SIGINT/SIGTERM
    stop every seed's solve within ~0.2 s (``result.interrupted``).
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

    with _interrupt.handling():
        return jax.block_until_ready(go(params, X, y))


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


@eqx.filter_jit
def _sgd_epochs(carry, static, X, y, keys, levels, *, loss, batch_size, length, grow, shrink, cap):
    """``length`` epochs (accepted or undone) of every run, vmapped over seeds.

    One epoch from ``theta_0`` with reference ``L_ref = L(theta_0)`` (full training set) runs
    ``ceil(n / B)`` minibatch steps ``theta <- theta - eta0 grad(L_b/|b|) / (L_ref/n)`` over a
    fresh permutation (the last batch holds the remainder), then judges the full training loss: kept (``eta0 <- min(grow eta0, cap)``,
    ``L_ref <- L``) if it did not rise, else undone (``theta <- theta_0``, ``eta0 <- eta0/shrink``).
    """

    def one(c, X, y, key):
        n = X.shape[0]
        per_epoch, rest = divmod(n, batch_size)

        def log_loss_on(q, Xb, yb):
            return loss.log_loss(apply_batch(eqx.combine(q, static), Xb), yb)

        def epoch(c, _):
            running = ~c["done"]
            perm = jax.random.permutation(jax.random.fold_in(key, c["attempts"]), n)
            batches = perm[: per_epoch * batch_size].reshape(per_epoch, batch_size)

            def sgd_step(q, idx):
                # grad(L_b/B)/(L_ref/n) = exp(log L_b - log L_ref + log(n/B)) grad log L_b
                value, g = jax.value_and_grad(log_loss_on)(q, X[idx], y[idx])
                scale = c["eta0"] * jnp.exp(value - c["log_ref"] + jnp.log(n / idx.shape[0]))
                return jax.tree_util.tree_map(lambda p, gi: p - scale * gi, q, g), None

            q, _ = jax.lax.scan(sgd_step, c["params"], batches)
            if rest:  # the last, smaller batch: every point is visited once per epoch
                q, _ = sgd_step(q, perm[per_epoch * batch_size:])
            full = log_loss_on(q, X, y)
            fine = jnp.isfinite(full) & _all_finite(q) & (full <= c["log_ref"])
            accept, undo = running & fine, running & ~fine
            c = dict(c)
            c["params"] = _where(accept, q, c["params"])
            c["log_ref"] = jnp.where(accept, full, c["log_ref"])
            c["eta0"] = jnp.where(accept, jnp.minimum(c["eta0"] * grow, cap),
                                  jnp.where(undo, c["eta0"] / shrink, c["eta0"]))
            c["epochs"] = c["epochs"] + accept.astype(c["epochs"].dtype)
            c["undone"] = c["undone"] + undo.astype(c["undone"].dtype)
            c["attempts"] = c["attempts"] + running.astype(c["attempts"].dtype)
            new = accept & (c["ck_epochs"] < 0) & (full <= levels)
            c["ck_epochs"] = jnp.where(new, c["epochs"], c["ck_epochs"])
            c["ck_log_loss"] = jnp.where(new, full, c["ck_log_loss"])
            c["ck_params"] = jax.tree_util.tree_map(
                lambda b, p: jnp.where(new.reshape((-1,) + (1,) * p.ndim), p[None], b),
                c["ck_params"], c["params"])
            hit = accept & (full <= c["target"])
            c["reached"] = c["reached"] | hit
            c["stalled"] = c["stalled"] | (running & (c["eta0"] < c["min_eta0"]))
            c["done"] = (c["done"] | hit | c["stalled"] | (c["attempts"] >= c["max_epochs"]))
            return c, {"log_loss": c["log_ref"], "eta0": c["eta0"], "accepted": accept,
                       "running": running}

        return jax.lax.scan(epoch, c, None, length=length)

    return jax.vmap(one)(carry, X, y, keys)


def run_sgd_backtracking(
    models: PyTree,
    X: Array,
    y: Array,
    *,
    learning_rate: float,
    batch_size: int,
    key: PRNGKeyArray,
    max_epochs: int,
    loss: str | Loss = "cross_entropy",
    target_log_loss: float | None = None,
    checkpoints: Sequence[float] = (),
    per_seed_data: bool = False,
    grow: float = 1.1,
    shrink: float = 1.1,
    max_learning_rate: float | None = None,
    min_learning_rate: float = 1e-12,
    epochs_per_chunk: int = 100,
) -> BatchedRun:
    """Minibatch SGD with ``eta = eta0 / L`` and epoch-level backtracking of ``eta0`` (Exp-WN's
    MNIST schedule), on a batch of models, one vmapped program.

    Within an epoch the rate is normalized by the full training loss at the epoch's start, in
    the mean convention of the Exp-WN code (``L`` is a sum over points here, so ``L_b/|b|`` and
    ``L/n`` are the means):

        theta <- theta - eta0 * grad(L_b(theta)/|b|) / (L(theta_0)/n),

    an unbiased estimate of ``-eta0 grad log L(theta_0)`` per step. At the end of the epoch the
    **full training loss** decides: if ``L`` did not rise (and everything is finite) the epoch
    is kept and ``eta0 <- min(grow eta0, max_learning_rate)``; otherwise it is undone and
    ``eta0 <- eta0 / shrink``. Minibatch losses are never compared with each other (different
    batches have different losses, so a rise between them says nothing about the step).

    **Arguments:**
    - `models`: stacked models (``eqx.filter_vmap`` over keys), plain or ``Parameterized``.
    - `X`, `y`: shared data, or per-seed data with ``per_seed_data=True``.
    - `learning_rate`: the initial ``eta0``; `grow`, `shrink`, `max_learning_rate`: the
      backtracking factors (Exp-WN: 1.1, 1.1, no cap) and cap; `min_learning_rate`: a seed
      whose ``eta0`` falls below it has stalled and stops.
    - `batch_size`, `key`: ``ceil(n / batch_size)`` steps per epoch over a fresh permutation per
      attempted epoch (each seed its own key); the last batch holds the remainder, so every
      point is visited once per epoch and, to first order in ``eta0``, an epoch is one full
      GD step on ``log L`` (dropping points would let a dominant point's loss rise whatever
      ``eta0``).
    - `max_epochs`: the budget of attempted epochs (kept or undone) per seed.
    - `target_log_loss`: stop a seed once its full ``log L`` is at or below it.
    - `checkpoints`: ``log L`` levels; the model is kept at the first kept epoch at or below each.
    - `epochs_per_chunk`: epochs per compiled call (the host checks for the end between calls).

    **Returns:** a ``BatchedRun``: ``num_steps`` and ``checkpoint_steps`` count SGD steps of
    kept epochs (``epochs x ceil(n / batch_size)``); ``diverged`` means stalled; ``history`` has
    per-attempt ``log_loss`` (full, at the kept point), ``eta0``, ``accepted`` and ``running``
    of shape ``(attempts, seeds)``, and ``epochs``/``undone`` per seed.
    """
    loss_obj = get_loss(loss)
    params, static = eqx.partition(models, eqx.is_inexact_array)
    seeds = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    if not per_seed_data:
        X, y = _per_seed(X, seeds), _per_seed(y, seeds)
    n = int(X.shape[1])
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must lie in 1..{n} (the training set size), got {batch_size}.")
    dtype = jnp.asarray(X).dtype
    keys = jax.random.split(key, seeds)
    levels = jnp.asarray(list(checkpoints) or [-jnp.inf], dtype)
    log_l0 = eqx.filter_vmap(lambda q, X, y: _log_loss(q, static, X, y, loss_obj))(params, X, y)
    carry = {
        "params": params,
        "log_ref": log_l0,
        "eta0": _per_seed(jnp.asarray(learning_rate, dtype), seeds),
        "epochs": jnp.zeros(seeds, int),
        "undone": jnp.zeros(seeds, int),
        "attempts": jnp.zeros(seeds, int),
        "done": jnp.zeros(seeds, bool),
        "reached": jnp.zeros(seeds, bool),
        "stalled": jnp.zeros(seeds, bool),
        "target": _per_seed(-jnp.inf if target_log_loss is None else target_log_loss, seeds).astype(dtype),
        "max_epochs": _per_seed(max_epochs, seeds),
        "min_eta0": _per_seed(jnp.asarray(min_learning_rate, dtype), seeds),
        "ck_epochs": -jnp.ones((seeds, levels.shape[0]), int),
        "ck_log_loss": jnp.full((seeds, levels.shape[0]), jnp.nan, dtype),
        "ck_params": jax.tree_util.tree_map(
            lambda p: jnp.broadcast_to(p[:, None], (p.shape[0], levels.shape[0]) + p.shape[1:]),
            params),
    }
    run = functools.partial(
        _sgd_epochs, loss=loss_obj, batch_size=int(batch_size),
        length=int(min(epochs_per_chunk, max_epochs)), grow=float(grow), shrink=float(shrink),
        cap=jnp.inf if max_learning_rate is None else float(max_learning_rate),
    )
    records = []
    while True:
        carry, out = run(carry, static, X, y, keys, levels)
        records.append(jax.tree_util.tree_map(np.asarray, out))
        if bool(np.all(np.asarray(carry["done"]))):
            break
    last = int(np.max(np.asarray(carry["attempts"])))  # drop the padding of the last chunk
    history = {k: np.concatenate([r[k] for r in records], axis=1).T[:last] for k in records[0]}
    per_epoch = -(-n // batch_size)
    epochs = np.asarray(carry["epochs"])
    history["epochs"], history["undone"] = epochs, np.asarray(carry["undone"])
    ck_epochs = np.asarray(carry["ck_epochs"]).T[: len(checkpoints)]
    ck_params = []
    for j in range(len(checkpoints)):
        if np.any(ck_epochs[j] >= 0):
            ck_params.append(eqx.combine(
                jax.tree_util.tree_map(lambda b: b[:, j], carry["ck_params"]), static))
        else:
            ck_params.append(None)
    return BatchedRun(
        history=history,
        steps=np.cumsum(history["accepted"], axis=0) * per_epoch,
        final=eqx.combine(carry["params"], static),
        num_steps=epochs * per_epoch,
        reached=np.asarray(carry["reached"]),
        diverged=np.asarray(carry["stalled"]),
        stalled=np.asarray(carry["stalled"]),
        checkpoints=tuple(ck_params),
        checkpoint_log_loss=np.asarray(carry["ck_log_loss"]).T[: len(checkpoints)],
        checkpoint_steps=np.where(ck_epochs >= 0, ck_epochs * per_epoch, -1),
        undone=history["undone"],
    )


class FlowCheckpoints(eqx.Module):
    """Outcome of ``run_flow_checkpoints``; arrays are ``(n_levels, seeds)`` unless noted.

    - `checkpoints`: per level, the stacked models where the flow crossed it (``None`` if no
      seed got there); `log_loss`: ``log L`` there (``nan`` where a seed failed);
    - `s`, `log_t`: normalized time ``s`` and ``log t`` (plain time) at each level;
    - `num_steps`: cumulative solver steps (accepted and rejected) to each level;
    - `ok`: the seed's solve reached this level (and every earlier one).
    """

    checkpoints: tuple
    log_loss: np.ndarray
    s: np.ndarray
    log_t: np.ndarray
    num_steps: np.ndarray
    ok: np.ndarray


def run_flow_checkpoints(
    models: PyTree,
    X: Array,
    y: Array,
    *,
    levels: Sequence[float],
    per_seed_data: bool = False,
    t1: float = 1e8,
    **kwargs,
) -> FlowCheckpoints:
    """Loss-normalized gradient flow ``d theta/ds = -grad log L`` through decreasing ``log L``
    levels, vmapped over seeds, keeping the model where the flow crosses each level.

    The flow is autonomous, so the path from level ``j`` to level ``j + 1`` is one
    ``wnjax.gradient_flow(..., time='normalized', target_log_loss=level_{j+1})`` solve started
    at the state of level ``j`` (with ``t0`` the plain time reached there, so ``log t``
    accumulates); each stop is root-found, so ``log L = level`` to about ``1e-9 (1 + |level|)``.
    The target is traced: all levels share one compiled program.

    **Arguments:**
    - `models`, `X`, `y`, `per_seed_data`: as for ``run_gd``.
    - `levels`: decreasing ``log L`` values.
    - `t1`: the bound on ``s`` of each segment.
    - `kwargs`: more ``gradient_flow`` options (``loss``, ``rtol``, ``atol``, ``max_steps``,
      ``degree``, ...); ``n_save=2``, ``save_states=False``, ``diagnostics=False`` and
      ``throw=False`` are set here.

    **Returns:** a ``FlowCheckpoints``.
    """
    params, static = eqx.partition(models, eqx.is_inexact_array)
    seeds = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    if not per_seed_data:
        X, y = _per_seed(X, seeds), _per_seed(y, seeds)
    levels = [float(v) for v in levels]
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels must decrease, got {levels}.")
    options = dict(kwargs, time="normalized", n_save=2, save_states=False, diagnostics=False,
                   throw=False, t1=t1)
    # Only the end of each segment is read, never the margins of its summaries, so the degree
    # (which a model with a hidden bias does not have) needs no measuring.
    options.setdefault("degree", 1.0)

    @eqx.filter_jit
    def segment(params, X, y, target, t0):
        def one(q, X, y, t0):
            r = gradient_flow(eqx.combine(q, static), X, y, target_log_loss=target, t0=t0, **options)
            final = eqx.filter(r.final, eqx.is_inexact_array)
            return (final, r.final_log_loss, r.final_time, r.final_log_t, r.stats["num_steps"],
                    r.ok & r.reached_target)

        return jax.vmap(one)(params, X, y, t0)

    dtype = jnp.asarray(X).dtype
    t0 = jnp.zeros(seeds, dtype)
    ok = np.ones(seeds, bool)
    steps = np.zeros(seeds, int)
    s_total = np.zeros(seeds)
    ck, log_loss, s_at, log_t, n_steps, oks = [], [], [], [], [], []
    for level in levels:
        final, ll, s, lt, k, good = segment(params, X, y, jnp.asarray(level, dtype), t0)
        ok = ok & np.asarray(good)
        steps = steps + np.asarray(k)
        s_total = s_total + np.asarray(s)
        params = final
        t0 = jnp.exp(lt)  # tau = log(1 + t) restarts from here
        ck.append(eqx.combine(final, static) if ok.any() else None)
        log_loss.append(np.where(ok, np.asarray(ll), np.nan))
        s_at.append(np.where(ok, s_total, np.nan))
        log_t.append(np.where(ok, np.asarray(lt), np.nan))
        n_steps.append(np.where(ok, steps, -1))
        oks.append(ok.copy())
    return FlowCheckpoints(checkpoints=tuple(ck), log_loss=np.stack(log_loss), s=np.stack(s_at),
                           log_t=np.stack(log_t), num_steps=np.stack(n_steps), ok=np.stack(oks))
