"""tensor-classification's step-size check: lambda_max of the Hessian of log L against numpy
finite differences."""

import jax
import jax.numpy as jnp
import numpy as np

import wnjax
from wnjax.experiments._tensor_classification import hessian_lambda_max, problem


def _np_log_loss(w, X, y, depth):
    """log sum_i exp(-y_i <x_i, w_1 o ... o w_L>) for a diagonal net, w = (w_1, ..., w_L)."""
    d = X.shape[1]
    prod = np.prod(w.reshape(depth, d), axis=0)
    m = -y * (X @ prod)
    top = m.max()
    return top + np.log(np.sum(np.exp(m - top)))


def test_hessian_lambda_max_matches_finite_differences():
    X, y = problem(0, 8, 5)
    depth = 3
    net = wnjax.tensor.diagonal_net(5, depth, key=jax.random.key(0), init_scale=0.7)
    w = np.concatenate([np.asarray(layer.weight[0]) for layer in net.layers])
    h, n = 1e-4, w.size
    H = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            ea, eb = np.eye(n)[a] * h, np.eye(n)[b] * h
            H[a, b] = (
                _np_log_loss(w + ea + eb, X, y, depth)
                - _np_log_loss(w + ea - eb, X, y, depth)
                - _np_log_loss(w - ea + eb, X, y, depth)
                + _np_log_loss(w - ea - eb, X, y, depth)
            ) / (4 * h * h)
    lam = hessian_lambda_max(net, jnp.asarray(X), jnp.asarray(y))
    assert abs(lam - np.linalg.eigvalsh(0.5 * (H + H.T))[-1]) < 1e-5 * max(1.0, abs(lam))
