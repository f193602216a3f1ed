"""Input checks that turn bad data into clear errors before anything is traced."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._losses import Loss


def check_data(X, y, loss: Loss) -> tuple[Array, Array]:
    """Validate ``(X, y)`` for ``loss``; return them as JAX arrays.

    Raises ``ValueError`` for NaN/inf in ``X`` or ``y``, a length mismatch, labels outside
    ``{-1, +1}`` for binary losses, or non-integer class labels for cross-entropy.
    """
    if isinstance(X, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
        return X, y
    Xn, yn = np.asarray(X), np.asarray(y)
    if Xn.ndim < 2:
        raise ValueError(
            f"X must have a leading axis of examples, shape (n, ...); got shape {Xn.shape}."
        )
    if yn.ndim < 1 or yn.shape[0] != Xn.shape[0]:
        raise ValueError(
            f"X has {Xn.shape[0]} examples but y has shape {yn.shape}; they must match along "
            "axis 0."
        )
    if not np.issubdtype(Xn.dtype, np.number) or not np.all(np.isfinite(Xn)):
        bad = np.argwhere(~np.isfinite(Xn))[:3].tolist()
        raise ValueError(f"X contains NaN or inf (first at indices {bad}); clean the data first.")
    if np.issubdtype(yn.dtype, np.floating) and not np.all(np.isfinite(yn)):
        raise ValueError("y contains NaN or inf; clean the labels first.")
    name = type(loss).__name__.lower()
    if loss.binary and loss.margin_based:
        labels = set(np.unique(yn).tolist())
        if yn.ndim != 1 or not labels <= {-1, 1}:
            raise ValueError(
                f"the {name} loss needs binary labels in {{-1, +1}} of shape (n,), got labels "
                f"{sorted(labels)[:6]} of shape {yn.shape}. Map {{0, 1}} labels with y = 2*y - 1, "
                "or use loss='cross_entropy' for class indices."
            )
        y_out = _as_device(y, yn, Xn.dtype)
    elif not loss.binary:
        if yn.ndim != 1 or not np.all(np.mod(yn, 1) == 0) or yn.min() < 0:
            raise ValueError(
                "cross-entropy needs integer class indices 0..k-1 of shape (n,), got "
                f"dtype {yn.dtype} and shape {yn.shape}."
            )
        y_out = _as_device(y, yn, jnp.int32)
    else:
        y_out = _as_device(y, yn, Xn.dtype)
    return _as_device(X, Xn, Xn.dtype), y_out


def _as_device(v, host: np.ndarray, dtype) -> Array:
    """``v`` as a JAX array of ``dtype``: itself if it already is one (no copy, no dispatch)."""
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    if isinstance(v, jax.Array) and v.dtype == dtype:
        return v
    return jnp.asarray(host, dtype=dtype)


# Per-example output shapes already traced, keyed on the model's structure and leaf shapes and
# on X's shape: the shape depends on nothing else, so a repeated call skips the trace.
_OUTPUT_SHAPES: dict = {}
_OUTPUT_SHAPES_MAX = 256


def _shape_key(model: PyTree, X) -> tuple | None:
    """A hashable key fixing the model's output shape on ``X``, or ``None`` (then: no caching)."""
    if isinstance(X, jax.core.Tracer):
        return None
    leaves, treedef = jax.tree_util.tree_flatten(model)
    spec = []
    for leaf in leaves:
        if isinstance(leaf, jax.core.Tracer):
            return None
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            spec.append((np.shape(leaf), str(leaf.dtype)))
        else:
            spec.append((type(leaf), leaf))
    key = (treedef, tuple(spec), tuple(X.shape), str(X.dtype))
    try:
        hash(key)
    except TypeError:  # an unhashable leaf or static field: trace every time
        return None
    return key


def _per_example_shape(model: PyTree, X) -> tuple:
    key = _shape_key(model, X)
    if key is not None:
        try:
            hit = _OUTPUT_SHAPES.get(key)
        except Exception:  # a leaf whose == does not give a bool
            key, hit = None, None
        if hit is not None:
            return hit
    try:
        # A lambda, not the module itself: JAX would pretty-print the module for source info.
        out = jax.eval_shape(jax.vmap(lambda x: model(x)), X)
    except Exception as err:  # shape errors from inside the model
        raise ValueError(
            f"the model cannot be applied to examples of shape {X.shape[1:]}: {err}"
        ) from err
    per_example = tuple(out.shape[1:])
    if key is not None:
        if len(_OUTPUT_SHAPES) >= _OUTPUT_SHAPES_MAX:
            _OUTPUT_SHAPES.clear()
        _OUTPUT_SHAPES[key] = per_example
    return per_example


def check_outputs(model: PyTree, X: Array, y: Array, loss: Loss) -> None:
    """Check the model's per-example output shape against ``loss`` (via ``jax.eval_shape``, traced
    once per model structure and data shape)."""
    per_example = _per_example_shape(model, X)
    if loss.binary and loss.margin_based and per_example not in ((), (1,)):
        raise ValueError(
            f"the {type(loss).__name__.lower()} loss needs one output per example (shape () or "
            f"(1,)); the model outputs shape {per_example}."
        )
    if not loss.binary:
        if len(per_example) != 1:
            raise ValueError(
                f"cross-entropy needs a vector of class scores per example; got {per_example}."
            )
        if not isinstance(y, jax.core.Tracer) and int(np.max(np.asarray(y))) >= per_example[0]:
            raise ValueError(
                f"labels go up to {int(np.max(np.asarray(y)))} but the model has only "
                f"{per_example[0]} outputs."
            )
