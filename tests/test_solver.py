"""The stiffness-switching solver against scipy on the classic stiff test equations (Hairer &
Wanner, *Solving ODEs II*): Robertson's chemical kinetics and Van der Pol with mu = 1000."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import wnjax
from wnjax._dynamics.flow import default_save_times
from wnjax._solver.auto import stability_boundary, stiffness_estimate


def robertson(t, y, args):
    y1, y2, y3 = y
    return jnp.stack(
        [-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2]
    )


def van_der_pol(t, y, args, mu=1000.0):
    return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def _scipy(f, y0, ts, rtol=1e-10, atol=1e-14):
    # Radau calls the field and its Jacobian thousands of times: compile each once.
    field = jax.jit(lambda t, y: f(t, y, None))
    jac = jax.jit(jax.jacfwd(lambda t, y: f(t, y, None), argnums=1))
    sol = solve_ivp(
        lambda t, y: np.asarray(field(t, jnp.asarray(y))),
        (0.0, ts[-1]),
        np.asarray(y0),
        method="Radau",
        rtol=rtol,
        atol=atol,
        t_eval=ts,
        jac=lambda t, y: np.asarray(jac(t, jnp.asarray(y))),
    )
    assert sol.success
    return sol.y.T


def _solve(f, y0, ts, solver, rtol, atol, max_steps=200_000):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(f),
        solver,
        t0=0.0,
        t1=float(ts[-1]),
        dt0=None,
        y0=jnp.asarray(y0),
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts), solver_state=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )


def test_stability_boundaries_match_the_literature():
    """DOPRI5's real stability interval ends near -3.3 (Hairer & Wanner IV.2); Bosh3's (order 3,
    4 stages) near -2.5; an L-stable method has none."""
    assert stability_boundary(diffrax.Dopri5()) == pytest.approx(3.31, abs=0.01)
    assert stability_boundary(diffrax.Bosh3()) == pytest.approx(2.51, abs=0.02)
    assert stability_boundary(diffrax.Kvaerno5()) == np.inf


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Dopri8(), diffrax.Kvaerno5()])
def test_stiffness_estimate_is_exact_on_a_linear_problem(solver):
    """On ``y' = A y`` every stage has ``k_i = h A Y_i``, so ``h rho = ||h A d|| / ||d||``: for a
    diagonal A with one dominant entry, ``h |lambda_max|`` to rounding when d lies along it."""
    lam = -250.0
    A = jnp.diag(jnp.array([lam, -1.0]))
    f = lambda t, y, args: A @ y  # noqa: E731
    y0 = jnp.array([1.0, 0.0])  # only the stiff mode is excited
    h = 0.01
    term = diffrax.ODETerm(f)
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        solver = diffrax.Kvaerno5(root_finder=diffrax.VeryChord(rtol=1e-12, atol=1e-14))
    t0, t1 = jnp.asarray(0.0), jnp.asarray(h)
    state = solver.init(term, t0, t1, y0, None)
    _, _, dense, _, _ = solver.step(term, t0, t1, y0, None, state, jnp.asarray(False))
    assert float(stiffness_estimate(solver, dense["k"])) == pytest.approx(abs(lam) * h, rel=1e-8)


def test_robertson_switches_and_agrees_with_radau():
    """Robertson (k1 = 0.04, k2 = 3e7, k3 = 1e4) to t = 1e5: the automatic solver turns implicit
    early, agrees with scipy's Radau (rtol 1e-10) to the requested tolerance, conserves
    y1 + y2 + y3 = 1, and takes far fewer steps than Tsit5 alone, which runs out of steps."""
    y0 = np.array([1.0, 0.0, 0.0])
    ts = np.array([1e-2, 1.0, 1e2, 1e4, 1e5])
    ref = _scipy(robertson, y0, ts)
    sol = _solve(robertson, y0, ts, wnjax.AutoSwitch(), rtol=1e-8, atol=1e-12)
    assert sol.result == diffrax.RESULTS.successful
    got = np.asarray(sol.ys)
    scale = np.maximum(np.abs(ref), 1e-9)
    assert np.max(np.abs(got - ref) / scale) < 1e-5
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    state = sol.solver_state
    assert int(state["stiff_steps"]) > 0 and int(state["switches"]) >= 1
    explicit = _solve(robertson, y0, ts, diffrax.Tsit5(), rtol=1e-8, atol=1e-12, max_steps=20_000)
    assert explicit.result != diffrax.RESULTS.successful  # stability-bound: out of steps
    assert int(sol.stats["num_steps"]) < 2_000


@pytest.mark.slow
def test_van_der_pol_switches_both_ways_and_agrees_with_radau():
    """Van der Pol with mu = 1000 to t = 1000: a slow stiff phase (y1 from 2 to 1, until
    t ~ (3/2 - log 2) mu = 807), a fast jump, and the next slow phase, so the solver switches
    both ways; away from the jump the state agrees with scipy's Radau (rtol 1e-10)."""
    y0 = np.array([2.0, 0.0])
    ts = np.array([100.0, 500.0, 700.0, 950.0, 1000.0])
    ref = _scipy(van_der_pol, y0, ts)
    rtol = 1e-8
    auto = _solve(van_der_pol, y0, ts, wnjax.AutoSwitch(), rtol=rtol, atol=1e-10)
    stiff = _solve(van_der_pol, y0, ts, wnjax.stiff_solver(), rtol=rtol, atol=1e-10)
    assert auto.result == diffrax.RESULTS.successful
    np.testing.assert_allclose(np.asarray(auto.ys)[:, 0], ref[:, 0], rtol=1e-5)
    state = auto.solver_state
    assert int(state["switches"]) >= 2
    assert int(state["stiff_steps"]) > 0 and int(state["explicit_steps"]) > 0
    # never far behind the implicit method alone, in steps
    assert int(auto.stats["num_steps"]) < 1.5 * int(stiff.stats["num_steps"])


