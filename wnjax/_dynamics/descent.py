"""The GD engine: gradient descent and SGD in compiled chunks, for one run or vmapped seeds.

One *update* is a rule's (``wnjax._dynamics.rules``): by default ``DescentRule``, which computes
``log L`` and ``grad log L`` on the (mini)batch, forms the gradient that the optimizer sees
(``grad L = L grad log L`` for ``objective='loss'``, ``grad log L`` for ``'log_loss'``) and
calls ``optimizer.update(g, state, params, value=L, log_value=log L)``. ``_run_chunk`` advances
a run by a chunk of attempts in one compiled call. It

- stops at the target log loss, at divergence, at the step budget, or (``stop_stalled``) when
  the loss is carried by dead points (``wnjax._dynamics.stall``);
- saves ``log L`` and summaries at save points (log-spaced, or given), with a hook
  ``summarize(model, X, y) -> dict`` whose outputs are saved alongside;
- keeps the state the first time ``log L`` (or a monitored quantity) is at or below each of a
  list of checkpoint levels;
- runs under ``jax.vmap``, one lane per seed, each lane stopping on its own.

Three drivers share it: ``gradient_descent`` (a Python loop over chunks: callback, Ctrl-C),
``traced_gradient_descent`` (a ``lax.while_loop``: jit/vmap) and ``run_seeds`` (vmapped seeds
with per-seed data and hyperparameters, a Python loop over chunks).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

import wnjax._runtime.interrupt as _interrupt
import wnjax._runtime.maps as _maps
from wnjax._analysis.diagnostics import summaries
from wnjax._dynamics.outcome import RunFailed, RunResult
from wnjax._dynamics.rules import (  # noqa: F401  (re-exported)
    DescentRule,
    batch_indices,
    build_optimizer,
    descent_update,
    may_undo,
    undone,
)
from wnjax._dynamics.stall import stalled
from wnjax._losses import Loss, get_loss
from wnjax._nets.dense import apply_batch
from wnjax._nets.parameterize import Parameterized, as_parameterized, restore_type
from wnjax._runtime.errors import InvalidInput
from wnjax._runtime.precision import in_float32
from wnjax._runtime.tree import all_finite, as_number, packed_while_loop, tree_where
from wnjax._runtime.validate import (
    check_conflicts,
    check_data,
    check_key,
    check_options,
    check_outputs,
    in_common_dtype,
    warn_target_met_at_start,
)

STOP_RUNNING, STOP_TARGET, STOP_MAX_STEPS, STOP_DIVERGED, STOP_STALLED = 0, 1, 2, 3, 4


class GDFailed(RunFailed):
    """A GD run diverged; ``.result`` holds everything computed before it did."""


class GDResult(RunResult):
    """The outcome of a GD run; all fields are arrays (or pytrees of arrays).

    - `steps`: the accepted steps at each save point;
    - `log_loss`: full-data ``log L`` at the save points;
    - `summaries`: diagnostics at the save points (see ``wnjax.summaries``), with ``log_loss``
      and the outputs of ``summarize``;
    - `states`: the model at each save point, or ``None``;
    - `final`, `final_log_loss`: the last model (same type as the input) and its ``log L``; a
      diverged run keeps its last state whose loss is finite and below the divergence level;
    - `num_steps`: accepted steps (steps taken, less those that backtracking undid);
    - `num_undone`: steps undone by a backtracking optimizer (``0`` without one);
    - `stop_code`: ``1`` target reached, ``2`` step budget spent, ``3`` diverged, ``4`` stalled
      (``stop_stalled``), ``0`` interrupted;
    - `reached_target`: ``stop_code == 1``;
    - `opt_state`: the optimizer state at the end;
    - `checkpoints`: per checkpoint level (stacked), the model the first time ``log L`` was at or
      below it (the initial model where never), or ``None`` without levels;
    - `checkpoint_steps`, `checkpoint_log_loss`: per level, the accepted steps and ``log L`` there
      (``-1`` and NaN where never reached).

    Properties: `ok` (target reached, budget spent or stalled), `interrupted`
    (``stop_code == 0``), `message`, `stall`; ``check()`` raises ``GDFailed`` unless ``ok``.

    ``gradient_descent`` trims the save arrays to the points saved, so every entry is a value.
    ``traced_gradient_descent`` (fixed shapes, under ``vmap``) pads them: ``steps == -1`` marks
    padding, whose values are NaN; select ``steps >= 0`` before reading them.
    """

    failure: ClassVar[type] = GDFailed

    steps: Array
    log_loss: Array
    summaries: dict
    states: Any
    final: Any
    final_log_loss: Array
    num_steps: Array
    num_undone: Array
    stop_code: Array
    reached_target: Array
    opt_state: Any
    checkpoints: Any
    checkpoint_steps: Array
    checkpoint_log_loss: Array

    @property
    def ok(self) -> Array:
        code = self.stop_code
        return (code == STOP_TARGET) | (code == STOP_MAX_STEPS) | (code == STOP_STALLED)

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
        n_undone = int(np.asarray(self.num_undone))
        return {
            STOP_RUNNING: f"GD was interrupted after {k} steps (log L = {v:.6g}); the partial "
            "result is kept." + _interrupt.stop_note(),
            STOP_TARGET: f"GD reached the target log loss in {k} steps (log L = {v:.6g}).",
            STOP_MAX_STEPS: (
                f"GD ran its num_steps = {k} steps (log L = {v:.6g}).{self.stall}"
                if not n_undone
                else f"GD spent its num_steps = {k + n_undone} attempted steps, {k} accepted and "
                f"{n_undone} undone by backtracking (log L = {v:.6g}).{self.stall}"
            ),
            STOP_DIVERGED: f"GD diverged after {k} steps: the loss became non-finite or rose far "
            f"above its start (log L = {v:.6g} at the kept state). Lower the learning rate; the "
            "result keeps the last finite state.",
            STOP_STALLED: f"GD stalled after {k} steps (log L = {v:.6g}): the loss is carried by "
            "dead points (zero margin and zero margin gradient), which no step moves.",
        }[int(code)]

    @property
    def stall(self) -> str:
        """A sentence when ``log L`` ended above the lowest value saved (by over 1e-3 of
        ``1 + |log L|``: the steps overshot), else when it stopped decreasing over the last half
        of the run (fell by less than 1e-3 of its fall before), else ``''``."""
        steps, log_l = np.asarray(self.steps), np.asarray(self.log_loss)
        if steps.ndim != 1 or log_l.ndim != 1:
            return ""
        keep = steps >= 0
        steps, log_l = steps[keep], log_l[keep]
        if steps.size < 3 or not np.all(np.isfinite(log_l)):
            return ""
        low = int(np.argmin(log_l))
        if log_l[-1] - log_l[low] > 1e-3 * (1.0 + abs(log_l[low])):
            return (
                f" log L fell to {log_l[low]:.6g} (step {int(steps[low])}) and then rose, to "
                f"{log_l[-1]:.6g} at the end: the steps were too large for the net there (and a "
                "step that turns a unit off on every point leaves it off: "
                "wnjax.margins(result.final, X, y) is 0 on the points that no unit reaches). "
                "Lower learning_rate (under EWN a neuron's effective rate grows like "
                "||w_u||^2), or use a schedule that backs off when log L rises."
            )
        mid = int(np.flatnonzero(steps <= steps[-1] // 2)[-1])
        before, after = log_l[0] - log_l[mid], log_l[mid] - log_l[-1]
        if mid == 0 or after > 1e-3 * max(before, 0.0) + 1e-9 * (1.0 + abs(log_l[-1])):
            return ""
        return (
            f" The loss stopped decreasing: log L fell by {after:.3g} over the last half of "
            f"the steps (by {before:.3g} before). Is the data separable? Non-separable data, an "
            "all-zero row of X, or a dead point (one on which every unit of the net is off, so "
            "its output and its gradient stay 0: wnjax.margins(result.final, X, y) is 0 there) "
            "keeps L above a positive floor."
        )


def save_steps(num_steps: int, n_save: int) -> np.ndarray:
    """``n_save`` step indices: 0, then log-spaced up to ``num_steps`` (padded with ``-1``)."""
    steps = np.unique(np.round(np.geomspace(1, max(num_steps, 1), max(n_save - 1, 1))).astype(int))
    steps = np.concatenate([[0], steps])[:n_save]
    return np.concatenate([steps, -np.ones(n_save - steps.size, int)])


def _model(params, static, plain_out: bool):
    """The model of ``params``, plain when the caller's model was plain."""
    p = eqx.combine(params, static)
    return p.standard() if plain_out else p


