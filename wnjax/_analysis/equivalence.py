"""The headline check: EWN gradient flow equals unnormalized flow with rate ``||w_u||^2``.

If every ``||v_u(0)|| = 1``, EWN gradient flow mapped to ``w`` solves
``dw_u/dt = -||w_u||^2 grad_u L``. SWN does not (its radial rate is 1). For GD the two agree
only up to ``O(eta^2)`` per step, so over a fixed time ``T = k eta`` they drift apart by
``O(eta)``, and ``k`` GD steps approach the flow at ``t = k eta`` with an ``O(eta)`` error.

SIGINT/SIGTERM stop a check at its next safe point: the runs that finished are reported, the
result says ``interrupted``, and no verdict is drawn (``equivalent`` and ``swn_differs`` are
``None``).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._dynamics.descent import gradient_descent
from wnjax._dynamics.flow import _rtol_floor, default_tolerances, gradient_flow
from wnjax._nets.models import CNN, MLP
from wnjax._nets.neurons import flat_weights
from wnjax._nets.parameterize import ewn, swn, to_standard
from wnjax._runtime import interrupt as _interrupt
from wnjax._runtime.errors import InvalidInput
from wnjax._runtime.precision import in_float32

FLOWS = ("adaptive_rate", "ewn", "swn")


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
        raise InvalidInput(f"model must be 'mlp' or 'cnn', got {model!r}.")
    return net, X, y


def _path(states) -> Array:
    """Flattened standard weights at every save point, shape ``(n_save, P)``."""
    return eqx.filter_vmap(lambda s: flat_weights(to_standard(s)))(states)


def max_relative_error(path: Array, reference: Array) -> float:
    """``max_k ||w_k - w_ref,k|| / ||w_ref,k||`` over save points where both are finite."""
    finite = np.all(np.isfinite(np.asarray(path)), axis=1) & np.all(
        np.isfinite(np.asarray(reference)), axis=1
    )
    diff = np.linalg.norm(np.asarray(path - reference)[finite], axis=1)
    return float(np.max(diff / np.linalg.norm(np.asarray(reference)[finite], axis=1)))


def _relative(a: Array, b: Array) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _tolerances(X: Array, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The checks' ``(rtol, atol)``: ``(1e-10, 1e-12)`` in float64 and the flow's defaults in
    float32 (``default_tolerances``) where none are given. The rtol returned is the one the
    flow honours (raised to ``10 eps`` of the dtype, as ``gradient_flow`` raises it)."""
    dtype = jnp.asarray(X).dtype
    defaults = (1e-10, 1e-12) if jnp.finfo(dtype).bits >= 64 else default_tolerances(dtype)
    rtol = defaults[0] if rtol is None else rtol
    atol = defaults[1] if atol is None else atol
    return max(rtol, _rtol_floor(dtype)), atol


def _flow_paths(model, X, y, *, loss, t1, rtol, atol, n_save, at=()) -> tuple[dict, dict, Array]:
    """Adaptive-rate, EWN and SWN gradient flow from the same ``w(0)``, saved at ``n_save``
    times (the start, then log-spaced from ``1e-6 t1`` to ``t1``, as ``wnjax.LogSpaced``) and at
    the extra times ``at``.

    **Returns:** ``(paths, steps, ts)``: the flattened standard weights of each flow that ran to
    its end (``'adaptive_rate'``, ``'ewn'``, ``'swn'``, each ``(len(ts), P)``; after a stop
    request the interrupted flow and those after it are left out), the accepted steps of each
    flow that ran, and the save times.
    """
    grid = np.geomspace(1e-6 * t1, t1, n_save - 1) if n_save > 1 else np.zeros(0)
    ts = np.unique(np.concatenate([[0.0], grid, np.asarray(at, float)]))
    kw = dict(loss=loss, t1=t1, rtol=rtol, atol=atol, save_ts=ts, diagnostics=False)
    starts = {"adaptive_rate": model, "ewn": ewn(model), "swn": swn(model)}
    paths, steps = {}, {}
    for name in FLOWS:
        if _interrupt.requested():
            break
        rate = {"rate": "neuron_norm_sq"} if name == "adaptive_rate" else {}
        run = gradient_flow(starts[name], X, y, **rate, **kw)
        steps[name] = int(run.stats["num_steps"])
        if bool(run.interrupted):
            break
        paths[name] = _path(run.states)
    return paths, steps, jnp.asarray(ts)


