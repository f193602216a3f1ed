"""Kvaerno5 with a dense or a matrix-free (GMRES) Newton solve: ``wnjax._solver.stiff``.

References are scipy's ``Radau`` at rtol 1e-10 and closed forms.
"""

import re

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

import wnjax
from wnjax._solver import stiff as _stiff

RTOL, ATOL = 1e-8, 1e-10


def _solvers(n, atol=ATOL):
    """The dense and the matrix-free ``stiff_solver`` for a state of size ``n``."""
    return {
        "dense": _stiff.stiff_solver(n, rtol=RTOL, atol=atol, threshold=n),
        "krylov": _stiff.stiff_solver(n, rtol=RTOL, atol=atol, threshold=n - 1),
    }


def _solve(solver, field, y0, t1, ts, rtol=RTOL, atol=ATOL):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        0.0,
        t1,
        None,
        y0,
        saveat=diffrax.SaveAt(ts=ts),
        max_steps=4096,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    )
    return sol.ys, sol.stats


def _largest_tensor(lowered) -> int:
    """The most elements of any float64 tensor in a lowered program (StableHLO text: every
    function, loop body and custom primitive, lineax's linear solves included)."""
    shapes = re.findall(r"tensor<((?:\d+x)+)f64>", lowered.as_text())
    return max(int(np.prod([int(v) for v in s.rstrip("x").split("x")])) for s in shapes)


K1, K2, K3 = 0.04, 3e7, 1e4  # Robertson's rate constants


def _robertson(y1, y2, y3):
    return -K1 * y1 + K3 * y2 * y3, K1 * y1 - K3 * y2 * y3 - K2 * y2**2, K2 * y2**2


def _robertson_radau(ts, rtol):
    """Robertson's equations from (1, 0, 0) at the times ``ts`` by scipy's Radau (atol 1e-14)."""
    return solve_ivp(
        lambda t, y: np.array(_robertson(*y)),
        (0, ts[-1]),
        [1.0, 0.0, 0.0],
        method="Radau",
        rtol=rtol,
        atol=1e-14,
        t_eval=ts,
    ).y.T