@eqx.filter_jit
def _record_values(
    params,
    opt_state,
    static,
    X,
    y,
    degree,
    *,
    rule,
    loss,
    save_states,
    diagnostics,
    standard,
    summarize,
    plain_out,
) -> dict:
    """What a save point holds: ``wnjax.summaries`` (``standard``) or just ``log_loss``, the
    ``summarize`` hook's outputs, the rule's record of its state, and the state
    (``save_states``)."""
    if standard:
        out = summaries(eqx.combine(params, static), X, y, loss, degree, diagnostics)
    else:
        out = {"log_loss": loss.log_loss(apply_batch(eqx.combine(params, static), X), y)}
    if summarize is not None:
        out.update(summarize(_model(params, static, plain_out), X, y))
    out.update(rule.record(opt_state))
    if save_states:
        out["state"] = params
    return out


@eqx.filter_jit
def _rule_update(rule, params, opt_state, k, static, X, y, key, hyperparams):
    """``rule.update`` under its own jit: a chunk calls it from several loops (the fast blocks,
    the exact path), and each call after the first reuses the first one's trace."""
    return rule.update(params, opt_state, k, static, X, y, key, hyperparams)


# Steps per block of the fast path (see ``_run_chunk``): a block that has to be redone with the
# per-step stopping rules costs at most this many extra steps.
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
    rule,
    loss: Loss,
    save_states: bool,
    diagnostics: bool = True,
    standard: bool = True,
    summarize: Callable | None = None,
    monitor: Callable | None = None,
    stop_stalled: bool = False,
    plain_out: bool = False,
    seeds_axis: str | None = None,
) -> dict:
    """Advance by up to ``chunk_size`` attempts, recording at every save point on the way.

    *Attempts* are accepted steps plus undone trials (``rules``); save points and the budget
    ``num_steps`` count them. The attempts between two save points (a *segment*) run in blocks
    of ``FAST_BLOCK`` plain updates when the rule is ``guarded``: no stop logic per update,
    only a running flag of whether some update would have stopped the run (target reached,
    loss non-finite or above ``diverge_above``) or crossed a checkpoint level and, at the end
    of the block, whether the parameters are still finite and their loss still good. A clean
    block is kept; a flagged block is discarded and its updates rerun one by one with the
    stopping rules (the *exact path*), so the run stops, and checkpoints are taken, at exactly
    the update a step-by-step loop would; then the fast path resumes. The last update of the
    run goes the exact path, as does every update of an unguarded rule.

    At each segment's end, on the full data: the target (when updates see minibatches), the
    checkpoint levels, and the stall rule (``stop_stalled``). The summaries are evaluated once
    per save point, never per update, also under ``vmap``. A stopped run records its final
    state once.

    **Arguments:**
    - `carry`: the loop state (``_init_carry``): ``params``, ``opt_state``, ``k`` (updates
      taken), ``accepted``, ``undone``, ``stop``, the save buffers (``saved``,
      ``saved_steps``, ``save_idx``, ``last_saved``), ``last_log_loss``, ``final_log_loss``
      and the checkpoint buffers (``ck_params``, ``ck_steps``, ``ck_value``).
    - `static`, `X`, `y`, `key`: the model's non-array part, the data, the minibatch key.
    - `numbers`: traced numbers: ``target``, ``num_steps``, ``diverge_above`` (the absolute
      level), ``degree``, ``save_at``, ``chunk_size``, ``levels``, ``hyperparams``.
    - `rule`, `loss`: the update rule and the loss.
    - `save_states`, `diagnostics`, `standard`, `summarize`: what a save point holds
      (``_record_values``).
    - `monitor`: ``f(model, X, y) -> scalar``, the checkpoint quantity (``None``: ``log L``,
      read from each update where it sees the full data).
    - `stop_stalled`: apply the stall rule at segment ends.
    - `plain_out`: hand ``summarize`` and ``monitor`` the plain model.
    - `seeds_axis`: the name of the ``vmap`` axis over seeds when the caller vmaps with one
      (``run_seeds``). The segment loop then runs while any seed runs, each seed's segment
      masked by its own state, so the save buffers are written in place; a ``while_loop``
      with a per-seed condition would select every carried array, the buffers included, in
      every segment.

    **Returns:** the carry after the chunk.
    """
    hp = numbers["hyperparams"]
    save_at = numbers["save_at"]
    n_save = save_at.shape[0]
    levels = numbers["levels"]
    has_levels = levels.shape[0] > 0
    full_value = rule.value_is_full
    guarded = rule.guarded(carry["opt_state"])
    retract = -1 if rule.retracts else 0

    def log_loss_on(params, Xb, yb):
        return loss.log_loss(apply_batch(eqx.combine(params, static), Xb), yb)

    def update(params, opt_state, k):
        return _rule_update(rule, params, opt_state, k, static, X, y, key, hp)

    def stops(value, finite):
        """``(at_target, blew_up)`` for an update from a state whose log loss is ``value``."""
        at_target = full_value & (value <= numbers["target"])
        blew_up = ~finite | (value > numbers["diverge_above"])
        return at_target, blew_up

    def bad(params, k):
        """Whether the state's log loss on update ``k``'s batch is non-finite or above the
        divergence level."""
        value = log_loss_on(params, *rule.batch(X, y, key, k))
        return ~(jnp.isfinite(value) & (value <= numbers["diverge_above"]))

    def watched(params, value):
        """The checkpoint quantity at ``params`` (``value``: its log loss on the update's
        batch), or ``None`` where updates cannot see it."""
        if not has_levels:
            return None
        if monitor is not None:
            return monitor(_model(params, static, plain_out), X, y)
        return value if full_value else None

    def checkpoint(c, q):
        """Keep ``c``'s state for every level not yet reached that ``q`` is at or below."""
        if q is None:
            return c
        new = (c["ck_steps"] < 0) & (q <= levels)
        c = dict(c)
        c["ck_steps"] = jnp.where(new, c["accepted"], c["ck_steps"])
        c["ck_value"] = jnp.where(new, q, c["ck_value"])
        c["ck_params"] = jax.tree_util.tree_map(
            lambda b, p: jnp.where(new.reshape((-1,) + (1,) * p.ndim), p[None], b),
            c["ck_params"],
            c["params"],
        )
        return c

    def open_level(c):
        """The highest level not yet reached (``-inf`` if none)."""
        if not has_levels:
            return jnp.asarray(-jnp.inf, X.dtype)
        return jnp.max(jnp.where(c["ck_steps"] < 0, levels, -jnp.inf))

    def attempts(c):
        return c["accepted"] + c["undone"]

    def next_save(c):
        target = save_at[jnp.minimum(c["save_idx"], n_save - 1)]
        ok = (c["save_idx"] < n_save) & (target >= 0)
        return jnp.where(ok, target, jnp.iinfo(c["k"].dtype).max)

    def record_values(c):
        return _record_values(
            c["params"],
            c["opt_state"],
            static,
            X,
            y,
            numbers["degree"],
            rule=rule,
            loss=loss,
            save_states=save_states,
            diagnostics=diagnostics,
            standard=standard,
            summarize=summarize,
            plain_out=plain_out,
        )

    shapes = jax.eval_shape(record_values, carry)

    def maybe_record(c, active=True):
        """Record the state in the next save slot if a save point is due (and the seed is
        ``active``). Only the record's values sit under the ``lax.cond``, and the write goes to a
        past-the-end slot, which drops it, when nothing is due: under ``vmap``, where the
        ``cond`` becomes a ``select``, the select covers one record, and the save buffers are
        never read here, so XLA updates them in place."""
        fresh = c["last_saved"] != attempts(c)
        stopped = c["stop"] != STOP_RUNNING
        due = fresh & (c["save_idx"] < n_save) & ((attempts(c) >= next_save(c)) | stopped)
        due = due & active
        # An index past the end drops the write: the buffers are only written, never read here.
        i = jnp.where(due, c["save_idx"], n_save)
        out = jax.lax.cond(
            due, record_values, lambda c: jax.tree_util.tree_map(jnp.zeros_like, shapes), c
        )
        c = dict(c)
        c["saved"] = jax.tree_util.tree_map(
            lambda buf, v: buf.at[i].set(v, mode="drop"), c["saved"], out
        )
        c["saved_steps"] = c["saved_steps"].at[i].set(c["accepted"], mode="drop")
        c["save_idx"] = c["save_idx"] + due.astype(c["save_idx"].dtype)
        c["last_saved"] = jnp.where(due, attempts(c), c["last_saved"])
        return c

    def step(c):
        """One update with the stopping rules (the exact path). A guarded update into a state
        whose loss is non-finite or above the divergence level is not taken: the run stops as
        diverged with its last good state."""
        value, new_params, opt_state, finite, undo = update(c["params"], c["opt_state"], c["k"])
        at_target, blew_up = stops(value, finite)
        if guarded:
            blew_up = blew_up | (~at_target & bad(new_params, c["k"] + 1))
        else:  # a state the optimizer undoes at this update (backtracking) is no divergence
            blew_up = blew_up & ~undo
        c = checkpoint(c, watched(c["params"], value))
        take = ~at_target & ~blew_up
        c = dict(c)
        c["accepted"] = c["accepted"] + jnp.where(take, jnp.where(undo, retract, 1), 0)
        c["undone"] = c["undone"] + (take & undo).astype(c["undone"].dtype)
        c["stop"] = jnp.where(
            at_target,
            STOP_TARGET,
            jnp.where(
                blew_up,
                STOP_DIVERGED,
                jnp.where(attempts(c) >= numbers["num_steps"], STOP_MAX_STEPS, STOP_RUNNING),
            ),
        )
        c["params"] = tree_where(take, new_params, c["params"])
        c["opt_state"] = tree_where(take, opt_state, c["opt_state"])
        c["k"] = c["k"] + take.astype(c["k"].dtype)
        c["last_log_loss"] = jnp.where(jnp.isfinite(value), value, c["last_log_loss"])
        return c

    def exact(c, until):
        """Exact updates until ``until`` attempts or a stop. An unguarded rule takes every step
        here, with the loop state packed (``packed_while_loop``); a guarded one only the steps
        of a flagged block and the run's last, and its plain loop costs less to enter."""
        loop = jax.lax.while_loop if guarded else packed_while_loop
        return loop(lambda c: (c["stop"] == STOP_RUNNING) & (attempts(c) < until), step, c)

    def fast_block(f, lim, level):
        """Up to ``FAST_BLOCK`` plain updates (while ``k < lim``); whether none would have
        stopped the run or reached ``level``."""
        params, opt_state, k, last, _ = f
        m = jnp.minimum(lim - k, FAST_BLOCK)

        def body(i, b):
            params, opt_state, halt, last = b
            value, new, opt_state, _, _ = update(params, opt_state, k + i)
            at_target, blew_up = stops(value, jnp.isfinite(value))
            q = watched(params, value)
            crossed = False if q is None else q <= level
            return new, opt_state, halt | at_target | blew_up | crossed, value

        params, opt_state, halt, last = jax.lax.fori_loop(
            0, m, body, (params, opt_state, jnp.asarray(False), last)
        )
        clean = ~halt & all_finite(params) & ~bad(params, k + m.astype(k.dtype))
        return (params, opt_state, k + m.astype(k.dtype), last, clean)

    def fast(c, lim):
        """Clean fast blocks up to ``lim``; a flagged block's updates go the exact path."""
        level = open_level(c)
        f = (c["params"], c["opt_state"], c["k"], c["last_log_loss"], jnp.asarray(True))
        f = jax.lax.while_loop(
            lambda f: f[4] & (f[2] < lim),
            lambda f: _keep_if_clean(fast_block(f, lim, level), f),
            f,
        )
        c = dict(c)
        c["params"], c["opt_state"], c["k"], c["last_log_loss"], _ = f
        c["accepted"] = c["k"]  # guarded: no undos, every update is an accepted step
        return exact(c, jnp.minimum(c["k"] + FAST_BLOCK, lim))

    def advance(c, until):
        """Updates until ``until`` attempts or a stop: fast blocks, then the exact path. The
        loops carry the stepping state only, not the save buffers."""
        s = {name: c[name] for name in _STEPPING}
        if guarded:
            lim = jnp.minimum(until, numbers["num_steps"] - 1)  # the run's last step: exact
            s = jax.lax.while_loop(
                lambda s: (s["stop"] == STOP_RUNNING) & (s["k"] < lim), lambda s: fast(s, lim), s
            )
        return {**c, **exact(s, until)}

    def full_checks(c):
        """At a segment's end, on the full data: the target (updates on minibatches), the
        checkpoint levels, the stall rule."""
        need_full = (not full_value) or stop_stalled or (has_levels and monitor is None)
        if not need_full:
            return checkpoint(c, watched(c["params"], None))
        c = dict(c)
        running = c["stop"] == STOP_RUNNING
        if stop_stalled:
            full, stuck = stalled(c["params"], static, X, y, loss, numbers["target"])
        else:
            full, stuck = log_loss_on(c["params"], X, y), jnp.asarray(False)
        if not full_value:
            hit = running & (full <= numbers["target"])
            c["stop"] = jnp.where(hit, STOP_TARGET, c["stop"])
        c = checkpoint(c, full if monitor is None else watched(c["params"], None))
        stuck = stuck & (c["stop"] == STOP_RUNNING) & (full > numbers["target"])
        c["stop"] = jnp.where(stuck, STOP_STALLED, c["stop"])
        return c

    def segment(c, end, active=True):
        # Full-data checks at save points only, never at a chunk's end: where a run stops does
        # not depend on how it is chunked (``chunk_size='auto'`` sizes chunks by wall time).
        at = jnp.maximum(next_save(c), attempts(c) + 1)
        c = advance(c, jnp.minimum(at, end))
        c = jax.lax.cond(attempts(c) >= at, full_checks, lambda c: dict(c), c)
        return maybe_record(c, active)

    carry = maybe_record(carry)
    end = attempts(carry) + numbers["chunk_size"].astype(carry["k"].dtype)

    def running(c):
        return (c["stop"] == STOP_RUNNING) & (attempts(c) < end)

    if seeds_axis is None:
        carry = jax.lax.while_loop(running, lambda c: segment(c, end), carry)
    else:

        def masked(c):
            active = running(c)
            new = segment(c, end, active)
            return {
                k: new[k] if k in _SAVE_BUFFERS else tree_where(active, new[k], c[k]) for k in c
            }

        def any_running(c):
            return jax.lax.pmax(running(c).astype(jnp.int32), seeds_axis) > 0

        carry = jax.lax.while_loop(any_running, masked, carry)
    carry = dict(carry)
    carry["final_log_loss"] = log_loss_on(carry["params"], X, y)
    return _strong(maybe_record(carry))