def _flow_report(paths: dict, steps: dict, *, rtol: float, atol: float, t1: float) -> dict:
    """The flow part of a report; a path error is ``None`` where either flow did not finish."""
    ref = paths.get("adaptive_rate")

    def error(name):
        return None if ref is None or name not in paths else max_relative_error(paths[name], ref)

    return {
        "ewn_max_rel_err": error("ewn"),
        "swn_max_rel_err": error("swn"),
        "rtol": rtol,
        "atol": atol,
        "t1": t1,
        "num_steps": steps,
        "interrupted": len(paths) < len(FLOWS),
        "finished": [f"{name} flow" for name in paths],
        "not_finished": [f"{name} flow" for name in FLOWS if name not in paths],
    }


@in_float32
def flow_equivalence(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    loss: str = "exponential",
    t1: float = 10.0,
    rtol: float | None = None,
    atol: float | None = None,
    n_save: int = 32,
) -> dict:
    """Integrate EWN-GF, SWN-GF and adaptive-rate GF from the same ``w(0)``; compare paths in ``w``
    at ``n_save`` times (the start, then log-spaced to ``t1``).

    **Returns:** ``ewn_max_rel_err`` and ``swn_max_rel_err`` (max over save points of the relative
    distance to the adaptive-rate path), ``rtol``, ``atol``, ``t1``, the solvers' step counts
    (``num_steps``), ``interrupted`` and the flows that ran to their end (``finished``) or did
    not (``not_finished``); an error is ``None`` where its flows did not finish.
    ``rtol``/``atol``: the flows' tolerances (``None``: ``1e-10``/``1e-12`` in float64, the
    flow's defaults in float32); the report holds the rtol the flows honoured.
    """
    rtol, atol = _tolerances(X, rtol, atol)
    with _interrupt.handling():
        paths, steps, _ = _flow_paths(
            model, X, y, loss=loss, t1=t1, rtol=rtol, atol=atol, n_save=n_save
        )
    return _flow_report(paths, steps, rtol=rtol, atol=atol, t1=t1)


def _gd_weights(model, X, y, *, loss, eta, steps, adaptive: bool) -> Array | None:
    """The flattened standard weights after ``steps`` GD steps; ``None`` if a stop request cut
    the run short."""
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
    if bool(run.interrupted):
        return None
    return flat_weights(to_standard(run.final))


def _neuron_rate_sgd():
    from wnjax._dynamics.transforms import neuron_rate_sgd

    return neuron_rate_sgd