@pytest.mark.slow
def test_gradient_flow_reports_the_switch():
    """The loss-normalized flow of a linear model on separable data turns stiff as log L falls:
    the default solver counts both kinds of steps and reaches log L = -1000, where Tsit5 alone
    is held to tiny steps."""
    key1, key2 = jax.random.split(jax.random.key(0))
    X = jax.random.normal(key1, (20, 3))
    y = jnp.sign(X @ jnp.array([1.0, -2.0, 0.5]))
    X = X + 0.3 * y[:, None] * jnp.array([[1.0, -2.0, 0.5]]) / jnp.sqrt(5.25)
    model = wnjax.MLP(3, 1, 1, activation="linear", key=key2)
    r = wnjax.gradient_flow(
        model, X, y, time="normalized", t1=1e6, target_log_loss=-1000.0, n_save=8, diagnostics=False
    )
    assert bool(r.reached_target) and bool(r.ok)
    assert int(r.stats["stiff_steps"]) > 0 and int(r.stats["explicit_steps"]) > 0
    assert int(r.stats["explicit_steps"]) + int(r.stats["stiff_steps"]) == int(
        r.stats["num_accepted_steps"]
    )


def test_an_overflowing_step_is_rejected_not_fatal():
    """y' = -y^3 from y(0) = 10 with a first step of 10: the explicit stages overflow. Plain
    Tsit5 then gets a NaN step size and stalls; AutoSwitch rejects the step, shrinks h and
    matches the closed form y(t) = (2t + y0^-2)^(-1/2)."""
    term = diffrax.ODETerm(lambda t, y, args: -(y**3))
    kw = dict(
        t0=0.0,
        t1=5.0,
        dt0=10.0,
        y0=jnp.array(10.0),
        throw=False,
        max_steps=2000,
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
    )
    plain = diffrax.diffeqsolve(term, diffrax.Tsit5(), **kw)
    assert plain.result != diffrax.RESULTS.successful
    auto = diffrax.diffeqsolve(term, wnjax.AutoSwitch(), **kw)
    assert auto.result == diffrax.RESULTS.successful
    np.testing.assert_allclose(float(auto.ys[-1]), (2 * 5.0 + 1e-2) ** -0.5, rtol=1e-6)


