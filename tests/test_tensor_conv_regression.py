"""Convolutional regression limits: the odeco predictor against gradient flow when the inputs'
Fourier coefficients are real (the real theorem, one frequency at a time), and its miss when
they are complex."""

import jax.numpy as jnp
import numpy as np
import pytest

import wnjax
from wnjax.experiments._tensor_regression import first_factor_phase, symmetric_inputs


def _data(seed=0, n=4, d=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    nu = rng.uniform(0.5, 1.5, size=d)
    return X, rng.normal(size=n), 0.5 * (nu + np.roll(nu[::-1], 1))


def _limit(X, y, nu, depth, alpha):
    net = wnjax.tensor.fourier_regression_init(X.shape[1], depth, alpha, nu)
    r = wnjax.gradient_flow(
        net,
        jnp.asarray(X),
        jnp.asarray(y),
        loss="square",
        t1=1e7,
        target_log_loss=-30.0,
        n_save=2,
        save_states=False,
        max_steps=100_000,
    )
    Z, groups = wnjax.tensor.fourier_features(X, depth)
    pred = wnjax.tensor.regression_limit(
        np.asarray(Z), y, np.array([alpha * nu] * (depth - 1)), groups
    )
    rho = np.asarray(wnjax.tensor.fourier_rho(r.final))
    return np.linalg.norm(rho - pred) / np.linalg.norm(pred), r.final


def test_symmetric_inputs_have_real_fourier_coefficients():
    X, _, _ = _data()
    Xs = symmetric_inputs(X)
    assert np.allclose(np.linalg.norm(Xs, axis=1), 1.0)
    assert np.max(np.abs(np.fft.fft(Xs).imag)) < 1e-12  # x_k = x_{-k}: a real DFT


@pytest.mark.slow
@pytest.mark.parametrize("depth", [2, 3])
def test_conv_limit_matches_predictor_on_real_coefficients_only(depth):
    X, y, nu = _data()
    alpha = 0.1
    dist_real, net_real = _limit(symmetric_inputs(X), y, nu, depth, alpha)
    assert dist_real < 1e-5
    assert first_factor_phase(net_real) < 1e-8  # the factors stay real and positive
    # The test can fail: complex coefficients rotate the factors and the limit moves off F.
    dist, net = _limit(X, y, nu, depth, alpha)
    assert dist > 1e-2 and first_factor_phase(net) > 1e-2
