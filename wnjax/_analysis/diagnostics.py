"""Diagnostics of the asymptotic regime (docs/theory.md §3), all computed in log space.

Per-neuron quantities are over the neurons of the trainable (non-frozen) layers, in the order of
``wnjax.weight_layers``. ``nabla_u = dL/dw_u`` is the gradient with respect to the plain weights
``w_u``, whatever the parameterization. Since ``L`` underflows below ``log L ~ -745``, gradients
are carried as ``log ||nabla_u L|| = log L + log ||nabla_u log L||``.

- normalized margin ``gamma = min_i q_i / ||w||^L``;
- relative norms ``||w_u|| / ||w||`` and the count above a threshold;
- alignment ``cos(w_u, -nabla_u L)``;
- relation residuals ``log(||w_u|| / ||nabla_u L||)`` (SWN, unnormalized) and
  ``log(||w_u|| ||nabla_u L||)`` (EWN), with their spread std/|mean| over surviving neurons;
- the loss-vector direction ``l / ||l||``;
- Lyu & Li's approximate KKT residuals of ``min ||w||^2 s.t. q_i >= 1``;
- a fit of the loss rate ``log L = c - alpha log t - beta log log t``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from wnjax._losses import Loss, get_loss
from wnjax._nets.dense import apply_batch, apply_each
from wnjax._nets.neurons import concat_rows, row_norms
from wnjax._nets.parameterize import (
    Frozen,
    Parameterized,
    Standard,
    as_parameterized,
    free_arrays,
    replace_free_arrays,
    trainable_weight_norm,
)
from wnjax._runtime.errors import InvalidInput
from wnjax._runtime.precision import in_float32
from wnjax._runtime.validate import check_data, check_options


def _trainable_weights(p: Parameterized) -> list[Array]:
    return [layer.weight() for layer in p.layers if not isinstance(layer, Frozen)]


def _plain(p: Parameterized) -> Parameterized:
    """The same function with every trainable layer as ``Standard(w)`` (frozen layers kept)."""
    layers = tuple(
        layer if isinstance(layer, Frozen) else Standard(layer.weight()) for layer in p.layers
    )
    return Parameterized(skeleton=p.skeleton, layers=layers)


def neuron_norms_trainable(model: PyTree) -> Array:
    """``||w_u||`` for every neuron of the trainable layers, concatenated over layers."""
    return concat_rows([row_norms(w) for w in _trainable_weights(as_parameterized(model))])


def relative_neuron_norms(model: PyTree) -> Array:
    """``||w_u|| / ||w||``, with ``||w||`` the norm of all trainable weights (the layers' and the
    model's bare weight arrays, ``free_arrays``)."""
    p = as_parameterized(model)
    return neuron_norms_trainable(p) / trainable_weight_norm(p)


def count_neurons_above(model: PyTree, threshold: float = 0.05) -> Array:
    """The number of neurons with relative norm ``||w_u|| / ||w|| > threshold``."""
    return jnp.sum(relative_neuron_norms(model) > threshold)


@in_float32
def normalized_margin(
    model: PyTree, X: Array, y: Array, degree: float, loss: str | Loss = "exponential"
) -> Array:
    """``gamma(w) = min_i q_i / ||w||^L`` with ``L = degree`` and ``||w||`` over trainable weights
    (the layers' and the model's bare weight arrays, ``free_arrays``; not biases).

    It does not change when ``w`` is scaled:

    ```python
    >>> import jax.numpy as jnp, wnjax
    >>> X, y = jnp.array([[1.0, 1.0], [-1.0, 1.0]]), jnp.array([-1.0, 1.0])
    >>> w = jnp.array([-1.0, 0.5])  # margins 0.5 and 1.5, ||w|| = 1.118
    >>> g1 = wnjax.normalized_margin(wnjax.CoordinateLinear(w), X, y, degree=1)
    >>> g3 = wnjax.normalized_margin(wnjax.CoordinateLinear(3 * w), X, y, degree=1)
    >>> round(float(g1), 4), bool(jnp.isclose(g1, g3))
    (0.4472, True)

    ```
    """
    _check_degree(degree)
    p = as_parameterized(model)
    loss = get_loss(loss)
    X, y = check_data(X, y, loss)
    q = loss.margins(apply_each(p, X), y)
    return jnp.min(q) / trainable_weight_norm(p) ** degree


def _check_degree(degree) -> None:
    """Raise ``InvalidInput`` unless ``degree`` (when not traced) is positive and finite."""
    check_options(degree=degree)
    if not isinstance(degree, jax.core.Tracer) and float(np.asarray(degree)) <= 0:
        raise InvalidInput(f"degree must be positive (the homogeneity degree L), got {degree!r}.")


def _grad_log_loss_w(p: Parameterized, X: Array, y: Array, loss: Loss):
    """``(log L, [grad_w log L per trainable layer])`` at the plain weights of ``p``."""
    plain = _plain(p)

    def f(layers):
        return loss.log_loss(apply_each(eqx.tree_at(lambda m: m.layers, plain, layers), X), y)

    value, g = jax.value_and_grad(f)(plain.layers)
    grads = [gl.w for gl, layer in zip(g, p.layers) if not isinstance(layer, Frozen)]
    return value, grads


@in_float32
def log_neuron_gradient_norms(
    model: PyTree, X: Array, y: Array, loss: str | Loss = "exponential"
) -> Array:
    """``log ||nabla_u L|| = log L + log ||nabla_u log L||`` per trainable neuron (no underflow)."""
    loss = get_loss(loss)
    X, y = check_data(X, y, loss)
    value, grads = _grad_log_loss_w(as_parameterized(model), X, y, loss)
    return value + jnp.log(concat_rows([row_norms(g) for g in grads]))


@in_float32
def alignment(model: PyTree, X: Array, y: Array, loss: str | Loss = "exponential") -> Array:
    """``cos(w_u, -nabla_u L)`` per trainable neuron (``nan`` where the gradient is zero)."""
    p = as_parameterized(model)
    loss = get_loss(loss)
    X, y = check_data(X, y, loss)
    _, grads = _grad_log_loss_w(p, X, y, loss)
    cos = []
    for w, g in zip(_trainable_weights(p), grads):
        wf, gf = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
        cos.append(-jnp.sum(wf * gf, axis=1) / (row_norms(w) * row_norms(g)))
    return concat_rows(cos)


def _spread(x: Array, mask: Array) -> Array:
    """std/|mean| of ``x`` over ``mask`` (``nan`` if fewer than two entries)."""
    k = jnp.sum(mask)
    mean = jnp.sum(jnp.where(mask, x, 0.0)) / k
    var = jnp.sum(jnp.where(mask, (x - mean) ** 2, 0.0)) / k
    return jnp.where(k >= 2, jnp.sqrt(var) / jnp.abs(mean), jnp.nan)


@in_float32
def relation_residuals(
    model: PyTree,
    X: Array,
    y: Array,
    loss: str | Loss = "exponential",
    threshold: float = 0.05,
) -> dict:
    """The weight-gradient relations of docs/theory.md §3, per neuron and as spreads.

    - ``log_ratio = log(||w_u|| / ||nabla_u L||)``: constant over neurons for SWN/unnormalized;
    - ``log_product = log(||w_u|| ||nabla_u L||)``: constant over surviving neurons for EWN.

    **Arguments:**
    - `model`, `X`, `y`, `loss`: the state and data.
    - `threshold`: a neuron survives if its relative norm exceeds it (and its gradient is nonzero).

    **Returns:** a dict with ``log_ratio``, ``log_product``, ``surviving`` (bool per neuron), and
    the spreads std/|mean| over the surviving neurons, ``ratio_spread`` and ``product_spread``.
    """
    p = as_parameterized(model)
    log_w = jnp.log(neuron_norms_trainable(p))
    log_g = log_neuron_gradient_norms(p, X, y, loss)
    surviving = (relative_neuron_norms(p) > threshold) & jnp.isfinite(log_g)
    ratio, product = log_w - log_g, log_w + log_g
    return {
        "log_ratio": ratio,
        "log_product": product,
        "surviving": surviving,
        "ratio_spread": _spread(ratio, surviving),
        "product_spread": _spread(product, surviving),
    }


def _log_losses_per_example(outputs: Array, y: Array, loss: Loss) -> Array:
    return jax.vmap(lambda o, t: loss.log_loss(o[None], t[None]))(outputs, y)


@in_float32
def loss_direction(model: PyTree, X: Array, y: Array, loss: str | Loss = "exponential") -> Array:
    """The unit loss vector ``l / ||l||``, ``l_i = l(q_i)``: ``exp(log l_i - log ||l||)``."""
    loss = get_loss(loss)
    X, y = check_data(X, y, loss)
    log_l = _log_losses_per_example(jax.vmap(as_parameterized(model))(X), y, loss)
    return jnp.exp(log_l - 0.5 * jax.scipy.special.logsumexp(2.0 * log_l))


@in_float32
def approximate_kkt_residual(
    model: PyTree, X: Array, y: Array, degree: float, loss: str | Loss = "exponential"
) -> dict:
    """Approximate KKT residuals of ``min ||w||^2/2 s.t. q_i(w) >= 1`` at the normalized point.

    Following Lyu & Li (2020): rescale to ``w~ = w / q_min^(1/L)`` (so ``min_i q_i(w~) = 1``) and
    take multipliers proportional to the loss weights, ``lambda_i = beta p_i`` with
    ``p_i = -l'(q_i) / sum_j -l'(q_j)``; ``beta`` is fitted by least squares. Then

    - stationarity: ``eps = ||w~ - sum_i lambda_i grad q_i(w~)|| / ||w~||``, which equals
      ``sin angle(w, -grad L)``;
    - complementary slackness: ``delta = sum_i lambda_i (q_i(w~) - 1) >= 0``.

    Both tend to 0 along gradient flow (Lyu & Li, Theorem 4.4). ``nan`` before separation
    (``q_min <= 0``). Binary margin losses only.

    **Returns:** a dict with ``stationarity``, ``complementary_slackness`` and ``beta``.
    """
    loss = get_loss(loss)
    if not (loss.binary and loss.margin_based):
        raise InvalidInput(
            "approximate_kkt_residual needs a binary margin loss ('exponential' or "
            "'logistic'), got "
            f"{type(loss).__name__}."
        )
    _check_degree(degree)
    X, y = check_data(X, y, loss)
    p = _plain(as_parameterized(model))
    q = loss.margins(apply_each(p, X), y)
    q_min = jnp.min(q)
    c = jnp.where(q_min > 0, q_min, jnp.nan) ** (-1.0 / degree)
    # p_i from d log L / d q_i = l'(q_i)/L (computed in log space).
    weights = -jax.grad(lambda qq: loss.log_loss(qq, jnp.ones_like(qq)))(q)

    def weighted_margin(layers, free):
        m = eqx.tree_at(lambda t: t.layers, p, layers)
        m = replace_free_arrays(m, free)
        return jnp.sum(jax.lax.stop_gradient(weights) * loss.margins(apply_each(m, X), y))

    # grad q_i(c w) = c^(L-1) grad q_i(w); q_i(c w) = c^L q_i(w). ``w`` is every trainable
    # weight: the non-frozen layers' and the model's bare arrays.
    free = free_arrays(p)
    g, g_free = jax.grad(weighted_margin, argnums=(0, 1))(p.layers, free)
    idx = [i for i, layer in enumerate(p.layers) if not isinstance(layer, Frozen)]
    w_vec = c * jnp.concatenate([p.layers[i].w.ravel() for i in idx] + [x.ravel() for x in free])
    g_vec = c ** (degree - 1) * jnp.concatenate(
        [g[i].w.ravel() for i in idx] + [x.ravel() for x in g_free]
    )
    beta = jnp.dot(w_vec, g_vec) / jnp.dot(g_vec, g_vec)
    stationarity = jnp.linalg.norm(w_vec - beta * g_vec) / jnp.linalg.norm(w_vec)
    slack = beta * jnp.sum(weights * (c**degree * q - 1.0))
    return {"stationarity": stationarity, "complementary_slackness": slack, "beta": beta}


@in_float32
def asymptotic_summaries(
    p: Parameterized, X: Array, y: Array, loss: Loss, degree: Array, threshold: float = 0.05
) -> dict:
    """The per-state diagnostics saved along flows and GD runs (KKT: binary margin losses)."""
    rel = relative_neuron_norms(p)
    res = relation_residuals(p, X, y, loss, threshold)
    out = {
        "relative_norms": rel,
        "neurons_above": jnp.sum(rel > threshold).astype(rel.dtype),
        "alignment": alignment(p, X, y, loss),
        "log_grad_norms": log_neuron_gradient_norms(p, X, y, loss),
        "ratio_spread": res["ratio_spread"],
        "product_spread": res["product_spread"],
        "loss_direction": loss_direction(p, X, y, loss),
    }
    if loss.binary and loss.margin_based:
        kkt = approximate_kkt_residual(p, X, y, degree, loss)
        out["kkt_stationarity"] = kkt["stationarity"]
        out["kkt_slackness"] = kkt["complementary_slackness"]
    return out


def loss_rate_exponents(
    log_t: Array,
    log_loss: Array,
    *,
    window: tuple[float, float] | None = None,
    t_exponent: float | None = 1.0,
) -> dict:
    """Fit ``log L = c - alpha log t - beta log log t`` by least squares over a window of ``log t``.

    ``L = Theta(1 / (t (log t)^beta))``: ``beta = 2`` for EWN, ``2 - 2/L`` for unnormalized
    L-homogeneous nets (docs/theory.md §3). ``log t`` and ``log log t`` are nearly collinear over
    short windows, so by default ``alpha`` is held at 1 and only ``beta`` is fitted; pass
    ``t_exponent=None`` to fit both.

    **Arguments:**
    - `log_t`, `log_loss`: samples of ``log t`` and ``log L`` (non-finite ones are dropped).
    - `window`: ``(lo, hi)`` bounds on ``log t``; default all points with ``log t > 1``.
    - `t_exponent`: the fixed ``alpha``, or ``None`` to fit it.

    **Returns:** a dict with ``t_exponent`` (alpha), ``log_t_exponent`` (beta), ``intercept``,
    ``rms_residual`` and ``num_points``.
    """
    lt, ll = np.asarray(log_t, np.float64), np.asarray(log_loss, np.float64)
    lo, hi = window if window is not None else (1.0, np.inf)
    keep = np.isfinite(lt) & np.isfinite(ll) & (lt > max(lo, 0.0)) & (lt <= hi)
    if keep.sum() < 3:
        raise InvalidInput(
            f"the loss-rate fit needs at least 3 points with log t in ({lo}, {hi}] and log t > 0; "
            f"got {int(keep.sum())}. Widen the window or save more points."
        )
    lt, ll = lt[keep], ll[keep]
    llt = np.log(lt)
    if t_exponent is None:
        A = np.stack([np.ones_like(lt), -lt, -llt], axis=1)
        coef, *_ = np.linalg.lstsq(A, ll, rcond=None)
        c, alpha, beta = coef
    else:
        alpha = float(t_exponent)
        A = np.stack([np.ones_like(lt), -llt], axis=1)
        (c, beta), *_ = np.linalg.lstsq(A, ll + alpha * lt, rcond=None)
    fit = c - alpha * lt - beta * llt
    return {
        "t_exponent": float(alpha),
        "log_t_exponent": float(beta),
        "intercept": float(c),
        "rms_residual": float(np.sqrt(np.mean((ll - fit) ** 2))),
        "num_points": int(keep.sum()),
    }


@in_float32
def summaries(
    p: Parameterized, X: Array, y: Array, loss: Loss, degree: Array, diagnostics: bool = True
) -> dict:
    """Diagnostics of one state: loss and log loss, margins, normalized margin, per-neuron norms,
    and the asymptotic diagnostics of ``wnjax.asymptotic_summaries`` (relative norms, alignment,
    relation spreads, loss direction, KKT residuals).

    The normalized margin is ``min_i q_i / ||w||^L`` with ``L = degree`` and ``||w||`` over the
    trainable weights (``trainable_weight_norm``).

    **Arguments:**
    - `p`: a ``Parameterized`` model.
    - `X`, `y`: the data.
    - `loss`: a ``Loss``.
    - `degree`: the homogeneity degree ``L``.
    - `diagnostics`: also the asymptotic diagnostics.

    **Returns:** dict with ``log_loss``, ``loss``, ``min_margin``, ``normalized_margin``,
    ``weight_norm``, ``neuron_norms``, ``direction_norms`` and, with ``diagnostics``, the fields
    of ``asymptotic_summaries``.
    """
    outputs = apply_batch(p, X)
    min_margin = jnp.min(loss.margins(outputs, y))
    log_l = loss.log_loss(outputs, y)
    out = {
        "log_loss": log_l,
        "loss": jnp.exp(log_l),  # underflows to 0 below log L ~ -745; log_loss does not
        "min_margin": min_margin,
        "normalized_margin": min_margin / trainable_weight_norm(p) ** degree,
        "weight_norm": trainable_weight_norm(p),
        "neuron_norms": p.neuron_norms(),
        "direction_norms": p.direction_norms(),
    }
    if diagnostics:  # relative norms, alignment, relation spreads, loss direction, KKT
        out.update(asymptotic_summaries(p, X, y, loss, degree))
    return out