def test_high_order_only_on_a_smooth_field(getkey):
    """Dopri8 below rtol 1e-9 only where the field has no kinks (linear, ReLU^p with p >= 3);
    Dopri5 where it has (ReLU, ReLU^2); Tsit5 where it is not known."""
    from wnjax._dynamics.flow import kinked_field, smooth_field

    for act, smooth in [("linear", True), ("relu3", True), ("relu2", False), ("relu", False)]:
        net = wnjax.MLP(3, 4, 2, activation=act, key=getkey())
        assert smooth_field(net) is smooth and smooth_field(wnjax.ewn(net)) is smooth
        assert kinked_field(net) is (not smooth) and kinked_field(wnjax.swn(net)) is (not smooth)
        for rtol in (1e-10, 1e-8):
            chosen = wnjax.default_solver(
                rtol, 10, smooth=smooth_field(net), kinks=kinked_field(net)
            )
            want = (
                diffrax.Dopri5 if not smooth else diffrax.Dopri8 if rtol < 1e-9 else diffrax.Tsit5
            )
            assert type(chosen.explicit) is want
    other = eqx_linear(getkey())
    assert not smooth_field(other) and not kinked_field(other)
    assert type(wnjax.default_solver(1e-10, 10).explicit) is diffrax.Tsit5


def eqx_linear(key):
    import equinox as eqx

    return eqx.nn.Linear(3, "scalar", use_bias=False, key=key)


def test_rho_is_exact_where_a_forward_difference_saturates():
    """u' = -lam tanh(K u) / K beside a large, slow w' = 1 (w ~ 1e6): at u = 0 the Jacobian is
    diag(-lam, 0), but the field saturates within |u| ~ 1/K = 1e-4, far below the forward
    difference's delta ~ sqrt(eps) (1 + ||y||) ~ 0.015 there, which would read rho ~ lam/150.
    Stiff (lam = 1e6), the flow runs on Kvaerno5, and the measured rho is lam to 1e-6; u decays
    to 0 (u' ~ -lam u near it) and w = w0 + t."""
    lam, K = 1e6, 1e4

    def f(t, y, args):
        return jnp.stack([-lam * jnp.tanh(K * y[0]) / K, jnp.ones_like(y[0])])

    y0 = np.array([1e-6, 1e6])
    sol = _solve(f, y0, np.array([1.0, 10.0]), wnjax.AutoSwitch(), rtol=1e-8, atol=1e-12)
    assert bool(sol.solver_state["stiff"]) and int(sol.solver_state["switches"]) == 1
    assert float(sol.solver_state["rho"]) == pytest.approx(lam, rel=1e-6)
    np.testing.assert_allclose(np.asarray(sol.ys)[:, 1], 1e6 + np.array([1.0, 10.0]), rtol=1e-12)
    assert np.all(np.abs(np.asarray(sol.ys)[:, 0]) < 1e-12)


