"""Diagonal linear nets and polar weight normalization (docs/theory.md §5) against independent
references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

import wnjax
from wnjax.experiments._diagonal_wn import gd_run, gd_trace, plain_rate


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
    null = np.linalg.svd(An)[2][An.shape[0] :]
    assert np.max(np.abs(null @ x2)) < 1e-12
    # Q_alpha: the dual Newton solve and the primal SLSQP solve agree; KKT: grad Q in range(A^T).
    for alpha in (0.1, 0.5):
        xd = wnjax.diagonal.q_alpha_interpolator(A, y, alpha)
        xp = wnjax.diagonal.q_alpha_interpolator(A, y, alpha, method="slsqp")
        assert np.linalg.norm(xd - xp) / np.linalg.norm(xd) < 1e-6
        grad_q = np.arcsinh(xd / (2 * alpha**2))
        assert np.max(np.abs(null @ grad_q)) < 1e-7 * np.max(np.abs(grad_q))


@pytest.mark.parametrize("alpha", [0.01, 0.03])
def test_q_alpha_dual_solve_is_feasible_at_small_scales(alpha):
    """At small alpha the dual's cosh terms are large and rounding hides its decrease; the solve
    still interpolates ``A x = y`` to rounding level on every problem (d = 100, N = 40, k = 5),
    and agrees with the primal SLSQP solve (accurate to ~1e-8)."""
    for key in jax.random.split(jax.random.key(0), 5):
        A, y, _ = (np.asarray(t) for t in wnjax.diagonal.sparse_problem(key, 100, 40, 5))
        x = wnjax.diagonal.q_alpha_interpolator(A, y, alpha)
        assert np.linalg.norm(A @ x - y) <= 1e-12 * np.linalg.norm(y)
        xp = wnjax.diagonal.q_alpha_interpolator(A, y, alpha, method="slsqp")
        assert wnjax.diagonal.q_alpha(x, alpha) <= wnjax.diagonal.q_alpha(xp, alpha) + 1e-9


@pytest.mark.slow
def test_plain_gf_limit_is_q_alpha_minimizer(problem):
    A, y, xs = problem
    alpha = 0.3
    r = wnjax.gradient_flow(
        wnjax.diagonal.net(20, alpha=alpha),
        A,
        y,
        loss="square",
        t1=1e6,
        target_log_loss=-32.0,
        max_steps=50_000,
        n_save=4,
        save_states=False,
        throw=False,
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
    """``dw/dt = -[eta_r theta theta^T + eta_theta r^2 (I - theta theta^T)] grad L``, ``L = 2``."""
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


@pytest.mark.slow
def test_polar_flow_and_invariant_match_w_space_ode(problem):
    A, y, xs = problem
    alpha, eta_r, eta_theta = 0.5, 0.2, 1.0
    net = wnjax.diagonal.net(20, alpha=alpha)
    p = wnjax.diagonal.polar_wn(net)
    ts = np.array([0.0, 0.02, 0.05, 0.1, 0.2])
    r = wnjax.gradient_flow(
        p,
        A,
        y,
        loss="square",
        t1=float(ts[-1]),
        save_ts=ts,
        rate=wnjax.diagonal.polar_rates(eta_r, eta_theta),
        rtol=1e-11,
        atol=1e-13,
        max_steps=20_000,
    )
    w0 = np.asarray(net.flat())
    ref = scipy.integrate.solve_ivp(
        _polar_w_ode(A, y, eta_r, eta_theta),
        (0, ts[-1]),
        w0,
        method="DOP853",
        t_eval=ts,
        rtol=1e-12,
        atol=1e-14,
    )

    def state(i):
        return jax.tree_util.tree_map(lambda s: s[i], r.states)

    w_lib = np.stack([np.asarray(wnjax.to_standard(state(i)).flat()) for i in range(len(ts))])
    assert np.max(np.abs(w_lib - ref.y.T)) < 1e-8
    # u_i v_i(t)/u_i v_i(0): one common factor for all i (library), equal to the ODE's, and moving.
    ratios = np.stack([np.asarray(wnjax.diagonal.uv_ratio(state(i), p)) for i in range(len(ts))])
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
        wnjax.diagonal.polar_wn(net),
        A,
        y,
        loss="square",
        num_steps=1,
        optimizer=wnjax.diagonal.polar_sgd,
        learning_rate=er,
        hyperparams={"angular_rate": et},
    )
    # r <- r - eta_r <g, theta>; theta <- normalize(theta - eta_theta r (g - theta <g, theta>)).
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
        wnjax.diagonal.polar_wn(net),
        A,
        y,
        loss="square",
        num_steps=budget,
        optimizer=wnjax.diagonal.polar_sgd,
        learning_rate=1e-2,
        hyperparams={"angular_rate": 0.1},
        n_save=8,
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
    assert np.allclose(
        wnjax.diagonal.signal(wnjax.diagonal.coordinate_wn(net, "ewn")), wnjax.diagonal.signal(net)
    )
    with pytest.raises(ValueError, match="depth"):
        wnjax.diagonal.net(5, depth=1)
    with pytest.raises(ValueError, match="alpha"):
        wnjax.diagonal.net(5, alpha=0.0)
    with pytest.raises(ValueError, match="grouping"):
        wnjax.diagonal.net(5, grouping="rows")
    with pytest.raises(ValueError, match="weight-normalized"):
        wnjax.diagonal.polar_rates(1.0, 1.0)(wnjax.standard(net), wnjax.standard(net))


def _numpy_gd(A, y, alpha, steps, *, lr=None, rates=None):
    """Plain GD on ``(u, v)`` (``lr``) or polar WN-GD on ``w = r theta`` (``rates``), in numpy;
    the signal ``x = u^2 - v^2`` and ``log L`` after each step."""
    A, y = np.asarray(A), np.asarray(y)
    d = A.shape[1]
    w = np.full(2 * d, alpha)
    xs, logs = [], []
    for _ in range(steps):
        u, v = w[:d], w[d:]
        gx = A.T @ (A @ (u * u - v * v) - y)
        g = np.concatenate([2 * u * gx, -2 * v * gx])
        if rates is None:
            w = w - lr * g
        else:
            r = np.linalg.norm(w)
            theta = w / r
            gr = g @ theta
            t = theta - rates[1] * r * (g - theta * gr)
            w = (r - rates[0] * gr) * t / np.linalg.norm(t)
        x = w[:d] ** 2 - w[d:] ** 2
        xs.append(x)
        logs.append(np.log(0.5 * np.sum((A @ x - y) ** 2)))
    return np.array(xs), np.array(logs)


@pytest.mark.parametrize("method", ["plain GD", "WN-GD"])
def test_gd_run_counts_iterations_like_a_numpy_loop(problem, method):
    A, y, _ = problem
    alpha, target, steps = 0.1, -12.0, 3000
    if method == "WN-GD":
        kw, opt = dict(rates=(0.05, 0.05)), wnjax.diagonal.polar_sgd(0.05, 0.05)
        p0 = wnjax.diagonal.polar_wn(wnjax.diagonal.net(20, alpha=alpha))
    else:
        lr = 4 * plain_rate(np.asarray(A), np.asarray(y), alpha, 2)
        kw, opt, p0 = dict(lr=lr), optax.sgd(lr), wnjax.diagonal.net(20, alpha=alpha)
    xs, logs = _numpy_gd(A, y, alpha, steps, **kw)
    k_stop = int(np.argmax(logs <= target))  # the state after k_stop + 1 steps is at the target
    assert logs[k_stop] <= target < logs[k_stop - 1]
    x_ref = xs[k_stop]
    dist = np.linalg.norm(xs - x_ref, axis=1) / np.linalg.norm(x_ref)
    r = jax.jit(lambda: gd_run(p0, opt, A, y, jnp.asarray(x_ref), steps, 10, target))()
    assert int(r["stop"]) == 1 and int(r["iterations"]) == k_stop + 1
    assert np.allclose(np.asarray(r["x"]), x_ref, rtol=1e-9, atol=1e-12)
    for j, level in enumerate((1e-3, 1e-6)):
        # GD's checkpoint step counts the steps taken; the numpy state after k + 1 steps is xs[k]
        assert int(r["first"][j]) == int(np.argmax(dist <= level)) + 1


@pytest.mark.slow
def test_speed_ladder_iterations_scale_like_flow_time(problem):
    """Small steps follow the flow: iterations to a fixed distance from the limit times the step
    are nearly constant, so doubling the step halves the count."""
    from wnjax.experiments._diagonal_wn import Options, speed_ladder

    A, y, xs = problem
    prob = (A[None], y[None], xs[None])
    out = speed_ladder(prob, 0.1, Options(out="unused", speed_steps=100_000, seeds=1))
    for method in ("plain GD", "WN-GD"):
        done = [r for r in out[method]["rungs"] if "to_1e-6" in r]
        assert len(done) >= 2
        first, second = done[0], done[1]
        assert second["multiplier"] == 2 * first["multiplier"]
        assert abs(first["to_1e-6"][0] / second["to_1e-6"][0] - 2) < 0.2
        # rerun (pass 2) takes the same iterates as pass 1: the 1e-6 hit is before the stop
        assert 0 < first["to_1e-6"][0] <= first["iterations_to_target"][0]


@pytest.mark.slow
def test_diagonal_wn_points_side_by_side_give_the_serial_numbers(tmp_path, monkeypatch):
    """``diagonal-wn`` end to end at a small size: its sweep points and speed ladder, run on two
    worker threads, give the metrics of the same run on one (every point and section present)."""
    import json

    import wnjax._runtime.cores as cores
    from wnjax.experiments._diagonal_wn import Options, run

    def metrics(workers: int, out):
        monkeypatch.setattr(cores, "usable_cores", lambda: workers)
        options = Options(
            out=str(out), seeds=2, dim=16, measurements=8, sparsity=2, alphas="0.1,1",
            steps=300, speed_steps=3000, target_log_loss=-8.0,
        )  # fmt: skip
        m = run(options)
        m.pop("options")
        return json.loads(json.dumps(m, default=str))

    one, two = metrics(1, tmp_path / "one"), metrics(2, tmp_path / "two")
    assert set(two["depth_sweep"]["results"]) == {"2|0.1", "2|1.0", "3|0.1", "3|1.0"}
    assert set(two["sparsity_sweep"]["results"]) == {
        f"{k}|{a}" for k in (2, 10, 15) for a in (0.1, 1.0)
    }
    assert two == one


@pytest.mark.slow
def test_diagonal_wn_stopped_keeps_the_runs_finished_before_the_stop(tmp_path, monkeypatch):
    """A stop requested once the first sweep point has finished: that point is on disk, in
    ``metrics.json`` with ``partial`` set, and the report says PARTIAL; the runs cut short or
    never started are named as missing, and no verdict is drawn."""
    import json
    import threading

    import wnjax._runtime.cores as cores
    import wnjax._runtime.interrupt as interrupt
    import wnjax.experiments._diagonal_wn as dw

    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    first_done, real_point = threading.Event(), dw.sweep_point

    def point(*args, **kwargs):
        out = real_point(*args, **kwargs)
        first_done.set()
        return out

    def ladder(*args, **kwargs):  # runs beside the first point, then stops the run
        assert first_done.wait(120)
        interrupt.request()
        return {}

    monkeypatch.setattr(dw, "sweep_point", point)
    monkeypatch.setattr(dw, "speed_ladder", ladder)
    options = dw.Options(
        out=str(tmp_path), seeds=2, dim=16, measurements=8, sparsity=2, alphas="0.1,1",
        steps=300, speed_steps=3000, target_log_loss=-8.0,
    )  # fmt: skip
    try:
        metrics = dw.run(options)
    finally:
        interrupt.clear()
    assert metrics["partial"] and metrics["finished"] == ["L=2, alpha=0.1, k=2"]
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["finished"] == metrics["finished"] and "L=2, alpha=0.1, k=2" in saved["points"]
    assert "speed" not in saved and "verdicts" not in saved
    report = (tmp_path / "report.md").read_text()
    assert "**PARTIAL**: 1 of" in report and "speed ladder" in report
