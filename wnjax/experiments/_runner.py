"""Seeds in one compiled program: the experiments' GD, SGD and gradient-flow runners.

``run_gd`` and ``run_sgd_backtracking`` are the GD engine (``wnjax._dynamics.descent``) over
seeds (``wnjax._dynamics.seeds.run_seeds``): per-seed data, minibatches, log-loss checkpoints,
the stall stop, and a record every ``chunk_size`` steps. ``run_flow`` and
``run_flow_checkpoints`` vmap ``wnjax.gradient_flow`` over seeds.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

import wnjax._runtime.cores as _cores
import wnjax._runtime.interrupt as _interrupt
import wnjax._runtime.maps as _maps
from wnjax._dynamics.descent import STOP_DIVERGED, STOP_STALLED, STOP_TARGET
from wnjax._dynamics.rules import DescentRule, EpochBacktracking
from wnjax._dynamics.seeds import run_seeds
from wnjax._losses import Loss, get_loss
from wnjax.experiments._finished import Finished

if TYPE_CHECKING:
    from wnjax._dynamics.flow import FlowResult

# The flows (and diffrax behind them) are imported where they are used: a GD run does not
# import them.


class _Bound(eqx.Module):
    """An optimizer factory with its static (non-number) arguments bound; equal instances hash
    equal, so repeated runs reuse the compiled chunk (a ``functools.partial`` would not)."""

    factory: Callable = eqx.field(static=True)
    statics: tuple = eqx.field(static=True)

    def __call__(self, **hyperparams):
        return self.factory(**dict(self.statics), **hyperparams)


class BatchedRun(eqx.Module):
    """Outcome of ``run_gd`` and ``run_sgd_backtracking``; a leading axis over seeds everywhere
    but ``history``'s and ``steps``'.

    - `history`: dict of arrays ``(n_records, seeds, ...)``: full-data ``log_loss`` and the
      ``summarize`` outputs every ``chunk_size`` attempts and where a seed stopped (a stopped
      seed repeats its last record); `steps`: ``(n_records, seeds)`` accepted steps then;
    - `final`: the stacked final models; `num_steps`, `reached`, `diverged`, `stalled`: per seed
      (``stalled``: stopped at a point no step can improve, see ``wnjax._dynamics.stall``);
    - steps are accepted steps (epochs); `undone`: per seed, the steps that backtracking undid
      (not in `num_steps`: an undone step and its undo are two optimizer updates, no epoch);
    - `checkpoints`: per checkpoint level, the stacked models the first time the full-data
      ``log L`` was at or below it (``None`` entries for levels no seed reached; a seed that did
      not keeps its initial model), with `checkpoint_log_loss` and `checkpoint_steps`
      (``nan``/``-1`` where a seed never got there);
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


def _num_seeds(models) -> int:
    return int(jax.tree_util.tree_leaves(eqx.filter(models, eqx.is_inexact_array))[0].shape[0])


def _per_seed(x, seeds: int):
    x = jnp.asarray(x)
    return jnp.broadcast_to(x, (seeds,) + x.shape)


def stacked(make: Callable, *args) -> PyTree:
    """``make`` vmapped over the leading axis of ``args`` (keys, ...), as one compiled program:
    run eagerly, each array operation of a model's constructor and parameterization would be a
    program of its own, each traced, lowered and loaded from the compilation cache.

    **Returns:** the stacked models (array leaves with a leading seed axis)."""
    return eqx.filter_jit(eqx.filter_vmap(make))(*args)


def _kept(finished: Finished | None, names) -> dict:
    """``name -> result`` of the runs ``finished`` holds."""
    if finished is None:
        return {}
    out = {}
    for name in names:
        ok, result = finished.get(name)
        if ok:
            out[name] = result
    return out


