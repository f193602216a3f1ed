"""The headline check: EWN gradient flow equals unnormalized flow with rate ``||w_u||^2``.

If every ``||v_u(0)|| = 1``, EWN gradient flow mapped to ``w`` solves
``dw_u/dt = -||w_u||^2 grad_u L``. SWN does not (its radial rate is 1). For GD the two agree
only up to ``O(eta^2)`` per step, so over a fixed time ``T = k eta`` they drift apart by
``O(eta)``, and ``k`` GD steps approach the flow at ``t = k eta`` with an ``O(eta)`` error.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._dynamics.descent import gradient_descent
from wnjax._dynamics.flow import gradient_flow
from wnjax._nets.models import CNN, MLP
from wnjax._nets.neurons import flat_weights
from wnjax._nets.parameterize import ewn, swn, to_standard


def default_problem(
    key: PRNGKeyArray,
    model: str = "mlp",
    n: int = 16,
    d: int = 4,
    width: int = 8,
    depth: int = 2,
    activation: str = "relu2",
) -> tuple[PyTree, Array, Array]:
    """A small model and data set: separable Gaussian data (MLP) or random images (CNN)."""
    k_model, k_data, k_w = jax.random.split(key, 3)
    if model == "mlp":
        X = jax.random.normal(k_data, (n, d))
        w_star = jax.random.normal(k_w, (d,))
        y = jnp.where(X @ w_star >= 0, 1.0, -1.0)
        net = MLP(d, width, depth, activation=activation, key=k_model)
    elif model == "cnn":
        X = jax.random.normal(k_data, (n, 1, d, d))
        y = jnp.where(jax.random.normal(k_w, (n,)) >= 0, 1.0, -1.0)
        net = CNN(1, [width] * (depth - 1), kernel_size=3, activation=activation, key=k_model)
    else:
        raise ValueError(f"model must be 'mlp' or 'cnn', got {model!r}.")
    return net, X, y


def _path(states) -> Array:
    """Flattened standard weights at every save point, shape ``(n_save, P)``."""
    return jax.vmap(lambda s: flat_weights(to_standard(s)))(states)


def max_relative_error(path: Array, reference: Array) -> float:
    """``max_k ||w_k - w_ref,k|| / ||w_ref,k||`` over save points where both are finite."""
    finite = np.all(np.isfinite(np.asarray(path)), axis=1) & np.all(
        np.isfinite(np.asarray(reference)), axis=1
    )
    diff = np.linalg.norm(np.asarray(path - reference)[finite], axis=1)
    return float(np.max(diff / np.linalg.norm(np.asarray(reference)[finite], axis=1)))


def _relative(a: Array, b: Array) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def flow_equivalence(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    loss: str = "exponential",
    t1: float = 10.0,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    n_save: int = 32,
) -> dict:
    """Integrate EWN-GF, SWN-GF and adaptive-rate GF from the same ``w(0)``; compare paths in ``w``.

    **Returns:** ``ewn_max_rel_err`` and ``swn_max_rel_err`` (max over save points of the relative
    distance to the adaptive-rate path) and the solvers' step counts.
    """
    kw = dict(loss=loss, t1=t1, rtol=rtol, atol=atol, n_save=n_save, diagnostics=False)
    ref = gradient_flow(model, X, y, rate="neuron_norm_sq", **kw)
    ewn_run = gradient_flow(ewn(model), X, y, **kw)
    swn_run = gradient_flow(swn(model), X, y, **kw)
    ref_path = _path(ref.states)
    return {
        "ewn_max_rel_err": max_relative_error(_path(ewn_run.states), ref_path),
        "swn_max_rel_err": max_relative_error(_path(swn_run.states), ref_path),
        "rtol": rtol,
        "atol": atol,
        "t1": t1,
        "num_steps": {
            "adaptive_rate": int(ref.stats["num_steps"]),
            "ewn": int(ewn_run.stats["num_steps"]),
            "swn": int(swn_run.stats["num_steps"]),
        },
    }


def _gd_weights(model, X, y, *, loss, eta, steps, adaptive: bool) -> Array:
    if adaptive:
        run = gradient_descent(
            model,
            X,
            y,
            loss=loss,
            learning_rate=eta,
            num_steps=steps,
            optimizer=_neuron_rate_sgd(),
            n_save=2,
        )
    else:
        run = gradient_descent(
            ewn(model), X, y, loss=loss, learning_rate=eta, num_steps=steps, n_save=2
        )
    return flat_weights(to_standard(run.final))


def _neuron_rate_sgd():
    from wnjax._dynamics.transforms import neuron_rate_sgd

    return neuron_rate_sgd


def gd_equivalence(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    loss: str = "exponential",
    etas: Sequence[float] = (0.01, 0.005, 0.0025),
    horizon: float = 1.0,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> dict:
    """EWN-GD against adaptive-rate GD, and both against the flow, at the fixed time ``T = k eta``.

    - ``gd_drift``: ``[eta, ||w_EWN-GD - w_rate-GD|| / ||w_rate-GD||]`` after ``k = T/eta`` steps;
    - ``gd_vs_flow``: ``[eta, max(err_EWN, err_rate)]``, where ``err`` is the relative distance
      between ``k`` GD steps and the corresponding flow at ``t = T`` (EWN-GD against EWN-GF,
      adaptive-rate GD against adaptive-rate GF).
    Both should shrink in proportion to ``eta``.
    """
    flow_kw = dict(
        loss=loss, t1=horizon, rtol=rtol, atol=atol, n_save=2, save_states=False, diagnostics=False
    )
    w_flow_rate = flat_weights(
        to_standard(gradient_flow(model, X, y, rate="neuron_norm_sq", **flow_kw).final)
    )
    w_flow_ewn = flat_weights(to_standard(gradient_flow(ewn(model), X, y, **flow_kw).final))
    drift, vs_flow, vs_flow_ewn, vs_flow_rate = [], [], [], []
    for eta in etas:
        steps = int(round(horizon / eta))
        if not np.isclose(steps * eta, horizon):
            raise ValueError(f"horizon {horizon} is not a whole number of steps of eta = {eta}.")
        w_ewn = _gd_weights(model, X, y, loss=loss, eta=eta, steps=steps, adaptive=False)
        w_rate = _gd_weights(model, X, y, loss=loss, eta=eta, steps=steps, adaptive=True)
        e_ewn, e_rate = _relative(w_ewn, w_flow_ewn), _relative(w_rate, w_flow_rate)
        drift.append([eta, _relative(w_ewn, w_rate)])
        vs_flow.append([eta, max(e_ewn, e_rate)])
        vs_flow_ewn.append([eta, e_ewn])
        vs_flow_rate.append([eta, e_rate])
    return {
        "gd_drift": drift,
        "gd_vs_flow": vs_flow,
        "gd_vs_flow_ewn": vs_flow_ewn,
        "gd_vs_flow_rate": vs_flow_rate,
        "gd_horizon": horizon,
        "flow_gap_ewn_vs_rate": _relative(w_flow_ewn, w_flow_rate),
    }


def _slopes(pairs: list) -> float:
    """Fitted exponent ``p`` in ``err ~ eta^p`` (log-log least squares)."""
    eta, err = np.log(np.array(pairs, float)).T
    return float(np.polyfit(eta, err, 1)[0])


def equivalence_check(
    key: PRNGKeyArray | None = None,
    *,
    model: str = "mlp",
    n: int = 16,
    d: int = 4,
    width: int = 8,
    depth: int = 2,
    activation: str = "relu2",
    loss: str = "exponential",
    t1: float = 10.0,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    etas: Sequence[float] = (0.01, 0.005, 0.0025),
    horizon: float = 1.0,
) -> dict:
    """The full equivalence report on the default problem (see ``default_problem``).

    **Returns:** a dict with ``ewn_max_rel_err``, ``swn_max_rel_err``, ``rtol``, ``gd_drift`` and
    ``gd_vs_flow`` (lists of ``[eta, value]``), fitted ``eta`` exponents, and a verdict.
    """
    key = jax.random.key(0) if key is None else key
    net, X, y = default_problem(key, model, n, d, width, depth, activation)
    out = {
        "model": model,
        "n": n,
        "d": d,
        "width": width,
        "depth": depth,
        "activation": activation,
        "loss": loss,
    }
    out.update(flow_equivalence(net, X, y, loss=loss, t1=t1, rtol=rtol, atol=atol))
    out.update(
        gd_equivalence(net, X, y, loss=loss, etas=etas, horizon=horizon, rtol=rtol, atol=atol)
    )
    out["gd_drift_exponent"] = _slopes(out["gd_drift"])
    out["gd_vs_flow_exponent"] = _slopes(out["gd_vs_flow"])
    out["equivalent"] = bool(out["ewn_max_rel_err"] < 1e3 * rtol + 1e-6)
    out["swn_differs"] = bool(out["swn_max_rel_err"] > 1e-3)
    return out


def format_report(r: dict) -> str:
    """A plain-text table of an ``equivalence_check`` result."""
    lines = [
        f"EWN = adaptive-rate equivalence ({r['model']}, width {r['width']}, depth {r['depth']}, "
        f"{r['activation']}, {r['loss']} loss, rtol {r['rtol']:g})",
        f"  EWN-GF vs rate-||w_u||^2 GF, max rel. error on path: {r['ewn_max_rel_err']:.3e}",
        f"  SWN-GF vs rate-||w_u||^2 GF, max rel. error on path: {r['swn_max_rel_err']:.3e}"
        "  (must NOT match)",
        f"  GD over T = {r['gd_horizon']:g}:   eta      EWN-GD vs rate-GD   GD vs flow",
    ]
    for (eta, drift), (_, gap) in zip(r["gd_drift"], r["gd_vs_flow"]):
        lines.append(f"                  {eta:<8.4g} {drift:<19.3e} {gap:.3e}")
    lines.append(
        f"  fitted exponents in eta: drift {r['gd_drift_exponent']:.2f}, "
        f"GD-vs-flow {r['gd_vs_flow_exponent']:.2f} (1 expected)"
    )
    return "\n".join(lines)