@in_float32
def gd_equivalence(
    model: PyTree,
    X: Array,
    y: Array,
    *,
    loss: str = "exponential",
    etas: Sequence[float] = (0.01, 0.005, 0.0025),
    horizon: float = 1.0,
    rtol: float | None = None,
    atol: float | None = None,
    flows: tuple[Array, Array] | None = None,
) -> dict:
    """EWN-GD against adaptive-rate GD, and both against the flow, at the fixed time ``T = k eta``.

    ``flows``: the flattened standard weights of EWN-GF and adaptive-rate GF at ``t = horizon``
    (from a run that saved there); ``None`` integrates both to ``horizon`` with ``rtol``, ``atol``.

    - ``gd_drift``: ``[eta, ||w_EWN-GD - w_rate-GD|| / ||w_rate-GD||]`` after ``k = T/eta`` steps;
    - ``gd_vs_flow``: ``[eta, max(err_EWN, err_rate)]``, where ``err`` is the relative distance
      between ``k`` GD steps and the corresponding flow at ``t = T`` (EWN-GD against EWN-GF,
      adaptive-rate GD against adaptive-rate GF).
    Both should shrink in proportion to ``eta``.

    ``rtol``/``atol``: the flows' tolerances (``None``: ``1e-10``/``1e-12`` in float64, the
    flow's defaults in float32); the report holds the rtol the flows honoured.

    A stop request (SIGINT/SIGTERM) ends the check before its next run: the lists hold the etas
    whose runs finished, ``interrupted`` is set and ``finished``/``not_finished`` name the runs.
    """
    for eta in etas:
        if not np.isclose(int(round(horizon / eta)) * eta, horizon):
            raise InvalidInput(f"horizon {horizon} is not a whole number of steps of eta = {eta}.")
    runs = [f"GD at eta {eta:g}" for eta in etas]
    finished, flow_gap = [], None
    drift, vs_flow, vs_flow_ewn, vs_flow_rate = [], [], [], []
    with _interrupt.handling():
        if flows is None:
            runs.insert(0, "GD reference flows")
            flows = _reference_flows(model, X, y, loss=loss, horizon=horizon, rtol=rtol, atol=atol)
            if flows is not None:
                finished.append(runs[0])
        if flows is not None:
            w_flow_ewn, w_flow_rate = flows
            flow_gap = _relative(w_flow_ewn, w_flow_rate)
            for eta in etas:
                steps = int(round(horizon / eta))
                w = {}
                for adaptive in (False, True):
                    if _interrupt.requested():
                        break
                    w[adaptive] = _gd_weights(
                        model, X, y, loss=loss, eta=eta, steps=steps, adaptive=adaptive
                    )
                if len(w) < 2 or w[False] is None or w[True] is None:
                    break
                e_ewn, e_rate = _relative(w[False], w_flow_ewn), _relative(w[True], w_flow_rate)
                drift.append([eta, _relative(w[False], w[True])])
                vs_flow.append([eta, max(e_ewn, e_rate)])
                vs_flow_ewn.append([eta, e_ewn])
                vs_flow_rate.append([eta, e_rate])
                finished.append(f"GD at eta {eta:g}")
    return {
        "gd_drift": drift,
        "gd_vs_flow": vs_flow,
        "gd_vs_flow_ewn": vs_flow_ewn,
        "gd_vs_flow_rate": vs_flow_rate,
        "gd_horizon": horizon,
        "flow_gap_ewn_vs_rate": flow_gap,
        "interrupted": len(finished) < len(runs),
        "finished": finished,
        "not_finished": [r for r in runs if r not in finished],
    }


def _reference_flows(model, X, y, *, loss, horizon, rtol, atol) -> tuple[Array, Array] | None:
    """The flattened standard weights of EWN-GF and adaptive-rate GF at ``t = horizon``;
    ``None`` if a stop request cut either flow short."""
    rtol, atol = _tolerances(X, rtol, atol)
    kw = dict(
        loss=loss, t1=horizon, rtol=rtol, atol=atol, n_save=2, save_states=False, diagnostics=False
    )
    ends = {}
    for name, start, rate in (("rate", model, {"rate": "neuron_norm_sq"}), ("ewn", ewn(model), {})):
        if _interrupt.requested():
            return None
        run = gradient_flow(start, X, y, **rate, **kw)
        if bool(run.interrupted):
            return None
        ends[name] = flat_weights(to_standard(run.final))
    return ends["ewn"], ends["rate"]


def _slopes(pairs: list) -> float | None:
    """Fitted exponent ``p`` in ``err ~ eta^p`` (log-log least squares); ``None`` below two
    different etas."""
    if len({eta for eta, _ in pairs}) < 2:
        return None
    eta, err = np.log(np.array(pairs, float)).T
    return float(np.polyfit(eta, err, 1)[0])


