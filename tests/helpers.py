"""Shared test helpers: small separable data sets, flat weight vectors, slow-marked parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax


def separable_data(key, n=16, d=4, margin=0.3):
    """Linearly separable data: ``y = sign(<w*, x>)``, with points within ``margin`` removed."""
    k1, k2 = jax.random.split(key)
    w_star = jax.random.normal(k1, (d,))
    w_star = w_star / jnp.linalg.norm(w_star)
    X = jax.random.normal(k2, (4 * n, d))
    s = X @ w_star
    keep = np.flatnonzero(np.abs(np.asarray(s)) > margin)[:n]
    X, s = X[keep], s[keep]
    return X, jnp.sign(s)


def flat_weights(model):
    """All layer weights of a (possibly parameterized) model as one vector."""
    return jnp.concatenate(
        [w.ravel() for w in wnjax._nets.neurons.layer_weights(wnjax.to_standard(model))]
    )


def slow_params(values, slow):
    """``values`` for ``pytest.mark.parametrize``, those in ``slow`` marked ``slow`` (run by
    ``make test-all`` and CI, skipped by ``make test``)."""
    return [pytest.param(v, marks=pytest.mark.slow) if v in slow else v for v in values]