# The carry entries that only ``maybe_record`` writes, one slot at a time.
_SAVE_BUFFERS = ("saved", "saved_steps")

# The carry entries that updates change (the rest are save buffers and their counters).
_STEPPING = (
    "params",
    "opt_state",
    "k",
    "accepted",
    "undone",
    "stop",
    "last_log_loss",
    "ck_params",
    "ck_steps",
    "ck_value",
)


def _strong(tree):
    """``tree`` with every array strongly typed, so that a carry keeps its avals from call to
    call (a weak type retraces the chunk)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.result_type(x)), tree)


def _keep_if_clean(new, old):
    """The fast path's state after a block if the block was clean, else the state before it (and
    the flag that sends the block's updates to the exact path)."""
    clean = new[4]
    kept = tree_where(clean, new[:4], old[:4])
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


@eqx.filter_jit
def _init_carry(
    params,
    static,
    X,
    y,
    hyperparams,
    numbers,
    n_save,
    opt_state=None,
    *,
    rule,
    loss,
    save_states,
    diagnostics,
    standard,
    summarize,
    plain_out,
):
    """The loop state at step 0 (parameters, rule state, empty save and checkpoint buffers), the
    initial full-data ``log L`` and the divergence level ``log L(0) + diverge_above``, in one
    compiled call.

    **Arguments:** `params`, `static`, `X`, `y`; `hyperparams` (the rule's numbers); `numbers`
    (as for ``_run_chunk``, ``diverge_above`` relative to ``log L(0)``); `n_save` (save
    buffer length); `opt_state` (the rule's state to start from; ``None``: its ``init``); `rule`,
    `loss`, `save_states`, `diagnostics`, `standard`, `summarize`, `plain_out` (as for
    ``_run_chunk``).
    """
    if opt_state is None:
        opt_state = rule.init(params, hyperparams, static, X, y)
    log_l0 = loss.log_loss(apply_batch(eqx.combine(params, static), X), y)
    # Only the shapes of a record are needed to allocate the save buffers.
    example = eqx.filter_eval_shape(
        lambda q, s: _record_values(
            q,
            s,
            static,
            X,
            y,
            numbers["degree"],
            rule=rule,
            loss=loss,
            save_states=save_states,
            diagnostics=diagnostics,
            standard=standard,
            summarize=summarize,
            plain_out=plain_out,
        ),
        params,
        opt_state,
    )

    def empty(v, n):
        fill = jnp.nan if jnp.issubdtype(v.dtype, jnp.inexact) else -1
        return jnp.full((n,) + jnp.shape(v), fill, v.dtype)

    n_levels = numbers["levels"].shape[0]
    zero = jnp.asarray(0)
    carry = {
        "params": params,
        "opt_state": opt_state,
        "k": zero,  # updates taken (drives the minibatch schedule)
        "accepted": zero,
        "undone": zero,
        "stop": jnp.asarray(STOP_RUNNING),
        "save_idx": zero,
        "last_saved": -jnp.ones((), zero.dtype),
        "saved": jax.tree_util.tree_map(lambda v: empty(v, n_save), example),
        "saved_steps": -jnp.ones(n_save, zero.dtype),
        "last_log_loss": jnp.asarray(jnp.nan, X.dtype),
        "final_log_loss": jnp.asarray(jnp.nan, X.dtype),
        "ck_params": jax.tree_util.tree_map(
            lambda p: jnp.broadcast_to(p[None], (n_levels,) + p.shape), params
        ),
        "ck_steps": -jnp.ones(n_levels, zero.dtype),
        "ck_value": jnp.full(n_levels, jnp.nan, X.dtype),
    }
    return _strong(carry), log_l0, log_l0 + numbers["diverge_above"]