@in_float32
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
    rtol: float | None = None,
    atol: float | None = None,
    etas: Sequence[float] = (0.01, 0.005, 0.0025),
    horizon: float = 1.0,
) -> dict:
    """The full equivalence report on the default problem (see ``default_problem``).

    **Returns:** a dict with ``ewn_max_rel_err``, ``swn_max_rel_err``, ``rtol``, ``gd_drift`` and
    ``gd_vs_flow`` (lists of ``[eta, value]``), fitted ``eta`` exponents, and a verdict
    (``equivalent``: the EWN path within ``1e3 rtol + 1e-6`` of the adaptive-rate one;
    ``swn_differs``: the SWN path more than ``1e-3`` from it). ``interrupted``: a stop request
    (SIGINT/SIGTERM) cut the check short; ``finished``/``not_finished`` then name its runs, the
    numbers cover the finished ones, and both verdicts are ``None``.

    ``rtol``/``atol``: the flows' tolerances (``None``: ``1e-10``/``1e-12`` in float64, the
    flow's defaults in float32); the report holds the rtol the flows honoured.
    """
    key = jax.random.key(0) if key is None else key
    net, X, y = default_problem(key, model, n, d, width, depth, activation)
    rtol, atol = _tolerances(X, rtol, atol)
    out = {
        "model": model,
        "n": n,
        "d": d,
        "width": width,
        "depth": depth,
        "activation": activation,
        "loss": loss,
    }
    # One set of flows serves both parts when they also save at t = horizon, where GD is
    # compared with them.
    shared = 0 < horizon <= t1
    with _interrupt.handling():
        paths, steps, ts = _flow_paths(
            net,
            X,
            y,
            loss=loss,
            t1=t1,
            rtol=rtol,
            atol=atol,
            n_save=32,
            at=[horizon] if shared else [],
        )
        flow = _flow_report(paths, steps, rtol=rtol, atol=atol, t1=t1)
        if flow["interrupted"]:  # GD is compared with the flows: it is not run
            gd = {
                key: [] for key in ("gd_drift", "gd_vs_flow", "gd_vs_flow_ewn", "gd_vs_flow_rate")
            }
            gd.update(gd_horizon=horizon, flow_gap_ewn_vs_rate=None, interrupted=True)
            gd.update(finished=[], not_finished=[f"GD at eta {eta:g}" for eta in etas])
        else:
            flows = None
            if shared:
                i = int(jnp.argmin(jnp.abs(ts - horizon)))
                flows = (paths["ewn"][i], paths["adaptive_rate"][i])
            gd = gd_equivalence(
                net, X, y, loss=loss, etas=etas, horizon=horizon, rtol=rtol, atol=atol, flows=flows
            )
    parts = ("interrupted", "finished", "not_finished")
    out.update({k: v for k, v in flow.items() if k not in parts})
    out.update({k: v for k, v in gd.items() if k not in parts})
    out["gd_drift_exponent"] = _slopes(out["gd_drift"])
    out["gd_vs_flow_exponent"] = _slopes(out["gd_vs_flow"])
    out["interrupted"] = bool(flow["interrupted"] or gd["interrupted"])
    out["finished"] = flow["finished"] + gd["finished"]
    out["not_finished"] = flow["not_finished"] + gd["not_finished"]
    # No verdict from a check that a stop request cut short.
    out["equivalent"] = (
        None if out["interrupted"] else bool(out["ewn_max_rel_err"] < 1e3 * rtol + 1e-6)
    )
    out["swn_differs"] = None if out["interrupted"] else bool(out["swn_max_rel_err"] > 1e-3)
    return out


def format_report(r: dict) -> str:
    """A plain-text table of an ``equivalence_check`` result; an interrupted one starts with a
    PARTIAL line naming the runs that finished."""

    def num(x, spec: str) -> str:
        return "(not finished)" if x is None else format(x, spec)

    lines = []
    if r.get("interrupted"):
        lines.append(
            "PARTIAL: interrupted (SIGINT/SIGTERM), no verdict; finished: "
            f"{', '.join(r['finished']) or 'nothing'}; not finished: {', '.join(r['not_finished'])}"
        )
    lines += [
        f"EWN = adaptive-rate equivalence ({r['model']}, width {r['width']}, depth {r['depth']}, "
        f"{r['activation']}, {r['loss']} loss, rtol {r['rtol']:g})",
        "  EWN-GF vs rate-||w_u||^2 GF, max rel. error on path: "
        + num(r["ewn_max_rel_err"], ".3e"),
        "  SWN-GF vs rate-||w_u||^2 GF, max rel. error on path: "
        + num(r["swn_max_rel_err"], ".3e")
        + "  (must NOT match)",
        f"  GD over T = {r['gd_horizon']:g}:   eta      EWN-GD vs rate-GD   GD vs flow",
    ]
    for (eta, drift), (_, gap) in zip(r["gd_drift"], r["gd_vs_flow"]):
        lines.append(f"                  {eta:<8.4g} {drift:<19.3e} {gap:.3e}")
    if r["gd_drift_exponent"] is None and not r.get("interrupted"):
        lines.append("  fitted exponents in eta: none (a fit needs two or more etas)")
    else:
        lines.append(
            f"  fitted exponents in eta: drift {num(r['gd_drift_exponent'], '.2f')}, "
            f"GD-vs-flow {num(r['gd_vs_flow_exponent'], '.2f')} (1 expected)"
        )
    return "\n".join(lines)
