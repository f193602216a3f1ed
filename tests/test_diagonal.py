"""Diagonal linear nets and polar weight normalization (SPEC section 5) against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

import wnjax
from wnjax.experiments._diagonal_wn import gd_trace, plain_rate


@pytest.fixture(scope="module")
def problem():
    """d = 20, N = 12, k = 2: l1 recovers x* exactly (checked below)."""
    A, y, xs = wnjax.diagonal.sparse_problem(jax.random.key(0), 20, 12, 2)
    return A, y, xs


def test_references(problem):
    A, y, xs = problem
    x1 = wnjax.diagonal.l1_interpolator(A, y)
    x2 = wnjax.diagonal.min_l2_interpolator(A, y)
    assert float(wnjax.diagonal.relative_error(x1, xs)) < 1e-8  # exact sparse recovery
    An = np.asarray(A)
    # min-l2: feasible and orthogonal to the null space of A.
    assert np.allclose(An @ x2, y, atol=1e-12)
    null = np.linalg.svd(An)[2][An.shape[0]:]
    assert np.max(np.abs(null @ x2)) < 1e-12
    # Q_alpha: the dual Newton solve and the primal SLSQP solve agree; KKT: grad Q in range(A^T).
    for alpha in (0.1, 0.5):
        xd = wnjax.diagonal.q_alpha_interpolator(A, y, alpha)
        xp = wnjax.diagonal.q_alpha_interpolator(A, y, alpha, method="slsqp")
        assert np.linalg.norm(xd - xp) / np.linalg.norm(xd) < 1e-6
        grad_q = np.arcsinh(xd / (2 * alpha**2))
        assert np.max(np.abs(null @ grad_q)) < 1e-7 * np.max(np.abs(grad_q))


def test_plain_gf_limit_is_q_alpha_minimizer(problem):
    A, y, xs = problem
    alpha = 0.3
    r = wnjax.gradient_flow(
        wnjax.diagonal.net(20, alpha=alpha), A, y, loss="square", t1=1e6, target_log_loss=-32.0,
        max_steps=50_000, n_save=4, save_states=False, throw=False,
    )
    assert float(r.final_log_loss) <= -32.0 + 1e-6
    x = np.asarray(wnjax.diagonal.signal(r.final))
    q = wnjax.diagonal.q_alpha_interpolator(A, y, alpha)
    err = np.linalg.norm(x - q) / np.linalg.norm(q)
    assert err < 1e-5
    # The test can fail: Q_alpha's minimizer is far from the l1 and l2 interpolators here.
    for ref in (wnjax.diagonal.l1_interpolator(A, y), wnjax.diagonal.min_l2_interpolator(A, y)):
        assert np.linalg.norm(ref - q) / np.linalg.norm(q) > 1e3 * err


def _polar_w_ode(A, y, eta_r, eta_theta):
    """``dw/dt = -[eta_r theta theta^T + eta_theta r^2 (I - theta theta^T)] grad L`` for ``L = 2``."""
    A, y = np.asarray(A), np.asarray(y)
    d = A.shape[1]

    def f(t, w):
        u, v = w[:d], w[d:]
        g = A.T @ (A @ (u * u - v * v) - y)
        grad = np.concatenate([2 * u * g, -2 * v * g])
        r2 = w @ w
        radial = (w @ grad) / r2 * w
        return -(eta_r * radial + eta_theta * r2 * (grad - radial))

    return f


def test_polar_flow_and_invariant_match_w_space_ode(problem):
    A, y, xs = problem
    alpha, eta_r, eta_theta = 0.5, 0.2, 1.0
    net = wnjax.diagonal.net(20, alpha=alpha)
    p = wnjax.diagonal.polar_wn(net)
    ts = np.array([0.0, 0.02, 0.05, 0.1, 0.2])
    r = wnjax.gradient_flow(
        p, A, y, loss="square", t1=float(ts[-1]), save_ts=ts, rate=wnjax.diagonal.polar_rates(eta_r, eta_theta),
        rtol=1e-11, atol=1e-13, max_steps=20_000,
    )
    w0 = np.asarray(net.flat())
    ref = scipy.integrate.solve_ivp(
        _polar_w_ode(A, y, eta_r, eta_theta), (0, ts[-1]), w0, method="DOP853", t_eval=ts,
        rtol=1e-12, atol=1e-14,
    )
    w_lib = np.stack([np.asarray(wnjax.to_standard(jax.tree_util.tree_map(lambda s: s[i], r.states)).flat()) for i in range(len(ts))])
    assert np.max(np.abs(w_lib - ref.y.T)) < 1e-8
    # u_i v_i(t)/u_i v_i(0): one common factor for all i (library), equal to the ODE's, and moving.
    ratios = np.stack([np.asarray(wnjax.diagonal.uv_ratio(jax.tree_util.tree_map(lambda s: s[i], r.states), p)) for i in range(len(ts))])
    d = 20
    ode_ratios = (ref.y[:d] * ref.y[d:]).T / (w0[:d] * w0[d:])
    assert np.max(np.asarray(wnjax.diagonal.invariant_spread(jnp.asarray(ratios)))) < 1e-8
    assert np.max(np.abs(ratios - ode_ratios)) < 1e-7
    assert abs(ratios[-1].mean() - 1.0) > 1e-2
    # The ODE reference shows the common factor too (the derivation, independently of wnjax).
    spread_ode = (ode_ratios.max(1) / ode_ratios.min(1) - 1).max()
    assert spread_ode < 1e-8


def test_polar_sgd_is_the_retracted_polar_step(problem):
    A, y, _ = problem
    net = wnjax.diagonal.net(20, alpha=0.7)
    er, et = 0.03, 0.002
    res = wnjax.gradient_descent(
        wnjax.diagonal.polar_wn(net), A, y, loss="square", num_steps=1, optimizer=wnjax.diagonal.polar_sgd,
        learning_rate=er, hyperparams={"angular_rate": et},
    )
    # SPEC: r <- r - eta_r <g, theta>; theta <- normalize(theta - eta_theta r (g - theta <g, theta>)).
    w = np.asarray(net.flat())
    An, yn = np.asarray(A), np.asarray(y)
    u, v = w[:20], w[20:]
    gx = An.T @ (An @ (u**2 - v**2) - yn)
    g = np.concatenate([2 * u * gx, -2 * v * gx])
    rad = np.linalg.norm(w)
    theta = w / rad
    r1 = rad - er * g @ theta
    t1 = theta - et * rad * (g - theta * (g @ theta))
    w1 = r1 * t1 / np.linalg.norm(t1)
    assert np.allclose(np.asarray(wnjax.to_standard(res.final).flat()), w1, rtol=1e-12, atol=1e-14)
    assert abs(float(jnp.linalg.norm(res.final.layers[0].v)) - 1.0) < 1e-12


def test_wn_gd_reaches_l1_much_faster_at_small_alpha(problem):
    A, y, xs = problem
    net = wnjax.diagonal.net(20, alpha=0.01)
    budget = 2000
    res = wnjax.gradient_descent(
        wnjax.diagonal.polar_wn(net), A, y, loss="square", num_steps=budget, optimizer=wnjax.diagonal.polar_sgd,
        learning_rate=1e-2, hyperparams={"angular_rate": 0.1}, n_save=8,
    )
    x1 = wnjax.diagonal.l1_interpolator(A, y)
    assert float(wnjax.diagonal.relative_error(wnjax.diagonal.signal(res.final), x1)) <= 1e-3
    lr = plain_rate(np.asarray(A), np.asarray(y), 0.01, 2)
    _, errs, first = jax.jit(lambda: gd_trace(net, optax.sgd(lr), A, y, x1, 20 * budget, 20))()
    assert int(first[0]) == -1 or int(first[0]) > 20 * budget  # plain GD: not within 20x the steps
    assert float(errs[-1]) > 1e-3


def test_plain_gd_error_grows_with_alpha_to_min_l2(problem):
    A, y, xs = problem
    l2_err = float(wnjax.diagonal.relative_error(wnjax.diagonal.min_l2_interpolator(A, y), xs))
    alphas = (0.03, 0.3, 3.0)
    final = []
    for alpha in alphas:
        lr = plain_rate(np.asarray(A), np.asarray(y), alpha, 2)
        net = wnjax.diagonal.net(20, alpha=alpha)
        _, errs, _ = jax.jit(lambda: gd_trace(net, optax.sgd(lr), A, y, xs, 4000, 10))()
        final.append(float(errs[-1]))
    assert final[0] < final[1] < final[2]
    assert final[0] < 0.2 * l2_err
    assert abs(final[2] - l2_err) < 0.02 * l2_err


def test_models_and_bad_input():
    net = wnjax.diagonal.net(5, depth=3, alpha=0.5, grouping="coordinate")
    x = jnp.arange(5.0)
    assert np.allclose(net(x), 0.0)
    net = wnjax.diagonal.net(5, depth=3, u0=jnp.arange(1.0, 6.0), v0=jnp.ones(5))
    assert np.allclose(wnjax.diagonal.signal(net), np.arange(1.0, 6.0) ** 3 - 1)
    # groupings: same function, different neurons.
    assert wnjax.diagonal.polar_wn(net).neuron_norms().shape == (1,)
    assert wnjax.diagonal.coordinate_wn(net, "ewn").neuron_norms().shape == (10,)
    assert np.allclose(wnjax.diagonal.signal(wnjax.diagonal.coordinate_wn(net, "ewn")), wnjax.diagonal.signal(net))
    with pytest.raises(ValueError, match="depth"):
        wnjax.diagonal.net(5, depth=1)
    with pytest.raises(ValueError, match="alpha"):
        wnjax.diagonal.net(5, alpha=0.0)
    with pytest.raises(ValueError, match="grouping"):
        wnjax.diagonal.net(5, grouping="rows")
    with pytest.raises(ValueError, match="weight-normalized"):
        wnjax.diagonal.polar_rates(1.0, 1.0)(wnjax.standard(net), wnjax.standard(net))
