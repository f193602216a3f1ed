"""Test configuration: float64, several forced CPU devices, and a fresh-key fixture."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
try:
    jax.config.update("jax_num_cpu_devices", 8)
except Exception:  # backend already initialised
    pass

import pytest  # noqa: E402


@pytest.fixture
def getkey():
    """Return a function that hands out fresh PRNG keys."""
    counter = iter(range(10**9))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey
