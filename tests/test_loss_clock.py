"""``gradient_flow(..., time='loss')``: the clock ``lambda = -log L``. Checked against a closed
form, against the normalized clock (another ODE for the same path), in float32 against float64,
and at a floor of the loss, where the clock stalls."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax
from wnjax._runtime.errors import InvalidInput


def _float32(tree):
    cast = lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a  # noqa: E731
    return jax.tree.map(cast, tree)


@pytest.mark.parametrize("target", [-50.0, -300.0])
@pytest.mark.slow
def test_linear_one_point_matches_the_closed_form(target):
    """One point x (label +1), a linear model w, exponential loss: log L = -w.x, so
    d(w.x)/dt = ||x||^2 exp(-w.x), whence exp(w.x) = exp(w0.x) + ||x||^2 t and w moves along x:
    at log L = -lambda, w = w0 + x (lambda - w0.x)/||x||^2 and
    log t = lambda - log ||x||^2 + log(1 - exp(w0.x - lambda))."""
    x = jnp.array([[1.0, -2.0, 0.5]])
    y = jnp.array([1.0])
    model = wnjax.MLP(3, 1, 1, activation="linear", key=jax.random.key(3))
    r = wnjax.gradient_flow(model, x, y, time="loss", target_log_loss=target, t1=1e9, n_save=4)
    assert bool(r.ok) and bool(r.reached_target) and r.time == "loss"
    xx = np.asarray(x[0])
    w0 = np.asarray(model.layers[0].weight).ravel()
    lam = -float(r.final_log_loss)
    assert abs(lam + target) <= 1e-6 * abs(target)
    w_ref = w0 + xx * (lam - w0 @ xx) / (xx @ xx)
    np.testing.assert_allclose(np.asarray(r.final.layers[0].weight).ravel(), w_ref, atol=1e-9)
    log_t = lam - np.log(xx @ xx) + np.log1p(-np.exp(w0 @ xx - lam))
    assert abs(float(r.final_log_t) - log_t) <= 1e-6 * abs(log_t)
    # the clock is -log L at every save level, and s, t grow along it
    np.testing.assert_allclose(np.asarray(r.log_loss)[-1], target, atol=1e-6 * abs(target))
    assert np.all(np.diff(np.asarray(r.s)) > 0) and np.all(np.diff(np.asarray(r.log_t)) > 0)


@pytest.mark.slow
def test_float32_run_that_starts_deep_gets_going():
    """float32, one point at margin w0.x = 14.4 (log L = -14.4 at the start): the clock starts
    at 0, where the first step (~1e-8, set by d log t/d sigma ~ e^14) is representable; the
    run reaches log L = -50 at the closed form's log t (see above) to float32's tolerance."""
    x = jnp.array([[2.0, 1.0]], jnp.float32)
    y = jnp.ones(1, jnp.float32)
    model = _float32(wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(0)))
    w0 = jnp.array([[4.76, 4.9]], jnp.float32)
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, w0)
    r = wnjax.gradient_flow(model, x, y, time="loss", target_log_loss=-50.0, t1=1e3, n_save=8)
    assert bool(r.ok) and bool(r.reached_target)
    xx, q0 = np.array([2.0, 1.0]), 4.76 * 2.0 + 4.9
    lam = -float(r.final_log_loss)
    log_t = lam - np.log(xx @ xx) + np.log1p(-np.exp(q0 - lam))
    assert abs(float(r.final_log_t) - log_t) <= 1e-4 * log_t


# Each clock and precision compiles its own programs (~7 s): `make test` runs float64 on the loss
# clock and float32 on the normalized one, CI every pair.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "time, dtype, q0, target",
    [
        ("loss", jnp.float64, 1000.0, -2000.0),
        pytest.param("loss", jnp.float32, 200.0, -400.0, marks=_SLOW),
        pytest.param("loss", jnp.float32, 60.0, -300.0, marks=_SLOW),
        pytest.param("normalized", jnp.float64, 1000.0, -2000.0, marks=_SLOW),
        ("normalized", jnp.float32, 200.0, -400.0),
        ("normalized", jnp.float32, 60.0, -300.0),
    ],
)
@pytest.mark.slow
def test_a_run_continued_from_a_deep_state_matches_the_closed_form(time, dtype, q0, target):
    """One point at margin ``w0.x = q0`` (log L = -q0: past float64's exp range at 1000, past
    float32's at 60 and 200), the clock at 0, as when a run is continued from ``result.final``:
    ``t`` jumps by ~1/L(0) at once (``d log(1 + t)/ds = exp(-log L - log(1 + t))``). The run
    reaches the target at the closed form's weights and log t (above, with ``w0.x = q0``)."""
    x = jnp.array([[2.0, 1.0]], dtype)
    y = jnp.ones(1, dtype)
    model = wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(0))
    model = _float32(model) if dtype == jnp.float32 else model
    xx = np.array([2.0, 1.0])
    w0 = q0 * xx / (xx @ xx)
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, jnp.asarray(w0[None], dtype))
    r = wnjax.gradient_flow(model, x, y, time=time, target_log_loss=target, t1=1e4, n_save=4)
    assert bool(r.ok) and bool(r.reached_target)
    lam = -float(r.final_log_loss)
    tol = 1e-9 if dtype == jnp.float64 else 1e-5
    w_ref = w0 + xx * (lam - q0) / (xx @ xx)
    np.testing.assert_allclose(
        np.asarray(r.final.layers[0].weight, float).ravel(), w_ref, rtol=tol * 10
    )
    log_t = lam - np.log(xx @ xx) + np.log1p(-np.exp(q0 - lam))
    assert abs(float(r.final_log_t) - log_t) <= tol * log_t


@pytest.mark.parametrize(
    "name, rate",
    [
        ("ewn", None),
        ("swn", None),
        ("standard", "neuron_norm_sq"),
    ],
)
@pytest.mark.slow
def test_loss_clock_follows_the_normalized_path(name, rate):
    """The same flow under the two clocks, to log L = -100 at rtol 1e-10: the models at the
    target and log t there agree (the normalized clock integrates d theta/ds = -g; the loss
    clock d theta/d lambda = -g/<grad log L, g>, with g rate-scaled: with
    ``rate='neuron_norm_sq'``, g_u = ||w_u||^2 grad_u log L). One method, Dopri5, for both: the
    clocks are the subject, and a one-method program compiles in half the time of the
    switching one."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    model = getattr(wnjax, name)(wnjax.MLP(2, 6, 2, activation="relu2", key=jax.random.key(3)))
    kw = dict(
        target_log_loss=-100.0,
        t1=1e6,
        rtol=1e-10,
        atol=1e-12,
        n_save=6,
        rate=rate,
        diagnostics=False,
        solver="dopri5",
    )
    a = wnjax.gradient_flow(model, X, y, time="normalized", **kw)
    b = wnjax.gradient_flow(model, X, y, time="loss", **kw)
    assert bool(a.reached_target) and bool(b.reached_target)
    assert abs(float(a.final_log_t) - float(b.final_log_t)) <= 1e-6 * abs(float(a.final_log_t))
    pa = np.concatenate([np.ravel(v) for v in jax.tree.leaves(eqx.filter(a.final, eqx.is_array))])
    pb = np.concatenate([np.ravel(v) for v in jax.tree.leaves(eqx.filter(b.final, eqx.is_array))])
    np.testing.assert_allclose(pb, pa, rtol=1e-5, atol=1e-7)
    # s integrated alongside the loss clock is the normalized clock's own
    assert abs(float(b.s[-1]) - float(a.s[-1])) <= 1e-5 * abs(float(a.s[-1]))


@pytest.mark.slow  # three flows to log L = -300, two in float32 (~25 s)
def test_float32_ewn_reaches_minus_300_under_the_loss_clock():
    """EWN 2-8-1 ReLU^2 at init scale 0.5 on lin-sep: its normalized flow blows up in finite s,
    which the loss clock does not see. The loss clock reaches log L = -300 in float32, at
    float64's log t (normalized clock) to 1e-3."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    mlp = wnjax.MLP(2, 8, 2, activation="relu2", init_scale=0.5, key=jax.random.key(24))
    model = wnjax.ewn(mlp)
    kw = dict(target_log_loss=-300.0, t1=1e6, n_save=16, save_states=False)
    ref = wnjax.gradient_flow(model, X, y, time="normalized", rtol=1e-10, atol=1e-12, **kw)
    assert bool(ref.reached_target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = wnjax.gradient_flow(
            _float32(model), X.astype(jnp.float32), y.astype(jnp.float32), time="loss", **kw
        )
    assert r.final_log_loss.dtype == jnp.float32
    assert bool(r.ok) and bool(r.reached_target), r.message
    assert abs(float(r.final_log_t) - float(ref.final_log_t)) <= 1e-3 * float(ref.final_log_t)


@pytest.mark.slow
def test_a_floor_of_the_loss_ends_the_run_at_t1_as_in_normalized_time():
    """Non-separable data (x and -x, both labelled +1) and a linear model w: L = 2 cosh(w.x),
    and the flow settles at w.x = 0, the floor of the loss, exponentially in s. There the clock
    follows s, which reaches t1: the run ends successfully, short of its target, at the floor,
    with the normalized clock's log t; from w.x = 0 (a stationary point) nothing moves."""
    X = jnp.array([[1.0, 0.5], [-1.0, -0.5]])
    y = jnp.array([1.0, 1.0])
    model = wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(0))
    floor = np.log(2.0)
    kw = dict(target_log_loss=-10.0, t1=1e6, n_save=4, diagnostics=False)
    for w in (jnp.array([[1.0, 0.0]]), jnp.array([[0.5, -1.0]])):
        m = eqx.tree_at(lambda m: m.layers[0].weight, model, w)
        r = wnjax.gradient_flow(m, X, y, time="loss", **kw)
        assert bool(r.ok) and not bool(r.reached_target)
        assert int(r.stats["num_steps"]) < 2_000
        assert abs(float(r.final_log_loss) - floor) < 1e-9
        assert "stationary point" in r.message and "raise t1" not in r.message
        ref = wnjax.gradient_flow(m, X, y, time="normalized", **kw)
        assert abs(float(r.final_log_t) - float(ref.final_log_t)) < 1e-6 * float(ref.final_log_t)


