"""Test configuration: float64, several forced CPU devices, rank promotion as an error, one
persistent compilation cache for the whole run, and a fresh-key fixture.

The compilation cache is ``.pytest_cache/jax-cache`` under the repository (or wherever
``WNJAX_COMPILATION_CACHE`` points; ``0`` turns it off). It is set through that environment
variable, so the xdist workers and every ``wnjax`` subprocess a test starts (the CLI, the
notebooks) read and write the same entries: a program compiled once in a run, in any process,
is loaded by the others, and a later run starts warm. Every program is cached, however fast it
compiles (``wnjax._runtime.cache``); an entry's key covers the program, the JAX version and the
flags.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault(
    "WNJAX_COMPILATION_CACHE",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-cache"
    ),
)

# Implicit rank promotion (adding a (n,) to a (n, 1)) is an error, as in equinox's own tests; in
# the subprocesses too.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
try:
    jax.config.update("jax_num_cpu_devices", 8)
except Exception:  # backend already initialised
    pass

import pytest  # noqa: E402

import wnjax  # noqa: E402,F401  (turns on the compilation cache before any test compiles)


@pytest.fixture
def getkey():
    """Return a function that hands out fresh PRNG keys."""
    counter = iter(range(10**9))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey
