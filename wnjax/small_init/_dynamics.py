"""Dynamics from small initialization: alignment with ``u*``, escape, plateaus, the reduced net.

Gradient flow on the square loss from ``w(0) = delta w_0`` (Kumar & Haupt 2024, 2025):

- near the origin ``w/||w||`` aligns with the KKT point ``u*`` of the NCF
  (``wnjax.small_init.ncf_kkt_point``)
  while the loss has not moved;
- it escapes at ``T ~ delta^-(L-2)`` (``L > 2``) or ``T ~ log(1/delta)`` (``L = 2``);
- it then stops near the first saddle: a stationary point of the net restricted to the support
  of ``u*`` (``reduced_network``), while the weights off that support stay ``O(delta)``;
- saddle-to-saddle dynamics follow: plateaus of the loss (``find_plateaus``).

Times are plain gradient-flow times ``t``; for GD pass ``t = step * learning_rate``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._dynamics.flow import FlowResult, gradient_flow
from wnjax._losses import Loss, Square, get_loss
from wnjax._nets.parameterize import Parameterized, Standard, restore_type, to_standard
from wnjax._runtime.errors import InvalidInput
from wnjax.small_init._ncf import KKTPoint, trainable_vector


def relu2_teacher_data(
    key: PRNGKeyArray, n: int = 100, d: int = 6, teacher: tuple = ((0, 1.0), (1, -0.5))
) -> tuple[Array, Array]:
    """Points uniform on the unit sphere of ``R^d`` and ``y = sum_k c_k relu(x_{j_k})^2``.

    The default teacher is docs/theory.md §7's ``y = relu(x_1)^2 - 0.5 relu(x_2)^2``.

    **Arguments:**
    - `key`: a PRNG key.
    - `n`, `d`: number of points and input dimension.
    - `teacher`: pairs ``(coordinate j, coefficient c)``.

    **Returns:** ``(X, y)`` of shapes ``(n, d)`` and ``(n,)``.
    """
    if any(not 0 <= j < d for j, _ in teacher):
        raise InvalidInput(f"teacher coordinates must lie in 0..{d - 1}, got {teacher}.")
    X = jax.random.normal(key, (n, d))
    X = X / jnp.linalg.norm(X, axis=1, keepdims=True)
    y = sum(c * jax.nn.relu(X[:, j]) ** 2 for j, c in teacher)
    return X, y


def scale_to_norm(model: PyTree, norm: float) -> PyTree:
    """The model with its trainable weights rescaled to ``||w|| = norm`` (frozen layers untouched).

    ``w(0) = delta w_0 / ||w_0||`` makes ``||w(0)|| = delta`` exactly.
    """
    w, build = trainable_vector(model)
    return restore_type(build(w * (norm / jnp.linalg.norm(w))), model)


def _flat_states(states: PyTree) -> Array:
    return eqx.filter_vmap(lambda s: trainable_vector(s)[0])(states)


def direction_cosines(states: PyTree, u: Array | PyTree) -> Array:
    """``cos(w/||w||, u*) = <w, u*> / (||w|| ||u*||)`` at each of the stacked ``states``.

    **Arguments:**
    - `states`: models stacked along axis 0 (``FlowResult.states``, ``GDResult.states``).
    - `u`: ``u*`` as a flat vector (``KKTPoint.vector``) or a model.

    **Returns:** one cosine per state (``nan`` for states past the end of a run).
    """
    W = _flat_states(states)
    u = u if isinstance(u, jax.Array) else trainable_vector(u)[0]
    return (W @ u) / (jnp.linalg.norm(W, axis=1) * jnp.linalg.norm(u))


def weight_norms(states: PyTree) -> Array:
    """``||w||`` of the trainable weights at each stacked state."""
    return jnp.linalg.norm(_flat_states(states), axis=1)


def unit_norms(model: PyTree) -> Array:
    """Norms of the hidden units of a chain of ``Linear`` layers:
    ``sqrt(||W_k[j]||^2 + ||W_{k+1}[:, j]||^2)``.

    Unit ``j`` of hidden layer ``k`` owns its incoming row and its outgoing column; only
    trainable layers count (a frozen output layer adds nothing). Works on one model; vmap it
    over stacked states.
    """
    w, build = trainable_vector(model)
    p = build(w)
    ws = [layer.weight() for layer in p.layers]
    trainable = [isinstance(layer, Standard) for layer in p.layers]
    if any(w.ndim != 2 for w in ws) or any(
        ws[k + 1].shape[1] != ws[k].shape[0] for k in range(len(ws) - 1)
    ):
        raise InvalidInput(
            "unit_norms needs a chain of eqx.nn.Linear layers (an MLP); for other models use "
            "model.neuron_norms() (incoming weights only)."
        )
    norms = []
    for k in range(len(ws) - 1):
        sq = jnp.zeros(ws[k].shape[0], ws[k].dtype)
        if trainable[k]:
            sq = sq + jnp.sum(ws[k] ** 2, axis=1)
        if trainable[k + 1]:
            sq = sq + jnp.sum(ws[k + 1] ** 2, axis=0)
        norms.append(jnp.sqrt(sq))
    return jnp.concatenate(norms)


def stacked_unit_norms(states: PyTree) -> Array:
    """``unit_norms`` at each stacked state: shape ``(n_states, n_units)``."""
    return eqx.filter_vmap(unit_norms)(states)


def crossing_time(ts: Array, values: Array, level: float, *, rising: bool = True) -> float:
    """The first time a sampled curve crosses ``level``, interpolated linearly in ``log t``.

    **Arguments:**
    - `ts`: increasing sample times (non-finite entries, e.g. past the end of a run, are dropped).
    - `values`: the curve at ``ts``.
    - `level`: the threshold.
    - `rising`: look for ``values >= level`` (``False``: ``values <= level``).

    **Returns:** the crossing time, ``0`` if the curve starts past ``level``, ``inf`` if it never
    crosses.
    """
    ts, values = np.asarray(ts, float), np.asarray(values, float)
    keep = np.isfinite(ts) & np.isfinite(values)
    ts, values = ts[keep], values[keep]
    past = values >= level if rising else values <= level
    hits = np.flatnonzero(past)
    if hits.size == 0:
        return float("inf")
    k = int(hits[0])
    if k == 0:
        return float(ts[0])
    t0, t1, v0, v1 = ts[k - 1], ts[k], values[k - 1], values[k]
    frac = (level - v0) / (v1 - v0)
    if t0 > 0:
        return float(np.exp(np.log(t0) + frac * (np.log(t1) - np.log(t0))))
    return float(t0 + frac * (t1 - t0))


def interpolate_at(ts: Array, values: Array, t: float) -> float:
    """``values`` at time ``t``, interpolated linearly in ``log t`` (``nan`` outside the
    samples)."""
    ts, values = np.asarray(ts, float), np.asarray(values, float)
    keep = np.isfinite(ts) & np.isfinite(values) & (ts > 0)
    if not np.isfinite(t) or t <= 0 or not keep.any():
        return float("nan")
    return float(np.interp(np.log(t), np.log(ts[keep]), values[keep], left=np.nan, right=np.nan))


def escape_time(ts: Array, log_loss: Array, drop: float = 0.01) -> float:
    """The first time the loss has fallen by the fraction ``drop``: ``L(t) = (1 - drop) L(0)``."""
    log_loss = np.asarray(log_loss, float)
    return crossing_time(ts, log_loss, log_loss[0] + np.log1p(-drop), rising=False)


def flow_escape_time(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    t1: float,
    loss: str | Loss | None = None,
    drop: float = 0.01,
    n_save: int = 2000,
    rtol: float = 1e-10,
    atol: float = 1e-14,
    max_steps: int = 400_000,
) -> tuple[float, int]:
    """The time at which gradient flow from ``model`` has lowered the loss by ``drop``.

    Two flows: the first stops once the loss has fallen by ``3 drop`` (an event) at time ``T_f``;
    the second saves ``n_save`` points on ``[0.8 T_f, T_f]``, between which the crossing of
    ``(1 - drop) L(0)`` is interpolated. Escapes are sudden (the loss moves from 1% to 3% in a
    small fraction of ``T``), so a single log-spaced grid would miss them.

    **Arguments:**
    - `model`: the initial model (e.g. ``scale_to_norm(model, delta)``).
    - `X`, `y`: the data.
    - `t1`: the horizon (must exceed the escape time).
    - `loss`: default ``Square(mean=True)``.
    - `drop`: the relative loss drop that defines the escape.
    - `n_save`, `rtol`, `atol`, `max_steps`: flow settings.

    **Returns:** ``(T, num_steps)``; ``T = inf`` if the loss never dropped by ``3 drop``.
    """
    loss_obj = Square(mean=True) if loss is None else get_loss(loss)
    X, y = jnp.asarray(X), jnp.asarray(y)
    log_l0 = float(loss_obj.log_loss(jax.vmap(to_standard(model))(X), y))
    target = log_l0 + float(np.log1p(-min(3 * drop, 0.5)))
    kw = dict(
        loss=loss_obj,
        t1=t1,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        target_log_loss=target,
        save_states=False,
        throw=False,
    )
    first = gradient_flow(model, X, y, save_ts=np.linspace(0.0, t1, n_save), **kw)
    if not bool(first.reached_target):
        return float("inf"), int(first.stats["num_steps"])
    t_f = float(first.final_time)
    grid = np.concatenate([[0.0], np.linspace(0.8 * t_f, t_f, n_save - 1)])
    second = gradient_flow(model, X, y, save_ts=grid, **kw)
    ts = np.asarray(second.ts)
    ll = np.asarray(second.log_loss)
    T = crossing_time(ts, ll, log_l0 + float(np.log1p(-drop)), rising=False)
    return T, int(first.stats["num_steps"]) + int(second.stats["num_steps"])


class Plateau(NamedTuple):
    """A stretch where ``|d log L / d log t| < tol``.

    - `start`, `end`: its first and last times;
    - `log_loss`: ``log L`` where ``|d log L / d log t|`` is smallest (the closest approach to the
      stationary point under gradient flow, where ``|dL/dt| = ||grad L||^2`` is smallest);
    - `time`: the time of that point; `slope`: the slope there.
    """

    start: float
    end: float
    log_loss: float
    time: float
    slope: float


def find_plateaus(
    ts: Array, log_loss: Array, *, tol: float = 1e-3, min_ratio: float = 1.2
) -> list[Plateau]:
    """Plateaus of a loss curve: maximal runs with ``|d log L / d log t| < tol`` over
    ``t_end/t_start >= min_ratio``.

    Slopes are finite differences between consecutive samples (use a log-spaced, dense grid).
    The first plateau is usually the one at the origin, at the initial loss.

    **Arguments:**
    - `ts`: sample times (plain time, or ``step * learning_rate`` for GD); ``t <= 0`` and
      non-finite samples are dropped.
    - `log_loss`: ``log L`` at ``ts``.
    - `tol`: the largest ``|d log L / d log t|`` on a plateau.
    - `min_ratio`: the shortest plateau, as a ratio of end to start time.

    **Returns:** a list of ``Plateau``, in time order.
    """
    ts, ll = np.asarray(ts, float), np.asarray(log_loss, float)
    keep = np.isfinite(ts) & np.isfinite(ll) & (ts > 0)
    ts, ll = ts[keep], ll[keep]
    if ts.size < 3:
        return []
    slope = np.diff(ll) / np.diff(np.log(ts))
    flat = np.abs(slope) < tol
    out = []
    k = 0
    while k < flat.size:
        if not flat[k]:
            k += 1
            continue
        j = k
        while j + 1 < flat.size and flat[j + 1]:
            j += 1
        a, b = k, j + 1  # sample indices spanning intervals k..j
        if ts[b] / ts[a] >= min_ratio:
            best = k + int(np.argmin(np.abs(slope[k : j + 1])))
            out.append(
                Plateau(
                    float(ts[a]), float(ts[b]), float(ll[best]), float(ts[best]), float(slope[best])
                )
            )
        k = j + 1
    return out


def saddle_plateaus(plateaus: list[Plateau], log_loss0: float, drop: float = 0.01) -> list[Plateau]:
    """The plateaus after the escape from the origin: those below ``(1 - drop) L(0)``."""
    return [p for p in plateaus if p.log_loss < log_loss0 + np.log1p(-drop)]


class SupportMask(eqx.Module):
    """A gradient mask for ``gradient_flow(rate=...)``: only weights on a support move.

    ``rate(grads, params)`` multiplies the gradient of every trainable layer by its 0/1 mask,
    so the flow is that of the network reduced to the support.
    """

    masks: tuple

    def __call__(self, grads: Parameterized, params: Parameterized) -> Parameterized:
        layers = tuple(
            g if m is None else Standard(g.w * m) for g, m in zip(grads.layers, self.masks)
        )
        return eqx.tree_at(lambda t: t.layers, grads, layers)


def support(vector: Array, tol: float = 1e-6) -> Array:
    """The support of ``u*``: entries with ``|u_k| > tol max_k |u_k|`` (a boolean vector)."""
    a = jnp.abs(vector)
    return a > tol * jnp.max(a)


class ReducedNetwork(eqx.Module):
    """The net restricted to the support of ``u*``, trained alone from ``scale u*``.

    - `flow`: the ``FlowResult`` of that run (full model, off-support weights fixed at 0);
    - `mask`: the support as a flat boolean vector;
    - `log_loss`: its final (stationary) ``log L``: the predicted first-plateau loss;
    - `grad_norm`: ``||grad L||`` on the support at the end (small when stationary).
    """

    flow: FlowResult
    mask: Array
    log_loss: Array
    grad_norm: Array


def reduced_network(
    kkt: KKTPoint | PyTree,
    X: Array,
    y: Array,
    *,
    loss: str | Loss | None = None,
    scale: float = 1e-3,
    t1: float | None = None,
    support_tol: float = 1e-6,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int = 200_000,
    n_save: int = 256,
) -> ReducedNetwork:
    """Train the network reduced to ``u*``'s support by gradient flow from ``scale u*``.

    Its stationary point is the first saddle that the full flow from small initialization
    reaches; its loss predicts the first plateau.

    **Arguments:**
    - `kkt`: a ``KKTPoint`` (from ``ncf_kkt_point``), or ``u*`` as a model.
    - `X`, `y`: the data.
    - `loss`: the loss (default: ``Square(mean=True)``, half the mean squared residual).
    - `scale`: ``||w(0)||`` of the reduced run (small: the path from the origin along ``u*``).
    - `t1`: the horizon; default ``4`` times the escape time along ``u*`` plus ``10^4``.
    - `support_tol`: ``u*``'s entries above ``support_tol max|u*|`` form the support.
    - `rtol`, `atol`, `max_steps`, `n_save`: passed to ``gradient_flow``.

    **Returns:** a ``ReducedNetwork``.
    """
    loss_obj = Square(mean=True) if loss is None else get_loss(loss)
    X, y = jnp.asarray(X), jnp.asarray(y)
    model = kkt.u if isinstance(kkt, KKTPoint) else kkt
    u, build = trainable_vector(model)
    u = u / jnp.linalg.norm(u)
    mask = support(u, support_tol)
    start = build(scale * jnp.where(mask, u, 0.0))
    masks, offset = [], 0
    for layer in start.layers:
        if isinstance(layer, Standard):
            size = layer.w.size
            masks.append(mask[offset : offset + size].reshape(layer.w.shape).astype(u.dtype))
            offset += size
        else:
            masks.append(None)
    rate = SupportMask(tuple(masks))
    if t1 is None:
        from wnjax.small_init._ncf import neural_correlation, trainable_degree

        L = trainable_degree(model, X)
        c = 1.0 / X.shape[0] if getattr(loss_obj, "mean", False) else 1.0
        growth = c * L * float(neural_correlation(start, X, y)) / scale**L
        if not growth > 0:
            raise ValueError("N(u*) <= 0: the flow along u* does not leave the origin.")
        # Along u*: d r/dt = c L N(u*) r^(L-1), so r blows up at 1/((L-2) growth r0^(L-2)).
        T = np.log(1.0 / scale) / growth if L <= 2 else 1.0 / ((L - 2) * growth * scale ** (L - 2))
        t1 = 4.0 * T + 1e4
    flow = gradient_flow(
        start,
        X,
        y,
        loss=loss_obj,
        t1=t1,
        rate=rate,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        n_save=n_save,
        save_states=False,
    )
    final = flow.final

    def masked_grad(v):
        return jax.grad(lambda v: jnp.exp(loss_obj.log_loss(jax.vmap(build(v))(X), y)))(v)

    w_final = trainable_vector(final)[0]
    g = jnp.where(mask, masked_grad(w_final), 0.0)
    return ReducedNetwork(
        flow=flow, mask=mask, log_loss=flow.final_log_loss, grad_norm=jnp.linalg.norm(g)
    )


def log_save_times(t1: float, n: int = 2000, decades: float = 8.0) -> np.ndarray:
    """``0`` and ``n - 1`` log-spaced times from ``t1 10^-decades`` to ``t1``: a dense grid for
    plateaus."""
    return np.concatenate([[0.0], t1 * np.logspace(-decades, 0, n - 1)])


class SmallInitDiagnostics(NamedTuple):
    """Diagnostics of one run from ``||w(0)|| = delta`` (see ``small_init_diagnostics``).

    - `ts`, `log_loss`, `cosines`, `norms`: per save point (time, ``log L``, ``cos(w, u*)``,
      ``||w||``);
    - `unit_norms`: per save point and hidden unit (``None`` for non-MLP models);
    - `escape_time`: when the loss has fallen by ``drop``, interpolated on the save grid (escapes
      are sudden; ``flow_escape_time`` gives it to solver accuracy);
    - `cos_at_escape`: ``cos(w, u*)`` at the last save point before the escape;
    - `k_levels`, `k_times`, `k_cosines`: the times when ``||w||`` first exceeds ``K delta``
      and the cosines there;
    - `plateaus`: all plateaus; `saddles`: those after the escape;
    - `inactive_norms`: unit norms off ``u*``'s support when the first saddle plateau starts.
    """

    ts: np.ndarray
    log_loss: np.ndarray
    cosines: np.ndarray
    norms: np.ndarray
    unit_norms: np.ndarray | None
    escape_time: float
    cos_at_escape: float
    k_levels: np.ndarray
    k_times: np.ndarray
    k_cosines: np.ndarray
    plateaus: list
    saddles: list
    inactive_norms: np.ndarray | None


def small_init_diagnostics(
    ts: Array,
    log_loss: Array,
    states: PyTree,
    kkt: KKTPoint,
    delta: float,
    *,
    k_levels=(3.0, 10.0, 30.0, 100.0),
    drop: float = 0.01,
    plateau_tol: float = 1e-3,
    min_ratio: float = 1.2,
    support_tol: float = 1e-6,
) -> SmallInitDiagnostics:
    """Alignment, escape, plateaus and inactive norms of one run from ``||w(0)|| = delta``.

    **Arguments:**
    - `ts`, `log_loss`, `states`: save times, ``log L`` and stacked states of a run
      (``FlowResult.ts``; for GD, ``steps * learning_rate``).
    - `kkt`: the NCF's KKT point reached from the run's initial direction.
    - `delta`: ``||w(0)||``.
    - `k_levels`: the ``K`` at which to read ``cos(w, u*)`` (``||w|| = K delta``).
    - `drop`: the loss drop that defines the escape.
    - `plateau_tol`, `min_ratio`: passed to ``find_plateaus``.
    - `support_tol`: a unit is active in ``u*`` if its norm exceeds ``support_tol``.

    **Returns:** a ``SmallInitDiagnostics``.
    """
    ts = np.asarray(ts, float)
    log_loss = np.asarray(log_loss, float)
    cos = np.asarray(direction_cosines(states, kkt.vector))
    norms = np.asarray(weight_norms(states))
    t_esc = escape_time(ts, log_loss, drop)
    before = np.flatnonzero(np.isfinite(ts) & (ts < t_esc))
    cos_esc = float(cos[before[-1]]) if before.size else float("nan")
    k_levels = np.asarray(k_levels, float)
    k_times = np.array([crossing_time(ts, norms, k * delta) for k in k_levels])
    k_cos = np.array([interpolate_at(ts, cos, t) for t in k_times])
    plateaus = find_plateaus(ts, log_loss, tol=plateau_tol, min_ratio=min_ratio)
    saddles = saddle_plateaus(plateaus, log_loss[0], drop)
    try:
        units = np.asarray(stacked_unit_norms(states))
        active = np.asarray(unit_norms(kkt.u)) > support_tol
    except ValueError:
        units, active = None, None
    inactive = None
    if units is not None and saddles:
        k = int(np.flatnonzero(ts >= saddles[0].start)[0])
        inactive = units[k, ~active]
    return SmallInitDiagnostics(
        ts=ts,
        log_loss=log_loss,
        cosines=cos,
        norms=norms,
        unit_norms=units,
        escape_time=t_esc,
        cos_at_escape=cos_esc,
        k_levels=k_levels,
        k_times=k_times,
        k_cosines=k_cos,
        plateaus=plateaus,
        saddles=saddles,
        inactive_norms=inactive,
    )


def fit_escape_scaling(deltas: Array, times: Array, degree: float) -> dict:
    """Fit escape times against ``delta``: a power law for ``L > 2``, a log law for ``L = 2``.

    - ``L > 2``: least squares ``log T = log C - p log delta``; theory ``p = L - 2``;
    - ``L = 2``: least squares ``T = a log(1/delta) + b``; theory: ``T`` linear in ``log(1/delta)``
      (the power-law exponent ``p`` is reported too, and drifts with ``delta``).

    **Returns:** dict with ``exponent`` (``p``), ``prefactor`` (``C``), ``log_slope`` (``a``),
    ``log_intercept`` (``b``), ``theory_exponent``, and the residual rms of each fit.
    """
    d, T = np.asarray(deltas, float), np.asarray(times, float)
    ok = np.isfinite(T) & (T > 0)
    if ok.sum() < 2:
        raise ValueError("need at least two finite escape times to fit a scaling law.")
    d, T = d[ok], T[ok]
    A = np.stack([np.ones_like(d), -np.log(d)], axis=1)
    (logc, p), *_ = np.linalg.lstsq(A, np.log(T), rcond=None)
    (b, a), *_ = np.linalg.lstsq(A, T, rcond=None)
    return {
        "exponent": float(p),
        "prefactor": float(np.exp(logc)),
        "power_rms": float(np.sqrt(np.mean((A @ [logc, p] - np.log(T)) ** 2))),
        "log_slope": float(a),
        "log_intercept": float(b),
        "log_rms_rel": float(np.sqrt(np.mean(((A @ [b, a] - T) / T) ** 2))),
        "theory_exponent": float(max(degree - 2, 0.0)),
    }
