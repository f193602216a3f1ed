"""Stopping on a target: robust to rounding in ``log L``, to float32, and consistent with
``final_log_loss``; tolerances fit the dtype."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import needs_default_codegen, separable_data

import wnjax
from wnjax._dynamics.flow import target_tolerance
from wnjax.diagonal._nets import diagonal_net, sparse_problem


def _float32(model, X, y):
    """``(model, X, y)`` with every floating array cast to float32."""
    cast = lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a  # noqa: E731
    return jax.tree.map(cast, model), X.astype(jnp.float32), y.astype(jnp.float32)


def _reached(r, target, dtype):
    return float(r.final_log_loss) <= target + target_tolerance(dtype) * (1 + abs(target))


@pytest.mark.slow
def test_square_loss_to_minus_40_succeeds_and_matches_radau():
    """Depth-2 diagonal net on sparse regression, square loss, to log L = -40 (a residual near
    1e-8, where log L carries ~1e-7 of rounding): the run succeeds, stops at the target, and its
    end agrees with scipy's Radau on the same vector field (u' = -grad_u L, written out by hand:
    L = sum(r^2)/2, r = A(u^2 - v^2) - y)."""
    from scipy.integrate import solve_ivp

    A, y, _ = sparse_problem(jax.random.key(0), dim=12, n_measurements=6, sparsity=2)
    net = diagonal_net(12, depth=2, alpha=0.1)
    r = wnjax.gradient_flow(
        net, A, y, loss="square", target_log_loss=-40.0, t1=1e9, n_save=8, diagnostics=False
    )
    assert bool(r.ok) and bool(r.reached_target)
    assert _reached(r, -40.0, jnp.float64) and float(r.final_log_loss) > -40.001
    An, yn = np.asarray(A), np.asarray(y)

    def f(t, w):
        u, v = w[:12], w[12:]
        res = An @ (u**2 - v**2) - yn
        g = An.T @ res
        return np.concatenate([-2 * u * g, 2 * v * g])

    w0 = np.full(24, 0.1)
    ref = solve_ivp(f, (0.0, float(r.final_time)), w0, method="Radau", rtol=1e-11, atol=1e-13)
    x_ref = ref.y[:12, -1] ** 2 - ref.y[12:, -1] ** 2
    x = np.asarray(wnjax.diagonal._nets.diagonal_signal(r.final))
    assert np.linalg.norm(x - x_ref) / np.linalg.norm(x_ref) < 1e-6


@pytest.mark.parametrize("target", [-30.0, -300.0])
@pytest.mark.slow
def test_float32_flow_with_a_target_succeeds(target):
    """float32 data (x64 on, so float64 is not the data's dtype): a loss-normalized linear flow
    reaches its target with the float32 defaults, and ``reached_target`` holds."""
    k1, k2 = jax.random.split(jax.random.key(1))
    X = jax.random.normal(k1, (16, 3), jnp.float32)
    w = jnp.array([1.0, -1.0, 0.5], jnp.float32)
    y = jnp.sign(X @ w)
    X = X + 0.3 * y[:, None] * w[None] / jnp.linalg.norm(w)
    model = eqx.nn.Linear(3, "scalar", use_bias=False, dtype=jnp.float32, key=k2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the defaults fit float32: no warning
        r = wnjax.gradient_flow(
            model,
            X,
            y,
            time="normalized",
            t1=1e6,
            target_log_loss=target,
            n_save=8,
            diagnostics=False,
        )
    assert r.final_log_loss.dtype == jnp.float32
    assert bool(r.ok) and bool(r.reached_target) and _reached(r, target, jnp.float32)


# the square loss's flows turn stiff: four programs, ~30 s
@pytest.mark.parametrize("loss", ["square", "exponential"])
@pytest.mark.slow
def test_float32_plain_time_target_is_found_and_matches_float64(loss):
    """float32 data with x64 on, plain time, a target: the crossing is root-found (the event's
    value in the dtype diffrax pairs it with) and the run stops there, at the time the float64
    run of the same flow stops, to float32's accuracy."""
    k1, k2, k3 = jax.random.split(jax.random.key(8), 3)
    X = jax.random.normal(k1, (10, 4))
    if loss == "square":
        y, target = X @ jnp.array([1.0, -0.5, 0.2, 0.0]), -8.0
    else:
        y, target = jnp.sign(X @ jnp.array([1.0, -0.5, 0.2, 0.0])), -5.0
    model = wnjax.MLP(4, 16, 2, activation="relu2", key=k3)
    kw = dict(loss=loss, t1=1e8, target_log_loss=target, n_save=8, diagnostics=False)
    high = wnjax.gradient_flow(model, X, y, **kw)
    low = wnjax.gradient_flow(*_float32(model, X, y), **kw)
    assert low.final_log_loss.dtype == jnp.float32
    assert bool(low.ok) and bool(low.reached_target) and _reached(low, target, jnp.float32)
    assert bool(high.ok) and bool(high.reached_target)
    np.testing.assert_allclose(float(low.final_time), float(high.final_time), rtol=1e-3)


@pytest.mark.slow
def test_a_target_beyond_t1_is_named_with_the_way_to_it():
    """Plain time to t1 = 100 on separable data: log L ~ -log t cannot reach -30 (that needs
    t ~ e^30). The run succeeds at t1 without the target, its stats keep the target, and the
    message names the target, t1 and loss-normalized time; in normalized time it names t1."""
    X, y = separable_data(jax.random.key(2), n=12, d=3)
    model = wnjax.MLP(3, 1, 1, activation="linear", key=jax.random.key(3))
    r = wnjax.gradient_flow(model, X, y, t1=100.0, target_log_loss=-30.0, diagnostics=False)
    assert bool(r.ok) and not bool(r.reached_target) and float(r.final_log_loss) > -30.0
    assert float(r.stats["target_log_loss"]) == -30.0
    assert "target log L = -30 lies beyond t1" in r.message and "time='normalized'" in r.message
    s = wnjax.gradient_flow(
        model, X, y, time="normalized", t1=1.0, target_log_loss=-30.0, diagnostics=False
    )
    assert bool(s.ok) and not bool(s.reached_target)
    assert "lies beyond t1: raise t1." in s.message


@pytest.mark.slow
def test_normalized_run_without_a_target_that_runs_out_says_to_pass_one():
    """EWN's loss-normalized flow blows up at a finite s (log L -> -inf), so without a target a
    run to a huge t1 spends its step budget there. Its result knows its clock, and the message
    asks for a target_log_loss rather than for time='normalized', which it already uses."""
    X, y = separable_data(jax.random.key(2), n=12, d=3)
    model = wnjax.ewn(wnjax.MLP(3, 1, 1, activation="linear", key=jax.random.key(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the failure's own warning
        r = wnjax.gradient_flow(
            model, X, y, time="normalized", t1=1e30, max_steps=3000, throw=False, diagnostics=False
        )
    assert r.time == "normalized" and not bool(r.ok) and float(r.final_log_loss) < -1e3
    assert "pass target_log_loss" in r.message and "use time='normalized'" not in r.message


def test_float32_rtol_below_the_dtype_is_raised_with_a_warning():
    k1, k2 = jax.random.split(jax.random.key(2))
    X = jax.random.normal(k1, (8, 2), jnp.float32)
    y = jnp.sign(X[:, 0])
    model = eqx.nn.Linear(2, "scalar", use_bias=False, dtype=jnp.float32, key=k2)
    with pytest.warns(RuntimeWarning, match="below what float32 can give"):
        wnjax.gradient_flow(model, X, y, rtol=1e-10, t1=1.0, n_save=4, diagnostics=False)


@pytest.mark.slow
def test_reached_target_agrees_with_the_final_log_loss():
    """``reached_target`` is ``final_log_loss <= target + tol (1 + |target|)`` on runs that stop on
    their target, that end at t1 well short of it, and that end at t1 a hair above it."""
    k1, k2 = jax.random.split(jax.random.key(3))
    X = jax.random.normal(k1, (12, 3))
    y = jnp.sign(X[:, 0] + 0.5 * X[:, 1])
    X = X + 0.3 * y[:, None] * jnp.array([[1.0, 0.5, 0.0]]) / jnp.sqrt(1.25)
    model = wnjax.MLP(3, 1, 1, activation="linear", key=k2)
    kw = dict(time="normalized", n_save=4, diagnostics=False, throw=False)
    free = wnjax.gradient_flow(model, X, y, t1=50.0, target_log_loss=-1e9, **kw)
    end = float(free.final_log_loss)
    tol = target_tolerance(jnp.float64)
    cases = {
        "stops on it": (-20.0, 1e6),
        "far short": (end - 10.0, 50.0),
        # ends at t1 a hair above the target, within the stated tolerance: reached
        "a hair above": (end - 0.1 * tol * (1 + abs(end)), 50.0),
        # ends at t1 above the target by more than the tolerance: not reached
        "just short": (end - 10 * tol * (1 + abs(end)), 50.0),
    }
    for name, (target, t1) in cases.items():
        r = wnjax.gradient_flow(model, X, y, t1=t1, target_log_loss=target, **kw)
        assert bool(r.reached_target) == _reached(r, target, jnp.float64), name
        assert bool(r.ok), name
    r = wnjax.gradient_flow(model, X, y, t1=50.0, target_log_loss=cases["a hair above"][0], **kw)
    assert bool(r.reached_target)
    r = wnjax.gradient_flow(model, X, y, t1=50.0, target_log_loss=cases["just short"][0], **kw)
    assert not bool(r.reached_target)


@pytest.mark.slow
def test_flow_and_gd_results_share_one_failure_protocol():
    """``FlowResult`` and ``GDResult`` carry ``stop_code`` and ``reached_target`` as fields and
    ``ok``/``interrupted``/``message`` as properties; ``result_code`` is a read-only alias of the
    flow's ``stop_code``; ``check()`` raises ``FlowFailed``/``GDFailed``, both ``RunFailed``,
    with the partial result."""
    import dataclasses

    from wnjax._dynamics.outcome import RunFailed

    for cls in (wnjax.FlowResult, wnjax.GDResult):
        names = {f.name for f in dataclasses.fields(cls)}
        assert {"stop_code", "reached_target", "final", "final_log_loss"} <= names, cls
        assert all(isinstance(getattr(cls, p), property) for p in ("ok", "interrupted", "message"))
    assert issubclass(wnjax.FlowFailed, RunFailed) and issubclass(wnjax.GDFailed, RunFailed)
    k1, k2 = jax.random.split(jax.random.key(4))
    X = jax.random.normal(k1, (6, 2))
    y = jnp.sign(X[:, 0])
    model = eqx.nn.Linear(2, "scalar", use_bias=False, key=k2)
    kw = dict(n_save=2, diagnostics=False, throw=False)
    with pytest.warns(RuntimeWarning, match="max_steps"):
        short = wnjax.gradient_flow(model, X, y, t1=1e3, max_steps=2, **kw)
    assert int(short.result_code) == int(short.stop_code) == 1 and not bool(short.ok)
    with pytest.raises(AttributeError):
        short.result_code = 0
    with pytest.raises(wnjax.FlowFailed) as info:
        short.check()
    assert info.value.result is short
    with pytest.warns(RuntimeWarning, match="diverged"):
        bad = wnjax.gradient_descent(model, 1e3 * X, y, num_steps=50, learning_rate=10.0, **kw)
    assert int(bad.stop_code) == 3 and not bool(bad.ok) and not bool(bad.reached_target)
    with pytest.raises(RunFailed) as info:
        bad.check()
    assert isinstance(info.value, wnjax.GDFailed) and info.value.result is bad
    good = wnjax.gradient_descent(model, X, y, num_steps=5, learning_rate=0.1, **kw)
    assert good.check() is good and int(good.stop_code) == 2 and not bool(good.interrupted)


@pytest.mark.slow  # three flows to log L = -300, two in float32 (~25 s)
def test_float32_clock_too_coarse_says_so_and_float64_reaches_the_target():
    """The loss-normalized flow of an EWN linear model crowds its last ~280 units of log L into
    ~0.05 of normalized time near s = 4.4, where it turns stiff. Tsit5 alone is held there to
    steps below float32's spacing of the clock (4.8e-7): every step is rejected, and the
    message names the clock's spacing and float64. The default solver's implicit steps get
    through in float32; the crossing of the target is located to float32's clock (log L falls
    by ~1e5 per unit of s there, so a stop 4 eps of s wide is ~0.1 of log L wide), and at the
    log L where float32 stopped, the float64 flow has float32's log t."""
    k1, k2 = jax.random.split(jax.random.key(0))
    w = jnp.array([1.0, -2.0, 0.5, 0.3, 1.0])
    X = jax.random.normal(k1, (40, 5))
    y = jnp.sign(X @ w)
    X = X + 0.3 * y[:, None] * w[None] / jnp.linalg.norm(w)
    model = wnjax.ewn(wnjax.MLP(5, 1, 1, activation="linear", key=k2))
    kw = dict(time="normalized", t1=1e7, target_log_loss=-300.0, n_save=4, diagnostics=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # on the clock s: saved at times of s (saved at levels, a float32 EWN run goes on the
        # loss clock, which has no blow-up to resolve)
        low = wnjax.gradient_flow(
            *_float32(model, X, y),
            max_steps=10_000,
            throw=False,
            solver="tsit5",
            **{**kw, "n_save": 1, "save": wnjax.LogSpaced(4)},
        )
    assert low.final_time.dtype == jnp.float32 and not bool(low.reached_target)
    spacing = np.spacing(np.abs(np.asarray(low.final_time)))
    assert spacing < 1e-6 and f"float32 clock's spacing is {spacing:.2g}" in low.message
    assert "jax_enable_x64" in low.message and "time='normalized'" not in low.message
    high = wnjax.gradient_flow(model, X, y, **kw)
    assert bool(high.reached_target) and bool(high.ok)
    default32 = wnjax.gradient_flow(*_float32(model, X, y), **kw)
    assert bool(default32.reached_target) and bool(default32.ok)
    stop = float(default32.final_log_loss)
    assert abs(stop + 300.0) < 0.5
    same = wnjax.gradient_flow(model, X, y, **{**kw, "target_log_loss": stop})
    np.testing.assert_allclose(float(default32.final_log_t), float(same.final_log_t), rtol=1e-4)


@pytest.mark.slow
def test_relu_flow_sliding_on_a_kink_says_the_field_jumps():
    """Gradient flow of a ReLU net is a differential inclusion: ``-grad L`` jumps where a
    pre-activation ``w_u . x_i`` changes sign, and the flow can slide along that surface. Every
    error-controlled method is then held to steps proportional to rtol. The run that runs out of
    steps there says so and names the ways out; its end state has a pre-activation within 1e-5
    of the median's scale of zero, which is the sliding surface the message describes. That is
    ReLU's own derivative (``kink_width=0``); with the default smoothing of the kink the same
    run reaches ``t1``."""
    kx, kw, km = jax.random.split(jax.random.PRNGKey(1), 3)
    X = jax.random.normal(kx, (32, 5))
    y = jnp.where(X @ jax.random.normal(kw, (5,)) >= 0, 1.0, -1.0)
    model = wnjax.ewn(wnjax.MLP(5, 8, 2, activation="relu", key=km))
    with pytest.raises(wnjax.FlowFailed) as info:
        wnjax.gradient_flow(model, X, y, t1=20.0, max_steps=4000, kink_width=0.0)
    r = info.value.result
    assert int(r.stats["num_rejected_steps"]) > 0.5 * int(r.stats["num_steps"])
    assert int(r.stats["stiff_steps"]) == 0
    assert "the vector field likely jumps" in r.message and "activation='relu2'" in r.message
    assert "wnjax.gradient_descent" in r.message and "Leave kink_width unset" in r.message
    assert bool(wnjax.gradient_flow(model, X, y, t1=20.0, max_steps=4000).ok)
    z = np.abs(np.asarray(X @ wnjax.to_standard(r.final).layers[0].weight.T))
    assert z.min() < 1e-5 * np.median(z)
    # In float32 the clock's spacing is named first, the jump next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low = wnjax.gradient_flow(
            *_float32(model, X, y),
            t1=20.0,
            max_steps=1000,
            throw=False,
            kink_width=0.0,
        )
    assert "float32 clock's spacing" in low.message, low.message
    assert "If float64 does not help, the vector field likely jumps" in low.message


@pytest.mark.slow
def test_relu_flow_out_of_steps_names_the_jump_whatever_its_rejections():
    """A ReLU net's field jumps (``jumping_field``), so a run of it that runs out of steps
    names the jump and the ways out from the model alone, here with Tsit5, whose rejected steps
    (under half) alone would point at stiffness: with the kink smoothed, Tsit5 is held by the
    stiffness of the flow that slides, and the message names the width used. A smooth net
    (ReLU^2) is not flagged."""
    from wnjax._dynamics.flow import jumping_field

    k = jax.random.key
    X = jax.random.normal(k(5), (40, 5))
    y = jnp.where(X @ jnp.arange(1.0, 6.0) > 0, 1.0, -1.0)
    model = wnjax.swn(wnjax.MLP(5, 8, 2, activation="relu", key=k(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = wnjax.gradient_flow(model, X, y, t1=100.0, solver="tsit5", max_steps=3000, throw=False)
    assert not bool(r.ok)
    assert int(r.stats["num_rejected_steps"]) < 0.5 * int(r.stats["num_steps"])
    assert "max(z, 0), say) make -grad L jump" in r.message and "activation='relu2'" in r.message
    assert "kink_width = 0.0001" in r.message
    assert jumping_field(model) and jumping_field(wnjax.to_standard(model))
    smooth = wnjax.MLP(5, 8, 2, activation="relu2", key=k(3))
    assert not jumping_field(smooth) and not jumping_field(lambda x: x)


@pytest.mark.slow
def test_a_run_stuck_at_a_stationary_point_says_so_not_raise_t1():
    """ReLU^3 5-6-6-1 from its default init: the normalized flow settles where 21 of the 40
    points have every unit inactive (margin 0, so L >= 21) and the gradient vanishes. Its run
    to s = 1e12 ends at t1 short of the target; the message names the stationary point
    (``final_grad_norm``, checked against jax.grad at ``final``), not a larger t1."""
    k = jax.random.key
    X = jax.random.normal(k(5), (40, 5))
    y = jnp.where(X @ jnp.arange(1.0, 6.0) > 0, 1.0, -1.0)
    model = wnjax.MLP(5, 6, 3, activation="relu3", key=k(4))
    r = wnjax.gradient_flow(
        model, X, y, t1=1e12, time="normalized", target_log_loss=-300.0, throw=False
    )
    assert bool(r.ok) and not bool(r.reached_target)
    g = jax.grad(lambda m: wnjax.log_loss(m, X, y))(r.final)
    norm = float(jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(g))))
    assert norm < 1e-8 and abs(float(r.stats["final_grad_norm"]) - norm) <= 1e-6 * norm + 1e-30
    margins = np.asarray(jax.vmap(r.final)(X)).ravel() * np.asarray(y)
    assert float(r.final_log_loss) >= np.log(np.sum(np.abs(margins) < 1e-8)) - 1e-9
    assert "stationary point" in r.message and "raise t1" not in r.message
    # a run stopped at t1 on its way down still says: raise t1
    short = wnjax.gradient_flow(model, X, y, t1=1e-3, time="normalized", target_log_loss=-300.0)
    assert "raise t1" in short.message and "stationary" not in short.message


class _Cliff(eqx.Module):
    """A linear model that is NaN wherever ``||w||^2 >= radius``: a user's module whose forward
    pass breaks down past a surface (``0 * log(radius - ||w||^2)``)."""

    lin: eqx.nn.Linear
    radius: float = eqx.field(static=True)

    def __call__(self, x):
        return self.lin(x) + 0.0 * jnp.log(self.radius - jnp.sum(self.lin.weight**2))


@pytest.mark.parametrize("time", ["plain", "loss"])
@pytest.mark.slow
def test_a_run_whose_steps_shrink_before_a_nan_region_names_it_not_max_steps(time):
    """The flow of ``_Cliff`` runs into the surface ||w||^2 = 3 (log L is still ~2 there): its
    steps shrink towards it until the next one cannot move the clock (``FROZEN_CLOCK``, long
    before max_steps). The message says the field is not finite just ahead, and
    ``stats['nonfinite_ahead']`` agrees with where the surface is: within that distance of
    ``final``. A run that stays inside reports ``inf``."""
    from wnjax._dynamics.flow import FROZEN_CLOCK

    X = jax.random.normal(jax.random.key(0), (20, 3))
    y = jnp.sign(X[:, 0] + 0.3 * X[:, 1])
    lin = eqx.nn.Linear(3, 1, use_bias=False, key=jax.random.key(1))
    kw = dict(target_log_loss=-50.0, max_steps=2000, throw=False)
    kw.update(time=time, t1=1e6) if time == "loss" else kw.update(t1=1e6)
    with pytest.warns(RuntimeWarning, match="not finite"):  # throw=False warns with the message
        r = wnjax.gradient_flow(_Cliff(lin, 3.0), X, y, **kw)
    assert int(r.stop_code) == FROZEN_CLOCK and int(r.stats["num_steps"]) < 2000
    assert "not finite" in r.message and "Raise max_steps" not in r.message
    # the surface lies within the reported distance of final: ||w||^2 grows by at most
    # 2 ||w|| d + d^2 over a step of length d
    ahead = float(r.stats["nonfinite_ahead"])
    w = np.asarray(r.final.lin.weight).ravel()
    d = ahead * (1 + np.linalg.norm(w))
    assert 0 <= 3.0 - w @ w <= 2 * np.linalg.norm(w) * d + d * d + 8 * np.finfo(float).eps
    # far from the surface every probe is finite
    inside = wnjax.gradient_flow(_Cliff(lin, 1e6), X, y, t1=1.0)
    assert bool(inside.ok) and np.isinf(float(inside.stats["nonfinite_ahead"]))


@pytest.mark.slow
def test_float32_normalized_run_from_a_small_loss_takes_its_first_step():
    """float32, normalized time, saves at given s, Tsit5 (the traced default): one point at
    margin 14.4, so log t starts at 0 with d log t/ds = exp(14.4), and its error scale there is
    atol alone. The first step is the flow's own (not diffrax's automatic choice, which stalls
    at s = 0 here); the run reaches log L = -50 at float64's log t to 1e-4."""
    x = jnp.array([[2.0, 1.0]])
    y = jnp.ones(1)
    model = wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(0))
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, jnp.array([[4.76, 4.9]]))
    kw = dict(time="normalized", t1=110.0, target_log_loss=-50.0, solver="tsit5")
    kw.update(save_ts=np.linspace(0.0, 110.0, 50), rtol=1e-10, atol=1e-12, max_steps=5000)
    ref = wnjax.gradient_flow(model, x, y, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rtol raised to float32's floor
        r = wnjax.gradient_flow(*_float32(model, x, y), **kw)
    assert bool(r.ok) and bool(r.reached_target), r.message
    assert abs(float(r.final_log_t) - float(ref.final_log_t)) <= 1e-4 * float(ref.final_log_t)


@pytest.mark.slow
def test_a_float32_clock_that_cannot_move_ends_the_run_and_says_so():
    """float32, a linear SWN classifier on lin-sep under the loss clock to log L = -10,000: near
    sigma = 4,100 (log L ~ -2,050) a step leaves the state unchanged and the next one falls below
    half the spacing of the float32 clock (2.4e-4), so it cannot move the clock, and neither
    could any later one. The run ends there, in a few hundred steps (not at max_steps), with its
    partial result; the message names the clock's spacing, float64 and the normalized clock, on
    which the same float32 run reaches the target. Whether a step leaves the state unchanged is
    rounding, which differs between CPUs (XLA's code for each): where the state keeps moving
    by rounding, the steps creep on to max_steps, and the message names the field's rounding,
    float64 and the normalized clock."""
    from wnjax._dynamics.flow import FROZEN_CLOCK

    X, y = wnjax.data.lin_sep(jax.random.key(0))
    model = wnjax.swn(wnjax.MLP(2, 1, 1, activation="linear", key=jax.random.key(12)))
    model, X, y = _float32(model, X, y)
    kw = dict(target_log_loss=-10_000.0, t1=1e9, save_states=False)
    with pytest.warns(RuntimeWarning, match="cannot move|rounding"):
        r = wnjax.gradient_flow(model, X, y, time="loss", throw=False, max_steps=20_000, **kw)
    assert not bool(r.ok) and not bool(r.reached_target)
    if int(r.stop_code) == FROZEN_CLOCK:
        assert int(r.stats["num_steps"]) < 2_000
        clock = np.asarray(r.final_time)
        assert f"clock's spacing ({np.spacing(np.abs(clock)):.2g})" in r.message, r.message
    else:
        assert int(r.stop_code) == 1 and "carry a rounding" in r.message, r.message
    for advice in ("jax_enable_x64", "time='normalized'"):
        assert advice in r.message, r.message
    assert np.isfinite(float(r.final_log_loss)) and float(r.final_log_loss) < -100.0
    assert bool(wnjax.gradient_flow(model, X, y, time="normalized", **kw).reached_target)


@pytest.mark.slow  # ~15-25 s cold: run by make test-all (CI), not make test
def test_the_advice_after_most_steps_were_rejected_follows_the_field():
    """A run out of steps, most rejected, the stiffness test having found the flow not stiff
    (the counts set on a real run's result): on a smooth field (linear, ReLU^3) the message names
    the stiff solver and no jump; on a ReLU net, whose field jumps, the jump and smooth
    activations."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    counts = {"num_steps": 1000, "num_rejected_steps": 900, "explicit_steps": 90,
              "stiff_steps": 10, "switches": 1}  # fmt: skip
    for activation, smooth in (("linear", True), ("relu3", True), ("relu", False)):
        model = wnjax.swn(wnjax.MLP(2, 4, 2, activation=activation, key=jax.random.key(1)))
        with pytest.warns(RuntimeWarning, match="max_steps"):
            r = wnjax.gradient_flow(model, X, y, max_steps=2, throw=False, t1=10.0)
        stats = {**r.stats, **{k: jnp.asarray(v) for k, v in counts.items()}}
        r = eqx.tree_at(lambda r: r.stats, r, stats)
        assert "900 of the 1000 steps were rejected" in r.message
        assert ("solver='stiff'" in r.message) == smooth, r.message
        assert ("likely jumps" in r.message) != smooth, r.message
    # a model whose field is not known to be smooth nor to jump: the stiff solver first, the
    # jump only as a condition
    model = wnjax.CoordinateLinear(jnp.array([0.3, -0.2]))
    with pytest.warns(RuntimeWarning, match="max_steps"):
        r = wnjax.gradient_flow(model, X, y, max_steps=2, throw=False, t1=10.0)
    r = eqx.tree_at(
        lambda r: r.stats, r, {**r.stats, **{k: jnp.asarray(v) for k, v in counts.items()}}
    )
    assert "solver='stiff'" in r.message and "If the vector field jumps" in r.message
    assert "likely jumps" not in r.message


@pytest.mark.slow
def test_a_crossing_within_the_clocks_resolution_ends_at_its_nearer_side_in_float32():
    """float32, loss-normalized time on an EWN CNN to log L = -1000: the root find of the last
    levels run out of the clock's digits (log L falls by tens within one float32 ulp of s). The
    run ends at a side of the crossing, at most 1% short of the target, and ``final_log_loss``
    is the loss of ``final`` (recomputed in float64 from the float32 weights)."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(10, 1, 5, 5)), jnp.float32)
    y = jnp.asarray(np.sign(rng.normal(size=10)), jnp.float32)
    net = wnjax.CNN(1, [3], activation="relu2", spatial_shape=(5, 5), key=jax.random.key(1))
    model, X, y = _float32(wnjax.ewn(net), X, y)
    target = -1000.0
    r = wnjax.gradient_flow(model, X, y, time="normalized", t1=1e12, target_log_loss=target)
    assert bool(r.ok) and bool(r.reached_target)
    assert float(r.final_log_loss) <= target + 0.01 * abs(target)  # at the target, or past it
    cast = lambda a: np.asarray(a, np.float64) if eqx.is_inexact_array(a) else a  # noqa: E731
    final64 = jax.tree.map(cast, wnjax.to_standard(r.final))
    q = np.asarray(wnjax.margins(final64, np.asarray(X, np.float64), np.asarray(y, np.float64)))
    log_l = np.log(np.sum(np.exp(-(q - q.min())))) - q.min()
    assert abs(log_l - float(r.final_log_loss)) < 1e-4 * abs(log_l)


@pytest.mark.slow
def test_the_step_budget_holds_across_the_loss_levels():
    """A run saved at levels of log L is one solve per level: ``max_steps`` bounds their sum
    (a ReLU net that slides, so the budget runs out)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 3))
    y = np.sign(X @ rng.normal(size=3))
    net = wnjax.MLP(3, 6, 2, activation="relu", key=jax.random.key(1))
    with pytest.warns(RuntimeWarning, match="max_steps"):
        r = wnjax.gradient_flow(
            net, X, y, time="normalized", t1=1e12, target_log_loss=-100.0, max_steps=500,
            throw=False,
        )  # fmt: skip
    assert int(r.stats["num_steps"]) == 500
    assert "max_steps = 500 steps" in r.message


@pytest.mark.slow
@needs_default_codegen
def test_a_log_loss_the_tolerances_do_not_resolve_is_named():
    """Square loss, plain time, a depth-2 diagonal net converging to an interpolating point: at
    the defaults' atol the weights' error dwarfs the residual by t = 30, and log L drifts from
    Radau's (rtol 1e-13) by several units; the result says the tolerances do not resolve it.
    With tolerances that do, the run matches Radau and says nothing of the kind."""
    from scipy.integrate import solve_ivp

    rng = np.random.default_rng(0)
    d, n, alpha = 8, 5, 0.1
    A = rng.normal(size=(n, d))
    x_star = np.zeros(d)
    x_star[:2] = [1.0, -2.0]
    b = A @ x_star

    def field(t, w):
        u, v = w[:d], w[d:]
        g = A.T @ (A @ (u**2 - v**2) - b)
        return -np.concatenate([2 * g * u, -2 * g * v])

    ref = solve_ivp(field, (0, 30), alpha * np.ones(2 * d), method="Radau", rtol=1e-13, atol=1e-25)
    u, v = ref.y[:d, -1], ref.y[d:, -1]
    ref_log_l = np.log(0.5 * np.sum((A @ (u**2 - v**2) - b) ** 2))
    net = wnjax.diagonal.net(d, depth=2, alpha=alpha)
    with pytest.warns(RuntimeWarning, match="do not resolve log L"):
        loose = wnjax.gradient_flow(net, A, b, loss="square", t1=30.0)
    assert abs(float(loose.final_log_loss) - ref_log_l) > 1.0  # what the note is about
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tight = wnjax.gradient_flow(net, A, b, loss="square", t1=30.0, rtol=1e-12, atol=1e-16)
    assert "do not resolve" not in tight.message
    assert abs(float(tight.final_log_loss) - ref_log_l) < 0.3  # against 5.5 at the defaults


def _ewn_relu2_problem():
    k1, k2 = jax.random.split(jax.random.key(3))
    X = jax.random.normal(k1, (16, 5))
    y = jnp.sign(X @ jax.random.normal(k2, (5,)))
    return wnjax.ewn(wnjax.MLP(5, 8, 2, activation="relu2", key=jax.random.key(1))), X, y


_NO_T1 = dict(target_log_loss=-300.0, diagnostics=False, save_states=False)


@pytest.mark.slow
def test_a_run_to_a_target_without_t1_goes_on_to_it():
    """Given a target and no t1, a run has no bound in time. EWN ReLU^2 to log L = -300 in plain
    and normalized time: both reach it, and plain time (its clock t itself, near exp(300)) ends
    at the log t that normalized time integrates alongside (d log(1 + t)/ds = 1/((1 + t) L)).
    The plain run's default saves lie before its crossing too. Without a target t1 is 1."""
    p, X, y = _ewn_relu2_problem()
    plain = wnjax.gradient_flow(p, X, y, **_NO_T1)
    normalized = wnjax.gradient_flow(p, X, y, time="normalized", **_NO_T1)
    for r in (plain, normalized):
        assert bool(r.ok) and bool(r.reached_target), r.message
    log_t = np.log(float(plain.final_time))
    assert log_t == pytest.approx(float(normalized.final_log_t), rel=1e-6)
    assert int(np.sum(np.isfinite(np.asarray(plain.log_loss)))) >= 16
    assert float(wnjax.gradient_flow(p, X, y, diagnostics=False).final_time) == 1.0


@pytest.mark.slow  # two more programs (~20 s cold)
def test_without_t1_the_loss_clock_reaches_its_target_and_float32_plain_time_names_its_limit():
    """No t1, log L = -300: the loss clock reaches it, at the normalized clock's log t; float32
    plain time cannot reach t ~ exp(300) and its message names the normalized clock, not t1."""
    p, X, y = _ewn_relu2_problem()
    r = wnjax.gradient_flow(p, X, y, time="loss", **_NO_T1)
    assert bool(r.ok) and bool(r.reached_target), r.message
    ref = wnjax.gradient_flow(p, X, y, time="normalized", **_NO_T1)
    assert float(r.final_log_t) == pytest.approx(float(ref.final_log_t), rel=1e-6)
    low = wnjax.gradient_flow(*_float32(p, X, y), **_NO_T1)
    assert bool(low.ok) and not bool(low.reached_target)
    assert "raise t1" not in low.message and "largest plain time" in low.message
    assert "time='normalized'" in low.message


@pytest.mark.slow
def test_a_float64_model_on_float32_data_runs_in_float64():
    """Under ``jax_enable_x64`` a model is float64 by default; data read in float32 is common.
    The flow runs in the wider dtype, as ``gradient_descent`` does: the normalized run to a
    target (one solve per loss level, the switching solver in one program) reaches it with a
    float64 ``final``, on the same path as the run on the data cast to float64 by hand."""
    X, y = separable_data(jax.random.key(0), n=12, d=3)
    model = wnjax.ewn(wnjax.MLP(3, 4, 2, activation="linear", key=jax.random.key(1)))
    kw = dict(time="normalized", target_log_loss=-40.0, n_save=4, diagnostics=False)
    mixed = wnjax.gradient_flow(model, X.astype(jnp.float32), y.astype(jnp.float32), **kw)
    wide = wnjax.gradient_flow(model, X.astype(jnp.float32).astype(jnp.float64), y, **kw)
    assert bool(mixed.reached_target) and mixed.final_log_loss.dtype == jnp.float64
    assert all(
        a.dtype == jnp.float64 for a in jax.tree.leaves(eqx.filter(mixed.final, eqx.is_array))
    )
    np.testing.assert_array_equal(np.asarray(mixed.log_loss), np.asarray(wide.log_loss))


def test_a_solve_whose_loss_rose_ends_the_run_at_the_state_before_it():
    """Least squares with singular values 30 and 0.1 (stiff) under Tsit5 with rtol = atol = 0.3:
    the error control lets an unstable step through and log L rises over a level's solve, as
    no gradient flow's can. The run stops there with ``ROSE``, and ``final`` is the last state
    before the rise: its loss (``sum r^2 / 2``, computed here) is the lowest the run saved and
    below the start's; the message says the steps broke down and how to tighten them."""
    from wnjax._dynamics.flow import ROSE

    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(20, 3)) * np.array([1.0, 30.0, 0.1]))
    y = jnp.asarray(rng.normal(size=20))
    lin = eqx.nn.Linear(3, "scalar", use_bias=False, key=jax.random.key(0))

    def log_l(model):
        r = np.asarray(X) @ np.asarray(model.weight).ravel() - np.asarray(y)
        return np.log(0.5 * np.sum(r * r))

    r = wnjax.gradient_flow(
        lin,
        X,
        y,
        loss="square",
        time="normalized",
        target_log_loss=-1.0,
        rtol=0.3,
        atol=0.3,
        solver="tsit5",
        throw=False,
    )
    assert int(r.stop_code) == ROSE and not bool(r.ok)
    saved = np.asarray(r.log_loss)[np.isfinite(np.asarray(r.log_loss))]
    assert log_l(r.final) == pytest.approx(float(r.final_log_loss), abs=1e-12)
    assert log_l(r.final) <= saved.min() + 1e-12 and log_l(r.final) <= log_l(lin)
    assert "log L rose" in r.message and "tighter rtol" in r.message


def _dead_example_net(key, n=20, width=6):
    """A bias-free 5-width-1 ReLU ``eqx.nn.MLP`` and data whose first example reaches no unit:
    every first-layer weight has a first entry of at least 1, and ``x_0 = (-20, 0.1, ...)``."""
    k1, k2 = jax.random.split(key)
    X = jax.random.normal(k1, (n, 5))
    X = X.at[0].set(jnp.array([-20.0, 0.1, 0.1, 0.1, 0.1]))
    net = eqx.nn.MLP(
        5, "scalar", width, 1, activation=jax.nn.relu, use_bias=False, use_final_bias=False, key=k2
    )
    w = net.layers[0].weight
    net = eqx.tree_at(lambda m: m.layers[0].weight, net, w.at[:, 0].set(jnp.abs(w[:, 0]) + 1.0))
    return net, X


def _dead_at(net, X):
    """The examples on which every hidden ReLU unit of ``net`` (standard) is inactive."""
    hidden = np.asarray(X) @ np.asarray(net.layers[0].weight).T
    return np.all(hidden <= 0, axis=1)


@pytest.mark.parametrize("parameterize", ["standard", "ewn"])
@pytest.mark.slow
def test_a_flow_on_a_floor_of_dead_examples_stops_there(parameterize):
    """A ReLU net with an example that reaches no unit: its output stays 0 and its loss 1, so
    the exponential loss cannot fall below ``n_dead`` (``log L >= log n_dead``). With
    ``stop_stalled=True`` the flow to ``log L = -300`` stops once the others hold under 0.05% of
    the loss (``FLOOR``), in a few thousand of its 100,000 steps, within 1e-3 of ``log n_dead``,
    the dead examples counted by hand from the final hidden layer."""
    from wnjax._dynamics.flow import FLOOR

    net, X = _dead_example_net(jax.random.key(0))
    y = jnp.sign(X[:, 1] + 0.5 * X[:, 2]).at[0].set(1.0)
    r = wnjax.gradient_flow(
        wnjax.parameterize(net, parameterize),
        X,
        y,
        time="normalized",
        target_log_loss=-300.0,
        stop_stalled=True,
        throw=False,
    )
    assert int(r.stop_code) == FLOOR and not bool(r.ok) and not bool(r.reached_target)
    assert int(r.stats["num_steps"]) < 20_000
    dead = _dead_at(wnjax.to_standard(r.final), X)
    assert dead[0] and int(r.stats["stuck_examples"]) == int(dead.sum())
    assert 0 <= float(r.final_log_loss) - np.log(dead.sum()) < 1e-3
    assert "sits at a floor" in r.message and "stopped there (stop_stalled=True)" in r.message


@pytest.mark.slow  # ~15-25 s cold: run by make test-all (CI), not make test
def test_a_flow_not_told_to_stop_on_a_floor_runs_on():
    """By default (``stop_stalled=False``) the same flow goes on past the floor to its step
    budget, and its message says how to stop there."""
    from wnjax._dynamics.flow import FLOOR

    net, X = _dead_example_net(jax.random.key(0))
    y = jnp.sign(X[:, 1] + 0.5 * X[:, 2]).at[0].set(1.0)
    kw = dict(time="normalized", target_log_loss=-300.0, max_steps=6_000, throw=False)
    stopped = wnjax.gradient_flow(net, X, y, stop_stalled=True, **kw)
    r = wnjax.gradient_flow(net, X, y, **kw)
    assert int(stopped.stop_code) == FLOOR and int(r.stop_code) == 1
    assert "sits at a floor" in r.message
    assert "stop_stalled=True stops a run at such a floor" in r.message
    assert int(r.stats["num_steps"]) == 6_000 > int(stopped.stats["num_steps"])
    assert float(r.final_log_loss) <= float(stopped.final_log_loss)


@pytest.mark.slow
def test_a_square_loss_floor_of_dead_examples_is_their_summed_loss():
    """Under the square loss a dead example's residual is its target: ``L >= sum_dead y_i^2 / 2``.
    With ``stop_stalled=True`` the flow to ``log L = -20`` stops there (``FLOOR``), within 1e-3
    of that sum's log."""
    from wnjax._dynamics.flow import FLOOR

    net, X = _dead_example_net(jax.random.key(1))
    y = jnp.tanh(X[:, 1]).at[0].set(3.0)
    r = wnjax.gradient_flow(
        net,
        X,
        y,
        loss="square",
        time="normalized",
        target_log_loss=-20.0,
        stop_stalled=True,
        throw=False,
    )
    assert int(r.stop_code) == FLOOR, r.message
    dead = _dead_at(r.final, X)
    floor = np.log(0.5 * np.sum(np.asarray(y)[dead] ** 2))
    assert dead[0] and 0 <= float(r.final_log_loss) - floor < 1e-3


@pytest.mark.slow
def test_outputs_that_are_zero_but_move_are_no_floor():
    """A two-layer linear net whose last layer starts at 0: every output is 0 at the start, and
    all of the loss is theirs, but the loss's gradient is not 0 there (the last layer's), so
    the flow moves on and reaches its target."""
    X, y = separable_data(jax.random.key(2), n=16, d=4)
    net = eqx.nn.MLP(
        4,
        "scalar",
        6,
        1,
        activation=lambda z: z,
        use_bias=False,
        use_final_bias=False,
        key=jax.random.key(3),
    )
    net = eqx.tree_at(lambda m: m.layers[1].weight, net, jnp.zeros_like(net.layers[1].weight))
    assert np.all(np.asarray(jax.vmap(net)(X)) == 0)
    r = wnjax.gradient_flow(net, X, y, time="normalized", target_log_loss=-30.0, stop_stalled=True)
    assert bool(r.ok) and bool(r.reached_target)


@pytest.mark.slow  # ~15-25 s cold: run by make test-all (CI), not make test
def test_a_vmapped_flow_stops_each_run_on_its_own_floor():
    """``jax.vmap`` over two nets, one with an example that reaches no unit and one without:
    the first run stops on its floor (``FLOOR``), the second reaches its target."""
    from wnjax._dynamics.flow import FLOOR

    net, X = _dead_example_net(jax.random.key(0), width=12)
    y = jnp.sign(X[:, 1] + 0.5 * X[:, 2]).at[0].set(1.0)
    w = net.layers[0].weight[:6]
    # the second's units come in pairs +-w_u: one of each pair is active on every example
    dead_net, live_net = (
        eqx.tree_at(lambda m: m.layers[0].weight, net, jnp.concatenate([w, s * w]))
        for s in (1.0, -1.0)
    )
    assert _dead_at(dead_net, X)[0] and not _dead_at(live_net, X).any()
    arrays, static = eqx.partition((dead_net, live_net), eqx.is_array)
    nets = eqx.combine(jax.tree.map(lambda a, b: jnp.stack([a, b]), *arrays), static[0])

    @eqx.filter_vmap
    def run(net):
        r = wnjax.gradient_flow(
            net,
            X,
            y,
            time="normalized",
            target_log_loss=-30.0,
            n_save=4,
            stop_stalled=True,
            throw=False,
        )
        return r.stop_code, r.reached_target

    codes, reached = run(nets)
    assert codes.tolist() == [FLOOR, 0] and reached.tolist() == [False, True]


def _unfittable_regression(seed=24, n=24, d=4):
    """A depth-3 linear ``wnjax.MLP`` and targets ``tanh(X w)`` it cannot fit (``n > d``), with
    the least log L any linear map reaches, ``log(||X w_ls - y||^2 / 2)`` (numpy's lstsq)."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    X = jax.random.normal(k1, (n, d))
    y = jnp.tanh(X @ jax.random.normal(k2, (d,)))
    w, *_ = np.linalg.lstsq(np.asarray(X), np.asarray(y), rcond=None)
    least = np.log(0.5 * np.sum((np.asarray(X) @ w - np.asarray(y)) ** 2))
    return wnjax.MLP(d, 10, 3, activation="linear", key=k3), X, y, least


def test_stationary_holds_where_the_gradient_vanishes_to_rounding():
    """``stall.stationary`` on a linear model under the square loss: at the least-squares
    solution (numpy's lstsq), whose gradient ``X^T (X w - y)`` is 0, it holds; a step of 1e-9
    away, and on separable data under the exponential loss, it does not; a gradient of exact
    zeros (every weight 0 of a two-layer net) holds too, and a plateau near a saddle, whose tiny
    weights have gradients of their own size, does not."""
    from wnjax._dynamics.stall import stationary

    _, X, y, _ = _unfittable_regression()
    w, *_ = np.linalg.lstsq(np.asarray(X), np.asarray(y), rcond=None)
    square, exponential = wnjax.get_loss("square"), wnjax.get_loss("exponential")

    def at(weight, X, y, loss):
        lin = eqx.nn.Linear(X.shape[1], "scalar", use_bias=False, key=jax.random.key(0))
        lin = eqx.tree_at(lambda m: m.weight, lin, weight.reshape(lin.weight.shape))
        params, static = eqx.partition(lin, eqx.is_array)
        return bool(stationary(params, static, X, y, loss))

    assert at(jnp.asarray(w), X, y, square)
    assert not at(jnp.asarray(w) + 1e-9, X, y, square)
    Xs, ys = separable_data(jax.random.key(1), n=16, d=4)
    assert not at(
        jnp.asarray(np.linalg.lstsq(np.asarray(Xs), np.asarray(ys))[0]), Xs, ys, exponential
    )
    net = eqx.nn.MLP(4, "scalar", 5, 1, use_bias=False, use_final_bias=False, key=jax.random.key(2))
    zero = jax.tree.map(jnp.zeros_like, eqx.filter(net, eqx.is_array))
    assert bool(stationary(zero, eqx.filter(net, eqx.is_array, inverse=True), X, y, square))
    # a plateau near a saddle: x = u^2 - v^2 fits its first coordinate (the least-squares fit
    # on that feature alone), and the second, u = v = 1e-15, has a gradient of its own size,
    # 1e-15 of the first's terms: not stationary, though it is at u = v = 0
    A = X[:, :2]
    c = float(np.dot(A[:, 0], y) / np.dot(A[:, 0], A[:, 0]))
    for tiny, still in ((1e-15, False), (0.0, True)):
        u = jnp.array([np.sqrt(abs(c)) if c > 0 else 0.0, tiny])
        v = jnp.array([0.0 if c > 0 else np.sqrt(abs(c)), 0.5 * tiny])
        params, static = eqx.partition(_Diagonal(u, v), eqx.is_array)
        assert bool(stationary(params, static, A, y, square)) == still


class _Diagonal(eqx.Module):
    """``x -> <x, u^2 - v^2>``."""

    u: jax.Array
    v: jax.Array

    def __call__(self, x):
        return jnp.dot(x, self.u**2 - self.v**2)


@pytest.mark.slow
def test_a_flow_at_a_minimum_above_its_target_stops_there():
    """A depth-3 linear net, square loss, targets it cannot fit, target log L = -10: the flow
    settles at the least-squares minimum (log L within 1e-9 of numpy's) and, its gradient
    zero to rounding there, stops (``STATIONARY``) within a few thousand of its 100,000 steps;
    the message names the stationary point. A run out of steps there before its first check
    (``max_steps = 200``, Kvaerno5 throughout) names it too, and not more steps. Under the
    default ``throw`` both raise ``FlowFailed`` (the first through the same ending the call
    takes, ``_finish``, instead of a second run)."""
    from wnjax._dynamics.flow import STATIONARY, _finish

    net, X, y, least = _unfittable_regression()
    r = wnjax.gradient_flow(
        net, X, y, loss="square", time="normalized", target_log_loss=-10.0, throw=False
    )
    assert int(r.stop_code) == STATIONARY and not bool(r.reached_target), r.message
    assert abs(float(r.final_log_loss) - least) < 1e-9
    assert int(r.stats["num_steps"]) < 5_000
    assert "stationary point" in r.message and "max_steps" not in r.message
    with pytest.raises(wnjax.FlowFailed, match="stationary point"):
        _finish(r, throw=True)
    with pytest.raises(wnjax.FlowFailed, match="stationary point") as failed:
        wnjax.gradient_flow(
            net, X, y, loss="square", target_log_loss=-10.0, max_steps=200, solver="stiff"
        )
    short = failed.value.result
    assert int(short.stop_code) == 1 and abs(float(short.final_log_loss) - least) < 1e-9
    assert "stationary point" in short.message and "Raise max_steps" not in short.message


@pytest.mark.slow  # two programs (~25 s cold)
def test_a_vmapped_flow_stops_each_run_at_its_own_minimum():
    """``jax.vmap`` over two target vectors, one a linear map of X (fitted exactly: it reaches
    log L = -10) and one that no linear map fits (it stops at its least-squares minimum,
    ``STATIONARY``), with Kvaerno5 throughout."""
    from wnjax._dynamics.flow import STATIONARY

    net, X, y, least = _unfittable_regression()
    fit = X @ jnp.arange(1.0, 5.0) / 4.0

    @jax.vmap
    def run(labels):
        r = wnjax.gradient_flow(
            net,
            X,
            labels,
            loss="square",
            time="normalized",
            target_log_loss=-10.0,
            solver="stiff",
            throw=False,
        )
        return r.stop_code, r.reached_target, r.final_log_loss

    codes, reached, log_l = run(jnp.stack([fit, y]))
    assert codes.tolist() == [0, STATIONARY] and reached.tolist() == [True, False]
    assert abs(float(log_l[1]) - least) < 1e-9


@pytest.mark.slow
def test_a_float32_run_that_nearly_stopped_is_told_float64_can_tell_slow_from_stationary():
    """``|grad log L| < sqrt(eps)`` is 3.5e-4 in float32: a flow that is only slow (an example
    whose units are all but off) passes it too. A float32 run short of its target with such a
    gradient names float64 as the way to tell; the same run's message in float64 does not."""
    import dataclasses

    from wnjax._dynamics.flow import _stationary_note

    X, y = separable_data(jax.random.key(3), n=8, d=3)
    model, X, y = _float32(wnjax.MLP(3, 4, 2, activation="relu2", key=jax.random.key(4)), X, y)
    r = wnjax.gradient_flow(model, X, y, t1=0.5, target_log_loss=-300.0, throw=False)
    assert r.final_log_loss.dtype == jnp.float32 and not bool(r.reached_target)
    slow = dataclasses.replace(r, stats={**r.stats, "final_grad_norm": jnp.float32(1e-4)})
    note = _stationary_note(slow, "more steps")
    assert "(nearly) stopped" in note and "jax_enable_x64" in note
    wide = dataclasses.replace(slow, final_log_loss=slow.final_log_loss.astype(jnp.float64))
    assert _stationary_note(wide, "more steps") == ""  # 1e-4 > sqrt(eps) in float64
    wide = dataclasses.replace(wide, stats={**r.stats, "final_grad_norm": jnp.float64(1e-9)})
    note = _stationary_note(wide, "more steps")
    assert "(nearly) stopped" in note and "jax_enable_x64" not in note