def in_parallel(
    calls: Mapping[Any, Callable[[], Any]],
    *,
    shares: Mapping[Any, Any] | None = None,
    workers: int | None = None,
    on_done: Callable[[dict], Any] | None = None,
    finished: Finished | None = None,
) -> dict:
    """``{name: call()}`` over ``calls``, run by ``workers`` threads at once. A CPU program runs
    in the thread that calls it with the GIL released, so independent runs (the points of a
    parameter sweep) use every core. Tracing holds the GIL, and calls that share programs should
    trace them once: the calls of one ``shares`` group start once its first call has returned.
    The threads take each group's first call (a call without a group is a group of its own) in
    the order of ``calls``, then the others in that order; put the longest first. Each run is one
    deterministic program, so the numbers do not depend on the worker count.

    SIGINT/SIGTERM are recorded for the duration (``_interrupt.handling``): the running calls
    see the request as they would alone (their runs stop at their next check), and the calls
    not yet started are skipped, left out of the result. An exception in one call requests that
    stop of the others and is raised once they have returned.

    **Arguments:**
    - `calls`: ``name -> call``, each taking no arguments.
    - `shares`: ``name -> group``: calls of one group share their compiled programs (same
      shapes and settings, other numbers).
    - `workers`: threads (default: ``usable_cores()``, at most the number of calls).
    - `on_done`: ``on_done(out)``, called in the calling thread each time a call returns, with
      the results so far (in the order of ``calls``): write what has finished.
    - `finished`: where a call that returns before any stop request is kept, and taken from
      instead of running again (``wnjax.experiments._finished``: a rerun after an interruption).

    **Returns:** ``name -> result`` of the calls that ran, in the order of ``calls``.
    """
    names = list(calls)
    kept = _kept(finished, names)
    if workers is None:
        workers = _cores.usable_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}.")
    shares = dict(shares or {})
    group = {name: shares.get(name, ("alone", k)) for k, name in enumerate(names)}
    first = {}
    for name in names:
        first.setdefault(group[name], name)
    leaders = [name for name in names if first[group[name]] == name]
    queue = leaders + [name for name in names if first[group[name]] != name]
    traced = {g: threading.Event() for g in first}

    skipped = object()

    def run(name):
        if first[group[name]] != name:
            traced[group[name]].wait()  # its first call is running or done: it came earlier
        try:
            if name in kept:
                return kept[name], False
            if _interrupt.requested():
                return skipped
            result = calls[name]()
            # kept for a rerun only if no stop was requested before it returned
            return result, finished is not None and not _interrupt.requested()
        finally:
            if first[group[name]] == name:
                traced[group[name]].set()

    results = {}
    with _interrupt.handling():
        with ThreadPoolExecutor(max(1, min(workers, len(names))), "wnjax-point") as pool:
            futures = {pool.submit(run, name): name for name in queue}
            try:
                for future in as_completed(futures):
                    if future.result() is skipped:
                        continue
                    result, keep = future.result()
                    results[futures[future]] = result
                    if keep:
                        finished.put(futures[future], result)
                    if on_done is not None:
                        on_done({k: results[k] for k in names if k in results})
            except BaseException:
                _interrupt.request()
                for future in futures:
                    future.cancel()
                raise
    return {k: results[k] for k in names if k in results}