def _host_int(v):
    """An integer for the compiled program, as a host array of JAX's default integer type."""
    if isinstance(v, jax.Array):
        return jnp.asarray(v)
    return np.asarray(v, jax.dtypes.canonicalize_dtype(np.int64))


def _levels(checkpoints, dtype):
    """The checkpoint levels as a 1-D array (host NumPy unless traced); each must be finite."""
    if isinstance(checkpoints, jax.core.Tracer):
        return jnp.asarray(checkpoints, dtype).reshape(-1)
    levels = np.asarray(list(np.ravel(np.asarray(checkpoints))), dtype).reshape(-1)
    if not np.all(np.isfinite(levels)):
        raise InvalidInput(
            f"checkpoints must be finite log L levels, got {levels.tolist()[:6]}; e.g. "
            "checkpoints=(-10, -100)."
        )
    return levels if not isinstance(checkpoints, jax.Array) else jnp.asarray(levels)


def prepare_run(
    model,
    X,
    y,
    *,
    num_steps,
    learning_rate,
    optimizer,
    hyperparams,
    loss,
    target_log_loss,
    batch_size,
    key,
    objective,
    n_save,
    save_states,
    chunk_size,
    degree,
    diverge_above,
    diagnostics=True,
    check_initial_loss=True,
    checkpoints=(),
    stop_stalled=False,
    summarize=None,
    rule=None,
    save_at=None,
    standard=True,
    monitor=None,
    opt_state=None,
):
    """Validate a GD run's inputs; return ``(carry, static, X, y, numbers, key, statics)``.

    Shared by ``gradient_descent`` (Python-driven chunks) and ``traced_gradient_descent``
    (one traced loop). Works on traced models and numbers (checks needing values are skipped).
    ``numbers['initial_log_loss']`` is ``log L(0)``; with ``check_initial_loss=False`` the caller
    checks it (``_check_initial_loss``) at its next host read instead of a read here.

    **Arguments:** those of ``gradient_descent`` (``chunk_size`` an int here), and
    `check_initial_loss`. Internal options:
    - `rule`: an update rule other than ``DescentRule`` (``rules``);
    - `save_at`: the save points, in attempts, instead of ``save_steps(num_steps, n_save)``
      (one more slot holds the record of a run that stops between them);
    - `standard`: ``False`` saves ``log_loss`` and the hook's outputs only, no
      ``wnjax.summaries``;
    - `monitor`: ``f(model, X, y) -> scalar``, the checkpoint quantity instead of ``log L``.
    """
    from wnjax._dynamics.flow import _auto_degree

    if objective not in ("loss", "log_loss"):
        raise InvalidInput(f"objective must be 'loss' or 'log_loss', got {objective!r}.")
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise InvalidInput(f"chunk_size must be a positive int, got {chunk_size!r}.")
    hp = dict(hyperparams or {})
    if learning_rate is not None:
        hp["learning_rate"] = learning_rate
    check_options(
        num_steps=num_steps,
        n_save=n_save,
        learning_rate=hp.get("learning_rate"),
        target_log_loss=target_log_loss,
        degree=degree,
        diverge_above=diverge_above,
    )
    if save_at is not None:
        save_at = np.unique(np.asarray(save_at, int).reshape(-1))
        n_save = save_at.size + 1  # room for the record of a run that stops between them
        save_at = np.concatenate([save_at, [-1]])
    n_save = int(n_save)
    loss_obj = get_loss(loss)
    X, y = check_data(X, y, loss_obj)
    p = as_parameterized(model)
    check_outputs(p, X, y, loss_obj)
    check_conflicts(X, y, loss_obj, target_log_loss, stacklevel=5, model=p)
    # One float dtype for data and parameters: the loop's carry keeps its types.
    p, X, y, dtype = in_common_dtype(p, X, y)
    if batch_size is not None:
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or not 0 < batch_size <= X.shape[0]
        ):
            raise InvalidInput(
                f"batch_size must be an integer in 1..{X.shape[0]}, got {batch_size!r}."
            )
        if key is None:
            raise InvalidInput("minibatch SGD needs a PRNG key: pass key=jax.random.key(...).")
        if hp.get("backtracking") is True:
            raise InvalidInput(
                "backtracking undoes a step whose log L rose, and on minibatches the log L "
                "before and after a step are those of different batches: run it full batch "
                "(batch_size=None)."
            )
    check_key(key)
    key = _default_key() if key is None else key
    optimizer = _optimizer(optimizer)
    if rule is None:
        if isinstance(optimizer, optax.GradientTransformation) and hp:
            raise InvalidInput(
                "learning_rate/hyperparams go with an optimizer factory (optimizer=optax.sgd); "
                "this optimizer is already built, so its numbers are fixed."
            )
        if not isinstance(optimizer, optax.GradientTransformation) and "learning_rate" not in hp:
            name = getattr(optimizer, "__name__", type(optimizer).__name__)
            raise InvalidInput(
                f"the optimizer factory {name} needs its step size: pass learning_rate=... "
                "(e.g. learning_rate=0.1), or a built optax optimizer such as optax.sgd(0.1)."
            )
        rule = DescentRule(loss_obj, optimizer, batch_size, objective)
    hp = {k: as_number(v, dtype) for k, v in hp.items()}
    if degree is None:
        degree = _auto_degree(p, X, loss_obj) if standard else 1.0
    params, static = eqx.partition(p, eqx.is_inexact_array)
    statics = dict(
        rule=rule,
        loss=loss_obj,
        save_states=save_states,
        diagnostics=diagnostics,
        standard=standard,
        summarize=summarize,
        monitor=monitor,
        stop_stalled=bool(stop_stalled and loss_obj.margin_based),
        plain_out=not isinstance(model, Parameterized),
    )
    numbers = {
        "target": as_number(-np.inf if target_log_loss is None else target_log_loss, dtype),
        "num_steps": _host_int(num_steps),
        "diverge_above": as_number(diverge_above, dtype),
        "degree": as_number(degree, dtype),
        "save_at": _host_int(save_steps(num_steps, n_save) if save_at is None else save_at),
        "chunk_size": _host_int(chunk_size),
        "levels": _levels(checkpoints, dtype),
        "hyperparams": hp,
    }
    if opt_state is not None:
        _check_opt_state(opt_state, statics["rule"], params, hp, static, X, y)
    carry, log_l0, diverge_level = _init_carry(
        params, static, X, y, hp, numbers, n_save, opt_state, **_init_statics(statics)
    )
    if check_initial_loss:
        _check_initial_loss(log_l0)
    numbers["diverge_above"] = diverge_level
    numbers["initial_log_loss"] = log_l0
    return carry, static, X, y, numbers, key, statics


