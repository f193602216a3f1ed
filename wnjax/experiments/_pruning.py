"""pruning: a one-hidden-layer ReLU net trained by SGD with ``eta = eta0/L`` to
``log L = -10, -100, -300``, then pruned.

The Exp-WN MNIST experiment. ``L`` is the **mean** training loss (cross-entropy), as in the
Exp-WN code, so the checkpoints are levels of ``log((1/n) sum_i l_i)``. One epoch from
``theta_0`` runs ``ceil(n/B)`` minibatch steps over a fresh permutation (the last batch holds
the remainder),

    theta <- theta - eta0 grad(L_b(theta)) / L(theta_0),   L_b = mean loss on the batch,

then the full training loss decides: the epoch is kept (``eta0 <- 1.1 eta0``) if ``L`` did not
rise, else undone (``theta <- theta_0``, ``eta0 <- eta0/1.1``). The checkpoint of level ``c`` is
the model after the first kept epoch with ``log L < c``. Every seed runs its epochs inside one
compiled ``lax.while_loop`` (``train_sgd``). Inputs are standardized and the nets start from
Exp-WN's Kaiming-normal init (``init_net``). With ``dynamics="flow"`` the exact loss-normalized
flow ``d theta/ds = -grad log L`` (full batch) runs on the ReLU^2 variant of the net instead.

At each checkpoint the hidden neurons with the smallest norm parameter (``exp(a_u)`` for EWN,
``|g_u|`` for SWN, ``||w_u||`` unnormalized: ``LayerWeight.scale_params``, Exp-WN's criterion)
are removed, with no fine-tuning; removing neuron ``u`` zeroes its outgoing weights (its bias
goes with it). EWN's relative sparsity should make it the most prunable at ``log L = -300``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import wnjax._runtime.interrupt as _interrupt
from wnjax._losses import get_loss
from wnjax._nets.dense import apply_batch
from wnjax._nets.models import MLP
from wnjax._nets.parameterize import ewn, standard, swn, to_standard
from wnjax._runtime.errors import InvalidInput
from wnjax.data._sets import digits, mnist
from wnjax.experiments._finished import finished_runs
from wnjax.experiments._options import Common, option
from wnjax.experiments._report import (
    PARAM_STYLE,
    judge,
    mean_std,
    median_bars,
    not_answered,
    pyplot,
    render_verdicts,
    save_figure,
    seed_band,
    table,
    write_outputs,
)
from wnjax.experiments._runner import in_parallel

DESCRIPTION = (
    "MLP, SGD with eta0/L + backtracking (or exact flow) to log L = -10/-100/-300, "
    "prune smallest neurons: EWN prunes best late"
)
NAMES = ("ewn", "swn", "standard")
CHECKPOINTS = (-10.0, -100.0, -300.0)
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
PAPER = {  # MNIST, log L = -300: test accuracy (%) at 80% and 90% of hidden neurons pruned
    0.8: {"ewn": 97.2, "swn": 92.5, "standard": 93.1},
    0.9: {"ewn": 93.2, "swn": 75.9, "standard": 79.2},
}
# Kept epochs to each checkpoint in the Exp-WN MNIST logs (seed 2356; 60,000 training images,
# batch 128: 469 SGD steps per epoch). The paper quotes EWN's 4,784 epochs to -300.
PAPER_EPOCHS = {"ewn": (28, 791, 4784), "swn": (26, 951, 6870), "standard": (23, 629, 2026)}
PAPER_STEPS_PER_EPOCH = 469
# Exp-WN logs, seed 2356, at log L = -10: accuracy (%) at 80% / 90% pruned.
PAPER_AT_10 = {"ewn": (82.0, 75.0), "swn": (83.2, 70.6), "standard": (93.1, 86.2)}
MAX_EPOCHS = 200_000
DEFAULTS = {  # (width, training points) per dynamics; --full: width 1024 on MNIST
    "gd": (128, 256),
    "flow": (32, 300),
}


@dataclasses.dataclass(frozen=True)
class Options(Common):
    """pruning's options, besides ``seeds``, ``out`` and ``full`` (``Common``; ``full`` trains
    width 1024 on MNIST, ``data_dir`` required).

    - data: ``"digits"`` (scikit-learn's 8x8 digits) or ``"mnist"`` (IDX files in ``data_dir``);
    - data_dir: the folder of the MNIST IDX files;
    - dynamics: ``"gd"``, minibatch SGD with ``eta0/L`` and backtracking (the paper), or
      ``"flow"``, the exact loss-normalized flow on the ReLU^2 net;
    - width: hidden width (``None``: 128 for gd, 32 for flow, 1024 with ``full``);
    - train_size: train on the first N training points (``None``: 256 on digits for gd, two
      batches per epoch; 300 for flow; all with ``full``);
    - dtype: ``"float32"`` (the Exp-WN code's PyTorch default; about half the time) or
      ``"float64"`` (needs JAX's x64 mode, the CLI's default) for data, parameters and loss
      (``None``: float32 for gd, float64 for flow);
    - lr: the initial ``eta0``;
    - batch_size: SGD's batch size ``B``;
    - max_epochs: the cap on kept epochs per seed (default 200,000; Exp-WN's cap: 10,000 of
      469 steps);
    - rtol: flow: relative tolerance (``atol = rtol/100``);
    - max_steps: flow: solver steps per level.
    """

    data: str = option(
        "digits",
        "scikit-learn's 8x8 digits (default) or MNIST IDX files",
        choices=("digits", "mnist"),
    )
    data_dir: str | None = option(None, "folder with the MNIST IDX files")
    dynamics: str = option(
        "gd",
        "minibatch SGD, eta0/L with backtracking, plain ReLU (default); "
        "or the exact loss-normalized gradient flow, full batch, ReLU^2",
        choices=("gd", "flow"),
    )
    width: int | None = option(
        None, "hidden width (default: 128 for gd, 32 for flow; --full 1024)", positive=True
    )
    train_size: int | None = option(
        None,
        "train on the first N training points (default: 256 "
        "on digits for gd, 300 for flow, all with --full)",
        positive=True,
    )
    dtype: str | None = option(
        None,
        "precision of data, parameters and loss (default: float32 "
        "for gd, as the Exp-WN code, about half the time of float64; "
        "float64 for flow)",
        choices=("float32", "float64"),
    )
    lr: float = option(
        0.01,
        "initial eta0 of the SGD step eta0/L (Exp-WN: 0.01)",
        positive=True,
        only=("dynamics", "gd"),
    )
    batch_size: int = option(
        128, "SGD batch size (Exp-WN: 128)", positive=True, only=("dynamics", "gd")
    )
    max_epochs: int = option(
        MAX_EPOCHS,
        "cap on kept SGD epochs per seed (Exp-WN: 10,000 of 469 steps)",
        positive=True,
        only=("dynamics", "gd"),
    )
    rtol: float = option(
        1e-6, "flow: relative tolerance (atol = rtol/100)", positive=True, only=("dynamics", "flow")
    )
    max_steps: int = option(
        200_000, "flow: solver steps per level", positive=True, only=("dynamics", "flow")
    )


def init_net(key, d: int, width: int, activation: str = "relu") -> MLP:
    """The Exp-WN initial net ``d -> width -> 10`` with a hidden bias: ``W1 ~ N(0, 2/d)``,
    ``b1 = 0``, ``W2 ~ N(0, 2/width)`` (Kaiming normal), no output bias."""
    k0, k1, k2 = jax.random.split(key, 3)
    m = MLP(d, width, 2, 10, activation=activation, hidden_bias=True, key=k0)
    dtype = m.layers[0].weight.dtype
    return eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight),
        m,
        (
            jax.random.normal(k1, (width, d), dtype) * np.sqrt(2.0 / d),
            jnp.zeros(width, dtype),
            jax.random.normal(k2, (10, width), dtype) * np.sqrt(2.0 / width),
        ),
    )


def standardize(X_train, X_test):
    """``(x - m)/s`` with ``m``, ``s`` the mean and std of all training pixels (Exp-WN normalizes
    MNIST by its pixel mean and std)."""
    m, s = jnp.mean(X_train), jnp.std(X_train)
    return (X_train - m) / s, (X_test - m) / s


def parameterized(name: str, model: MLP):
    """WN on the hidden layer only (``'ewn'``/``'swn'``), or the plain model."""
    if name == "standard":
        return standard(model)
    return {"ewn": ewn, "swn": swn}[name](model, where=lambda m: [m.layers[0]])


def prune_mask(p, fraction: float) -> jnp.ndarray:
    """``m_u = 0`` for the ``round(fraction * width)`` hidden neurons with the smallest
    ``scale_params`` (``exp(a_u)``, ``|g_u|`` or ``||w_u||``), ``m_u = 1`` for the others."""
    scores = p.layers[0].scale_params()
    width = scores.shape[0]
    k = int(round(fraction * width))
    return jnp.ones(width, scores.dtype).at[jnp.argsort(scores)[:k]].set(0.0)


def pruned_model(p, fraction: float) -> MLP:
    """The plain model with the pruned neurons removed: ``W2 <- W2 diag(m)`` (``prune_mask``),
    so neuron ``u`` (its incoming weights and bias included) no longer reaches the output."""
    plain = to_standard(p)
    mask = prune_mask(p, fraction)
    return eqx.tree_at(lambda m: m.layers[1].weight, plain, plain.layers[1].weight * mask[None, :])


def pruned_accuracy(p, X: jnp.ndarray, y: jnp.ndarray, fraction: float) -> jnp.ndarray:
    """Test accuracy ``mean_i [argmax_j f_j(x_i) = y_i]`` of ``pruned_model(p, fraction)`` (no
    fine-tuning)."""
    hit = jnp.argmax(jax.vmap(pruned_model(p, fraction))(X), axis=1) == y
    return jnp.mean(hit.astype(X.dtype))


def pruned_accuracies(p, X: jnp.ndarray, y: jnp.ndarray, fractions) -> jnp.ndarray:
    """``pruned_accuracy`` at every fraction in ``fractions`` from one hidden-layer pass: neuron
    ``u`` is kept at fraction ``f`` iff its rank in ascending ``scale_params`` is at least
    ``round(f * width)``."""
    plain = to_standard(p)
    scores = p.layers[0].scale_params()
    width = scores.shape[0]
    rank = jnp.argsort(jnp.argsort(scores))
    k = jnp.asarray([int(round(f * width)) for f in fractions])
    masks = (rank[None, :] >= k[:, None]).astype(X.dtype)  # (fractions, width)
    layer = plain.layers[0]
    hidden = plain.activation(X @ layer.weight.T + layer.bias[None, :])  # (n, width)
    out = jnp.einsum("nu,fu,ju->fnj", hidden, masks, plain.layers[1].weight)
    return jnp.mean((jnp.argmax(out, axis=2) == y[None, :]).astype(X.dtype), axis=1)


def accuracy_table(checkpoints: tuple, valid: np.ndarray, X, y) -> np.ndarray:
    """``(levels, seeds, fractions)`` test accuracies of the stacked checkpoint models at
    ``FRACTIONS`` (``nan`` where ``valid`` is false: the seed never reached that level)."""
    table_ = np.full(valid.shape + (len(FRACTIONS),), np.nan)
    run = eqx.filter_jit(eqx.filter_vmap(lambda p: pruned_accuracies(p, X, y, FRACTIONS)))
    for j, ck in enumerate(checkpoints):
        if ck is not None:
            table_[j] = np.where(valid[j][:, None], np.asarray(run(ck)), np.nan)
    return table_


# --- SGD with eta0/L and epoch-level backtracking, many epochs per compiled call ---------------


@dataclasses.dataclass
class SGDRun:
    """Outcome of ``train_sgd``; per-seed arrays, ``(levels, seeds)`` for the checkpoint ones.

    - final_models: the stacked models where the seeds stopped;
    - checkpoints: per level, the stacked models at the crossing (``None``: no seed got there);
    - reached: the seed crossed the level;
    - ck_epochs, ck_undone: kept and undone epochs up to the crossing (``-1``: not reached);
    - ck_log_loss: ``log L`` (mean loss) at the crossing (``nan``: not reached);
    - epochs, undone: kept and undone epochs in all; log_loss, eta0: where each seed ended;
    - stalled: ``eta0`` fell below ``min_eta0`` (the loss no longer went down);
    - capped: the seed stopped at ``max_epochs`` kept epochs before the last level;
    - steps_per_epoch: ``ceil(n / batch_size)``;
    - curve: ``epochs``, ``log_loss``, ``eta0`` of shape ``(records, seeds)``, after each call;
    - seconds: wall time; calls: compiled calls made; interrupted: SIGINT/SIGTERM ended it.
    """

    final_models: object
    checkpoints: tuple
    reached: np.ndarray
    ck_epochs: np.ndarray
    ck_undone: np.ndarray
    ck_log_loss: np.ndarray
    epochs: np.ndarray
    undone: np.ndarray
    log_loss: np.ndarray
    eta0: np.ndarray
    stalled: np.ndarray
    capped: np.ndarray
    steps_per_epoch: int
    curve: dict
    seconds: float
    calls: int
    interrupted: bool


def _where(c, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def _all_finite(tree) -> jnp.ndarray:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def log_mean_loss(params, static, X, y, loss) -> jnp.ndarray:
    """``log((1/|X|) sum_i l_i)`` of the model ``eqx.combine(params, static)`` on ``(X, y)``."""
    return loss.log_loss(apply_batch(eqx.combine(params, static), X), y) - jnp.log(X.shape[0])


def _epoch(
    c: dict,
    key,
    static,
    X,
    y,
    levels,
    *,
    loss,
    batch_size: int,
    grow: float,
    shrink: float,
    min_eta0: float,
) -> dict:
    """One attempted epoch of one seed with state ``c`` (see ``train_sgd``); a no-op once the
    seed is done."""
    n = X.shape[0]
    full_batches, rest = divmod(n, batch_size)
    running = ~c["done"]
    perm = jax.random.permutation(jax.random.fold_in(key, c["attempts"]), n)

    def step(q, idx):
        # eta0 grad(L_b) / L(theta_0) = eta0 exp(log L_b - log L(theta_0)) grad log L_b
        value, g = jax.value_and_grad(log_mean_loss)(q, static, X[idx], y[idx], loss)
        scale = c["eta0"] * jnp.exp(value - c["log_loss"])
        return jax.tree_util.tree_map(lambda p, gi: p - scale * gi, q, g), None

    batches = perm[: full_batches * batch_size].reshape(full_batches, batch_size)
    q, _ = jax.lax.scan(step, c["params"], batches)
    if rest:
        q, _ = step(q, perm[full_batches * batch_size :])
    new = log_mean_loss(q, static, X, y, loss)
    fine = jnp.isfinite(new) & _all_finite(q) & (new <= c["log_loss"])
    accept, undo = running & fine, running & ~fine
    c = dict(c)
    c["params"] = _where(accept, q, c["params"])
    c["log_loss"] = jnp.where(accept, new, c["log_loss"])
    c["eta0"] = jnp.where(accept, c["eta0"] * grow, jnp.where(undo, c["eta0"] / shrink, c["eta0"]))
    c["epochs"] = c["epochs"] + accept
    c["undone"] = c["undone"] + undo
    c["attempts"] = c["attempts"] + running
    cross = accept & (c["ck_epochs"] < 0) & (new < levels)
    c["ck_epochs"] = jnp.where(cross, c["epochs"], c["ck_epochs"])
    c["ck_undone"] = jnp.where(cross, c["undone"], c["ck_undone"])
    c["ck_log_loss"] = jnp.where(cross, new, c["ck_log_loss"])
    c["ck_params"] = jax.tree_util.tree_map(
        lambda b, p: jnp.where(cross.reshape((-1,) + (1,) * p.ndim), p[None], b),
        c["ck_params"],
        c["params"],
    )
    c["stalled"] = c["stalled"] | (running & (c["eta0"] < min_eta0))
    c["done"] = (
        c["done"] | c["stalled"] | jnp.all(c["ck_epochs"] >= 0) | (c["epochs"] >= c["max_epochs"])
    )
    return c


@eqx.filter_jit
def _epochs(
    state: dict,
    keys,
    static,
    X,
    y,
    levels,
    limit,
    *,
    loss,
    batch_size: int,
    grow: float,
    shrink: float,
    min_eta0: float,
) -> dict:
    """Up to ``limit`` attempted epochs of every seed (vmapped), in one ``lax.while_loop`` that
    ends early once every seed is done."""
    epoch = functools.partial(
        _epoch,
        static=static,
        X=X,
        y=y,
        levels=levels,
        loss=loss,
        batch_size=batch_size,
        grow=grow,
        shrink=shrink,
        min_eta0=min_eta0,
    )

    def cond(carry):
        i, s = carry
        return (i < limit) & jnp.any(~s["done"])

    def body(carry):
        i, s = carry
        return i + 1, jax.vmap(epoch)(s, keys)

    return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))[1]


def initial_state(params, static, X, y, *, loss, levels: int, eta0: float, max_epochs: int) -> dict:
    """The loop state of every seed (stacked ``params``) before its first epoch, for ``levels``
    checkpoint levels: ``log L`` (mean loss), ``eta0``, kept/undone/attempted epoch counts,
    ``done``/``stalled`` flags, ``max_epochs``, and per level the crossing's epochs, ``log L``
    and parameters."""
    seeds = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    log0 = eqx.filter_jit(jax.vmap(lambda q: log_mean_loss(q, static, X, y, loss)))(params)
    none = -jnp.ones((seeds, levels), jnp.int32)
    return {
        "params": params,
        "log_loss": log0,
        "eta0": jnp.full(seeds, eta0, log0.dtype),
        "epochs": jnp.zeros(seeds, jnp.int32),
        "undone": jnp.zeros(seeds, jnp.int32),
        "attempts": jnp.zeros(seeds, jnp.int32),
        "done": jnp.zeros(seeds, bool),
        "stalled": jnp.zeros(seeds, bool),
        "max_epochs": jnp.full(seeds, max_epochs, jnp.int32),
        "ck_epochs": none,
        "ck_undone": none,
        "ck_log_loss": jnp.full((seeds, levels), jnp.nan, log0.dtype),
        "ck_params": jax.tree_util.tree_map(
            lambda p: jnp.broadcast_to(p[:, None], (seeds, levels) + p.shape[1:]), params
        ),
    }


def train_sgd(
    models,
    X,
    y,
    key,
    *,
    levels,
    eta0: float,
    batch_size: int,
    max_epochs: int,
    loss="cross_entropy",
    grow: float = 1.1,
    shrink: float = 1.1,
    min_eta0: float = 1e-12,
    call_seconds: float = 0.5,
    progress=None,
) -> SGDRun:
    """SGD with ``eta = eta0/L`` and epoch-level backtracking (Exp-WN's MNIST schedule, see the
    module docstring) on stacked models, until every level is crossed.

    **Arguments:**
    - `models`: stacked models (``eqx.filter_vmap`` over keys), plain or parameterized.
    - `X`, `y`: the training set, shared by the seeds.
    - `key`: split into one key per seed; attempt ``k`` shuffles with ``fold_in(key_seed, k)``.
    - `levels`: decreasing ``log L`` levels (mean loss); a seed stops after crossing them all.
    - `eta0`: the initial ``eta0``; `grow`, `shrink`: its factors after a kept / undone epoch.
    - `batch_size`: ``B``; an epoch is ``ceil(n/B)`` steps.
    - `max_epochs`: a seed stops after this many kept epochs.
    - `loss`: a loss name or ``Loss``.
    - `min_eta0`: a seed whose ``eta0`` falls below it has stalled and stops.
    - `call_seconds`: the aimed duration of one compiled call; the host records ``curve`` after
      each and answers SIGINT/SIGTERM there (within the command line's 10 s grace).
    - `progress`: ``None`` or ``f(epochs, log_loss, seconds)`` called after each call with the
      per-seed kept epochs and ``log L`` so far.

    **Returns:** an ``SGDRun``.
    """
    loss = get_loss(loss)
    params, static = eqx.partition(models, eqx.is_inexact_array)
    seeds = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    n = int(X.shape[0])
    if not 0 < batch_size <= n:
        raise InvalidInput(
            f"batch_size must lie in 1..{n} (the training set size), got {batch_size}."
        )
    k = len(levels)
    state = initial_state(
        params, static, X, y, loss=loss, levels=k, eta0=eta0, max_epochs=max_epochs
    )
    log0 = state["log_loss"]
    dtype = log0.dtype
    keys = jax.random.split(key, seeds)
    run = functools.partial(
        _epochs,
        loss=loss,
        batch_size=int(batch_size),
        grow=float(grow),
        shrink=float(shrink),
        min_eta0=float(min_eta0),
    )
    levels_ = jnp.asarray(levels, dtype)
    curve = {
        "epochs": [np.zeros(seeds, int)],
        "log_loss": [np.asarray(log0)],
        "eta0": [np.full(seeds, eta0)],
    }
    limit, calls, interrupted, start = 8, 0, False, time.perf_counter()
    with _interrupt.handling():
        while True:
            t, before = time.perf_counter(), int(np.max(np.asarray(state["attempts"])))
            state = run(state, keys, static, X, y, levels_, jnp.asarray(limit, jnp.int32))
            done = np.asarray(state["done"])  # waits for the call
            calls += 1
            for name in curve:
                curve[name].append(np.asarray(state[name]))
            if progress is not None:
                progress(curve["epochs"][-1], curve["log_loss"][-1], time.perf_counter() - start)
            if done.all() or _interrupt.requested():
                interrupted = not done.all()
                if interrupted:
                    _interrupt.stopping()  # stopped: the partial results follow
                break
            per = (time.perf_counter() - t) / max(
                int(np.max(np.asarray(state["attempts"]))) - before, 1
            )
            limit = int(np.clip(call_seconds / per, 1, 2 * limit))
    ck_epochs = np.asarray(state["ck_epochs"]).T
    reached = ck_epochs >= 0
    checkpoints = tuple(
        eqx.combine(jax.tree_util.tree_map(lambda b: b[:, j], state["ck_params"]), static)
        if reached[j].any()
        else None
        for j in range(k)
    )
    stalled = np.asarray(state["stalled"])
    return SGDRun(
        final_models=eqx.combine(state["params"], static),
        checkpoints=checkpoints,
        reached=reached,
        ck_epochs=ck_epochs,
        ck_undone=np.asarray(state["ck_undone"]).T,
        ck_log_loss=np.asarray(state["ck_log_loss"]).T,
        epochs=np.asarray(state["epochs"]),
        undone=np.asarray(state["undone"]),
        log_loss=np.asarray(state["log_loss"]),
        eta0=np.asarray(state["eta0"]),
        stalled=stalled,
        capped=~reached[-1] & ~stalled & (np.asarray(state["epochs"]) >= max_epochs),
        steps_per_epoch=-(-n // batch_size),
        curve={k_: np.stack(v) for k_, v in curve.items()},
        seconds=time.perf_counter() - start,
        calls=calls,
        interrupted=bool(interrupted),
    )


# --- the experiment ----------------------------------------------------------------------------


def load(options: Options, key):
    """``X_train, y_train, X_test, y_test, note``."""
    if options.data == "mnist" or options.full:
        if not options.data_dir:
            raise InvalidInput(
                "MNIST (--data mnist or --full) needs --data-dir DIR, a folder with "
                "the MNIST IDX files."
            )
        return mnist(key, options.data_dir)
    Xtr, ytr, Xte, yte = digits(key)
    note = f"scikit-learn digits: {len(Xtr)} train / {len(Xte)} test (random split)"
    return Xtr, ytr, Xte, yte, note


def sizes(options: Options) -> tuple[int, int | None]:
    """``(width, training points)`` of the run (``None``: all)."""
    width, n_train = DEFAULTS[options.dynamics]
    if options.full:
        width, n_train = 1024, None
    return options.width or width, options.train_size or n_train


class _Progress:
    """Prints ``name``'s kept epochs and worst ``log L`` to stderr, every ``every`` seconds."""

    def __init__(self, name: str, every: float = 30.0):
        self.name, self.every, self.last = name, every, 0.0

    def __call__(self, epochs, log_loss, seconds):
        if seconds - self.last >= self.every:
            self.last = seconds
            print(
                f"pruning {PARAM_STYLE[self.name]['label']}: {seconds:.0f} s, kept epochs "
                f"{int(epochs.min())}..{int(epochs.max())}, log L {float(log_loss.max()):.1f} "
                f"(worst seed) -> {CHECKPOINTS[-1]:g}",
                file=sys.stderr,
                flush=True,
            )


def train(name: str, options: Options, Xtr, ytr, width: int, keys, k_sgd) -> dict:
    """Train the stacked ``name`` models to every checkpoint; per-level models and counts."""
    activation = "relu" if options.dynamics == "gd" else "relu2"
    models = eqx.filter_vmap(
        lambda k: parameterized(name, init_net(k, Xtr.shape[1], width, activation))
    )(keys)
    models = jax.tree_util.tree_map(
        lambda a: a.astype(Xtr.dtype) if eqx.is_inexact_array(a) else a, models
    )
    if options.dynamics == "gd":
        r = train_sgd(
            models,
            Xtr,
            ytr,
            k_sgd,
            levels=CHECKPOINTS,
            eta0=options.lr,
            batch_size=options.batch_size,
            max_epochs=options.max_epochs,
            progress=_Progress(name),
        )
        return dict(
            checkpoints=r.checkpoints,
            valid=r.reached,
            log_loss=r.ck_log_loss,
            epochs=r.ck_epochs,
            undone=r.ck_undone,
            steps=np.where(r.reached, r.ck_epochs * r.steps_per_epoch, -1),
            final_log_loss=r.log_loss,
            final_epochs=r.epochs,
            final_undone=r.undone,
            eta0=r.eta0,
            stalled=r.stalled,
            capped=r.capped,
            curve=r.curve,
            steps_per_epoch=r.steps_per_epoch,
            calls=r.calls,
            interrupted=r.interrupted,
        )
    from wnjax.experiments._runner import run_flow_checkpoints

    # the flow's levels are on log sum_i l_i = log L + log n
    shift = float(np.log(Xtr.shape[0]))
    r = run_flow_checkpoints(
        models,
        Xtr,
        ytr,
        levels=[c + shift for c in CHECKPOINTS],
        loss="cross_entropy",
        rtol=options.rtol,
        atol=options.rtol * 1e-2,
        max_steps=options.max_steps,
        degree=3.0,
    )
    return dict(
        checkpoints=r.checkpoints,
        valid=r.ok,
        log_loss=r.log_loss - shift,
        steps=r.num_steps,
        s=r.s,
        log_t=r.log_t,
        interrupted=_interrupt.requested(),
    )


def run(options: Options) -> dict:
    """Run pruning with ``options``; write ``pruning.png`` (and ``pruning_loss.png`` for gd),
    ``metrics.json`` and ``report.md`` under ``options.out``. **Returns:** the metrics, with
    ``verdicts``."""
    flow = options.dynamics == "flow"
    width, n_train = sizes(options)
    k_data, k_net, k_sgd = jax.random.split(jax.random.key(0), 3)
    Xtr, ytr, Xte, yte, note = load(options, k_data)
    if n_train is not None and n_train < len(Xtr):
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
        note += f"; training on its first {n_train} training points"
    dtype = options.dtype or ("float64" if flow and jax.config.jax_enable_x64 else "float32")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise InvalidInput("dtype float64 needs JAX's x64 mode (drop --float32).")
    Xtr, Xte = (a.astype(dtype) for a in standardize(Xtr, Xte))
    keys = jax.random.split(k_net, options.seeds)

    def one(name):
        t = time.perf_counter()
        r = train(name, options, Xtr, ytr, width, keys, k_sgd)
        return r, accuracy_table(r["checkpoints"], r["valid"], Xte, yte), time.perf_counter() - t

    written = {}

    def write(done):
        # the disk holds what has finished, whatever stops the run later
        res = {k: done[k][0] for k in NAMES if k in done}
        acc = {k: done[k][1] for k in NAMES if k in done}
        wall = {k: done[k][2] for k in NAMES if k in done}
        partial = len(res) < len(NAMES) or any(r["interrupted"] for r in res.values())
        written["metrics"] = _outputs(options, note, width, Xtr, res, acc, wall, partial)

    # The three trainings run side by side, one thread each (``in_parallel``), SWN's first: it
    # takes the most epochs at the paper's rate.
    order = sorted(NAMES, key=lambda k: k != "swn")
    in_parallel(
        {k: functools.partial(one, k) for k in order},
        on_done=write,
        finished=finished_runs("pruning", options),
    )
    return written.get("metrics")  # None: stopped before any training had finished


def _outputs(options, note, width, Xtr, res, acc, wall, partial) -> dict:
    """Write the figures, ``metrics.json`` and ``report.md`` of the runs in ``res`` (no verdict
    when ``partial``); return the metrics."""
    flow = options.dynamics == "flow"
    metrics = {
        "data": note,
        "dynamics": options.dynamics,
        "activation": "relu2" if flow else "relu",
        "dtype": str(jnp.asarray(Xtr).dtype),
        "width": width,
        "n_train": int(len(Xtr)),
        "checkpoints": CHECKPOINTS,
        "fractions": FRACTIONS,
        "seeds": options.seeds,
        "test_accuracy": acc,
        "wall_s": wall,
        "checkpoint_log_loss": {k: r["log_loss"] for k, r in res.items()},
        "checkpoint_steps": {k: r["steps"] for k, r in res.items()},
        "reached": {k: r["valid"] for k, r in res.items()},
        "ok": {k: np.all(r["valid"], axis=0) for k, r in res.items()},
        "finished": [k for k, r in res.items() if not r["interrupted"]],
        "partial": partial,
    }
    if flow:
        metrics.update(
            rtol=options.rtol,
            checkpoint_s={k: r["s"] for k, r in res.items()},
            checkpoint_log_t={k: r["log_t"] for k, r in res.items()},
        )
    else:
        metrics.update(
            lr=options.lr,
            batch_size=options.batch_size,
            max_epochs=options.max_epochs,
            steps_per_epoch=next(iter(res.values()))["steps_per_epoch"],
            checkpoint_epochs={k: r["epochs"] for k, r in res.items()},
            checkpoint_undone={k: r["undone"] for k, r in res.items()},
            final_log_loss={k: r["final_log_loss"] for k, r in res.items()},
            epochs={k: r["final_epochs"] for k, r in res.items()},
            undone={k: r["final_undone"] for k, r in res.items()},
            final_eta0={k: r["eta0"] for k, r in res.items()},
            stalled={k: r["stalled"] for k, r in res.items()},
            capped={k: r["capped"] for k, r in res.items()},
            paper_epochs=PAPER_EPOCHS,
            paper_steps_per_epoch=PAPER_STEPS_PER_EPOCH,
        )
    figs = _figures(options, acc, res, flow)
    verdicts = [] if partial else _verdicts(acc, res)
    metrics["verdicts"] = verdicts
    lines = _report(options, note, width, Xtr, acc, res, wall, flow, verdicts, partial)
    write_outputs(options.out, metrics, "\n".join(lines + ["", "Figures: " + ", ".join(figs)]))
    return metrics


def _figures(options: Options, acc: dict, res: dict, flow: bool) -> list:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CHECKPOINTS), figsize=(14, 3.8), sharey=True)
    for ax, j, ck in zip(axes, range(len(CHECKPOINTS)), CHECKPOINTS):
        for name in acc:
            n_ok = int(res[name]["valid"][j].sum())
            if n_ok == 0:
                continue
            valid = np.asarray(res[name]["valid"][j], bool)
            median_bars(
                ax, FRACTIONS, 100 * np.asarray(acc[name][j])[valid], ms=3, **PARAM_STYLE[name]
            )
        paper = (
            {k: (PAPER[0.8][k], PAPER[0.9][k]) for k in NAMES}
            if ck == -300
            else PAPER_AT_10
            if ck == -10
            else None
        )
        if paper is not None:
            for name in NAMES:
                ax.plot(
                    [0.8, 0.9],
                    paper[name],
                    ls="none",
                    marker="*",
                    ms=11,
                    mfc="none",
                    color=PARAM_STYLE[name]["color"],
                )
            ax.plot(
                [],
                [],
                ls="none",
                marker="*",
                ms=11,
                mfc="none",
                color="gray",
                label="paper (MNIST)" if ck == -300 else "Exp-WN log (MNIST)",
            )
        ax.set(title=f"log L = {ck:g}", xlabel="fraction of hidden neurons pruned")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower left")
        if not any(res[k]["valid"][j].any() for k in acc):
            ax.text(0.5, 0.5, "no seed got here", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("test accuracy (%)")
    figs = [save_figure(fig, options.out, "pruning.png")]
    if not flow:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name, r in res.items():
            # the curve is (records, seeds)
            steps = np.asarray(r["curve"]["epochs"] * r["steps_per_epoch"]).T
            seed_band(
                ax,
                np.maximum(steps, 1),
                np.asarray(r["curve"]["log_loss"]).T,
                log_x=True,
                **PARAM_STYLE[name],
            )
            paper = PAPER_EPOCHS[name][-1] * PAPER_STEPS_PER_EPOCH
            ax.plot(
                [paper],
                [CHECKPOINTS[-1]],
                marker="*",
                ms=11,
                mfc="none",
                ls="none",
                color=PARAM_STYLE[name]["color"],
            )
        ax.plot(
            [],
            [],
            marker="*",
            ms=11,
            mfc="none",
            ls="none",
            color="gray",
            label="Exp-WN MNIST run reaching -300",
        )
        for ck in CHECKPOINTS:
            ax.axhline(ck, color="gray", lw=0.5, ls="--")
        ax.set(xscale="log", xlabel="SGD steps of kept epochs", ylabel="training log L (mean loss)")
        ax.legend(fontsize=8)
        figs.append(save_figure(fig, options.out, "pruning_loss.png"))
    return figs


def _heavy(acc: dict, name: str, j: int, fraction: float) -> np.ndarray:
    """Per-seed test accuracy (%) of ``name`` at level ``j`` with ``fraction`` pruned."""
    return 100 * acc[name][j][:, FRACTIONS.index(fraction)]


def _verdicts(acc: dict, res: dict) -> list:
    """The claims, judged on the seed means (seeds that reached the level)."""
    out = []
    j10, j300 = CHECKPOINTS.index(-10.0), CHECKPOINTS.index(-300.0)

    def missing(*levels):
        gone = [
            f"{PARAM_STYLE[k]['label']} at {CHECKPOINTS[j]:g}"
            for j in levels
            for k in NAMES
            if not res[k]["valid"][j].any()
        ]
        return f"no seed of {', '.join(gone)} got there" if gone else ""

    for f in (0.8, 0.9):
        claim = (
            f"at log L = -300, EWN keeps the most test accuracy with {f:.0%} of the hidden "
            "neurons pruned"
        )
        why = missing(j300)
        if why:
            out.append(not_answered(claim, why))
            continue
        a = {k: _heavy(acc, k, j300, f) for k in NAMES}
        m = {k: np.nanmean(v) for k, v in a.items()}
        both = [np.isfinite(a[k]) & np.isfinite(a["ewn"]) for k in ("swn", "standard")]
        wins = [int(np.sum((a["ewn"] > a[k])[b])) for k, b in zip(("swn", "standard"), both)]
        detail = (
            ", ".join(f"{PARAM_STYLE[k]['label']} {mean_std(a[k], '.1f')}%" for k in NAMES)
            + f"; paper {PAPER[f]['ewn']} / {PAPER[f]['swn']} / {PAPER[f]['standard']}; EWN "
            f"above SWN in {wins[0]}/{int(both[0].sum())} seeds, above unnormalized in "
            f"{wins[1]}/{int(both[1].sum())}"
        )
        out.append(judge(m["ewn"] > max(m["swn"], m["standard"]), claim, detail))

    def mean_heavy(k, j):
        return float(np.nanmean([_heavy(acc, k, j, f) for f in (0.8, 0.9)]))

    claim = (
        "at log L = -10, EWN is not the most prunable (mean accuracy at 80% and 90% pruned; "
        "Exp-WN log: unnormalized is)"
    )
    why = missing(j10)
    if why:
        out.append(not_answered(claim, why))
    else:
        h = {k: mean_heavy(k, j10) for k in NAMES}
        log = ", ".join(f"{PARAM_STYLE[k]['label']} {np.mean(PAPER_AT_10[k]):.1f}%" for k in NAMES)
        out.append(
            judge(
                h["ewn"] <= max(h["swn"], h["standard"]),
                claim,
                ", ".join(f"{PARAM_STYLE[k]['label']} {v:.1f}%" for k, v in h.items())
                + f"; Exp-WN log {log}",
            )
        )
    claim = (
        "EWN's accuracy under heavy pruning (mean at 80% and 90%) rises from log L = -10 to -300"
    )
    why = (
        missing(j10, j300)
        if not (res["ewn"]["valid"][j10].any() and res["ewn"]["valid"][j300].any())
        else ""
    )
    if why:
        out.append(not_answered(claim, why))
    else:
        lo, hi = mean_heavy("ewn", j10), mean_heavy("ewn", j300)
        paper = (np.mean(PAPER_AT_10["ewn"]), (PAPER[0.8]["ewn"] + PAPER[0.9]["ewn"]) / 2)
        # Per seed, the rise of the mean at 80% and 90%; a rise counts when the seeds' mean
        # exceeds twice its standard error (paired: the same seed at both levels).
        rise = np.mean(
            [_heavy(acc, "ewn", j300, f) - _heavy(acc, "ewn", j10, f) for f in (0.8, 0.9)], 0
        )
        rise = rise[np.isfinite(rise)]
        detail = f"{lo:.1f}% -> {hi:.1f}%; paper {paper[0]:.1f}% -> {paper[1]:.1f}%"
        if rise.size < 2:
            why = (
                f"{detail}; {rise.size} seed(s) at both levels: a rise cannot be told from "
                "seed noise; run two or more seeds"
            )
            out.append(not_answered(claim, why))
        else:
            se = float(np.std(rise, ddof=1) / np.sqrt(rise.size))
            detail += (
                f"; per-seed rise {np.mean(rise):+.1f} points, standard error {se:.1f} "
                f"over {rise.size} seeds (a rise counts above 2 standard errors)"
            )
            out.append(judge(bool(np.mean(rise) > 2 * se), claim, detail))
    return out


def _ended(name: str, r: dict, options: Options) -> str:
    """Why the seeds of ``name`` that missed a level stopped."""
    missed = ~r["valid"][-1]
    if not missed.any():
        return ""
    parts = []
    for flag, why in (
        (r["stalled"], "stalled (eta0 below 1e-12)"),
        (r["capped"], f"hit the cap of {options.max_epochs:,} kept epochs"),
    ):
        if (flag & missed).any():
            parts.append(
                f"{int((flag & missed).sum())} {why}, at log L "
                f"{mean_std(r['final_log_loss'][flag & missed], '.4g')}"
            )
    rest = missed & ~r["stalled"] & ~r["capped"]
    if rest.any():
        parts.append(
            f"{int(rest.sum())} stopped by SIGINT/SIGTERM at log L "
            f"{mean_std(r['final_log_loss'][rest], '.4g')}"
        )
    return f"{PARAM_STYLE[name]['label']}: {int(missed.sum())} seed(s) short of -300: " + "; ".join(
        parts
    )


def _report(options, note, width, Xtr, acc, res, wall, flow, verdicts, partial) -> list:
    seeds = options.seeds
    finished = ", ".join(PARAM_STYLE[k]["label"] for k, r in res.items() if not r["interrupted"])
    rows = []
    for j, ck in enumerate(CHECKPOINTS):
        for name in acc:
            r = res[name]
            ok = r["valid"][j]
            paper = (
                f"{PAPER[0.8][name]} / {PAPER[0.9][name]}"
                if ck == -300
                else ("{} / {} (log)".format(*PAPER_AT_10[name]) if ck == -10 else "-")
            )
            a = [mean_std(_heavy(acc, name, j, f), ".1f") for f in (0.0, 0.8, 0.9)]
            if flow:
                cost = [mean_std(r["steps"][j][ok], ".0f")]
            else:
                cost = [
                    mean_std(r["epochs"][j][ok], ".0f"),
                    mean_std(r["undone"][j][ok], ".0f"),
                    mean_std(r["steps"][j][ok], ".3g"),
                    f"{PAPER_EPOCHS[name][j]:,}",
                ]
            rows.append(
                [
                    f"{ck:g}",
                    PARAM_STYLE[name]["label"],
                    f"{int(ok.sum())}/{seeds}",
                    *cost,
                    mean_std(r["log_loss"][j][ok], ".4g"),
                    *a,
                    paper,
                ]
            )
    cost_heads = (
        ["solver steps"]
        if flow
        else ["kept epochs", "undone epochs", "SGD steps (kept)", "Exp-WN kept epochs"]
    )
    if flow:
        how = (
            f"exact loss-normalized gradient flow d theta/ds = -grad log L (diffrax Tsit5, rtol "
            f"{options.rtol:g}, atol {options.rtol * 1e-2:g}), full batch, on the **ReLU^2** "
            "variant of the net (plain ReLU makes the flow a differential inclusion); each "
            "checkpoint is the root-found crossing of its level."
        )
    else:
        spe = next(iter(res.values()))["steps_per_epoch"]  # the same for every one
        how = (
            f"**plain ReLU**, minibatch SGD, batch {options.batch_size} ({spe} steps per "
            "epoch), step eta0 grad(L_b)/L with L_b the batch's mean loss and L the full "
            "training loss at the epoch's start (Exp-WN's eta0/L); eta0 starts at "
            f"{options.lr:g}; an epoch that raises the full training loss is undone and "
            "eta0 /= 1.1, else eta0 *= 1.1 (Exp-WN's MNIST code). Each seed runs until it "
            f"crosses -300 or has {options.max_epochs:,} kept epochs (Exp-WN's cap: 10,000 "
            "epochs of 469 steps). Checkpoint: the first kept epoch with log L below the "
            "level. Kept and undone epochs are counted to the crossing; SGD steps = kept "
            "epochs x steps per epoch."
        )
    lines = [
        "# pruning",
        "",
        *(
            [f"**PARTIAL**: finished so far: {finished or 'none'}; no verdict is drawn.", ""]
            if partial
            else []
        ),
        f"Data: {note}; inputs standardized by the training pixels' mean and std. MLP "
        f"{Xtr.shape[1]}-{width}-10, hidden bias, WN on the hidden layer only, Exp-WN's init "
        "(Kaiming normal weights, zero bias; the WN nets start as the same function), "
        "cross-entropy; **log L is the log of the mean training loss** (Exp-WN's convention). "
        f"Dynamics: {how} Pruning criterion: the single norm parameter (exp(a_u), |g_u|, "
        "||w_u||) at the checkpoint, no fine-tuning; a pruned neuron's outgoing weights are "
        f"zeroed. {seeds} seeds (vmapped); {jnp.asarray(Xtr).dtype}.",
        "",
        table(
            [
                "log L",
                "",
                "seeds there",
                *cost_heads,
                "log L at ckpt",
                "acc. 0% pruned",
                "acc. 80%",
                "acc. 90%",
                "paper (MNIST) 80% / 90%",
            ],
            rows,
        ),
        "",
        "Accuracies are test accuracies (%), mean ± std over the seeds that reached the level. "
        "Paper: the -300 numbers of the paper; (log): Exp-WN's published MNIST logs, seed 2356, "
        "which also give the Exp-WN kept epochs (469 steps each; undone epochs are not logged).",
        "",
        "Wall time (the trainings run side by side, one thread each): "
        + ", ".join(f"{PARAM_STYLE[k]['label']} {v:.0f} s" for k, v in wall.items())
        + ".",
    ]
    if not flow:
        lines += [
            "",
            "Where the runs ended: "
            + "; ".join(
                f"{PARAM_STYLE[k]['label']} {mean_std(r['final_epochs'], '.0f')} kept + "
                f"{mean_std(r['final_undone'], '.0f')} undone epochs, log L "
                f"{mean_std(r['final_log_loss'], '.4g')}, eta0 {mean_std(r['eta0'])}"
                for k, r in res.items()
            )
            + ". Exp-WN (paper): EWN reached -300 after 4,784 kept "
            f"epochs of {PAPER_STEPS_PER_EPOCH} steps ({4784 * PAPER_STEPS_PER_EPOCH:,} steps).",
        ]
        short = [s for s in (_ended(k, r, options) for k, r in res.items()) if s]
        if short:
            lines += ["", *short]
    else:
        short = [
            f"{PARAM_STYLE[k]['label']}: {int((~r['valid'][-1]).sum())} seed(s) short of "
            f"{CHECKPOINTS[-1]:g}: the solve stopped first (max_steps "
            f"{options.max_steps:,} per level, or a failed step)"
            for k, r in res.items()
            if (~r["valid"][-1]).any()
        ]
        if short:
            lines += ["", *short]
    lines += [
        "",
        "## Verdicts",
        "",
        *(render_verdicts(verdicts) if verdicts else ["No verdict: not every run has finished."]),
    ]
    return lines
