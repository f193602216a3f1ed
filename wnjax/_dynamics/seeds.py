"""The GD engine over seeds: one vmapped program, per-seed data and hyperparameters.

``run_seeds`` runs ``descent._run_chunk`` under ``jax.vmap`` (one lane per seed, each stopping
on its own) on blocks of at most ``BLOCK_SEEDS`` seeds (``seed_blocks``; every block is the
same program, compiled once), in chunks driven from Python (SIGINT/SIGTERM end the run at a
chunk end). A block that has stopped is not run again. It returns the final carry with helpers
to read it: ``padded`` (the save records of every seed on a common axis) and
``checkpoint_models``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._dynamics.descent import (
    STOP_RUNNING,
    _drive,
    _host_int,
    _init_carry,
    _levels,
    _run_chunk,
)
from wnjax._losses import Loss, get_loss
from wnjax._nets.parameterize import Parameterized, as_parameterized
from wnjax._runtime.programs import compiled
from wnjax._runtime.validate import in_common_dtype


@dataclass(frozen=True)
class SeedRun:
    """The final state of ``run_seeds``: `carry` (every array with a leading seed axis),
    `static` (the models' non-array part) and `plain` (the input models were plain)."""

    carry: dict
    static: PyTree
    plain: bool

    def models(self, params) -> PyTree:
        """Stacked models of the input type from stacked parameters."""
        p = eqx.combine(params, self.static)
        return eqx.filter_vmap(lambda m: m.standard())(p) if self.plain else p

    def padded(self) -> tuple[dict, np.ndarray, np.ndarray]:
        """``(records, steps, counts)``: the save records as host arrays ``(n, seeds, ...)`` with
        ``n`` the most records of any seed; a seed with fewer repeats its last record. ``steps``
        are the accepted steps at each record, ``counts`` the records per seed."""
        counts = np.asarray(self.carry["save_idx"])
        n = int(counts.max()) if counts.size else 0
        rows = np.minimum(np.arange(n)[:, None], np.maximum(counts[None, :] - 1, 0))
        cols = np.arange(counts.size)[None, :]

        def pad(a):
            return np.asarray(a)[cols, rows]

        records = jax.tree_util.tree_map(pad, dict(self.carry["saved"]))
        return records, pad(self.carry["saved_steps"]), counts

    def checkpoint_models(self) -> tuple:
        """Per checkpoint level, the stacked models kept there (``None`` where no seed got
        there; a seed that did not keeps its initial model)."""
        steps = np.asarray(self.carry["ck_steps"])
        out = []
        for j in range(steps.shape[1]):
            if np.any(steps[:, j] >= 0):
                params = jax.tree_util.tree_map(lambda b: b[:, j], self.carry["ck_params"])
                out.append(self.models(params))
            else:
                out.append(None)
        return tuple(out)


# The most seeds in one vmapped block. A block's lanes run in lockstep until its slowest seed
# stops, so smaller blocks waste fewer steps on seeds that have already stopped, while larger
# ones make each step cheaper per seed. The blocks run one after another (a CPU program runs in
# the thread that calls it; see benchmarks/README.md for why they do not get threads here). The
# split depends on the number of seeds alone, never on the devices, so the numbers do not either.
BLOCK_SEEDS = 32


@eqx.filter_jit
def _init_seeds(params, static, X, y, hyperparams, numbers, n_save, statics):
    return jax.vmap(
        lambda q, X, y, hp: _init_carry(q, static, X, y, hp, numbers, n_save, **statics)
    )(params, X, y, hyperparams)


@eqx.filter_jit
def _seeds_chunk(carry, static, X, y, numbers, per_seed, keys, statics):
    def one(c, X, y, ps, key):
        return _run_chunk(c, static, X, y, {**numbers, **ps}, key, seeds_axis=_AXIS, **statics)

    return jax.vmap(one, axis_name=_AXIS)(carry, X, y, per_seed, keys)


_AXIS = "wnjax_seeds"


def run_seeds(
    models: PyTree,
    X: Array,
    y: Array,
    *,
    rule,
    hyperparams: dict,
    keys: PRNGKeyArray,
    num_steps: int,
    loss: str | Loss,
    target_log_loss: float | None = None,
    diverge_above: float = np.inf,
    checkpoints: Sequence[float] = (),
    save_at: Sequence[int] = (),
    chunk_size: int = 1000,
    auto_chunks: bool = True,
    summarize: Callable | None = None,
    stop_stalled: bool = False,
    block_seeds: int | None = None,
    turn: Callable[[], bool] | None = None,
    program_key: tuple | None = None,
    check_start: Callable[[np.ndarray], None] | None = None,
) -> tuple[SeedRun, bool]:
    """Run the GD engine on stacked models, one vmapped lane per seed.

    **Arguments:**
    - `models`: stacked models (leading seed axis), plain or ``Parameterized``.
    - `X`, `y`: per-seed data ``(seeds, n, ...)``.
    - `rule`: the update rule (``rules.DescentRule``, ``rules.EpochBacktracking``).
    - `hyperparams`: the rule's traced numbers, each with a leading seed axis.
    - `keys`: one PRNG key per seed (minibatches).
    - `num_steps`: the budget of attempts per seed.
    - `loss`: a loss name or ``Loss``.
    - `target_log_loss`: stop a seed at this full-data ``log L``.
    - `diverge_above`: a seed whose ``log L`` exceeds its start by this much has diverged.
    - `checkpoints`: ``log L`` levels at which to keep each seed's model.
    - `save_at`: the attempts at which to record ``log_loss`` and the ``summarize`` outputs
      (a stopped seed records its final state once more).
    - `chunk_size`, `auto_chunks`: attempts per compiled call (doubling after fast calls).
    - `summarize`: ``f(model, X, y) -> dict`` recorded at the save points.
    - `stop_stalled`: stop a seed whose loss is carried by dead points.
    - `block_seeds`: the most seeds per vmapped block (``seed_blocks``; ``None``:
      ``BLOCK_SEEDS``).
    - `turn`: called once the program is compiled, before it runs; ``False`` skips the run
      (reported interrupted, every seed as it started).
    - `program_key`: names ``rule``, ``loss`` and ``summarize`` (and whatever they close over)
      for ``wnjax._runtime.programs``: the traced programs are then kept on disk and a later
      run with the same key loads them without tracing. ``None``: JAX's cache alone.
    - `check_start`: called with each seed's initial full-data ``log L`` (a host array) before
      the first chunk runs; it may raise to refuse the run.

    **Returns:** ``(SeedRun, interrupted)``.
    """
    loss_obj = get_loss(loss)
    plain = not isinstance(models, Parameterized)
    # A parameterized stack is used as it is; a plain one is parameterized in one program.
    p = eqx.filter_jit(eqx.filter_vmap(as_parameterized))(models) if plain else models
    p, X, y, dtype = in_common_dtype(p, jnp.asarray(X), jnp.asarray(y))
    params, static = eqx.partition(p, eqx.is_inexact_array)
    save_at = np.unique(np.asarray(list(save_at), int))
    n_save = save_at.size + 1  # room for the record of a seed that stops between save points
    numbers = {
        "target": np.asarray(-np.inf if target_log_loss is None else target_log_loss, dtype),
        "num_steps": _host_int(num_steps),
        "degree": np.asarray(1.0, dtype),
        "save_at": _host_int(np.concatenate([save_at, [-1]])),
        "chunk_size": _host_int(chunk_size),
        "levels": _levels(checkpoints, dtype),
    }
    hp = {k: jnp.asarray(v, dtype) for k, v in hyperparams.items()}
    statics = dict(
        rule=rule,
        loss=loss_obj,
        save_states=False,
        diagnostics=False,
        standard=False,
        summarize=summarize,
        plain_out=plain,
    )
    seeds = int(np.shape(jax.tree_util.tree_leaves(params)[0])[0])
    n_blocks, lanes = seed_blocks(seeds, BLOCK_SEEDS if block_seeds is None else block_seeds)
    # The last block is filled up with copies of the last seed, dropped at the end.
    fill = np.minimum(np.arange(n_blocks * lanes), seeds - 1)
    if fill.size > seeds:
        params, X, y, hp, keys = jax.tree_util.tree_map(lambda a: a[fill], (params, X, y, hp, keys))
    start = {**numbers, "diverge_above": np.asarray(diverge_above, dtype)}
    init_args = (params, static, X, y, hp, start, n_save, statics)
    init = _init_seeds if program_key is None else compiled(_init_seeds, init_args, key=program_key)
    carry, log_l0, level = init(*init_args)
    per_seed = {"hyperparams": hp, "diverge_above": level, "initial_log_loss": log_l0}
    statics = dict(statics, monitor=None, stop_stalled=bool(stop_stalled and loss_obj.margin_based))
    # Split on the host and moved with device_put: no compiled program per slice shape (as
    # slicing on the device, or jnp.asarray of a host array, would compile); the keys as their
    # raw data.
    impl = jax.random.key_impl(keys)
    host = jax.tree_util.tree_map(np.asarray, (carry, X, y, per_seed, jax.random.key_data(keys)))
    blocks, inputs = [], []
    for b in range(n_blocks):
        c, Xb, yb, ps, kb = jax.tree_util.tree_map(
            lambda a: jax.device_put(a[b * lanes : (b + 1) * lanes]), host
        )
        blocks.append(c)
        inputs.append((Xb, yb, ps, jax.random.wrap_key_data(kb, impl=impl)))

    step = _seeds_chunk
    if program_key is not None:
        step = compiled(
            _seeds_chunk,
            (blocks[0], static, *inputs[0][:2], numbers, *inputs[0][2:], statics),
            key=program_key,
        )

    def chunk(blocks, n):
        # A finished block is left as it is.
        return tuple(
            c if _finished(c) else step(c, static, Xb, yb, n, ps, kb, statics)
            for c, (Xb, yb, ps, kb) in zip(blocks, inputs)
        )

    if turn is not None:
        if program_key is None:
            Xb, yb, ps, kb = inputs[0]
            _seeds_chunk.lower(blocks[0], static, Xb, yb, numbers, ps, kb, statics).compile()
        if not turn():
            return SeedRun(carry=_join(blocks, seeds), static=static, plain=plain), True

    if check_start is not None:
        check_start(np.asarray(log_l0)[:seeds])
    blocks = _drive(
        chunk,
        tuple(blocks),
        numbers,
        auto=auto_chunks,
        stops=lambda blocks: np.concatenate([np.asarray(c["stop"]) for c in blocks]),
    )
    carry = _join(blocks, seeds)
    interrupted = bool(np.any(np.asarray(carry["stop"]) == STOP_RUNNING))
    return SeedRun(carry=carry, static=static, plain=plain), interrupted


def _join(blocks, seeds: int) -> dict:
    """The blocks' carries as one, on the first ``seeds`` lanes (joined on the host)."""
    return jax.tree_util.tree_map(
        lambda *a: jax.device_put(np.concatenate([np.asarray(x) for x in a])[:seeds]), *blocks
    )


def _finished(carry) -> bool:
    """Whether every seed of a block has stopped."""
    return bool(np.all(np.asarray(carry["stop"]) != STOP_RUNNING))


def seed_blocks(seeds: int, block_seeds: int = BLOCK_SEEDS) -> tuple[int, int]:
    """``(blocks, lanes)``: ``seeds`` split into ``ceil(seeds / block_seeds)`` blocks of equal
    size ``lanes = ceil(seeds / blocks)`` (the last one filled up)."""
    n_blocks = max(1, -(-seeds // max(1, block_seeds)))
    return n_blocks, -(-seeds // n_blocks)