def _check_opt_state(opt_state, rule, params, hyperparams, static, X, y) -> None:
    """Raise ``InvalidInput`` unless ``opt_state`` has the structure, shapes and dtypes of the
    state the run's optimizer starts from."""
    expected = eqx.filter_eval_shape(rule.init, params, hyperparams, static, X, y)
    got = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), opt_state
    )
    want = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want) or any(
        a.shape != b.shape or a.dtype != b.dtype
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))
    ):
        raise InvalidInput(
            "opt_state does not fit this run's optimizer and model: pass the opt_state of a run "
            "with the same optimizer, hyperparameter names, model and dtype (GDResult.opt_state)."
        )


def _init_statics(statics: dict) -> dict:
    return {
        k: statics[k]
        for k in (
            "rule",
            "loss",
            "save_states",
            "diagnostics",
            "standard",
            "summarize",
            "plain_out",
        )
    }


def _check_initial_loss(log_l0) -> None:
    """Raise ``InvalidInput`` if the initial loss is not finite (one host read; skipped if
    traced)."""
    if not isinstance(log_l0, jax.core.Tracer) and not np.isfinite(np.asarray(log_l0)):
        raise InvalidInput("the initial loss is not finite; check the data and the model.")


def _optimizer(optimizer):
    """``optimizer``, or the optax factory it names (``"adam"`` is ``optax.adam``)."""
    if not isinstance(optimizer, str):
        if not callable(optimizer) and not isinstance(optimizer, optax.GradientTransformation):
            raise InvalidInput(
                f"optimizer must be an optax factory (optax.sgd), a built optax "
                f"GradientTransformation or an optax name ('adam'), got {optimizer!r}."
            )
        return optimizer
    factory = getattr(optax, optimizer, None)
    if not callable(factory) or isinstance(factory, type):
        raise InvalidInput(
            f"optimizer {optimizer!r} is not an optax optimizer; pass a name such as 'sgd', "
            "'adam' or 'rmsprop', or the factory itself (optimizer=optax.adam)."
        )
    return factory