def concurrently(
    fn: Callable,
    items: Mapping,
    *,
    on_done: Callable | None = None,
    meanwhile: Callable[[], Any] | None = None,
    finished: Finished | None = None,
) -> dict:
    """``{name: fn(item, turn)}`` over ``items``, each call in a thread of its own. The calls
    compile one after another (tracing holds the GIL): a call starts once the one before it has
    compiled, and ``turn()``, called once its own program is compiled, lets it run at once. So
    the runs overlap each other and the compilation of the ones after them (a CPU program runs
    in the thread that calls it, with the GIL released; a compilation-cache hit still traces and
    lowers, a kept program (``run_gd(..., program_key=...)``) is only loaded). Each run is one
    deterministic program, so its numbers do not depend on what runs beside it; a flow checks
    for stop requests on its own clock.

    SIGINT/SIGTERM are recorded for the duration (``_interrupt.handling``): the running calls
    stop at their next chunk, and ``turn()`` returns ``False`` to the ones not yet running,
    which then return ``None`` without running. An exception in one call requests that stop
    of the others and is raised once they have returned.

    **Arguments:**
    - `fn`: ``fn(item, turn) -> result``, or ``None`` when interrupted (then left out). It
      calls ``turn()`` before its first run (``run_gd(..., turn=turn)`` does).
    - `items`: ``name -> item``; the result keeps their order.
    - `on_done`: ``on_done(out)``, called each time a call finishes, with the results so far
      (in the order of ``items``).
    - `meanwhile`: ``meanwhile()``, called in a thread of its own once every call has compiled
      (or stopped), while the runs go on: host work the caller needs afterwards, such as
      importing a plotting library, kept off the compilations' way. Its result and errors are
      ignored; it is waited for before returning.
    - `finished`: as for ``in_parallel``.

    **Returns:** ``name -> result`` of the calls that finished.
    """
    names = list(items)
    kept = _kept(finished, names)
    compiled = [threading.Event() for _ in names]

    def wait(event) -> bool:
        while not event.wait(0.05):
            if _interrupt.requested():
                return False
        return not _interrupt.requested()

    def turn_of(k):
        def turn() -> bool:
            compiled[k].set()
            return not _interrupt.requested()

        return turn

    def call(k):
        # One compilation at a time: each starts once the one before it has compiled.
        try:
            if names[k] in kept:
                return kept[names[k]], False
            if k > 0 and not wait(compiled[k - 1]):
                return None, False
            result = fn(items[names[k]], turn_of(k))
            # kept for a rerun only if no stop was requested before it returned
            return result, finished is not None and not _interrupt.requested()
        finally:
            compiled[k].set()

    def after_compiling():
        for event in compiled:
            event.wait()
        with contextlib.suppress(Exception):
            meanwhile()

    results = {}
    with _interrupt.handling():
        pool = ThreadPoolExecutor(max(1, len(names) + 1), thread_name_prefix="wnjax-run")
        try:
            futures = {pool.submit(call, k): name for k, name in enumerate(names)}
            if meanwhile is not None:
                pool.submit(after_compiling)
            for future in as_completed(futures):
                result, keep = future.result()
                if result is not None:
                    results[futures[future]] = result
                    if keep:
                        finished.put(futures[future], result)
                    if on_done is not None:
                        on_done({k: results[k] for k in names if k in results})
        except BaseException:
            _interrupt.request()
            raise
        finally:
            pool.shutdown(wait=True)
    return {k: results[k] for k in names if k in results}


