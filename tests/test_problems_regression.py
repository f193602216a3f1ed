"""The zoo's diagonal-net, circular-convolution and matrix-factorization problems: each flow against
its reference, and each reference against facts it does not use (constraints, duality, limits,
local optimality, Parseval)."""

import types

import jax
import numpy as np
import pytest
import scipy.optimize

import wnjax
import wnjax.problems as problems
from wnjax.problems import _conv, _diagonal, _factorization

NAMES = (
    "diagonal-L2-class",
    "diagonal-L3-class",
    "diagonal-square-l1",
    "linear-conv-2",
    "linear-conv-3",
    "matrix-factorization",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_problem_meets_its_reference(name):
    problem = problems.make(name, "test")
    assert "solver" not in problem.flow_options
    result = problems.run(problem)
    assert result.reached_target, result.message
    assert result.error <= result.tolerance, (result.error, result.tolerance)
    assert result.passed, result.message


def _svm(Z):
    """The hard-margin SVM ``argmin ||w||^2 s.t. Z w >= 1`` (SLSQP)."""
    w0 = np.linalg.lstsq(Z, np.ones(len(Z)), rcond=None)[0]
    res = scipy.optimize.minimize(
        lambda w: w @ w,
        w0,
        jac=lambda w: 2 * w,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda w: Z @ w - 1, "jac": lambda w: Z}],
        options={"ftol": 1e-12},
    )
    assert np.min(Z @ res.x) >= 1 - 1e-8
    return res.x


def _feasible_perturbations(Z, beta, count, scale, rng):
    """Points ``beta + delta`` rescaled to a minimum margin of exactly 1."""
    out = []
    for _ in range(count):
        b = beta + scale * np.linalg.norm(beta) * rng.standard_normal(beta.size)
        q = Z @ b
        if q.min() > 0:
            out.append(b / q.min())
    return out


def test_l1_max_margin_lp_is_optimal_and_not_the_svm():
    p = problems.make("diagonal-L2-class", "test")
    Z = p.y[:, None] * p.X
    sol = _diagonal.l1_max_margin(p.X, p.y)
    beta = sol.x
    assert np.min(Z @ beta) >= 1 - 1e-9
    # LP duality: lambda >= 0, ||Z^T lambda||_inf <= 1 and sum(lambda) = ||beta||_1.
    assert np.min(sol.duals) >= 0
    assert np.max(np.abs(Z.T @ sol.duals)) <= 1 + 1e-9
    assert abs(np.sum(sol.duals) - np.abs(beta).sum()) <= 1e-9 * np.abs(beta).sum()
    rng = np.random.default_rng(0)
    others = _feasible_perturbations(Z, beta, 200, 0.02, rng)
    assert len(others) > 150
    assert min(np.abs(b).sum() for b in others) >= np.abs(beta).sum() - 1e-12
    # The l1 and l2 max-margin directions are far apart: the check tells them apart.
    assert _diagonal.direction_distance(beta, _svm(Z)) > 30 * p.tolerance


def test_lq_kkt_point_is_a_local_minimum_and_the_svm_is_not_one():
    p = problems.make("diagonal-L3-class", "test")
    Z = p.y[:, None] * p.X
    svm = _svm(Z)
    beta = _diagonal.lq_kkt_point(p.X, p.y, svm, 3)
    assert np.min(Z @ beta) >= 1 - 1e-8
    kkt = _diagonal.lq_kkt_residual(p.X, p.y, beta, 3)
    assert kkt["stationarity"] < 1e-6
    assert np.min(kkt["lambda"]) > 0

    def objective(b):
        return np.sum(np.abs(b) ** (2 / 3))

    rng = np.random.default_rng(1)
    others = _feasible_perturbations(Z, beta, 200, 1e-3, rng)
    assert len(others) > 150
    assert min(objective(b) for b in others) >= objective(beta) - 1e-12
    # The l2 max-margin direction is no KKT point of the l_(2/3) problem: the local solve moves
    # it by more than the tolerance, so the check would reject it.
    assert _diagonal.direction_distance(beta, svm) > 5 * p.tolerance