@pytest.mark.slow  # two programs (~20 s cold)
def test_the_bound_on_s_ends_a_loss_clock_run_whose_level_step_crossed_it():
    """An EWN flow (blow-up at s* ~ 6.6) under the loss clock with t1 = 1, 64 levels to
    log L = -10,000: the step that crosses a level near the start also crosses s = 1.
    The run ends at s = 1, short of its target, at the log L of the normalized flow at s = 1;
    it does not run past the bound to the clock's cap (log L ~ -20,000) and call that the
    target."""
    k1, k2 = jax.random.split(jax.random.key(3))
    X = jax.random.normal(k1, (16, 5))
    y = jnp.sign(X @ jax.random.normal(k2, (5,)))
    p = wnjax.ewn(wnjax.MLP(5, 8, 2, activation="relu2", key=jax.random.key(1)))
    kw = dict(diagnostics=False, save_states=False)  # default tolerances, rtol 1e-8
    r = wnjax.gradient_flow(p, X, y, time="loss", t1=1.0, target_log_loss=-10_000.0, **kw)
    assert bool(r.ok) and not bool(r.reached_target), r.message
    assert float(r.stats["final_s"]) == pytest.approx(1.0, rel=1e-9)
    assert "raise t1" in r.message
    ref = wnjax.gradient_flow(p, X, y, time="normalized", t1=1.0, **kw)
    assert float(r.final_log_loss) == pytest.approx(float(ref.final_log_loss), abs=1e-6)


def test_loss_clock_needs_a_target_and_saves_at_levels():
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    model = wnjax.MLP(2, 4, 2, activation="relu2", key=jax.random.key(0))
    with pytest.raises(InvalidInput, match="target_log_loss"):
        wnjax.gradient_flow(model, X, y, time="loss")
    with pytest.raises(InvalidInput, match="AtLossLevels"):
        wnjax.gradient_flow(model, X, y, time="loss", target_log_loss=-10.0, save_ts=[0.0, 1.0])