def refuse_met_target(log_loss0, target: float | None) -> None:
    """Raise ``InvalidInput`` when any seed's initial ``log L`` (``log_loss0``, one per seed) is
    already at or below ``target``: that seed would take no step, and an experiment would
    judge its untrained net."""
    if target is None or not np.isfinite(target):
        return
    start = np.ravel(np.asarray(log_loss0, float))
    met = np.flatnonzero(start <= target)
    if met.size:
        from wnjax._runtime.errors import InvalidInput

        shown = ", ".join(map(str, met[:8])) + (", ..." if met.size > 8 else "")
        raise InvalidInput(
            f"the target log L = {target:g} is met at the start by {met.size} of {start.size} "
            f"seed(s) ({shown}; log L(0) = {start[met[0]]:.6g}): they would take no step, and "
            f"the experiment would judge untrained nets. Choose a target below "
            f"{np.min(start):.6g}, the lowest initial log L."
        )


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
    turn: Callable[[], bool] | None = None,
    program_key: tuple | None = None,
) -> BatchedRun:
    """GD or minibatch SGD on a batch of models with per-seed data, one vmapped program (over
    blocks of seeds: ``run_seeds``).

    Each seed follows ``theta <- theta + optimizer.update(g, ...)``, ``g = grad L`` (or
    ``grad log L`` for ``objective='log_loss'``), as in ``wnjax.gradient_descent``; a seed stops
    at ``target_log_loss`` (full batch: checked every step; minibatch: every ``chunk_size``
    attempts), on divergence (a step into a non-finite loss, or one above the divergence level,
    is not taken) or after ``num_steps``, and stays frozen while the others go on.

    **Arguments:**
    - `models`: stacked models (``eqx.filter_vmap`` over keys), plain or ``Parameterized``.
    - `X`, `y`: shared data ``(n, ...)``, or per-seed data ``(seeds, n, ...)`` with
      ``per_seed_data=True``.
    - `num_steps`: the budget of attempted steps per seed (accepted and undone).
    - `learning_rate`, `optimizer`, `hyperparams`, `loss`, `objective`: as for
      ``wnjax.gradient_descent``.
    - `target_log_loss`: stop a seed once it reaches it.
    - `checkpoints`: full-data ``log L`` levels at which to keep the model (full batch: the
      first step at or below each; minibatch: every ``chunk_size`` attempts).
    - `batch_size`, `key`: minibatch SGD; each seed reshuffles with its own key.
    - `chunk_size`: attempts between records (and between the full-data checks).
    - `summarize`: ``f(model, X, y) -> dict`` of diagnostics recorded with each record.
    - `diverge_above`: a seed whose ``log L`` exceeds its start by this much has diverged.
    - `stop_stalled`: stop a seed, flagged ``stalled``, at a record where no step can lower
      its loss (``wnjax._dynamics.stall``), instead of spending ``num_steps`` on it.
    - `turn`: called once the program is compiled, before it runs (``concurrently``); ``False``
      skips the run, reported ``interrupted``.
    - `program_key`: names the run's settings that its arrays do not show (the optimizer, the
      loss, ``summarize``): the traced programs are kept on disk and a later run with the
      same key loads them without tracing (``wnjax._runtime.programs``). ``None``: not kept.

    **Returns:** a ``BatchedRun``. SIGINT/SIGTERM end the run at the next chunk end, with
    ``interrupted`` set. A ``target_log_loss`` that a seed meets at its start raises
    ``InvalidInput`` before any step (``refuse_met_target``).
    """
    seeds = _num_seeds(models)
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
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        else v
        for k, v in hp.items()
    }
    statics = {k: v for k, v in hp.items() if not isinstance(v, jax.Array)}
    traced = {k: v for k, v in hp.items() if isinstance(v, jax.Array)}
    opt_factory = optimizer
    if statics and not isinstance(optimizer, optax.GradientTransformation):
        opt_factory = _Bound(optimizer, tuple(sorted(statics.items())))
    loss_obj = get_loss(loss)
    every = int(min(chunk_size, num_steps))
    run, interrupted = run_seeds(
        models,
        X,
        y,
        rule=DescentRule(loss_obj, opt_factory, batch_size, objective),
        hyperparams=traced,
        keys=keys,
        num_steps=num_steps,
        loss=loss_obj,
        target_log_loss=target_log_loss,
        diverge_above=diverge_above,
        checkpoints=checkpoints,
        save_at=every * np.arange(1, -(-num_steps // every) + 1),
        chunk_size=every,
        summarize=summarize,
        stop_stalled=stop_stalled,
        turn=turn,
        program_key=program_key,
        check_start=lambda log_l0: refuse_met_target(log_l0, target_log_loss),
    )
    c = run.carry
    history, steps, _ = run.padded()
    stop = np.asarray(c["stop"])
    return BatchedRun(
        history=history,
        steps=steps,
        final=run.models(c["params"]),
        num_steps=np.asarray(c["accepted"]),
        reached=stop == STOP_TARGET,
        diverged=stop == STOP_DIVERGED,
        stalled=stop == STOP_STALLED,
        checkpoints=run.checkpoint_models(),
        checkpoint_log_loss=np.asarray(c["ck_value"]).T,
        checkpoint_steps=np.asarray(c["ck_steps"]).T,
        interrupted=interrupted,
        undone=np.asarray(c["undone"]),
    )


def run_flow(
    models: PyTree, X: Array, y: Array, *, per_seed_data: bool = False, **kwargs
) -> FlowResult:
    """``wnjax.gradient_flow`` vmapped over stacked models and per-seed (or shared) data.

    Keyword arguments go to ``gradient_flow`` (pass ``degree=`` explicitly: it cannot be
    measured on traced data). ``throw`` is off; check ``result.ok`` per seed. SIGINT/SIGTERM
    stop every seed's solve within ~0.2 s (``result.interrupted``). A ``target_log_loss`` that
    a seed meets at its start raises ``InvalidInput`` (``refuse_met_target``).
    """
    from wnjax._dynamics.flow import gradient_flow

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

    _maps.relieve()
    with _interrupt.handling():
        r = jax.block_until_ready(go(params, X, y))
    refuse_met_target(np.asarray(r.log_loss)[:, 0], kwargs.get("target_log_loss"))
    return r


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

    Each attempted epoch is one update of the GD engine (``wnjax._dynamics.rules
    .EpochBacktracking``), which also keeps the checkpoints and stops the seeds.

    **Returns:** a ``BatchedRun``: ``num_steps`` and ``checkpoint_steps`` count SGD steps of
    kept epochs (``epochs x ceil(n / batch_size)``); ``diverged`` means stalled; ``history`` has
    per-attempt ``log_loss`` (full, at the kept point), ``eta0``, ``accepted`` and ``running``
    of shape ``(attempts, seeds)``, and ``epochs``/``undone`` per seed. SIGINT/SIGTERM end the
    run at the next chunk end, with ``interrupted`` set.
    """
    seeds = _num_seeds(models)
    if not per_seed_data:
        X, y = _per_seed(X, seeds), _per_seed(y, seeds)
    n = int(X.shape[1])
    if not 0 < batch_size <= n:
        raise ValueError(
            f"batch_size must lie in 1..{n} (the training set size), got {batch_size}."
        )
    loss_obj = get_loss(loss)
    rule = EpochBacktracking(
        loss_obj,
        int(batch_size),
        float(grow),
        float(shrink),
        float(np.inf if max_learning_rate is None else max_learning_rate),
        float(min_learning_rate),
    )
    dtype = jnp.asarray(X).dtype
    run, interrupted = run_seeds(
        models,
        X,
        y,
        rule=rule,
        hyperparams={"learning_rate": _per_seed(jnp.asarray(learning_rate, dtype), seeds)},
        keys=jax.random.split(key, seeds),
        num_steps=max_epochs,
        loss=loss_obj,
        target_log_loss=target_log_loss,
        checkpoints=checkpoints,
        save_at=np.arange(1, max_epochs + 1),
        chunk_size=int(min(epochs_per_chunk, max_epochs)),
        auto_chunks=False,
        check_start=lambda log_l0: refuse_met_target(log_l0, target_log_loss),
    )
    c = run.carry
    records, accepted, counts = run.padded()  # one record per attempt
    running = np.arange(accepted.shape[0])[:, None] < counts[None, :]
    kept = np.diff(accepted, axis=0, prepend=0) > 0
    history = {
        "log_loss": records["log_ref"],
        "eta0": records["eta0"],
        "accepted": kept,
        "running": running,
    }
    per_epoch = -(-n // batch_size)
    epochs = np.asarray(c["accepted"])
    history["epochs"], history["undone"] = epochs, np.asarray(c["undone"])
    ck_steps = np.asarray(c["ck_steps"]).T
    stalled = np.asarray(c["stop"]) == STOP_DIVERGED  # eta0 fell below min_learning_rate
    return BatchedRun(
        history=history,
        steps=np.cumsum(kept, axis=0) * per_epoch,
        final=run.models(c["params"]),
        num_steps=epochs * per_epoch,
        reached=np.asarray(c["stop"]) == STOP_TARGET,
        diverged=stalled,
        stalled=stalled,
        checkpoints=run.checkpoint_models(),
        checkpoint_log_loss=np.asarray(c["ck_value"]).T,
        checkpoint_steps=np.where(ck_steps >= 0, ck_steps * per_epoch, -1),
        interrupted=interrupted,
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
    from wnjax._dynamics.flow import gradient_flow

    options = dict(
        kwargs,
        time="normalized",
        n_save=2,
        save_states=False,
        diagnostics=False,
        throw=False,
        t1=t1,
    )
    # Only the end of each segment is read, never the margins of its summaries, so the degree
    # (which a model with a hidden bias does not have) needs no measuring.
    options.setdefault("degree", 1.0)

    @eqx.filter_jit
    def segment(params, X, y, target, t0):
        def one(q, X, y, t0):
            r = gradient_flow(
                eqx.combine(q, static), X, y, target_log_loss=target, t0=t0, **options
            )
            final = eqx.filter(r.final, eqx.is_inexact_array)
            return (
                final,
                r.final_log_loss,
                r.final_time,
                r.final_log_t,
                r.stats["num_steps"],
                r.ok & r.reached_target,
            )

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
    return FlowCheckpoints(
        checkpoints=tuple(ck),
        log_loss=np.stack(log_loss),
        s=np.stack(s_at),
        log_t=np.stack(log_t),
        num_steps=np.stack(n_steps),
        ok=np.stack(oks),
    )