def test_q_alpha_root_sinh_form_and_limits():
    A, y, x_star = _diagonal.sparse_regression_data(0, 10, 20, 2)
    for alpha in (1e-3, 0.1):
        sol = _diagonal.q_alpha_minimizer(A, y, alpha)
        assert np.linalg.norm(A @ sol.x - y) <= 1e-11
        assert np.allclose(sol.x, 2 * alpha**2 * np.sinh(A.T @ sol.mu), rtol=0, atol=1e-14)
        # the same minimizer by Newton trust-region minimization of the dual (another method)
        other = wnjax.diagonal.q_alpha_interpolator(A, y, alpha)
        assert np.linalg.norm(sol.x - other) <= 1e-7 * np.linalg.norm(other)
        # optimality over the feasible set: moving in the null space of A raises Q_alpha
        null = np.linalg.svd(A)[2][A.shape[0] :]
        rng = np.random.default_rng(2)
        value = _diagonal.q_alpha(sol.x, alpha)
        for _ in range(20):
            step = 1e-3 * np.linalg.norm(sol.x) * (rng.standard_normal(len(null)) @ null)
            assert _diagonal.q_alpha(sol.x + step, alpha) > value
    # alpha -> inf: the minimum-l2 interpolator A^T (A A^T)^-1 y
    l2 = A.T @ np.linalg.solve(A @ A.T, y)
    big = _diagonal.q_alpha_minimizer(A, y, 100.0).x
    assert np.linalg.norm(big - l2) <= 1e-4 * np.linalg.norm(l2)
    # alpha -> 0: the l1 interpolator (which recovers the 2-sparse x* here)
    l1 = _diagonal.l1_interpolator(A, y)
    assert np.linalg.norm(l1 - x_star) <= 1e-8 * np.linalg.norm(x_star)
    gaps = [np.linalg.norm(_diagonal.q_alpha_minimizer(A, y, a).x - l1) for a in (1e-1, 1e-2, 1e-3)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] <= 0.05 * np.linalg.norm(l1)
    assert np.linalg.norm(l2 - l1) > 0.3 * np.linalg.norm(l1)


def test_nuclear_norm_lp_certificate_and_finite_alpha_limit():
    p = problems.make("matrix-factorization", "test")
    ref = p.reference
    data = _factorization.commuting_sensing(0, 2, 6)
    d = data.Q.shape[0]
    mats = data.matrices()
    assert np.allclose(np.einsum("ijk,jk->i", mats, ref.lp.X), data.y, atol=1e-9)
    assert np.min(np.linalg.eigvalsh(ref.lp.X)) >= -1e-10
    # the A_i commute
    assert np.allclose(mats[0] @ mats[1], mats[1] @ mats[0], atol=1e-12)
    # Dual certificate over all PSD X, diagonal or not: I - sum_i nu_i A_i is PSD and
    # <y, nu> = trace X*, so trace X >= <y, nu> for every feasible PSD X.
    nu = ref.lp.duals
    slack = np.eye(d) - np.einsum("i,ijk->jk", nu, mats)
    assert np.min(np.linalg.eigvalsh(slack)) >= -1e-9
    assert abs(np.trace(ref.lp.X) - data.y @ nu) <= 1e-9 * np.trace(ref.lp.X)
    # a feasible full-rank PSD solution exists and has a larger trace
    X0 = (data.Q * data.s0) @ data.Q.T
    assert np.allclose(np.einsum("ijk,jk->i", mats, X0), data.y)
    assert np.trace(X0) > 1.5 * np.trace(ref.lp.X)
    assert np.linalg.matrix_rank(ref.lp.X, tol=1e-8) == 2
    # finite alpha: s = alpha^2 exp(A^T mu) solves A s = y and nears the LP as alpha -> 0
    deltas = []
    for alpha in (1e-2, 1e-3, 1e-4):
        s = _factorization.finite_alpha_limit(data.A, data.y, alpha)
        assert np.linalg.norm(data.A @ s - data.y) <= 1e-11
        deltas.append(np.linalg.norm(s - ref.lp.s) / np.linalg.norm(ref.lp.s))
    assert deltas[0] > deltas[1] > deltas[2]
    assert abs(deltas[2] - ref.delta_alpha) <= 1e-9
    assert ref.delta_alpha < 1e-3