@pytest.mark.slow
def test_float32_swn_relu2_reaches_minus_1000_under_the_loss_clock():
    """float32, SWN ReLU^2 5-8-8-1 under the loss clock to log L = -1,000 (37,720 steps here):
    the level stops stay inside their steps (``_Crossing``; with the bracket widened, a stop
    near log L = -550 lands at ||theta|| ~ 1e17 and the state turns NaN), and the run reaches
    the target with a finite state, as the same flow does in float64."""
    k = jax.random.key
    X = jax.random.normal(k(5), (40, 5))
    y = jnp.where(X @ jnp.arange(1.0, 6.0) > 0, 1.0, -1.0)
    model = wnjax.swn(wnjax.MLP(5, 8, 3, activation="relu2", key=k(3)))
    kw = dict(time="loss", target_log_loss=-1000.0, t1=1e12, save_states=False)
    r = wnjax.gradient_flow(_float32(model), X.astype(jnp.float32), y.astype(jnp.float32), **kw)
    assert bool(r.ok) and bool(r.reached_target)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(eqx.filter(r.final, eqx.is_array)))
    ref = wnjax.gradient_flow(model, X, y, **kw)
    assert bool(ref.ok) and bool(ref.reached_target)

    # the same margins' order of magnitude: ||w|| within 10% of float64's at the target
    def norm(m):
        layers = wnjax.weight_layers(wnjax.to_standard(m))
        return float(np.sqrt(sum(np.sum(np.asarray(lay.weight, float) ** 2) for lay in layers)))

    assert abs(norm(r.final) - norm(ref.final)) <= 0.1 * norm(ref.final)


class _BreaksBeyond(wnjax.Exponential):
    """The exponential loss, whose ``log L`` a user's code returns as ``-inf`` once every margin
    exceeds 20 (its gradient stays finite): a loss that turns non-finite mid-run."""

    def log_loss(self, outputs, y):
        q = self.margins(outputs, y)
        broken = jax.lax.stop_gradient(jnp.where(jnp.min(q) > 20.0, -jnp.inf, 0.0))
        return super().log_loss(outputs, y) + broken


@pytest.mark.parametrize(
    # ~6 s each: `make test` runs the loss clock, CI every clock
    "time",
    [pytest.param("plain", marks=_SLOW), pytest.param("normalized", marks=_SLOW), "loss"],
)
@pytest.mark.slow
def test_a_run_whose_loss_turns_non_finite_is_never_a_success(time):
    """A run never ends ``ok`` with a non-finite state or loss. Here every step into the region
    where log L = -inf is rejected (the solvers reject a step whose error is not finite), so the
    run stops short of it with a finite ``final`` and says why: ``NONFINITE`` (a state or loss
    that turned non-finite), or out of steps or with steps too short to move the clock, the
    non-finite point ahead named (``stats['nonfinite_ahead']``)."""
    from wnjax._dynamics.flow import FROZEN_CLOCK, NONFINITE

    X, y = wnjax.data.lin_sep(jax.random.key(0))
    model = wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(1))
    kw = dict(time=time, target_log_loss=-300.0, t1=1e12, loss=_BreaksBeyond(), max_steps=3000)
    with pytest.warns(RuntimeWarning, match="non-finite|not finite"):
        r = wnjax.gradient_flow(model, X, y, throw=False, **kw)
    assert not bool(r.ok) and not bool(r.reached_target)
    if int(r.stop_code) == NONFINITE:
        assert "non-finite" in r.message
    else:
        assert int(r.stop_code) in (1, FROZEN_CLOCK)
        assert np.isfinite(float(r.stats["nonfinite_ahead"]))
        assert "not finite" in r.message and "Raise max_steps" not in r.message
    final = jax.tree.leaves(eqx.filter(r.final, eqx.is_array))
    assert all(np.all(np.isfinite(a)) for a in final)
    assert np.isfinite(float(r.final_log_loss)) and float(r.final_log_loss) > -300.0


@pytest.mark.slow
def test_a_stop_at_a_jump_into_inf_keeps_the_last_finite_state():
    """Plain time to a target with a loss whose log L jumps to -inf (``_BreaksBeyond``): the
    target's event fires at the jump and the root find ends on its finite side, so ``final``
    is the last finite state of the run and ``final_log_loss`` finite above the target, for
    every data set (the root find's final bracket straddles the jump within the clock's
    rounding; its midpoint lies on either side of it)."""
    from wnjax._dynamics.flow import NONFINITE

    model = wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(100))
    kw = dict(target_log_loss=-300.0, t1=1e12, loss=_BreaksBeyond(), max_steps=3000, n_save=8)
    for key in range(4):
        X, y = wnjax.data.lin_sep(jax.random.key(key))
        with pytest.warns(RuntimeWarning, match="non-finite"):
            r = wnjax.gradient_flow(model, X, y, throw=False, **kw)
        assert int(r.stop_code) == NONFINITE and not bool(r.reached_target), key
        last = float(r.final_log_loss)
        assert -300.0 < last < -15.0 and f"last finite state (log L = {last:.6g})" in r.message
        assert float(jnp.min(wnjax.margins(r.final, X, y))) <= 20.0  # before the jump