@pytest.mark.slow
def test_stiff_systems_agree_with_dense_radau_and_closed_form():
    """Two stiff systems in one pytree state (a block-diagonal Jacobian), solved to t = 40 by
    both solvers: y' = A y with A symmetric, eigenvalues -0.01 .. -1e4 (against exp(tA) y0),
    and Robertson's equations (against scipy's Radau at rtol 1e-10)."""
    n = 8
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))
    lam = -np.array([1e4, 1e3, 1e2, 0.01, 0.02, 0.05, 0.1, 0.2])
    A = (q * lam) @ q.T
    y0 = np.linspace(1.0, 2.0, n)
    ts = np.array([0.4, 4.0, 40.0])
    exact = np.stack([(q * np.exp(lam * t)) @ (q.T @ y0) for t in ts])
    rob = _robertson_radau(ts, rtol=1e-10)
    Aj = jnp.asarray(A)

    def field(t, y, args):
        d1, d2, d3 = _robertson(y["rob"]["a"], y["rob"]["bc"][0], y["rob"]["bc"][1])
        return {"linear": Aj @ y["linear"], "rob": {"a": d1, "bc": jnp.stack([d2, d3])}}

    start = {"linear": jnp.asarray(y0), "rob": {"a": jnp.asarray(1.0), "bc": jnp.zeros(2)}}
    out = {}
    for k, solver in _solvers(n + 3, atol=1e-12).items():
        ys, stats = _solve(solver, field, start, 40.0, jnp.asarray(ts), atol=1e-12)
        # L-stable: the stiff modes do not hold the step to |h lambda| < 3.3 (1e5 steps)
        assert int(stats["num_steps"]) < 2000
        out[k] = np.column_stack([ys["linear"], ys["rob"]["a"], ys["rob"]["bc"]])
        # global error of an rtol-1e-8 solve, read off Kvaerno5's cubic Hermite interpolant
        np.testing.assert_allclose(out[k][:, :n], exact, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(out[k][:, n:], rob, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(out["krylov"], out["dense"], rtol=1e-7, atol=1e-12)


def test_chord_iterates_until_it_converges_and_stops_when_it_cannot():
    """The chord iteration on x^3 + x - 3 = 0 from x = 1 (Jacobian 4 there, 5.42 at the root)
    contracts by ~0.4 per iteration: given 60 iterations it takes ~30 and ends at brentq's root;
    given 10, the rate after the second shows it cannot get there, and it stops at once. On
    exp(x) = 100 from x = 0 the first iteration lands at x = 99 and the second at -1e43: the
    iteration no longer contracts, which is a failure, not a root."""
    import optimistix as optx

    def cubic(x, _):
        return x**3 + x - 3

    sol = optx.root_find(
        cubic, _stiff.Chord(rtol=1e-12, atol=1e-14, max_steps=60), jnp.array(1.0), max_steps=60
    )
    root = brentq(lambda x: x**3 + x - 3, 0.0, 2.0, xtol=1e-15)
    assert int(sol.stats["num_steps"]) > 10
    np.testing.assert_allclose(float(sol.value), root, rtol=1e-12)
    short = optx.root_find(
        cubic,
        _stiff.Chord(rtol=1e-12, atol=1e-14, max_steps=10),
        jnp.array(1.0),
        max_steps=10,
        throw=False,
    )
    assert short.result == optx.RESULTS.nonlinear_divergence
    assert int(short.stats["num_steps"]) == 2
    bad = optx.root_find(
        lambda x, _: jnp.exp(x) - 100.0,
        _stiff.Chord(rtol=1e-12, atol=1e-14),
        jnp.array(0.0),
        max_steps=60,
        throw=False,
    )
    assert bad.result == optx.RESULTS.nonlinear_divergence
    assert int(bad.stats["num_steps"]) <= 3


def test_stage_equations_are_not_rejected_for_needing_a_third_iteration():
    """Robertson's equations to t = 1e5 at rtol 1e-7 with ``stiff_solver``'s Kvaerno5: against
    scipy's Radau at rtol 1e-11, and in few steps, few of them rejected (a Newton solve that
    may take only two iterations fails about every other step here and rejects it)."""
    ts = np.array([1.0, 100.0, 1e4, 1e5])
    ref = _robertson_radau(ts, rtol=1e-11)

    def field(t, y, args):
        return jnp.stack(_robertson(y[0], y[1], y[2]))

    ys, stats = _solve(
        _stiff.stiff_solver(3),
        field,
        jnp.array([1.0, 0.0, 0.0]),
        ts[-1],
        jnp.asarray(ts),
        rtol=1e-7,
        atol=1e-9,
    )
    assert int(stats["num_steps"]) < 200
    assert int(stats["num_rejected_steps"]) < 0.2 * int(stats["num_steps"])
    np.testing.assert_allclose(np.asarray(ys), ref, rtol=1e-4, atol=1e-9)


def test_dense_below_krylov_above_the_threshold():
    limit = _stiff.DENSE_JACOBIAN_MAX_PARAMS
    below = _stiff.stiff_solver(limit, rtol=RTOL, atol=ATOL)
    above = _stiff.stiff_solver(limit + 1, rtol=RTOL, atol=ATOL)
    for s in (below, above):
        assert isinstance(s, diffrax.Kvaerno5)
        assert isinstance(s.root_finder, _stiff.Chord)
        assert (s.root_finder.rtol, s.root_finder.atol) == (RTOL, ATOL)
    assert isinstance(below.root_finder.linear_solver, lx.AutoLinearSolver)
    gmres = above.root_finder.linear_solver
    assert isinstance(gmres, lx.GMRES)
    assert gmres.restart == _stiff.KRYLOV_RESTART
    assert gmres.rtol == _stiff.KRYLOV_FORCING and gmres.atol == _stiff.KRYLOV_FORCING * ATOL
    # an explicit threshold overrides the constant
    assert isinstance(
        _stiff.stiff_solver(50, rtol=RTOL, atol=ATOL, threshold=10).root_finder.linear_solver,
        lx.GMRES,
    )
    assert isinstance(
        _stiff.stiff_solver(50, rtol=RTOL, atol=ATOL, threshold=50).root_finder.linear_solver,
        lx.AutoLinearSolver,
    )


def test_plain_verychord_cannot_carry_a_krylov_state():
    """diffrax.VeryChord stops gradients on the whole linear-solver state; GMRES's state holds
    a jaxpr leaf, so Chord (gradients stopped on array leaves) is what makes the matrix-free
    path run at all."""
    solver = diffrax.Kvaerno5(
        root_finder=diffrax.VeryChord(
            rtol=RTOL, atol=ATOL, linear_solver=_stiff.krylov_linear_solver(ATOL)
        )
    )
    with pytest.raises(TypeError, match="not a valid JAX type"):
        _solve(solver, lambda t, y, args: -y, jnp.ones(3), 1.0, jnp.array([1.0]))


@pytest.fixture(scope="module")
def big_flow():
    """An SWN ReLU^2 net with 12,001 parameters on 16 separable points: a dense Jacobian would
    take 1.2 GB and its LU 6e11 flops per step."""
    d, n_pts, width = 10, 16, 1000
    X = jax.random.normal(jax.random.key(0), (n_pts, d))
    X = X.at[:, 0].set(jnp.where(X[:, 0] >= 0, X[:, 0] + 0.5, X[:, 0] - 0.5))
    y = jnp.sign(X[:, 0])
    model = wnjax.swn(wnjax.MLP(d, width, 2, activation="relu2", key=jax.random.key(1)))
    n = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))
    return model, X, y, n


