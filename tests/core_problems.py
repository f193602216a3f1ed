"""Small problems and run settings shared by the core tests, plus a compilation counter.

The tests share shapes and static choices on purpose: each kind of flow or GD run then compiles
once per pytest session, which keeps the suite fast.
"""

import contextlib
import logging

import jax
import jax.numpy as jnp
import optax
from helpers import separable_data

import wnjax

N_SAVE = 16
T1 = 2.0
# Every flow carries the same unreachable target, so all flows of one model type share a program.
NO_TARGET = -1e6


def mlp_problem():
    """12 separable points in R^3 and a 2-layer ReLU^2 net of width 6 (3-homogeneous, smooth)."""
    X, y = separable_data(jax.random.key(0), n=12, d=3)
    return wnjax.MLP(3, 6, 2, activation="relu2", key=jax.random.key(1)), X, y


def cnn_problem():
    """10 random 1x4x4 images labelled by a random CNN, and a one-conv ReLU^2 CNN."""
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    X = jax.random.normal(k1, (10, 1, 4, 4))
    teacher = wnjax.CNN(1, (2,), activation="relu", key=k2)
    y = jnp.sign(jax.vmap(teacher)(X)[:, 0])
    return wnjax.CNN(1, (3,), activation="relu2", key=k3), X, y


def flow(model, X, y, **kwargs):
    """``wnjax.gradient_flow`` with the shared settings (``atol = rtol/100``; Tsit5, whose
    program compiles in a third of the default switching solver's time: these tests check the
    flows' mathematics, and tests/test_solver.py and tests/test_stopping.py the default; and no
    asymptotic diagnostics, which the tests using it do not read: the loss, margins and norms
    are still saved)."""
    kwargs.setdefault("solver", "tsit5")
    kwargs.setdefault("diagnostics", False)
    kwargs.setdefault("t1", T1)
    kwargs.setdefault("rtol", 1e-10)
    kwargs.setdefault("atol", 1e-2 * kwargs["rtol"])
    kwargs.setdefault("target_log_loss", NO_TARGET)
    kwargs.setdefault("n_save", N_SAVE)
    return wnjax.gradient_flow(model, X, y, **kwargs)


CHUNK = 25
GD_N_SAVE = 32


def gd(model, X, y, **kwargs):
    """``wnjax.gradient_descent`` with the shared settings (states kept, chunks of ``CHUNK``)."""
    kwargs.setdefault("optimizer", optax.sgd)
    return wnjax.gradient_descent(
        model, X, y, n_save=GD_N_SAVE, save_states=True, chunk_size=CHUNK, **kwargs
    )


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.names.append(message.split(" ")[1])


@contextlib.contextmanager
def compiles():
    """Collect the names (``jit(f)``) of what XLA compiles in the block (``jax.log_compiles``)."""
    handler = _Collect()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield handler.names
    finally:
        logger.removeHandler(handler)