_DEFAULT_KEY = []


def _default_key() -> PRNGKeyArray:
    """``jax.random.key(0)``, made once outside any trace (full-batch runs never read it)."""
    if _DEFAULT_KEY:
        return _DEFAULT_KEY[0]
    key = jax.random.key(0)
    if not isinstance(key, jax.core.Tracer):  # never keep a tracer beyond its trace
        _DEFAULT_KEY.append(key)
    return key


# chunk_size="auto": the first chunk's steps, the wall time a chunk grows towards, the most it
# grows by after one chunk, and the cap. Each chunk costs ~1 ms of dispatch (a 10-32-1 net's
# step is ~10 us on a CPU), and a vmapped block a few ms of copying its save buffers.
AUTO_CHUNK_START = 1000
AUTO_CHUNK_SECONDS = 0.25
AUTO_CHUNK_GROWTH = 16
AUTO_CHUNK_MAX = 2**20


def _stops(carry) -> np.ndarray:
    return np.asarray(carry["stop"])


def _drive(chunk, carry, numbers, *, auto: bool, callback=None, after_first=None, stops=_stops):
    """Call ``chunk(carry, numbers)`` until every run has stopped or SIGINT/SIGTERM arrives
    (the chunk in progress finishes; a second signal keeps the last finished chunk).
    ``auto``: after a chunk faster than ``AUTO_CHUNK_SECONDS``, multiply
    ``numbers['chunk_size']`` by ``AUTO_CHUNK_SECONDS / elapsed``, at least 2 and at most
    ``AUTO_CHUNK_GROWTH``, up to ``AUTO_CHUNK_MAX``. ``after_first()`` runs once after the
    first chunk, ``callback(carry)`` after every chunk. ``stops(carry)``: the stop codes of
    every run, as a host array (default: ``carry['stop']``). Returns the last carry."""
    _maps.relieve()
    with _interrupt.handling():
        try:
            while True:
                t0 = time.perf_counter()
                carry = chunk(carry, numbers)
                stop = stops(carry)  # waits for the chunk (and the initial loss)
                elapsed = time.perf_counter() - t0
                if auto and elapsed < AUTO_CHUNK_SECONDS:
                    grow = min(max(AUTO_CHUNK_SECONDS / max(elapsed, 1e-9), 2.0), AUTO_CHUNK_GROWTH)
                    size = min(int(grow * int(numbers["chunk_size"])), AUTO_CHUNK_MAX)
                    numbers = {**numbers, "chunk_size": _host_int(size)}
                if after_first is not None:
                    after_first()
                    after_first = None
                if callback is not None:
                    callback(carry)
                if np.all(stop != STOP_RUNNING) or _interrupt.requested():
                    break
        except KeyboardInterrupt:  # a second signal: the last finished chunk is kept
            pass
    return carry


@in_float32
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
    checkpoints: Sequence[float] = (),
    stop_stalled: bool = False,
    summarize: Callable | None = None,
    opt_state: PyTree | None = None,
) -> GDResult:
    """Run GD (or minibatch SGD) with an optax optimizer until a target, divergence or the budget.

    The step is ``theta <- theta + optimizer.update(g, ...)`` with ``g = grad L`` (or
    ``grad log L`` for ``objective='log_loss'``). ``L`` sums over points.

    **Arguments:**
    - `model`: an equinox model or a ``Parameterized`` one.
    - `X`, `y`: the data.
    - `num_steps`: the step budget (attempted steps: accepted and undone).
    - `learning_rate`: passed to the optimizer factory as ``learning_rate``.
    - `optimizer`: an optax factory such as ``optax.sgd`` (default) or
      ``wnjax.neuron_rate_sgd`` (rate ``eta ||w_u||^2``), called inside the compiled program
      with ``learning_rate`` and ``hyperparams`` as traced arrays, so new values reuse the
      compiled program. A ready ``optax.GradientTransformation`` is accepted too; its
      numbers are then baked in, and each new instance compiles anew.
    - `hyperparams`: further keyword arguments of the factory (``momentum=0.9``, ...).
    - `loss`: a loss name or ``Loss``.
    - `target_log_loss`: stop once full-data ``log L`` reaches it (full batch: checked every step;
      minibatch: at every save point). A run that ends short of it with a stalled
      loss warns (``GDResult.stall``: is the data separable?).
    - `batch_size`, `key`: minibatch SGD with a reshuffle every epoch, drawn from ``key``.
    - `objective`: ``'loss'`` or ``'log_loss'`` (the gradient that the optimizer sees).
    - `n_save`: log-spaced save points (``log L`` and summaries at each).
    - `save_states`: keep the model at the save points.
    - `chunk_size`: steps per compiled chunk; between chunks Python regains control (callback,
      Ctrl-C). ``"auto"``: ``AUTO_CHUNK_START`` steps first; after a chunk that took less than
      ``AUTO_CHUNK_SECONDS``, as many more as would take about that long (2x to
      ``AUTO_CHUNK_GROWTH``x), up to ``AUTO_CHUNK_MAX`` (a chunk's
      length is a traced number: changing it does not recompile, nor change any step).
    - `degree`: homogeneity degree for the normalized margin (measured if ``None``; a model
      that is not homogeneous raises ``InvalidInput`` unless it is given).
    - `diverge_above`: a run whose ``log L`` exceeds ``log L(0) + diverge_above`` has diverged.
    - `callback`: called with the chunk carry after each chunk (for checkpoints or progress).
    - `throw`: raise ``GDFailed`` on divergence instead of returning the partial result.
    - `diagnostics`: also save the asymptotic diagnostics at the save points (see
      ``wnjax.gradient_flow``).
    - `checkpoints`: ``log L`` levels; the model is kept the first time ``log L`` is at or below
      each (full batch: at the step; minibatch: at save points).
    - `stop_stalled`: stop (code 4) once the loss is carried by dead points, which no step
      moves (``wnjax._dynamics.stall``; margin losses only), checked at save points.
    - `summarize`: ``f(model, X, y) -> dict`` of arrays, saved at every save point.
    - `opt_state`: the optimizer's state to start from instead of its ``init``: the
      ``opt_state`` of a run this one continues (with ``model=result.final``), so momentum,
      Adam's moments, schedules' step counts and ``loss_normalized_sgd``'s step size go on
      where they were (full batch: the same steps as one run; a minibatch run draws its
      batches afresh from ``key``).

    **Returns:** a ``GDResult`` whose save arrays hold the saved points only. Numbers
    (learning rates inside ``optimizer``, targets) are traced where optax keeps them as arrays,
    so repeated calls reuse the compiled chunk.
    """
    auto = isinstance(chunk_size, str)
    if auto and chunk_size != "auto":
        raise InvalidInput(f"chunk_size must be a positive int or 'auto', got {chunk_size!r}.")
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
        chunk_size=AUTO_CHUNK_START if auto else chunk_size,
        degree=degree,
        diverge_above=diverge_above,
        diagnostics=diagnostics,
        check_initial_loss=False,
        checkpoints=checkpoints,
        stop_stalled=stop_stalled,
        summarize=summarize,
        opt_state=opt_state,
    )
    log_l0 = numbers["initial_log_loss"]
    carry = _drive(
        lambda c, n: _run_chunk(c, static, X, y, n, key, **statics),
        carry,
        numbers,
        auto=auto,
        callback=callback,
        # a non-finite initial loss stops the run at step 0: bad input
        after_first=lambda: _check_initial_loss(log_l0),
    )
    if int(carry["stop"]) == STOP_RUNNING:
        warnings.warn(
            "gradient_descent interrupted; returning the partial result." + _interrupt.stop_note(),
            RuntimeWarning,
            stacklevel=2,
        )
    result = _to_result(carry, static, model, save_states, trim=True)
    warn_target_met_at_start(result.log_loss, target_log_loss, 3)
    if int(result.stop_code) == STOP_DIVERGED:
        if throw:
            raise GDFailed(result.message, result)
        warnings.warn(result.message, RuntimeWarning, stacklevel=2)
    elif target_log_loss is not None and int(result.stop_code) == STOP_MAX_STEPS:
        stall = result.stall
        if stall:
            warnings.warn(
                f"GD did not reach target_log_loss = {target_log_loss}.{stall}",
                RuntimeWarning,
                stacklevel=2,
            )
    return result