def test_level_root_finder_stays_inside_the_step():
    """``_Crossing``, started at the bracket's upper end as diffrax starts an event's search: a
    bracketed root as bisection finds it (the cube root of 2); a bracket whose ends show no sign
    change (the interpolant's rounding) stops at the upper end, inside the step, where
    widening the bracket (``expand_if_necessary``) leaves it."""
    import optimistix as optx

    from wnjax._dynamics.flow import _Crossing

    def solve(finder, f, lower, upper):
        sol = optx.root_find(
            lambda t, _: f(t),
            finder,
            jnp.asarray(upper),
            options=dict(lower=lower, upper=upper),
            throw=False,
        )
        return float(sol.value)

    crossing = _Crossing(rtol=0.0, atol=0.0, tol_t=1e-15)
    assert abs(solve(crossing, lambda t: t**3 - 2.0, 0.0, 3.0) - 2.0 ** (1 / 3)) <= 1e-14
    assert abs(solve(crossing, lambda t: 2.0 - t**3, 0.0, 3.0) - 2.0 ** (1 / 3)) <= 1e-14
    assert solve(crossing, lambda t: t + 1.0, 0.0, 1.0) == 1.0
    # A jump into -inf, NaN or +inf at t = 1/3: the root is on the finite side, next to it.
    for broken in (-jnp.inf, jnp.nan, jnp.inf):
        root = solve(crossing, lambda t, b=broken: jnp.where(t < 1 / 3, 1.0 - t, b), 0.0, 1.0)
        assert root < 1 / 3 and 1 / 3 - root <= 1e-15

    widened = optx.Bisection(rtol=1e-12, atol=1e-12, expand_if_necessary=True)
    assert solve(widened, lambda t: t + 1.0, 0.0, 1.0) < -0.9


@pytest.mark.slow
def test_a_run_saved_at_many_levels_matches_scipy():
    """A linear classifier on four points, exponential loss, normalized clock to log L = -40:
    ``dw/ds = -grad log L = sum_i p_i y_i x_i``, ``p = softmax(-y_i x_i.w)``, written out by
    hand and integrated by scipy's DOP853 to the run's final ``s``. Saving at 64 loss levels
    (the default) stops the solve 63 times, at crossings inside steps; each solve goes on from
    the end of the step that crossed its level (or, where that step also crossed the next level,
    from the crossing, evaluating the field afresh there)."""
    from scipy.integrate import solve_ivp

    X = jnp.array([[1.0, 0.3, -0.2], [0.8, -0.5, 0.4], [-0.3, 1.0, 0.6], [0.2, 0.1, -1.2]])
    y = jnp.array([1.0, 1.0, 1.0, -1.0])
    model = eqx.nn.Linear(3, "scalar", use_bias=False, key=jax.random.key(0))
    r = wnjax.gradient_flow(
        model, X, y, time="normalized", target_log_loss=-40.0, t1=1e6, n_save=64,
        rtol=1e-10, atol=1e-12, diagnostics=False, save_states=False,
    )  # fmt: skip
    assert bool(r.reached_target)
    Z = np.asarray(y)[:, None] * np.asarray(X)

    def f(s, w):
        m = -(Z @ w)
        p = np.exp(m - m.max())
        return Z.T @ (p / p.sum())

    w0 = np.asarray(model.weight, float).ravel()
    ref = solve_ivp(f, (0.0, float(r.final_time)), w0, method="DOP853", rtol=1e-13, atol=1e-15)
    w = np.asarray(r.final.weight, float).ravel()
    assert np.linalg.norm(w - ref.y[:, -1]) / np.linalg.norm(ref.y[:, -1]) < 1e-9


