"""Input checks that turn bad arguments and data into clear errors before anything is traced.

Every error is an ``InvalidInput`` (a ``ValueError``) that names the argument, its value and
the fix.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from wnjax._losses import CrossEntropy, Exponential, Logistic, LogisticThenExponential, Loss, Square
from wnjax._runtime.errors import InvalidInput, TargetMetAtStart

# How each numeric option is checked, and what to pass instead of a bad value.
_POSITIVE_INT = {
    "num_steps": "the number of steps to take, e.g. num_steps=1000",
    "n_save": "the number of save points, e.g. n_save=64",
    "max_steps": "the solver's step budget, e.g. max_steps=100_000",
    "seeds": "the number of seeds, e.g. seeds=5",
}
_POSITIVE = {
    "learning_rate": "a positive, finite step size, e.g. learning_rate=0.1",
    "rtol": "a positive relative tolerance, or None for the dtype's default",
    "atol": "a positive absolute tolerance, or None for the dtype's default",
    "dt0": "a positive first step, or None to choose it automatically",
    "diverge_above": "a positive rise of log L that counts as divergence, e.g. 200.0",
}
_INT32_MAX = 2**31 - 1  # counts are int32 inside the compiled loops
_INF_OK = ("diverge_above",)  # inf: never diverged by a rise alone
# Options with an upper bound: what the bound means.
_BELOW_ONE = {
    "rtol": "e.g. rtol=1e-8 (float64) or 1e-5 (float32), or None for the dtype's default (a "
    "relative tolerance of 1 or more accepts any step)",
}
_FINITE = {
    "target_log_loss": "a finite log L to stop at, or None to run without a target",
    "t0": "a finite start time",
    "t1": "a finite end time",
    "log_t0": "a finite log t at the start",
    "degree": "the model's homogeneity degree, a finite number such as 2.0",
}


def _concrete(value):
    """``value`` as a host array, or ``None`` when it is traced or not numeric."""
    if isinstance(value, jax.core.Tracer) or callable(value):
        return None
    try:
        arr = np.asarray(value)
    except Exception:  # an object that is not an array
        return None
    return arr if arr.dtype.kind in "biuf" else None


def check_options(**options) -> None:
    """Check numeric options by name: ``None`` (not given) and traced values pass.

    ``num_steps``, ``n_save``, ``max_steps``, ``seeds``: positive integers (an integral float
    such as ``1e5`` is accepted); ``learning_rate``, ``rtol``, ``atol``, ``dt0``: positive and
    finite, ``rtol`` below 1; ``diverge_above``: positive (``inf`` allowed);
    ``target_log_loss``, ``t0``, ``t1``, ``log_t0``, ``degree``: finite. Raises
    ``InvalidInput`` naming the option, its value and the fix.
    """
    for name, value in options.items():
        if value is None:
            continue
        arr = _concrete(value)
        if name in _POSITIVE_INT:
            ok = (
                not isinstance(value, bool)
                and arr is not None
                and arr.ndim == 0
                and arr.dtype.kind in "iuf"
                and math.isfinite(float(arr))
                and float(arr) == int(arr)
                and int(arr) >= 1
            )
            if not ok:
                raise InvalidInput(
                    f"{name} must be a positive integer, got {value!r}; pass {_POSITIVE_INT[name]}."
                )
            if int(arr) > _INT32_MAX:
                raise InvalidInput(
                    f"{name} must be at most 2^31 - 1 (compiled loops count in int32), got "
                    f"{value!r}; pass {_POSITIVE_INT[name]}."
                )
        elif name in _POSITIVE or name in _FINITE:
            if isinstance(value, bool) or (
                arr is None and not isinstance(value, jax.core.Tracer) and not callable(value)
            ):
                raise InvalidInput(f"{name} must be a number, got {value!r}.")
            if arr is None:  # traced, or a schedule (callable)
                continue
            if arr.ndim:
                raise InvalidInput(
                    f"{name} must be one number, got an array of shape {arr.shape}; pass one "
                    "value per call, or map over values with wnjax.sweep."
                )
            positive = name in _POSITIVE
            bad = (np.isnan(arr) if name in _INF_OK else ~np.isfinite(arr)) | (
                (arr <= 0) if positive else False
            )
            if np.any(bad):
                what = "positive and finite" if positive else "finite"
                fix = _POSITIVE.get(name) or _FINITE[name]
                raise InvalidInput(f"{name} must be {what}, got {value!r}; pass {fix}.")
            if name in _BELOW_ONE and np.any(arr >= 1):
                raise InvalidInput(
                    f"{name} must be below 1, got {value!r}; pass {_BELOW_ONE[name]}."
                )
        else:
            raise KeyError(f"no rule for option {name!r}")


def check_data(X, y, loss: Loss) -> tuple[Array, Array]:
    """Validate ``(X, y)`` for ``loss``; return them as JAX arrays on one device.

    Integer or boolean ``X`` becomes the default float dtype. Raises ``InvalidInput`` (a
    ``ValueError``) for empty data, NaN/inf in ``X`` or ``y``, a length mismatch, labels outside
    ``{-1, +1}`` for binary losses, or non-integer class labels for cross-entropy. Warns when a
    row of ``X`` is all zero under a margin loss (its margin stays 0 for a homogeneous model).
    """
    if isinstance(X, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
        return X, y
    Xn, yn = np.asarray(X), np.asarray(y)
    if Xn.dtype.kind in "biu":
        float_dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
        Xn = Xn.astype(float_dtype)
        X = Xn
    if Xn.ndim < 2:
        raise InvalidInput(
            f"X must have a leading axis of examples, shape (n, ...); got shape {Xn.shape}."
        )
    if Xn.shape[0] == 0:
        raise InvalidInput(f"X has no rows (shape {Xn.shape}); pass at least one example.")
    if yn.ndim < 1 or yn.shape[0] != Xn.shape[0]:
        raise InvalidInput(
            f"X has {Xn.shape[0]} examples but y has shape {yn.shape}; they must match along "
            "axis 0."
        )
    if np.issubdtype(Xn.dtype, np.complexfloating):
        raise InvalidInput(f"X must be real, got dtype {Xn.dtype}; pass its real part or features.")
    if not jnp.issubdtype(Xn.dtype, jnp.number):
        raise InvalidInput(f"X must hold numbers, got dtype {Xn.dtype}; pass a float array.")
    # (bfloat16 and JAX's other narrow floats are no NumPy floats: compare them widened)
    finite = np.isfinite(Xn if np.issubdtype(Xn.dtype, np.number) else Xn.astype(np.float32))
    if not np.all(finite):
        bad = np.argwhere(~finite)[:3].tolist()
        raise InvalidInput(f"X contains NaN or inf (first at indices {bad}); clean the data first.")
    if jnp.issubdtype(yn.dtype, jnp.floating) and not np.all(np.isfinite(yn.astype(np.float64))):
        raise InvalidInput("y contains NaN or inf; clean the labels first.")
    name = type(loss).__name__.lower()
    if loss.binary and loss.margin_based:
        labels = set(np.unique(yn).tolist())
        if yn.ndim != 1 or not labels <= {-1, 1}:
            raise InvalidInput(
                f"the {name} loss needs binary labels in {{-1, +1}} of shape (n,), got labels "
                f"{sorted(labels)[:6]} of shape {yn.shape}. Map {{0, 1}} labels with y = 2*y - 1, "
                "or use loss='cross_entropy' for class indices."
            )
        y_out = _as_device(y, yn, Xn.dtype)
    elif not loss.binary:
        if yn.ndim != 1 or not np.all(np.mod(yn, 1) == 0) or yn.min() < 0:
            raise InvalidInput(
                "cross-entropy needs integer class indices 0..k-1 of shape (n,), got "
                f"dtype {yn.dtype} and shape {yn.shape}."
            )
        y_out = _as_device(y, yn, jnp.int32)
    else:
        y_out = _as_device(y, yn, Xn.dtype)
    if loss.margin_based:
        _warn_zero_rows(Xn)
    X_out = _as_device(X, Xn, Xn.dtype)
    return X_out, _same_device(y_out, X_out)


def check_finite_params(model: PyTree) -> None:
    """Raise ``InvalidInput`` if an array of ``model`` (not traced) holds NaN or inf, or if it
    has no trainable array (one outside its ``Frozen`` layers). One pass over its leaves."""
    from wnjax._nets.parameterize import Frozen

    trainable = False
    nodes = jax.tree_util.tree_leaves_with_path(model, is_leaf=lambda x: isinstance(x, Frozen))
    for path, node in nodes:
        frozen = isinstance(node, Frozen)
        leaf = node.w if frozen else node
        if not _inexact(leaf):
            continue
        trainable = trainable or not frozen
        if not isinstance(leaf, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(leaf))):
            where = jax.tree_util.keystr(path) + (".w" if frozen else "")
            raise InvalidInput(
                f"the model's array {where or 'at its root'} holds NaN or inf; build the model "
                "from finite weights (e.g. a finite, nonzero init_scale)."
            )
    if not trainable:
        raise InvalidInput(
            "the model has no trainable array (every layer frozen, or no array at all); train "
            "at least one layer: wnjax.standard(model), or fewer layers in freeze=."
        )


def _warn_zero_rows(Xn: np.ndarray) -> None:
    zero = np.flatnonzero(~np.any(Xn.reshape(Xn.shape[0], -1) != 0, axis=1))
    if zero.size:
        warnings.warn(
            f"row(s) {zero[:6].tolist()}{' ...' if zero.size > 6 else ''} of X are all zero: a "
            "bias-free homogeneous model outputs 0 there, so their margin stays 0 and their loss "
            "stays at loss(0) for ever; log L cannot go below it. Drop those rows.",
            UserWarning,
            stacklevel=4,
        )


def check_conflicts(X, y, loss: Loss, target, stacklevel: int, model: PyTree = None) -> None:
    """Rows of ``X`` that no model can fit at once: raise ``InvalidInput`` when they put
    ``target`` (a ``log L``) out of reach, else warn.

    - **Identical rows with different labels (targets)**, which every model maps to one output.
      Their floor ``B``: ``log L >= B``, the least ``log L`` of those rows over a shared output,
      in closed form (``Exponential``: ``2 sqrt(n+ n-)`` per group, at ``f = log(n+/n-)/2``;
      ``Logistic``, ``LogisticThenExponential`` and ``CrossEntropy``: ``-sum_k n_k log(n_k/m)``,
      at logits ``log(n_k/m)``; ``Square``: the targets' spread about their mean), and for any
      other margin loss ``logsumexp`` over groups of the least ``l_i(0)`` (a margin of the
      group is at most 0).
    - Else, under a margin loss, **rows that are positive multiples of one another with
      different labels** (``x_j = c x_i``, ``c > 0``, to a few ulps). A model positively
      homogeneous in its input (``f(c x) = c^k f(x)``) gives them outputs of one sign (one
      argmax), so a margin of each such group stays ``<= 0``: ``B = logsumexp`` over groups of
      the least ``l_i(0)`` (``CrossEntropy``: ``log 2``). It raises only where ``model`` is
      known to be such a model (wnjax's bias-free ``MLP``/``CNN``), else warns.

    Skipped for traced data and for other losses.

    **Arguments:** `X`, `y`: the data, as ``check_data`` returns them; `loss`: the ``Loss``;
    `target`: the run's ``target_log_loss`` or ``None``; `stacklevel`: the warning's; `model`:
    the model (plain or ``Parameterized``), or ``None`` (not known)."""
    if any(isinstance(a, jax.core.Tracer) for a in (X, y, target)):
        return
    Xn, yn = np.asarray(X), np.asarray(y)
    floor = _conflict_floor(Xn, yn, loss)
    certain = True
    if floor is not None:
        bound, rows, groups, members = floor
        pair = " and ".join(str(int(r)) for r in rows)
        labels = yn[list(rows)].tolist()
        what = "targets" if not loss.margin_based else "labels"
        facts = (
            f"rows {pair} of X are identical but their {what} differ ({labels[0]} and "
            f"{labels[1]}{_how_many(groups, members)}): every model gives them one output, so "
            f"log L >= {bound:.6g} (the least loss of such rows over one output each)"
        )
    else:
        floor = _multiples_floor(Xn, yn, loss)
        if floor is None:
            return
        bound, (i, j), groups, members = floor
        from wnjax._nets.models import known_degree

        certain = model is not None and known_degree(model) is not None
        scale = float(np.linalg.norm(Xn[j]) / np.linalg.norm(Xn[i]))
        who = (
            "this model is positively homogeneous in its input (f(c x) = c^k f(x) for c > 0) and "
            "gives"
            if certain
            else "a model positively homogeneous in its input (f(c x) = c^k f(x) for c > 0, as "
            "a bias-free net of ReLU, ReLU^p or linear layers is) gives"
        )
        facts = (
            f"rows {i} and {j} of X are positive multiples of each other (x_{j} = {scale:.6g} "
            f"x_{i}) but their labels differ ({yn[i].tolist()} and {yn[j].tolist()}"
            f"{_how_many(groups, members)}): {who} them outputs of one sign, so a margin of each "
            f"such group stays <= 0 and log L >= {bound:.6g}"
        )
    fix = "Drop or relabel the conflicting rows"
    target = None if target is None else float(np.max(np.asarray(target)))
    tol = 1e-6 * (1.0 + abs(bound))
    if target is not None and target < bound - tol:
        if certain:
            raise InvalidInput(
                f"target_log_loss = {target:g} cannot be reached: {facts}. {fix}, or pass a "
                f"target above {bound:.6g}."
            )
        fix = f"For such a model target_log_loss = {target:g} cannot be reached. {fix}"
    warnings.warn(f"{facts}. {fix}.", UserWarning, stacklevel=stacklevel)


def _how_many(groups: int, members: int) -> str:
    return f"; {groups} such groups, {members} rows" if groups > 1 or members > 2 else ""


def _conflict_floor(Xn: np.ndarray, yn: np.ndarray, loss: Loss):
    """``(B, rows, groups, members)`` of ``check_conflicts``: the floor, the rows of the first
    conflicting group, the number of such groups and of their rows; ``None`` without any."""
    n = Xn.shape[0]
    if n < 2 or not (loss.margin_based or isinstance(loss, Square)):
        return None
    found = _label_conflicts(_identical_rows(Xn), yn)
    if found is None:
        return None
    group, first, counts, bad, conflict, rows = found
    ys = yn.reshape(n, -1)
    members = np.flatnonzero(conflict)
    y_float = jnp.asarray(yn.astype(float))
    if isinstance(loss, Square):  # each group's output at the mean of its targets
        sums = np.zeros((counts.shape[0], ys.shape[1]))
        np.add.at(sums, group, ys.astype(float))
        outputs = (sums / counts[:, None])[group].reshape(yn.shape)
        log_l = np.asarray(loss.log_losses(jnp.asarray(outputs), y_float))
    elif isinstance(loss, (CrossEntropy, Logistic, LogisticThenExponential, Exponential)):
        # logits log(n_k/m) of each class's share of its group (-inf for a class absent there)
        cls = (ys[:, 0] > 0) if loss.binary else ys[:, 0]
        freq = np.zeros((counts.shape[0], int(np.max(cls)) + 1 if not loss.binary else 2))
        np.add.at(freq, (group, cls.astype(int)), 1.0)
        with np.errstate(divide="ignore"):
            logits = np.log(freq / counts[:, None])[group]
        logits = np.where(conflict[:, None], logits, 0.0)  # any finite output for the others
        if loss.binary:
            # l(q) = exp(-q): n+ e^-f + n- e^f is least at f = log(n+/n-)/2
            half = 0.5 if isinstance(loss, Exponential) else 1.0
            outputs, labels = half * (logits[:, 1] - logits[:, 0]), y_float
        else:
            outputs, labels = logits, jnp.asarray(yn)
        log_l = np.asarray(loss.log_losses(jnp.asarray(outputs), labels))
    elif loss.binary:  # a margin loss without a closed form: a margin of each group is <= 0
        log_l0 = np.asarray(loss.log_losses(jnp.zeros(n), y_float))
        least = np.full(counts.shape[0], np.inf)
        np.minimum.at(least, group[members], log_l0[members])
        members, log_l = bad, least  # one row's l(0) for each group
    else:
        return None
    return float(np.logaddexp.reduce(log_l[members])), rows, bad.size, conflict.sum()


def _identical_rows(Xn: np.ndarray) -> np.ndarray | None:
    """A label per row of ``Xn`` (its leading axis), equal for identical rows (``-0.0`` is
    ``0.0``), or ``None`` where all rows differ. The rows' bits are hashed first (a wrapping
    integer product with random odd words, ~0.2 s for 60,000 x 784), and only the rows whose hash
    repeats are compared whole."""
    n = Xn.shape[0]
    flat = np.ascontiguousarray(Xn.reshape(n, -1) + np.zeros((), Xn.dtype))
    words = flat.view(np.dtype(f"u{flat.dtype.itemsize}"))
    hashes = _hash_rows(words)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    maybe = np.flatnonzero(counts[inverse.ravel()] > 1)
    if maybe.size == 0:
        return None
    rows = flat[maybe]
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    label = np.arange(n) + n  # a row whose hash is its own is unlike every other
    label[maybe] = np.unique(keys, return_inverse=True)[1].ravel()
    return label


def _multiples_floor(Xn: np.ndarray, yn: np.ndarray, loss: Loss):
    """``(B, rows, groups, members)`` of ``check_conflicts``' positive multiples: the floor, two
    rows of the first conflicting group (the first row and one whose label differs), the
    number of such groups and of their rows; ``None`` without any, or for a loss that is not
    margin-based (or multi-class other than ``CrossEntropy``)."""
    n = Xn.shape[0]
    if n < 2 or not loss.margin_based:
        return None
    found = _label_conflicts(_positive_multiples(Xn), yn)
    if found is None:
        return None
    group, first, _, bad, conflict, rows = found
    if loss.binary:  # the least l_i(0) of each group: a margin there is <= 0
        log_l0 = np.asarray(loss.log_losses(jnp.zeros(n), jnp.asarray(yn.astype(float))))
        least = np.full(first.shape[0], np.inf)
        np.minimum.at(least, group[conflict], log_l0[conflict])
        log_l = least[bad]
    elif isinstance(loss, CrossEntropy):  # at a margin <= 0: log(1 + sum exp(z_k - z_y)) >= log 2
        log_l = np.full(bad.size, math.log(math.log(2.0)))
    else:  # another multi-class loss: no bound known
        return None
    return float(np.logaddexp.reduce(log_l)), rows, bad.size, conflict.sum()


def _label_conflicts(label: np.ndarray | None, yn: np.ndarray):
    """The groups of rows that share a ``label`` and whose labels (targets) ``yn`` differ:
    ``(group, first, counts, bad, conflict, rows)``, each row's group, each group's first row
    and size, the conflicting groups, a mask of their rows, and a row of the first conflicting
    group with one unlike it; ``None`` without any (or for ``label=None``: no shared labels)."""
    if label is None:
        return None
    _, first, group, counts = np.unique(
        label, return_index=True, return_inverse=True, return_counts=True
    )
    group = group.ravel()
    ys = yn.reshape(yn.shape[0], -1)
    # a group conflicts where some row's labels differ from its first row's
    differs = np.any(ys != ys[first[group]], axis=1)
    bad = np.unique(group[differs])
    if bad.size == 0:
        return None
    odd = np.flatnonzero(differs)[0]
    return group, first, counts, bad, np.isin(group, bad), (first[group[odd]], odd)


def _positive_multiples(Xn: np.ndarray) -> np.ndarray | None:
    """A label per row of ``Xn`` (its leading axis), equal for nonzero rows that are positive
    multiples of one another (their unit vectors within ``16 eps`` of ``Xn``'s dtype), or
    ``None`` where no two are. The unit vectors are put in cells of a grid on four random
    projections (side ``4096 eps``, at most ``1e-2``); only the rows of a cell are compared
    whole, so a pair that straddles a cell's side (about 0.2% of them) is not seen."""
    n = Xn.shape[0]
    flat = Xn.reshape(n, -1).astype(np.float64, copy=False)
    norms = np.linalg.norm(flat, axis=1)
    live = np.flatnonzero(norms > 0)
    if live.size < 2:
        return None
    eps = float(jnp.finfo(Xn.dtype).eps) if jnp.issubdtype(Xn.dtype, jnp.inexact) else 2.0**-52
    eps = max(eps, 2.0**-52)
    directions = np.random.default_rng(0).standard_normal((flat.shape[1], 4))
    projections = (flat[live] @ directions) / (norms[live, None] * np.sqrt(flat.shape[1]))
    cells = np.floor(projections / min(4096 * eps, 1e-2)).astype(np.int64)
    _, cell, counts = np.unique(
        _hash_rows(cells.view(np.uint64)), return_inverse=True, return_counts=True
    )
    cell = cell.ravel()
    shared = np.flatnonzero(counts[cell] > 1)
    if shared.size == 0:
        return None
    label = np.arange(n) + n  # a row alone in its cell is a multiple of no other row
    order = shared[np.argsort(cell[shared], kind="stable")]
    for members in np.split(order, np.flatnonzero(np.diff(cell[order])) + 1):
        unit = flat[live[members]] / norms[live[members], None]
        while members.size:
            same = np.max(np.abs(unit - unit[0]), axis=1) <= 16 * eps
            label[live[members[same]]] = live[members[0]]
            members, unit = members[~same], unit[~same]
    if np.unique(label).size == n:
        return None
    return label


def _hash_rows(words: np.ndarray) -> np.ndarray:
    """One ``uint64`` per row of ``words`` (unsigned integers, ``(n, m)``): their wrapping
    product with fixed random odd words. Equal rows hash alike; unequal ones rarely do."""
    odd = np.random.default_rng(0).integers(0, 2**63, size=words.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        return words @ (2 * odd + 1)


def _same_device(v: Array, like: Array) -> Array:
    """``v`` on ``like``'s device when both are committed to different single devices."""
    if not (getattr(v, "committed", False) and getattr(like, "committed", False)):
        return v
    if v.devices() == like.devices():
        return v
    if len(like.devices()) != 1:
        raise InvalidInput(
            f"X and y are on different devices ({sorted(map(str, like.devices()))} and "
            f"{sorted(map(str, v.devices()))}); put them on the same devices with "
            "jax.device_put."
        )
    return jax.device_put(v, next(iter(like.devices())))


def common_dtype(p: PyTree, X: Array):
    """The run's float dtype: that of ``X`` and the model's inexact arrays, promoted."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(p) if _inexact(leaf)]
    return jnp.result_type(X.dtype, *(leaf.dtype for leaf in leaves))


def in_common_dtype(p: PyTree, X: Array, y: Array) -> tuple:
    """``(p, X, y, dtype)``: the model and the data in the run's float dtype (``common_dtype``;
    integer labels stay as they are)."""
    dtype = common_dtype(p, X)
    X, p = cast_floats(X, dtype), cast_floats(p, dtype)
    if jnp.issubdtype(y.dtype, jnp.floating):
        y = cast_floats(y, dtype)
    return p, X, y, dtype


def cast_floats(tree: PyTree, dtype) -> PyTree:
    """``tree`` with its inexact arrays in ``dtype`` (the same arrays where they already are)."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(dtype) if _inexact(leaf) and leaf.dtype != dtype else leaf, tree
    )


def _inexact(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(leaf.dtype, jnp.inexact)


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
        raise InvalidInput(
            f"the model cannot be applied to examples of shape {X.shape[1:]}: {err}"
        ) from err
    per_example = tuple(out.shape[1:])
    if key is not None:
        if len(_OUTPUT_SHAPES) >= _OUTPUT_SHAPES_MAX:
            _OUTPUT_SHAPES.clear()
        _OUTPUT_SHAPES[key] = per_example
    return per_example


def check_outputs(model: PyTree, X: Array, y: Array, loss: Loss) -> None:
    """Check that the model's arrays are finite and its per-example output shape fits ``loss``
    (via ``jax.eval_shape``, traced once per model structure and data shape)."""
    check_finite_params(model)
    per_example = _per_example_shape(model, X)
    if not loss.margin_based:  # a regression: one target per output
        targets = tuple(np.shape(y)[1:])
        if int(np.prod(per_example, dtype=int)) != int(np.prod(targets, dtype=int)):
            raise InvalidInput(
                f"the {type(loss).__name__.lower()} loss compares each output with its target: "
                f"the model outputs shape {per_example} per example, y has shape {targets} per "
                "example; give y one target per output (shape (n,) for one output)."
            )
    if loss.binary and loss.margin_based and per_example not in ((), (1,)):
        raise InvalidInput(
            f"the {type(loss).__name__.lower()} loss needs one output per example (shape () or "
            f"(1,)); the model outputs shape {per_example}."
        )
    if not loss.binary:
        if len(per_example) != 1:
            raise InvalidInput(
                f"cross-entropy needs a vector of class scores per example; got {per_example}."
            )
        if not isinstance(y, jax.core.Tracer) and int(np.max(np.asarray(y))) >= per_example[0]:
            raise InvalidInput(
                f"labels go up to {int(np.max(np.asarray(y)))} but the model has only "
                f"{per_example[0]} outputs."
            )


def warn_target_met_at_start(log_loss, target, stacklevel: int) -> None:
    """Warn (``TargetMetAtStart``) when a run's target was met at its start
    (``log_loss[..., 0] <= target``): the run took no step. Skipped under a transform."""
    if target is None or isinstance(log_loss, jax.core.Tracer):
        return
    start, target = np.asarray(log_loss)[..., 0], np.asarray(target)
    met = np.isfinite(target) & (start <= target)
    if np.any(met):
        first = float(np.ravel(start[met] if start.ndim else start)[0])
        warnings.warn(
            f"target_log_loss = {float(np.ravel(target)[0]):g} is already met at the start "
            f"(log L(0) = {first:.6g}): the run took no step. Pass a target below log L(0).",
            TargetMetAtStart,
            stacklevel=stacklevel,
        )


def check_key(key) -> None:
    """Raise ``InvalidInput`` unless ``key`` is ``None`` or a JAX PRNG key (``jax.random.key``,
    or legacy ``jax.random.PRNGKey`` data)."""
    if key is None or isinstance(key, jax.core.Tracer):
        return
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    legacy = (
        isinstance(key, (jax.Array, np.ndarray))
        and key.dtype == np.uint32
        and key.shape[-1:] == (2,)
    )
    if not (typed or legacy):
        raise InvalidInput(f"key must be a JAX PRNG key, got {key!r}; pass key=jax.random.key(0).")