def _to_result(carry: dict, static, like, save_states: bool, trim: bool = False) -> GDResult:
    """The ``GDResult`` of a final carry; ``trim``: save arrays cut to the points saved."""
    saved = dict(carry["saved"])
    steps = carry["saved_steps"]
    states = saved.pop("state", None)
    cut = _cutter(int(carry["save_idx"]) if trim else None)
    saved, steps = cut(saved), cut(steps)
    final = eqx.combine(carry["params"], static)
    plain = not isinstance(like, Parameterized)
    if states is not None:
        if not plain:
            states = eqx.combine(cut(states), static)
        else:  # standard() on the full buffers: one program whatever the number saved
            states = cut(eqx.filter_vmap(lambda s: s.standard())(eqx.combine(states, static)))
    checkpoints = None
    if carry["ck_steps"].shape[-1]:
        checkpoints = eqx.combine(carry["ck_params"], static)
        if plain:
            checkpoints = eqx.filter_vmap(lambda s: s.standard())(checkpoints)
    return GDResult(
        steps=steps,
        log_loss=saved["log_loss"],
        summaries=saved,
        states=states,
        final=restore_type(final, like),
        final_log_loss=carry["final_log_loss"],
        num_steps=carry["accepted"],
        num_undone=carry["undone"],
        stop_code=carry["stop"],
        reached_target=carry["stop"] == STOP_TARGET,
        opt_state=carry["opt_state"],
        checkpoints=checkpoints,
        checkpoint_steps=carry["ck_steps"],
        checkpoint_log_loss=carry["ck_value"],
    )


def traced_run(carry, static, X, y, numbers, key, statics) -> dict:
    """Chunks of ``_run_chunk`` in a ``lax.while_loop`` until the run has stopped (traceable:
    under ``vmap`` a stopped run is frozen while the others go on); the final carry."""
    # A carry of fixed types: the chunk must map it to exactly the same avals.
    carry = _strong(carry)

    def body(c):
        out = _run_chunk(c, static, X, y, numbers, key, **statics)
        return jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), out, c)

    return jax.lax.while_loop(lambda c: c["stop"] == STOP_RUNNING, body, carry)
