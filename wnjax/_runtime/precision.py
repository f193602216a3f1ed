"""True float32 matrix products and convolutions in everything the library traces.

JAX's default precision for 32-bit matrix products and convolutions lets NVIDIA GPUs from Ampere
on round their inputs to TensorFloat-32 (a 10-bit mantissa: relative errors ~1e-3), and TPUs to
bfloat16. Float32 tolerances near 1e-6 cannot absorb that, so wnjax traces its programs, the
models it evaluates included, with true float32 products, unless the user has chosen a default
(``jax_default_matmul_precision``, or ``jax.default_matmul_precision(...)`` around the call),
which then stands. Nothing changes on a CPU or in float64. The precision of an operation is
fixed when it is traced, so a program traced inside keeps it wherever it is compiled.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import jax

F = TypeVar("F", bound=Callable)


def float32_matmuls():
    """A context in which JAX's default precision for 32-bit matrix products and convolutions
    is true float32 (``jax.default_matmul_precision('float32')``), unless a default is set
    already."""
    if jax.config.jax_default_matmul_precision is not None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision("float32")


def in_float32(fn: F) -> F:
    """``fn``, run inside ``float32_matmuls()``: what it traces has true float32 products."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with float32_matmuls():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