@pytest.mark.slow  # two flows of ~10,000 steps, two programs (~20 s)
def test_a_linear_swn_classifier_reaches_minus_10000_under_the_loss_clock():
    """30 points in 5-D, a linear SWN classifier, the loss clock and the default solver, to
    log L = -10,000. Deep in the loss the flow is stiff (across the tie of the support vectors'
    margins its Jacobian grows like ||w||^2), and a stiff step's interpolated crossing of a
    level, or the field evaluated afresh there, is off the path by the state's error times the
    Jacobian: solves restarted from each crossing drifted off it and ran out of steps (near
    -4,100 here). Saving at 64 levels the run reaches the target with about the steps of a
    run saving at the target alone, at the same weights, along the hard-margin SVM's direction
    (scipy's SLSQP)."""
    from scipy.optimize import minimize

    kx, kw, km = jax.random.split(jax.random.key(7), 3)
    X = jax.random.normal(kx, (30, 5))
    w_true = jax.random.normal(kw, (5,))
    y = jnp.sign(X @ w_true)
    model = wnjax.swn(wnjax.MLP(5, 1, 1, activation="linear", key=km))
    kw = dict(time="loss", target_log_loss=-10_000.0, t1=1e9, save_states=False)
    runs = [wnjax.gradient_flow(model, X, y, n_save=n, **kw) for n in (2, 64)]
    assert all(bool(r.reached_target) and bool(r.ok) for r in runs), runs[1].message
    two, many = (int(r.stats["num_steps"]) for r in runs)
    assert many <= 1.1 * two, (two, many)
    w2, w64 = (np.asarray(wnjax.to_standard(r.final).layers[0].weight).ravel() for r in runs)
    np.testing.assert_allclose(w64, w2, rtol=1e-6)
    Z = np.asarray(y)[:, None] * np.asarray(X)
    start = np.asarray(w_true) / np.min(Z @ np.asarray(w_true))  # feasible: min z.w = 1
    svm = minimize(
        lambda w: w @ w, start, jac=lambda w: 2 * w, method="SLSQP",
        constraints={"type": "ineq", "fun": lambda w: Z @ w - 1, "jac": lambda w: Z},
        options={"ftol": 1e-12, "maxiter": 500},
    )  # fmt: skip
    assert svm.success
    u, v = w64 / np.linalg.norm(w64), svm.x / np.linalg.norm(svm.x)
    # the direction converges like 1/log t (Soudry et al., 2018): ~1e-4 at log t ~ 1e4
    assert np.linalg.norm(u - v) < 5e-4


@pytest.mark.slow  # four flows (~30 s)
@pytest.mark.parametrize(
    "parameterize, activation, depth, target",
    [(wnjax.ewn, "relu2", 3, -300.0), (lambda m: m, "relu3", 3, -3_000.0)],
    ids=["ewn-relu2", "standard-relu3-degree-13"],
)
def test_float32_normalized_flow_through_its_blow_up_matches_float64(
    parameterize, activation, depth, target
):
    """An EWN flow, and the flow of a net of degree 13 (ReLU^3, three layers), reach every level
    of the loss before a finite s: near the end the steps in s are far below float32's spacing of
    s itself. Each level's solve runs on its own clock, so the float32 normalized flow still
    reaches its target, at the s and log t of the float64 run to float32's tolerance."""
    k1, k2 = jax.random.split(jax.random.key(0))
    X = jax.random.normal(k1, (24, 6))
    y = jnp.sign(X @ jax.random.normal(k2, (6,)))
    key = jax.random.key(5)
    p = parameterize(wnjax.MLP(6, 10, depth, activation=activation, key=key))
    kw = dict(loss="logistic", time="normalized", t1=1e8, target_log_loss=target)
    ref = wnjax.gradient_flow(p, X, y, **kw)
    r = wnjax.gradient_flow(*_float32((p, X, y)), **kw)
    assert r.ok and r.reached_target and r.time == "normalized", r.message
    assert r.final_time == pytest.approx(float(ref.final_time), rel=1e-3)
    assert r.s[-1] == r.final_time  # the last level is the target, where the run ends
    # each step may move log t by float32's rtol (1e-5) times |log t|, and the errors add up
    assert float(r.final_log_t) == pytest.approx(float(ref.final_log_t), rel=3e-4)
