"""Shared test helpers: small separable data sets, flat weight vectors, slow-marked parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax
import wnjax._cli

# XLA's default CPU code generation, as per-program compiler options: they override the quicker
# one (``WNJAX_TEST_CODEGEN=quick``, see conftest) for a test that compares two programs bit for
# bit.
DEFAULT_CODEGEN = {"xla_cpu_use_fusion_emitters": True, "xla_backend_optimization_level": 3}
# A test run under XLA's default code generation: its programs agree only under it, or its long
# runs take longer under the quick one (slower steps) than that one's compilation saves. Skipped
# under the quick one (conftest), run by ``make test-all``'s second pass whether or not it is
# ``slow``.
needs_default_codegen = pytest.mark.default_codegen
# How long a command line may take to stop after SIGINT/SIGTERM: its grace period (a compilation
# in flight cannot stop early, and is ended when the grace period is over), then writing what had
# finished, on a loaded machine.
STOPS_WITHIN = wnjax._cli.INTERRUPT_GRACE + 15.0


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
