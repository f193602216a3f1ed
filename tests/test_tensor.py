"""Linear tensor networks (docs/theory.md §6): models against plain implementations, the odeco
transform, the regression and classification predictors against gradient flow and scipy."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import wnjax


def _plain_circulant(w):
    """``C[k, m] = w[(k - m) mod d]``, so that ``C x = x * w`` (circular convolution)."""
    d = w.size
    return np.array([[w[(k - m) % d] for m in range(d)] for k in range(d)])


def _orthogonal(rng, m):
    q, _ = np.linalg.qr(rng.normal(size=(m, m)))
    return q


@pytest.mark.parametrize("depth", [2, 3])
def test_special_cases_match_plain_implementations(depth, getkey):
    d = 6
    x = np.asarray(jax.random.normal(getkey(), (d,)))
    # fully connected: the same weights in a linear wnjax.MLP
    fc = wnjax.tensor.fully_connected_net(d, depth, width=4, key=getkey())
    mlp = wnjax.MLP(d, 4, depth, activation="linear", key=getkey())
    mlp = eqx.tree_at(
        lambda m: [layer.weight for layer in m.layers], mlp, [l.weight for l in fc.layers]
    )
    np.testing.assert_allclose(fc(x), mlp(x)[0], rtol=1e-12)
    # diagonal: (x o w_1 o ... o w_{L-1})^T w_L
    diag = wnjax.tensor.diagonal_net(d, depth, key=getkey())
    ws = [np.asarray(l.weight[0]) for l in diag.layers]
    np.testing.assert_allclose(diag(x), np.sum(x * np.prod(ws, axis=0)), rtol=1e-12)
    # convolution: explicit circulant matrices against the FFT implementation
    conv = wnjax.tensor.convolutional_net(d, depth, key=getkey())
    ws = [np.asarray(l.weight[0]) for l in conv.layers]
    h = x
    for w in ws[:-1]:
        h = _plain_circulant(w) @ h
    np.testing.assert_allclose(conv(x), h @ ws[-1], rtol=1e-12)
    assert wnjax.homogeneity_degree(conv, x[None]) == pytest.approx(depth, abs=1e-9)


def test_convolution_equals_fourier_formulation_and_dense_tensor(getkey):
    d = 7
    X = jax.random.normal(getkey(), (5, d))
    for depth in (2, 3):
        conv = wnjax.tensor.convolutional_net(d, depth, key=getkey())
        Z, groups = wnjax.tensor.fourier_features(X, depth)
        rho = wnjax.tensor.fourier_rho(conv)
        np.testing.assert_allclose(jax.vmap(conv)(X), Z @ rho, rtol=1e-10, atol=1e-12)
        # |rho_j| = prod_l |(F w_l)_j| with F the unitary DFT (numpy's fft / sqrt(d))
        mods = np.prod([np.abs(np.fft.fft(l.weight[0])) / np.sqrt(d) for l in conv.layers], axis=0)
        np.testing.assert_allclose(wnjax.tensor._predict.group_norms(rho, groups), mods, rtol=1e-10)
    # L = 2: M(x)[a, b] = x[(b - a) mod d], built by hand, as a DenseTensor
    x = np.asarray(X[0])
    M = np.array([[x[(b - a) % d] for b in range(d)] for a in range(d)])
    T = np.einsum("k,ab->kab", np.ones(1), M)  # M(x) = T x_0 e with a 1-d "input"
    conv = wnjax.tensor.convolutional_net(d, 2, key=getkey())
    dense = wnjax.tensor.network(
        wnjax.tensor.DenseTensor(wnjax.tensor._nets.Constant(T)), [l.weight for l in conv.layers]
    )
    np.testing.assert_allclose(conv(jnp.asarray(x)), dense(jnp.ones(1)), rtol=1e-12)


def test_odeco_transform_outputs_gradients_and_flow():
    rng = np.random.default_rng(0)
    d, m, depth = 5, 4, 3
    S = rng.normal(size=(m, d))
    Us = [_orthogonal(rng, m) for _ in range(depth)]
    net = wnjax.tensor.odeco_net(S, Us, [rng.normal(size=m) for _ in range(depth)])
    diag, S_out = wnjax.tensor.odeco_to_diagonal(net)
    X = jnp.asarray(rng.normal(size=(6, d)))
    np.testing.assert_allclose(jax.vmap(net)(X), jax.vmap(diag)(X @ S_out.T), rtol=1e-12)
    # chain rule: grad_{v_l} f = U_l grad_{w_l} g
    x = X[0]
    g_net = jax.grad(lambda n: n(x))(net)
    g_diag = jax.grad(lambda n: n(S_out @ x))(diag)
    for U, a, b in zip(Us, g_net.layers, g_diag.layers):
        np.testing.assert_allclose(a.weight[0], U @ b.weight[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="orthonormal"):
        wnjax.tensor.odeco_net(S, [rng.normal(size=(m, m))] * depth, key=jax.random.key(0))


@pytest.mark.slow
def test_weight_normalization_applies(getkey):
    d = 6
    X = jax.random.normal(getkey(), (4, d))
    y = jnp.array([1.0, -1.0, 1.0, -1.0])
    for net in (
        wnjax.tensor.fully_connected_net(d, 2, key=getkey()),
        wnjax.tensor.diagonal_net(d, 2, key=getkey()),
        wnjax.tensor.convolutional_net(d, 3, key=getkey()),
    ):
        for p in (wnjax.ewn(net), wnjax.swn(net)):
            np.testing.assert_allclose(jax.vmap(p)(X), jax.vmap(net)(X), rtol=1e-12)
    # EWN of the conv net trains: ||v_u|| is constant under gradient flow (docs/theory.md §1)
    r = wnjax.gradient_flow(
        wnjax.ewn(net), X, y, t1=0.5, save_states=False, n_save=2, solver="tsit5", diagnostics=False
    )
    np.testing.assert_allclose(r.summaries["direction_norms"][-1], 1.0, rtol=1e-6)
    assert r.final_log_loss < r.log_loss[0]
    assert isinstance(wnjax.to_standard(r.final), wnjax.tensor.TensorNetwork)


def test_link_closed_forms_match_quadrature():
    c = np.array([0.2, 0.7, 1.5])
    for depth, s in ((2, np.array([0.3, 1.2, 2.5])), (3, np.array([2.0, 1.1, 0.5]))):
        closed = wnjax.tensor.regression_link(np.array([c] * (depth - 1)))
        numeric = wnjax.tensor.regression_link(np.array([c] * (depth - 1)), numeric=True)
        assert closed.kind != "numeric"
        np.testing.assert_allclose(closed.F(s), numeric.F(s), rtol=1e-10)
    # F' and (Q*)' = F against central differences, for a mixed-scale L = 4 link
    lk = wnjax.tensor.regression_link(np.array([c, 2 * c, 0.5 * c]))
    s, h = 0.6 * lk.s_max, 1e-6
    np.testing.assert_allclose(lk.dF(s), (lk.F(s + h) - lk.F(s - h)) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(lk.F(s), (lk.Q_star(s + h) - lk.Q_star(s - h)) / (2 * h), rtol=1e-6)


# The square-loss flows below run with Tsit5 alone, which compiles in about 60% of the time of
# the default switching solver: the checked limits are properties of the flow, not of the
# integrator. (The default solver turns stiff for 5-20% of these steps, near the end; Tsit5
# takes up to 2.6x as many steps there and ends as close to each limit as the default does.)
SQUARE_FLOW = dict(
    loss="square",
    t1=1e5,
    target_log_loss=-30.0,
    save_states=False,
    n_save=2,
    solver="tsit5",
    diagnostics=False,
)


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.slow
def test_regression_limit_matches_gradient_flow(depth):
    rng = np.random.default_rng(depth)
    n, d = 4, 8
    X = rng.normal(size=(n, d))
    y = rng.normal(size=n)
    nu = rng.uniform(0.5, 1.5, size=d)
    for alpha in (0.3, 1.5):
        net = wnjax.tensor.diagonal_regression_init(d, depth, alpha, nu)
        r = wnjax.gradient_flow(net, X, y, **SQUARE_FLOW)
        rho = np.asarray(wnjax.tensor.transformed_rho(r.final))
        pred = wnjax.tensor.regression_limit(X, y, np.array([alpha * nu] * (depth - 1)))
        assert np.linalg.norm(rho - pred) <= 1e-3 * np.linalg.norm(pred)
        # and the predictor is not trivially the min-l2 interpolant
        l2 = wnjax.tensor.min_norm_interpolant(X, y, 2)
        assert np.linalg.norm(l2 - pred) > 1e-2 * np.linalg.norm(pred)
    # odeco: GF in v-space from [U_l^T v_l(0)] = alpha nu matches F(Z^T lambda), Z = X S^T
    S = rng.normal(size=(d, d))
    Us = [_orthogonal(rng, d) for _ in range(depth)]
    alpha = 0.5
    v0 = [U @ (alpha * nu) for U in Us[:-1]] + [np.zeros(d)]
    net = wnjax.tensor.odeco_net(S, Us, v0)
    r = wnjax.gradient_flow(net, X, y, **SQUARE_FLOW)
    pred = wnjax.tensor.regression_limit(X @ S.T, y, np.array([alpha * nu] * (depth - 1)))
    rho = np.asarray(wnjax.tensor.transformed_rho(r.final))
    assert np.linalg.norm(rho - pred) <= 1e-3 * np.linalg.norm(pred)


@pytest.mark.slow
def test_deep_fully_connected_regression_approaches_min_l2(getkey):
    n, d, depth = 3, 6, 3
    X = np.asarray(jax.random.normal(getkey(), (n, d)))
    y = np.asarray(jax.random.normal(getkey(), (n,)))
    beta_l2 = np.linalg.pinv(X) @ y
    key = getkey()
    errors = []
    for alpha in (0.4, 0.05):
        net = wnjax.tensor.fully_connected_regression_init(d, depth, alpha, key=key)
        r = wnjax.gradient_flow(net, X, y, **SQUARE_FLOW)
        beta = np.asarray(wnjax.tensor.linear_predictor(r.final))
        errors.append(np.linalg.norm(beta - beta_l2) / np.linalg.norm(beta_l2))
    # the error shrinks roughly linearly in alpha (docs/theory.md §6): 8x smaller alpha, < 1/4
    # the error
    assert errors[1] < 0.25 * errors[0]
    assert errors[1] < 0.1


def test_l1_svm_lp_agrees_with_dual():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 5))
    y = np.sign(X @ np.array([1.0, -1.0, 0, 0, 0]))
    rho, margin = wnjax.tensor.l1_max_margin(X, y)
    assert np.min(y * (X @ rho)) == pytest.approx(margin, rel=1e-8)
    margin_dual, _ = wnjax.tensor.group_max_margin(X, y)
    assert margin_dual == pytest.approx(margin, rel=1e-6)
    # one group over all coordinates is the l2-SVM: compare with SLSQP on the primal
    margin_l2, lam = wnjax.tensor.group_max_margin(X, y, groups=np.zeros(5, int))
    primal = scipy.optimize.minimize(
        lambda b: b @ b,
        np.ones(5),
        jac=lambda b: 2 * b,
        method="SLSQP",
        constraints=[
            {"type": "ineq", "fun": lambda b: y * (X @ b) - 1, "jac": lambda b: y[:, None] * X}
        ],
    )
    assert margin_l2 == pytest.approx(1 / np.linalg.norm(primal.x), rel=1e-5)


def _classification_problem():
    rng = np.random.default_rng(0)
    n, d = 8, 12
    X = rng.normal(size=(n, d))
    w = np.zeros(d)
    w[:2] = 1.0
    return X, np.sign(X @ w)


@pytest.mark.slow
def test_odeco_classification_reaches_l1_svm_margin_and_kkt():
    X, y = _classification_problem()
    d = X.shape[1]
    rng = np.random.default_rng(1)
    S = _orthogonal(rng, d)  # the transformed input Sx
    Us = [_orthogonal(rng, d) for _ in range(2)]
    net = wnjax.tensor.odeco_net(S, Us, [0.01 * rng.normal(size=d) for _ in range(2)])
    r = wnjax.gradient_flow(
        net,
        X,
        y,
        t1=1e3,
        time="normalized",
        target_log_loss=-1000.0,
        save_states=False,
        n_save=2,
        diagnostics=False,
    )
    Z = X @ S.T
    rho = np.asarray(wnjax.tensor.transformed_rho(r.final))
    _, margin_lp = wnjax.tensor.l1_max_margin(Z, y)
    assert wnjax.tensor.margin(rho, Z, y, 2) >= 0.95 * margin_lp
    # L = 3 from a random init: the direction approaches a KKT point of the l_{2/3} problem
    # (slowly: the off-support coordinates decay like a power of -log L)
    net = wnjax.tensor.diagonal_net(d, 3, key=jax.random.key(2), init_scale=0.3)
    residuals = []
    for target in (-100.0, -1e4):
        r = wnjax.gradient_flow(
            net,
            X,
            y,
            t1=1e3,
            time="normalized",
            target_log_loss=target,
            save_states=False,
            n_save=2,
            max_steps=100_000,
            diagnostics=False,
        )
        rho = np.asarray(wnjax.tensor.transformed_rho(r.final))
        residuals.append(wnjax.tensor.kkt_residual(rho, X, y, 3)["stationarity"])
        net = r.final
    assert residuals[1] < 0.1 and residuals[1] < 0.5 * residuals[0]
    # ...which a random separating direction is not
    rho_rand = wnjax.tensor.l1_max_margin(X, y)[0] + 0.3 * rng.normal(size=d)
    if np.min(y * (X @ rho_rand)) > 0:
        assert wnjax.tensor.kkt_residual(rho_rand, X, y, 3)["stationarity"] > 0.1