def test_symmetric_factorization_model():
    rng = np.random.default_rng(3)
    U = rng.standard_normal((4, 4))
    M = rng.standard_normal((4, 4))
    model = _factorization.SymmetricFactorization(U)
    assert np.isclose(float(model(M.ravel())), np.sum(M * (U @ U.T)))
    assert wnjax.homogeneity_degree(model, M.ravel()[None]) == pytest.approx(2.0)


@pytest.mark.parametrize("name", ("diagonal-square-l1", "matrix-factorization"))
def test_regression_error_rejects_the_start(name):
    """The check can fail: at the start (x = 0, X = alpha^2 I) the error is about 1."""
    problem = problems.make(name, "test")
    assert problem.error(types.SimpleNamespace(final=problem.model)) > 0.9


def test_fourier_l1_max_margin_matches_its_dual():
    p = problems.make("linear-conv-2", "test")
    Z = p.y[:, None] * p.X
    n, d = Z.shape
    sol = _conv.fourier_l1_max_margin(p.X, p.y)
    assert np.min(Z @ sol.beta) >= 1 - 1e-8
    assert np.isclose(sol.value, np.abs(np.fft.fft(sol.beta)).sum())
    # The dual, solved on its own: max sum(lambda) s.t. lambda >= 0, |F Z^T lambda|_k <= d.
    res = scipy.optimize.minimize(
        lambda lam: -lam.sum(),
        np.full(n, 1e-3),
        jac=lambda lam: -np.ones(n),
        method="SLSQP",
        bounds=[(0, None)] * n,
        constraints=[
            {"type": "ineq", "fun": lambda lam: d**2 - np.abs(np.fft.fft(Z.T @ lam)) ** 2}
        ],
        options={"ftol": 1e-12, "maxiter": 2000},
    )
    # weak duality: a feasible lambda bounds the primal value from below; equality proves both
    lam = res.x
    assert np.min(lam) >= 0
    assert np.max(np.abs(np.fft.fft(Z.T @ lam))) <= d * (1 + 1e-9)
    assert abs(lam.sum() - sol.value) <= 1e-6 * sol.value
    # Frequency sparsity is not coordinate sparsity: the answer differs from the l1 and l2
    # max-margin directions of beta itself by more than the tolerance.
    for other in (_diagonal.l1_max_margin(p.X, p.y).x, _svm(Z)):
        assert _conv.direction_distance(sol.beta, other) > 30 * p.tolerance


def test_fourier_lq_kkt_point_is_a_local_minimum():
    p = problems.make("linear-conv-3", "test")
    Z = p.y[:, None] * p.X
    svm = _svm(Z)
    beta = _conv.fourier_lq_kkt_point(p.X, p.y, svm, 3)
    assert np.min(Z @ beta) >= 1 - 1e-8

    def objective(b):
        return np.sum(np.abs(np.fft.fft(b)) ** (2 / 3))

    rng = np.random.default_rng(4)
    others = _feasible_perturbations(Z, beta, 200, 1e-3, rng)
    assert len(others) > 150
    assert min(objective(b) for b in others) >= objective(beta) - 1e-12
    assert _conv.direction_distance(beta, svm) > 3 * p.tolerance
    # the smooth form: sum_k |F (w * w * w)|_k^(2/3) = d ||w||^2 (Parseval)
    w = rng.standard_normal(7)
    assert np.isclose(objective(_conv.self_convolution(w, 3)), 7 * w @ w)


@pytest.mark.parametrize("depth", (2, 3))
def test_circular_conv_net_is_a_product_in_frequency(depth):
    rng = np.random.default_rng(depth)
    filters = rng.standard_normal((depth, 6))
    model = _conv.CircularConvNet(filters)
    beta = np.asarray(model.predictor())
    x = rng.standard_normal(6)
    assert np.isclose(float(model(x)), beta @ x)
    expected = np.prod(np.abs(np.fft.fft(filters, axis=1)), axis=0)
    assert np.allclose(np.abs(np.fft.fft(beta)), expected)
    degree = wnjax.homogeneity_degree(model, jax.numpy.asarray(rng.standard_normal((3, 6))))
    assert degree == pytest.approx(depth)