@pytest.mark.slow
def test_far_from_the_boundary_rho_is_measured_every_few_steps():
    """y' = A y, eigenvalues -2 and -0.5, to t = 20 at rtol 1e-10: accuracy, not stability,
    holds h, so ``h rho`` stays far below Tsit5's boundary. The default check then measures on
    one step in ``check_every`` (counted as field evaluations against ``check_every=1``), the
    solution is the same, the power iteration's ``rho`` is |lambda_max| = 2, and the solution
    matches exp(tA) y0."""
    A = jnp.array([[-1.25, 0.75], [0.75, -1.25]])  # eigenvalues -2, -0.5
    y0 = np.array([1.0, 0.3])
    ts = np.array([5.0, 20.0])
    calls = []

    def f(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return A @ y

    runs = {}
    for every in (1, 8):
        calls.clear()
        sol = _solve(f, y0, ts, wnjax.AutoSwitch(check_every=every), rtol=1e-10, atol=1e-12)
        jax.block_until_ready(sol.ys)
        runs[every] = sol, len(calls)
    (dense, n_dense), (lazy, n_lazy) = runs[1], runs[8]
    steps = int(lazy.stats["num_steps"])
    assert int(lazy.solver_state["switches"]) == 0 and steps > 100
    np.testing.assert_array_equal(np.asarray(lazy.ys), np.asarray(dense.ys))
    assert n_dense - n_lazy >= 0.8 * (1 - 1 / 8) * steps
    assert float(lazy.solver_state["rho"]) == pytest.approx(2.0, rel=1e-6)
    w, V = np.linalg.eigh(np.asarray(A))
    exact = [V @ (np.exp(w * t) * (V.T @ y0)) for t in ts]
    np.testing.assert_allclose(np.asarray(lazy.ys), exact, rtol=1e-8)


def _diagonal_regression():
    """A depth-2 diagonal net on sparse regression (square loss), and scipy Radau's ``log L``
    of its plain-time flow at given times (``u' = -grad_u L``, ``L = |r|^2/2``,
    ``r = A(u^2 - v^2) - y``, written out by hand)."""
    from wnjax.diagonal._nets import diagonal_net, sparse_problem

    A, y, _ = sparse_problem(jax.random.key(0), dim=12, n_measurements=6, sparsity=2)
    An, yn = np.asarray(A), np.asarray(y)

    def f(t, w):
        u, v = w[:12], w[12:]
        g = An.T @ (An @ (u**2 - v**2) - yn)
        return np.concatenate([-2 * u * g, 2 * v * g])

    def radau(ts):
        """``(log L at ts, the signal u^2 - v^2 at ts[-1])``."""
        sol = solve_ivp(
            f, (0.0, ts[-1]), np.full(24, 0.1), method="Radau", rtol=1e-11, atol=1e-13, t_eval=ts
        )
        x = sol.y[:12] ** 2 - sol.y[12:] ** 2
        return np.log(0.5 * np.sum((An @ x - yn[:, None]) ** 2, axis=0)), x[:, -1]

    return diagonal_net(12, depth=2, alpha=0.1), A, y, radau


def _one_program(net, A, y, **kw):
    """The default solver's switching solve in one compiled program (``solver='auto'`` under
    ``jit``), the reference for the chain of one-method solves ``gradient_flow`` runs."""
    import equinox as eqx

    return eqx.filter_jit(lambda A, y: wnjax.gradient_flow(net, A, y, solver="auto", **kw))(A, y)


# The diagonal flow's options in the tests of the chained solves (one set: one compilation).
PHASES = dict(loss="square", t1=160.0, n_save=12, diagnostics=False, save_states=False)
COUNTS = ("num_steps", "num_accepted_steps", "num_rejected_steps", "explicit_steps", "stiff_steps")


@pytest.mark.slow
def test_a_flow_that_turns_stiff_runs_as_phases_that_agree_with_radau_and_one_program():
    """The plain-time flow of a diagonal net on square loss turns stiff near its minimum: the
    default solver switches to the implicit method. ``gradient_flow`` runs it as a chain of
    solves (the explicit method alone, then the implicit one from where the first switched, and
    so on at each switch): ``log L``
    at the save points agrees with scipy's Radau (to 1e-4 where ``log L > -20``: below it the
    default rtol of 1e-8, on weights of size 1, leaves the ~1e-8 residuals few digits), and so
    does the signal ``u^2 - v^2`` at the end, after the switch; the run takes the same steps to
    the same end as the switching solve in one program."""
    net, A, y, radau = _diagonal_regression()
    r = wnjax.gradient_flow(net, A, y, **PHASES)
    assert bool(r.ok)
    assert int(r.stats["switches"]) >= 1 and int(r.stats["explicit_steps"]) > 0
    assert int(r.stats["stiff_steps"]) > 10  # saves on both sides of the first switch
    ts = np.asarray(r.ts)
    assert np.all(np.isfinite(ts)) and np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(ts, default_save_times(0.0, 160.0, 12), rtol=1e-12)
    ref, x_end = radau(ts)
    shallow = ref > -20
    assert shallow.sum() >= 8 and ref[-1] < -30
    np.testing.assert_allclose(np.asarray(r.log_loss)[shallow], ref[shallow], rtol=0, atol=1e-4)
    x = np.asarray(wnjax.diagonal._nets.diagonal_signal(r.final))
    assert np.linalg.norm(x - x_end) / np.linalg.norm(x_end) < 1e-6
    one = _one_program(net, A, y, **PHASES)
    # a solver in a phase, passed by the caller, still runs the whole flow from that phase
    from wnjax._dynamics.flow import default_solver

    named = wnjax.gradient_flow(
        net, A, y, solver=default_solver(1e-8, 24).phase_solver(False), **PHASES
    )
    for k in COUNTS + ("switches",):
        assert int(r.stats[k]) == int(one.stats[k]) == int(named.stats[k]), k
    # The two runs' programs are compiled apart (the one program's summaries inside its loop,
    # the chain's after its solves; XLA fuses each field its own way): where log L < -20 the
    # residuals are below 1e-8, and rounding at the level of the outputs moves log L by ~1e-9.
    a, b = np.asarray(r.log_loss), np.asarray(one.log_loss)
    np.testing.assert_allclose(a[shallow], b[shallow], rtol=1e-12)
    np.testing.assert_allclose(a[~shallow], b[~shallow], rtol=1e-9)
    np.testing.assert_allclose(float(r.final_log_loss), float(one.final_log_loss), rtol=1e-9)


@pytest.mark.slow
def test_the_step_budget_holds_across_phases():
    """``max_steps`` bounds the whole run, not each of its solves: a run whose budget ends after
    the switch stops after exactly ``max_steps`` steps, after the switch (a solver that never
    switches back: one switch)."""
    net, A, y, _ = _diagonal_regression()
    once = wnjax.AutoSwitch(nonstiff_tol=0.0)
    full = wnjax.gradient_flow(net, A, y, solver=once, **PHASES)
    budget = int(full.stats["num_steps"]) - 5
    assert budget > int(full.stats["num_steps"]) - int(full.stats["stiff_steps"]) + 5
    with pytest.warns(RuntimeWarning, match="max_steps"):
        r = wnjax.gradient_flow(net, A, y, solver=once, max_steps=budget, throw=False, **PHASES)
    assert int(r.stop_code) == 1 and int(r.stats["num_steps"]) == budget
    assert int(r.stats["switches"]) == 1 and float(r.final_time) < float(full.final_time)


@pytest.mark.slow  # two programs of its own (~13 s); CI runs it
def test_a_run_that_starts_implicit_switches_both_ways():
    """``AutoSwitch(start_stiff=True)`` on the diagonal net's flow, not stiff at first: the
    implicit solve hands over to the explicit method, which hands back near the minimum (three
    solves), and the end agrees with scipy's Radau."""
    net, A, y, radau = _diagonal_regression()
    r = wnjax.gradient_flow(net, A, y, solver=wnjax.AutoSwitch(start_stiff=True), **PHASES)
    assert bool(r.ok) and int(r.stats["switches"]) >= 2
    assert int(r.stats["stiff_steps"]) > 0 and int(r.stats["explicit_steps"]) > 0
    _, x_end = radau(np.asarray(r.ts))
    x = np.asarray(wnjax.diagonal._nets.diagonal_signal(r.final))
    assert np.linalg.norm(x - x_end) / np.linalg.norm(x_end) < 1e-6


def test_a_phase_must_name_a_method():
    with pytest.raises(ValueError, match="phase"):
        wnjax.AutoSwitch(phase="stiff")


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.slow
def test_phases_chained_by_hand_count_their_steps_and_agree_with_radau(dtype):
    """Robertson to t = 100 as ``AutoSwitch``'s docstring chains its phases: a ``diffeqsolve``
    of the explicit phase ends on the switch; the implicit phase, from ``resume`` of that state,
    goes on to the end. Each phase's step counts are diffrax's own (accepted steps, past the
    4096 of the count's low part in the explicit phase at a tight tolerance), and the end agrees
    with scipy's Radau."""
    y0 = np.array([1.0, 0.0, 0.0])
    ref = _scipy(robertson, y0, np.array([100.0]))[-1]
    switcher = wnjax.AutoSwitch(stiff_after=5000)  # a long explicit phase
    explicit, implicit = switcher.phase_solver(False), switcher.phase_solver(True)
    term = diffrax.ODETerm(robertson)
    rtol, atol = (1e-8, 1e-12) if dtype == jnp.float64 else (1e-4, 1e-8)
    common = dict(
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=200_000,
        throw=False,
    )
    first = diffrax.diffeqsolve(term, explicit, 0.0, 100.0, None, jnp.asarray(y0, dtype), **common)
    state = first.solver_state
    accepted = int(first.stats["num_accepted_steps"])
    assert first.result == diffrax.RESULTS.internal_error  # the switch
    assert bool(state["stiff"]) and int(state["switches"]) == 1 and accepted > 4096
    assert int(state["explicit_steps"]) == accepted and int(state["stiff_steps"]) == 0
    t_switch, y_switch = first.ts[-1], first.ys[-1]
    start = implicit.resume(state, term, t_switch, 100.0, y_switch, None)
    second = diffrax.diffeqsolve(
        term, implicit, t_switch, 100.0, None, y_switch, solver_state=start, **common
    )
    assert second.result == diffrax.RESULTS.successful
    end = second.solver_state
    assert int(end["explicit_steps"]) == accepted and int(end["switches"]) == 1
    assert int(end["stiff_steps"]) == int(second.stats["num_accepted_steps"])
    got = np.asarray(second.ys[-1], float)
    tol = 1e-5 if dtype == jnp.float64 else 2e-2
    assert np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-6)) < tol


