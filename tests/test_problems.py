"""The zoo's max-margin problems (linear, multi-class, deep linear), their references, and the CLI.

Each problem runs at size 'test' against its own reference. The references are checked against
facts that do not go through them: the KKT conditions of the max-margin QPs (scipy ``nnls``),
a second QP solver (SLSQP), and Soudry et al.'s second-order term for the rate at which the
angle closes. The ReLU^2 and EWN/SWN problems are in ``test_problems_nonlinear.py``.
"""

import json
import types

import numpy as np
import pytest
import scipy.optimize
from helpers import slow_params
from zoo_runs import make, solve

import wnjax._cli as _cli
from wnjax import problems
from wnjax.problems import _linear as zoo

NAMES = ["linear-exp", "linear-logistic", "multiclass-linear", "deep-linear-2", "deep-linear-3"]
BINARY_SVM = ["linear-exp", "linear-logistic", "deep-linear-2", "deep-linear-3"]
# The zoo runs that take over 10 s each on a 2-core CPU.
SLOW = {"linear-logistic", "multiclass-linear", "deep-linear-2", "deep-linear-3"}


def test_all_registered():
    assert set(NAMES) <= set(problems.names())


@pytest.mark.parametrize("name", slow_params(NAMES, SLOW))
def test_problem_passes_at_test_size(name):
    problem, r, _ = solve(name)
    assert r.passed, (r.message, r.error, r.tolerance)
    assert r.error <= problem.tolerance
    assert r.reached_target
    assert r.final_log_loss == pytest.approx(problem.target_log_loss, rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_error_rejects_the_start(name):
    """The check can fail: the initial weights are far from the max-margin direction."""
    problem = make(name)
    assert problem.error(types.SimpleNamespace(final=problem.model)) > 10 * problem.tolerance


def test_make_is_seeded():
    a, b, c = (problems.make("linear-exp", "test", s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.model.weight, b.model.weight)
    assert not np.allclose(a.X, c.X)


def _check_kkt(Z, w, tol=1e-9):
    """``w`` solves ``min ||w||^2 s.t. Z w >= 1``: feasible, tight somewhere, and
    ``w = Z_S^T lambda`` with ``lambda >= 0`` on the tight rows ``S`` (for a convex QP the KKT
    conditions are sufficient)."""
    margins = Z @ w
    assert margins.min() == pytest.approx(1.0, abs=tol)
    support = margins <= 1 + 1e-7
    lam, residual = scipy.optimize.nnls(Z[support].T, w)
    assert residual <= tol * np.linalg.norm(w)
    assert np.all(lam >= 0) and lam.sum() > 0
    return lam


def _slsqp(Z):
    res = scipy.optimize.minimize(
        lambda w: w @ w,
        np.linalg.lstsq(Z, np.ones(len(Z)), rcond=None)[0],
        jac=lambda w: 2 * w,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda w: Z @ w - 1, "jac": lambda w: Z}],
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    assert res.success, res.message
    return res.x


@pytest.mark.parametrize("name", BINARY_SVM)
@pytest.mark.parametrize("size", ["test", "full"])
def test_svm_reference_is_the_max_margin(name, size):
    p = make(name, size)
    Z = np.asarray(p.y)[:, None] * np.asarray(p.X)
    lam = _check_kkt(Z, p.reference)
    assert np.count_nonzero(lam) == Z.shape[1]  # the nondegenerate instance the docs promise
    other = _slsqp(Z)
    assert zoo.direction_angle(other, p.reference) < 1e-9
    assert np.linalg.norm(other) == pytest.approx(np.linalg.norm(p.reference), rel=1e-9)


@pytest.mark.parametrize("size", ["test", "full"])
def test_multiclass_reference_is_the_max_margin(size):
    p = make("multiclass-linear", size)
    X, y = np.asarray(p.X), np.asarray(p.y)
    W = p.reference
    k, d = W.shape
    scores = X @ W.T
    others = np.where(np.eye(k, dtype=bool)[y], -np.inf, scores)
    margins = scores[np.arange(len(y)), y] - others.max(axis=1)
    assert margins.min() == pytest.approx(1.0, abs=1e-9)
    # KKT: W = sum over tight (i, j) of lambda_ij (e_{y_i} - e_j) x_i^T, lambda >= 0.
    columns = []
    for i in range(len(y)):
        for j in range(k):
            if j != y[i] and scores[i, y[i]] - scores[i, j] <= 1 + 1e-7:
                G = np.zeros((k, d))
                G[y[i]] += X[i]
                G[j] -= X[i]
                columns.append(G.ravel())
    lam, residual = scipy.optimize.nnls(np.array(columns).T, W.ravel())
    assert residual <= 1e-9 * np.linalg.norm(W)
    assert lam.sum() > 0


def test_max_margin_raises_on_inseparable_data():
    with pytest.raises(ValueError, match="not separable"):
        zoo.max_margin(np.array([[1.0, 0.0], [-1.0, 0.0]]))


@pytest.mark.parametrize("name", slow_params(BINARY_SVM, SLOW))
def test_angle_closes_at_soudrys_rate(name):
    """Soudry et al. 2018, Theorem 3: angle * |log L| -> ||P w~|| / ||w*||, with w~ fixed by
    exp(-z_s.w~) = lambda_s on the support; the same for a deep linear net's end-to-end
    predictor (``soudry_constant``). A sharper check than the tolerance."""
    problem, r, _ = solve(name)
    Z = np.asarray(problem.y)[:, None] * np.asarray(problem.X)
    constant = zoo.soudry_constant(Z)
    assert r.error * abs(r.final_log_loss) == pytest.approx(constant, rel=0.05)


def test_cli_writes_results_and_a_failing_problem_is_a_row(tmp_path, capsys, monkeypatch):
    """A problem whose run raises is a failed row with the error's message (exit 1); the others
    still run."""
    from wnjax import problems

    make = problems.make

    def make_or_fail(name, size, seed):
        if name == "linear-logistic":
            raise RuntimeError("a run that breaks")
        return make(name, size, seed)

    monkeypatch.setattr(problems, "make", make_or_fail)
    argv = ["problems", "--size", "test", "--only", "linear-exp", "linear-logistic"]
    code = _cli.main([*argv, "--out", str(tmp_path)])
    assert code == 1
    out = capsys.readouterr().out
    assert "linear-exp" in out and "a run that breaks" in out
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["metadata"]["size"] == "test"
    assert record["metadata"]["dtype"] == "float64"
    first, second = record["results"]
    assert first["name"] == "linear-exp" and first["passed"]
    assert first["error"] <= first["tolerance"]
    assert second["name"] == "linear-logistic" and not second["passed"]
    assert second["error"] is None
    assert "RuntimeError: a run that breaks" in second["message"]
    # the same run without the broken problem passes
    assert (
        _cli.main(["problems", "--size", "test", "--only", "linear-exp", "--out", str(tmp_path)])
        == 0
    )


def test_results_json_takes_numpy_scalars_and_non_finite_values():
    """The CLI's records hold NumPy scalars (a float32 run's pass flags are ``np.bool_``): they
    are written as plain JSON values, and NaN/inf as ``null``."""
    import json

    from wnjax.experiments._report import json_text

    record = {"passed": np.bool_(True), "error": np.float32(np.nan), "xs": np.array([1.0, np.inf])}
    assert json.loads(json_text(record)) == {"passed": True, "error": None, "xs": [1.0, None]}