_FLOW = dict(
    time="normalized",
    t1=1e12,
    n_save=2,
    diagnostics=False,
    save_states=False,
    degree=3.0,
    rtol=RTOL,
    atol=ATOL,
)


def _flow_program(model, X, y, n, threshold=None):
    """The whole program of 3 Kvaerno5 steps of ``gradient_flow``, lowered, with its outputs
    (final log L, final normalized time, accepted steps, initial log L)."""
    solver = _stiff.stiff_solver(n, rtol=RTOL, atol=ATOL, threshold=threshold)

    def run():
        r = wnjax.gradient_flow(model, X, y, solver=solver, max_steps=3, throw=False, **_FLOW)
        return r.final_log_loss, r.final_time, r.stats["num_accepted_steps"], r.log_loss[0]

    return jax.jit(run).lower()


@pytest.fixture(scope="module")
def krylov_program(big_flow):
    model, X, y, n = big_flow
    assert isinstance(
        _stiff.stiff_solver(n, rtol=RTOL, atol=ATOL).root_finder.linear_solver, lx.GMRES
    )
    return _flow_program(model, X, y, n)


@pytest.mark.slow
def test_matrix_free_path_never_forms_an_n_by_n_array(big_flow, krylov_program):
    """The lowered program of gradient_flow: with GMRES no tensor has more than
    (n + 1) * (restart + 2) elements (the Krylov basis: (restart + 1) columns per leaf); with LU
    the n x n Jacobian is there."""
    model, X, y, n = big_flow
    assert n > 20 * _stiff.DENSE_JACOBIAN_MAX_PARAMS
    assert _largest_tensor(krylov_program) <= (n + 1) * (_stiff.KRYLOV_RESTART + 2)
    assert _largest_tensor(_flow_program(model, X, y, n, threshold=n)) >= n * n


@pytest.mark.slow
def test_matrix_free_steps_on_a_model_too_large_for_dense(big_flow, krylov_program):
    """Three Krylov Kvaerno5 steps of the normalized flow (the program lowered above), in under
    1% of a dense Jacobian's memory, against Tsit5 at rtol 1e-10 over the same normalized
    time."""
    model, X, y, n = big_flow
    compiled = krylov_program.compile()
    memory = compiled.memory_analysis()
    if memory is not None:  # XLA's buffer assignment: all temporaries of the program
        assert memory.temp_size_in_bytes < 0.01 * 8 * n * n
    log_l, s1, accepted, log_l0 = compiled()
    assert int(accepted) >= 1 and float(s1) > 0
    assert float(log_l) < float(log_l0)
    ref = wnjax.gradient_flow(
        model,
        X,
        y,
        solver="tsit5",
        max_steps=10_000,
        **dict(_FLOW, t1=float(s1), rtol=1e-10, atol=1e-12),
    )
    np.testing.assert_allclose(float(log_l), float(ref.final_log_loss), rtol=1e-6)