def _types(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [jax.typeof(jnp.asarray(x)) for x in leaves]  # shape, dtype and weak type


@pytest.mark.slow
def test_a_phase_hands_over_a_state_of_the_types_it_starts_from():
    """Van der Pol (mu = 1000) chained through its phases by hand: every solve of a phase
    starts from a state (``resume`` of the last solve's final state) of the same structure,
    shapes, dtypes and weak types as the state the run starts from (``init``), so every solve
    of a phase runs the one program compiled for it (a weakly typed start makes five programs
    of a ``gradient_flow`` run that switches six times, where three do)."""
    switcher = wnjax.AutoSwitch()
    phases = {False: switcher.phase_solver(False), True: switcher.phase_solver(True)}
    term = diffrax.ODETerm(van_der_pol)
    t, y, t1 = 0.0, jnp.asarray([2.0, 0.0]), 1000.0
    state = phases[False].init(term, t, t1, y, None)
    starts = {stiff: _types(phases[stiff].init(term, t, t1, y, None)) for stiff in phases}
    stiff, solves = False, 0
    while True:
        assert _types(state) == starts[stiff], (solves, stiff)
        sol = diffrax.diffeqsolve(
            term,
            phases[stiff],
            t,
            t1,
            None,
            y,
            solver_state=state,
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
            max_steps=100_000,
            throw=False,
        )
        solves += 1
        if sol.result != diffrax.RESULTS.internal_error:  # no switch: the run is done
            break
        t, y, stiff = sol.ts[-1], sol.ys[-1], not stiff
        state = phases[stiff].resume(sol.solver_state, term, t, t1, y, None)
    assert sol.result == diffrax.RESULTS.successful and solves >= 3


def test_an_implicit_trial_that_does_not_pay_delays_the_next_by_its_cost():
    """The switch back after ``k`` implicit steps: below ``profitable_steps``, the explicit
    method then waits at least ``c k`` steps (``c = implicit_cost``, the trial's cost in
    explicit steps) and twice the last wait, and less than twice the larger of these (up to
    ``2^max_backoff stiff_after``), before its votes can switch again; after a stretch that
    paid, twice ``stiff_after``. A wait counts steps, not votes: once it is over, ``stiff_after``
    votes switch, whatever the count was during the wait."""
    for c in (4.0, 25.0, 80.0, 300.0):
        s = wnjax.AutoSwitch(implicit_cost=c)
        cap = s.stiff_after * 2**s.max_backoff
        for k in (1, 5, 12, 40, s.profitable_steps, 100):
            for backoff in (0, 2, s.max_backoff):
                count, switch, run, after = s._vote(
                    jnp.asarray(True),  # an implicit step
                    jnp.asarray(0.0),  # that votes for the explicit method
                    jnp.asarray(s.nonstiff_after - 1),
                    jnp.asarray(backoff),
                    jnp.asarray(min(k, s.profitable_steps) - 1),
                )
                assert bool(switch) and int(count) == 0 and int(run) == 0
                wait = s.stiff_after * 2 ** int(after)
                if k >= s.profitable_steps:
                    assert wait == min(2 * s.stiff_after * 2**backoff, cap)
                else:
                    floor = max(c * k, 2 * s.stiff_after * 2**backoff)
                    assert min(floor, cap) <= wait < max(2 * floor, 2 * s.stiff_after), (c, k)
                # explicit steps after the switch back, each voting for the implicit method
                for steps, votes in ((wait - 1, wait - 1), (wait, s.stiff_after), (wait, 1000)):
                    _, again, _, _ = s._vote(
                        jnp.asarray(False),
                        jnp.asarray(10.0 * s.boundary),
                        jnp.asarray(votes - 1),
                        after,
                        jnp.asarray(steps - 1),
                    )
                    assert bool(again) == (steps >= wait), (c, k, steps)


@pytest.mark.slow  # a switching flow and an explicit one (~12 s)
def test_a_flow_the_implicit_method_cannot_speed_up_stays_explicit():
    """An EWN 13-12-1 ReLU^2 net (181 parameters) on 30 XOR points, normalized flow to
    log L = -300: now and then stability-limited, but Kvaerno5's steps (each ~70 explicit
    steps' work) are not long enough to pay. The default tries the implicit method once (a
    back-off that only doubles makes five trials there, for 2.5x the time of Dopri5 alone) and
    reaches the weights Dopri5 alone reaches."""
    k = jax.random.key
    X = jax.random.normal(k(50), (30, 13))
    y = jnp.sign(X[:, 0] * X[:, 1])
    model = wnjax.ewn(wnjax.MLP(13, 12, 2, activation="relu2", key=k(0)))
    kw = dict(time="normalized", t1=1e9, target_log_loss=-300.0, save_states=False)
    r = wnjax.gradient_flow(model, X, y, **kw)
    assert bool(r.reached_target)
    assert int(r.stats["switches"]) <= 2 and int(r.stats["stiff_steps"]) <= 10
    ref = wnjax.gradient_flow(model, X, y, solver="dopri5", **kw)
    assert int(r.stats["num_steps"]) < 1.1 * int(ref.stats["num_steps"])
    a, b = (
        np.concatenate([np.ravel(w) for w in jax.tree.leaves(eqx.filter(x.final, eqx.is_array))])
        for x in (r, ref)
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8 * np.max(np.abs(b)))


@pytest.mark.slow  # two flows of a depth-3 net (~15 s)
def test_a_stability_limited_explicit_run_switches_to_the_implicit_method():
    """A depth-3 ReLU^3 net (13-homogeneous) on 24 points, normalized flow to log L = -300. Its
    explicit steps are held by stability from early on: the step-size controller hunts for the
    boundary, and the accepted steps have ``h rho`` spread over ``0.4-1.1 B`` (median ``0.7 B``).
    The default switches to Kvaerno5 and reaches the target in a few thousand steps (a threshold
    of ``0.8 B`` never switched, and ran out of 100,000 steps near log L = -12), at the weights
    Kvaerno5 alone reaches."""
    k = jax.random.key
    X = jax.random.normal(k(1), (24, 5))
    y = jnp.sign(X @ jax.random.normal(k(2), (5,)))
    model = wnjax.MLP(5, 6, 3, activation="relu3", key=k(11))
    kw = dict(time="normalized", t1=1e9, target_log_loss=-300.0, save_states=False)
    r = wnjax.gradient_flow(model, X, y, **kw)
    assert bool(r.reached_target) and int(r.stats["num_steps"]) < 5_000
    assert int(r.stats["stiff_steps"]) > 100
    ref = wnjax.gradient_flow(model, X, y, solver="stiff", **kw)
    assert bool(ref.reached_target)
    a, b = (
        np.concatenate([np.ravel(w) for w in jax.tree.leaves(eqx.filter(x.final, eqx.is_array))])
        for x in (r, ref)
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8 * np.max(np.abs(b)))


@pytest.mark.slow  # ~15-25 s cold: run by make test-all (CI), not make test
def test_a_vmapped_relu_flow_takes_the_implicit_method_alone():
    """Under ``vmap`` a branch on a batched value runs both of its sides, so the switch would pay
    for both methods on every step of every run. A ReLU net's smoothed flow, stiff where it
    slides, defaults there to Kvaerno5 alone: each run of the batch takes the steps it takes
    alone with ``solver='stiff'`` (within the rounding of a batched program) and ends at the
    same weights, to 1e-5 (1000 rtol: the flow slides, which amplifies rounding). Under ``jit``
    alone (a real branch) the default is still the switch."""
    rng = np.random.default_rng(3)
    X = jnp.asarray(rng.normal(size=(12, 3)))
    y = jnp.sign(X[:, 0] - 0.5 * X[:, 2])

    def net(key):
        return wnjax.ewn(wnjax.MLP(3, 4, 2, activation="relu", key=key))

    keys = jax.random.split(jax.random.key(0), 2)
    kw = dict(t1=3.0, n_save=2, diagnostics=False, save_states=False)
    batch = eqx.filter_jit(eqx.filter_vmap(lambda k: wnjax.gradient_flow(net(k), X, y, **kw)))(keys)
    assert "switches" not in batch.stats
    for i, key in enumerate(keys):
        alone = wnjax.gradient_flow(net(key), X, y, solver="stiff", **kw)
        # the same steps, up to the rounding of a batched program (the switch alone takes ~30%
        # more: explicit steps where the flow is not stiff)
        steps = int(alone.stats["num_steps"])
        assert abs(int(batch.stats["num_steps"][i]) - steps) <= 0.1 * steps
        for a, b in zip(
            jax.tree.leaves(eqx.filter(alone.final, eqx.is_inexact_array)),
            jax.tree.leaves(eqx.filter(batch.final, eqx.is_inexact_array)),
        ):
            # the sliding amplifies the batched program's other rounding: 6e-8 on one CPU,
            # 1.1e-6 on another
            np.testing.assert_allclose(b[i], a, rtol=0, atol=1e-5)
    jitted = eqx.filter_jit(lambda k: wnjax.gradient_flow(net(k), X, y, **kw))(keys[0])
    assert "switches" in jitted.stats
