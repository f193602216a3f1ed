"""Smoothing the kinks of any model's derivative: a Filippov regularization by jaxpr rewrite.

A model built from ``max``, ``min``, ``abs`` or a ``where`` on the sign of a difference (ReLU,
leaky ReLU, ``jnp.abs``, maxout) has a gradient that jumps where the difference ``z`` changes
sign. ``smooth_kinks(fn, kappa)`` evaluates ``fn``'s jaxpr with each such operation's
derivative blended across the kink: ``out = where(z > 0, pos, neg)`` gets the tangent
``s d pos + (1 - s) d neg``, ``s`` rising from 0 at ``z = -2 width`` to 1 at ``z = 2 width`` (a
quintic, twice continuously differentiable): beyond the layer the derivative is the
operation's own, exactly, so a ``where`` that guards a division, say, is left as it is wherever
its condition is not within two widths of changing. A ``where`` keeps its value; ``max(a, b)``
takes ``b + rho(a - b)`` (``min`` and ``abs`` likewise), ``rho`` the ramp whose slope is ``s``
(``kink_ramp``, within ``5 width / 16`` of ``max(z, 0)``): a ReLU's output is then 0 only
where its slope is, and the layers after it never see an input turn from exactly 0 to nonzero
while their slopes, set by its direction, jump. The width is
``kappa sqrt(b^2 + mean b^2)``, with ``b`` a bound on ``|z|`` that is homogeneous of ``z``'s own
degree: for ``z = W h`` (a ``dot_general`` or a convolution), Cauchy-Schwarz's
``||w_u|| ||h||`` per output (the patch norm for a convolution); the mean is over the site's
elements, a floor that keeps the width finite where a unit shrinks through zero. This is
``MLP``'s and ``CNN``'s ``kinked_relu`` for any module. A many-way maximum (``jnp.max``,
max pooling) passes on its derivative blended over the entries near the maximum, and so
does each output of a sort or a ``top_k`` over the entries near it (``order_blend``).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal
from jaxtyping import Array, PyTree

from wnjax._nets.dense import apply_batch


def kink_slope(z: Array, width: Array) -> Array:
    """The positive side's weight ``s = t^3 (10 - 15 t + 6 t^2)``, ``t = (z/width + 2)/4``
    clipped to ``[0, 1]``: 1/2 on the kink, exactly 0 for ``z <= -2 width`` and 1 for
    ``z >= 2 width``, with ``ds/dz <= 15/(32 width)`` (``kinked_relu``'s is ``1/(2 width)``)."""
    t = jnp.clip((z / jnp.where(width > 0, width, 1.0) + 2.0) / 4.0, 0.0, 1.0)
    return t * t * t * (10.0 + t * (6.0 * t - 15.0))


def kink_ramp(z: Array, width: Array) -> Array:
    """``rho(z) = int_{-inf}^z kink_slope``: ``max(z, 0)`` beyond two widths of the kink, and
    between them the smooth ramp ``4 width t^4 (5/2 - 3 t + t^2)``, ``t = (z/width + 2)/4``,
    within ``5 width / 16`` of ``max(z, 0)`` (``rho(0)``); its derivative is ``kink_slope``
    (``width`` held constant). ``jnp.maximum(z, 0)`` where ``width`` is 0 (slope 1/2 at 0)."""
    w = jnp.where(width > 0, width, 1.0)
    t = jnp.clip((z / w + 2.0) / 4.0, 0.0, 1.0)
    ramp = 4.0 * w * t**4 * (2.5 + t * (t - 3.0))
    return jnp.where((width > 0) & (t < 1.0), ramp, jnp.maximum(z, 0.0))


@jax.custom_jvp
def kink_blend(z: Array, width: Array, out: Array, pos: Array, neg: Array) -> Array:
    """``out`` (``= pos`` where ``z > 0``, ``= neg`` where ``z < 0``), with the tangent
    ``s d pos + (1 - s) d neg``, ``s = kink_slope(z, width)`` (the side's own, selected, where
    ``s`` is 0 or 1: a branch singular beyond the layer stays out); the tangents of ``z``,
    ``width`` and ``out`` are dropped. Forward-over-reverse differentiates ``s``."""
    return out


@kink_blend.defjvp
def _kink_blend_jvp(primals, tangents):
    z, width, out, pos, neg = primals
    _, _, _, dpos, dneg = tangents
    s = kink_slope(z, width)
    shape, dtype = jnp.shape(out), jnp.result_type(out)
    dpos, dneg = (jnp.broadcast_to(d, shape).astype(dtype) for d in (dpos, dneg))
    blend = s * dpos + (1.0 - s) * dneg
    return out, jnp.where(s >= 1, dpos, jnp.where(s <= 0, dneg, blend))


@jax.custom_jvp
def order_blend(xs: Array, width: Array, outs: Array) -> Array:
    """``outs`` (order statistics of ``xs`` over its last axis: ``xs`` sorted, its largest
    entries, or its maximum alone) with the tangents ``d outs_k = sum_i w_ki d xs_i``,
    ``w_ki = phi_ki / sum_j phi_kj``, ``phi_ki = kink_slope(2 width - |xs_i - outs_k|, width)``:
    1 for the entries equal to ``outs_k``, 0 for those ``4 width`` or more from it, so ``k``
    tied entries share their ``k`` outputs' tangents ``1/k`` each, and an entry clear of the
    others passes its own, exactly. The tangents of ``width`` and ``outs`` are dropped."""
    return outs


@order_blend.defjvp
def _order_blend_jvp(primals, tangents):
    xs, width, outs = primals
    dxs = jnp.broadcast_to(tangents[0], jnp.shape(xs)).astype(jnp.result_type(outs))
    x, o = xs[..., None, :], outs[..., :, None]
    gap = jnp.where(x == o, 0.0, x - o)  # 0 also for -inf ties
    w = width[..., None, None]
    phi = kink_slope(2.0 * w - jnp.abs(gap), w)
    return outs, jnp.sum(phi * dxs[..., None, :], axis=-1) / jnp.sum(phi, axis=-1)


# Operations whose bound is the same operation applied to the bound of their first operand.
_SHAPE_OPS = frozenset(
    {
        "reshape",
        "broadcast_in_dim",
        "transpose",
        "squeeze",
        "expand_dims",
        "convert_element_type",
        "copy",
        "copy_p",
        "slice",
        "rev",
        "reduce_precision",
        "reduce_sum",
    }
)
# Operations that move a predicate's elements about.
_MOVES = frozenset(
    {"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice", "rev"}
)
# Many-way maxima (``jnp.max``, max pooling) and minima: the sign they are taken with.
_REDUCE = {"reduce_max": 1.0, "reduce_min": -1.0}
_WINDOW = {"reduce_window_max": 1.0, "reduce_window_min": -1.0}
_MANY = {**_REDUCE, **_WINDOW}
# Order statistics: ``jnp.sort`` (a sort of one operand) and ``lax.top_k``'s values.
_ORDER = frozenset({"sort", "top_k"})
# Operations whose integer result, an index, picks entries of a value: a jump of the derivative
# where the index changes, which the rewrite leaves as it is (counted as left).
_INDEXING = frozenset({"argmax", "argmin"})
# Comparisons: True where ``sign (a - b) > 0``.
_COMPARE = {"gt": 1.0, "ge": 1.0, "lt": -1.0, "le": -1.0}
# Operations with a kink, and those that hold a jaxpr that may hold one.
_KINKS = frozenset({"max", "min", "abs", "select_n", *_MANY, *_ORDER})
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr"}
_CUSTOM = {
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "remat2": "jaxpr",  # jax.checkpoint
}
# Loops and branches whose jaxprs are smoothed in place: the parameters that hold them.
_BODIES = {"scan": ("jaxpr",), "cond": ("branches",)}


def _bodies(eqn) -> list:
    """The closed jaxprs a scan or a cond holds."""
    out = []
    for key in _BODIES[eqn.primitive.name]:
        held = eqn.params[key]
        out.extend(held if isinstance(held, tuple) else [held])
    return out


def _floating(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _open(jaxpr):
    """``(jaxpr, consts)`` of a closed or open jaxpr."""
    return (jaxpr.jaxpr, jaxpr.consts) if hasattr(jaxpr, "consts") else (jaxpr, ())


def _may_kink(jaxpr) -> bool:
    """Whether a jaxpr holds an operation with a kink, at any depth."""
    jaxpr = _open(jaxpr)[0]
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _KINKS:
            return True
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            if _may_kink(sub):
                return True
    return False


class _Rewrite:
    """One evaluation of a jaxpr with its kinks smoothed: the values' provenance (bounds,
    comparisons, and which depend on the arguments differentiated) and the counts of kinks
    smoothed and left (inside a ``while_loop``)."""

    def __init__(self, kappa: float, keep: frozenset = frozenset()):
        self.kappa = kappa
        self.keep = keep  # the kinked equations left as they are (a power after them)
        self.bounds: dict[int, tuple] = {}  # id(value) -> (value, thunk or bound)
        # id(pred) -> (pred, a, b, sign, shape, moves): pred = moves(sign (a - b) > 0)
        self.compares: dict[int, tuple] = {}
        self.live: dict[int, object] = {}  # id(value) -> value: depends on the arguments
        self.smoothed = 0
        self.left = 0

    def mark(self, x) -> None:
        self.live[id(x)] = x

    def is_live(self, *xs) -> bool:
        """Whether any of ``xs`` depends on the arguments the kinks are smoothed in."""
        return any(self.live.get(id(x)) is x for x in xs)

    def bound(self, x) -> Array:
        """A bound on ``|x|`` of ``x``'s degree, constant to differentiation."""
        entry = self.bounds.get(id(x))
        if entry is None or entry[0] is not x:
            return jnp.abs(jax.lax.stop_gradient(x))
        value, b = entry
        if callable(b):
            b = b()
            self.bounds[id(x)] = (value, b)
        return b

    def eval(self, jaxpr, consts, args) -> list:
        env = {}

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for v, x in zip(jaxpr.constvars, consts):
            env[v] = x
        for v, x in zip(jaxpr.invars, args):
            env[v] = x
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            outs = self.inline(eqn, invals)
            if outs is None:
                with eqn.ctx.manager:
                    ans = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
                outs = list(ans) if eqn.primitive.multiple_results else [ans]
                name = eqn.primitive.name
                if name in _KINKS and self.kappa and eqn not in self.keep:
                    if name in _ORDER:
                        outs = self.smooth_order(name, invals, outs, eqn.params)
                    else:
                        outs = [self.smooth(name, invals, outs[0], eqn.params)]
                else:
                    if name in _INDEXING and self.is_live(*invals):
                        self.left += 1  # an argmax that picks entries: left as it is
                    self.note(eqn, invals, outs)
            if self.is_live(*invals):
                for x in outs:
                    self.mark(x)
            for v, x in zip(eqn.outvars, outs):
                env[v] = x
        return [read(v) for v in jaxpr.outvars]

    def inline(self, eqn, invals):
        """The outputs of a call evaluated here (its kinks smoothed), else ``None``."""
        name = eqn.primitive.name
        if name in _CALLS:
            jaxpr, consts = _open(eqn.params[_CALLS[name]])
            return self.eval(jaxpr, consts, invals)
        if name in _CUSTOM and _may_kink(eqn.params[_CUSTOM[name]]):
            # a custom rule (jax.nn.relu's) gives way to the blend
            jaxpr, consts = _open(eqn.params[_CUSTOM[name]])
            return self.eval(jaxpr, consts, invals)
        if not self.kappa:
            return None
        if not self.is_live(*invals):  # on the data alone: no kink of the derivative
            return None
        if name in _BODIES and any(_may_kink(j) for j in _bodies(eqn)):
            # a scan's body or a cond's branches, each smoothed on its own (their kinks' bounds
            # come from inside them), bound as the same loop or branch
            params = dict(eqn.params)
            for key in _BODIES[name]:
                held = params[key]
                new = [
                    self.smoothed_jaxpr(j) for j in (held if isinstance(held, tuple) else [held])
                ]
                params[key] = tuple(new) if isinstance(held, tuple) else new[0]
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
            return list(out) if eqn.primitive.multiple_results else [out]
        if any(_may_kink(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            self.left += 1  # a kink inside a while loop, say: evaluated as it is
        return None

    def smoothed_jaxpr(self, closed):
        """``closed`` (a loop's body, a branch) with its kinks smoothed: a jaxpr of the same
        inputs and outputs."""
        avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]

        def body(*args):
            outs, inner = _smooth_jaxpr(closed, self.kappa, args, [True] * len(args))
            self.smoothed += inner.smoothed
            self.left += inner.left
            return outs

        return jax.make_jaxpr(body)(*avals)

    def note(self, eqn, invals, outs) -> None:
        """Record how to bound an output, and which comparison made a predicate."""
        if not outs:  # an effect (jax.debug.callback, say)
            return
        name, out = eqn.primitive.name, outs[0]
        if name in _COMPARE and len(invals) == 2 and _floating(invals[0]):
            self.compares[id(out)] = (out, invals[0], invals[1], _COMPARE[name], jnp.shape(out), [])
            return
        if eqn.primitive.multiple_results:
            return
        params = eqn.primitive.get_bind_params(eqn.params)
        held = self.compares.get(id(invals[0])) if invals else None
        if name in _MOVES and held is not None and held[0] is invals[0]:
            # a predicate moved (vmap's transposes): the comparison moves with it
            move = (eqn.primitive, invals[1:], params)
            self.compares[id(out)] = (out, *held[1:5], [*held[5], move])
            return
        if not _floating(out):
            return
        if name == "dot_general":
            a, b = invals
            thunk = lambda: _dot_bound(self.bound(a), self.bound(b), params)  # noqa: E731
        elif name == "conv_general_dilated":
            a, b = invals
            thunk = lambda: _conv_bound(self.bound(a), self.bound(b), params)  # noqa: E731
        elif name in _SHAPE_OPS:
            x, rest = invals[0], invals[1:]
            thunk = lambda: eqn.primitive.bind(self.bound(x), *rest, **params)  # noqa: E731
        elif name == "neg":
            thunk = lambda: self.bound(invals[0])  # noqa: E731
        elif name in ("add", "sub"):
            thunk = lambda: self.bound(invals[0]) + self.bound(invals[1])  # noqa: E731
        elif name == "mul":
            thunk = lambda: self.bound(invals[0]) * self.bound(invals[1])  # noqa: E731
        else:
            return
        self.bounds[id(out)] = (out, thunk)

    def smooth(self, name: str, invals, out, params: dict):
        """``out`` of a kinked operation, its derivative blended across the kink (a kink on
        the data alone is left as it is)."""
        if not _floating(out):
            return out
        if name == "select_n" and id(invals[0]) in self.compares:
            operands = self.compares[id(invals[0])][1:3]
        else:
            operands = invals[:1] if name == "abs" or name in _MANY else invals
        if not self.is_live(*operands):
            return out
        if name in _MANY:
            return self.smooth_many(name, invals[0], out, params)
        if name in ("abs", "max", "min"):
            # The value is a smooth ramp's (kink_ramp): max(a, b) = b + rho(a - b) (ReLU's
            # max(z, 0): an output that is 0 exactly only where its slope is, so the layers
            # after it never see a zero input whose kinks' slopes jump as it turns nonzero).
            if name == "abs":
                (a,) = invals
                z, bsq = a, self.bound(a) ** 2
            else:
                a, b = invals
                z, bsq = a - b, self.bound(a) ** 2 + self.bound(b) ** 2
            bsq = jnp.broadcast_to(bsq, jnp.shape(out))
            self.smoothed += 1
            ramp = kink_ramp(z, self.width(bsq, out.dtype))
            value = 2 * ramp - a if name == "abs" else b + ramp if name == "max" else a - ramp
            return jnp.broadcast_to(value, jnp.shape(out)).astype(out.dtype)
        else:  # select_n
            if len(invals) != 3 or id(invals[0]) not in self.compares:
                return out
            pred, *cases = invals
            held, a, b, sign, shape, moves = self.compares[id(pred)]
            if held is not pred:
                return out

            def moved(v):
                v = jnp.broadcast_to(v, shape)
                for primitive, rest, params in moves:
                    v = primitive.bind(v, *rest, **params)
                return v

            z = moved(sign * (a - b))  # positive where pred is True: the second case
            pos, neg = cases[1], cases[0]
            bsq = moved(self.bound(a) ** 2 + self.bound(b) ** 2)
        bsq = jnp.broadcast_to(bsq, jnp.shape(out))
        self.smoothed += 1
        return kink_blend(z, self.width(bsq, out.dtype), out, pos, neg)

    def width(self, bsq: Array, dtype) -> Array:
        """``kappa sqrt(b^2 + mean b^2)`` of a site whose kinks have ``|z| <= b``."""
        width = self.kappa * jnp.sqrt(bsq + jnp.mean(bsq))
        return jax.lax.stop_gradient(width.astype(dtype))

    def smooth_many(self, name: str, x: Array, out: Array, params: dict) -> Array:
        """``out``, a maximum (minimum) of ``x`` over axes or windows, its derivative blended
        over the entries within ``4 width`` of it (``order_blend`` of the one output)."""
        sign = _MANY[name]
        bound = self.bound(x)
        if name in _REDUCE:
            axes = tuple(params["axes"])
            xs, bs = (_gather_axes(v, axes) for v in (x, bound))
        else:
            if any(d != 1 for d in params["base_dilation"]):
                self.left += 1  # a transposed pooling: left as it is
                return out
            xs = _gather_windows(x, -sign * jnp.inf, params)
            bs = _gather_windows(bound, 0.0, params)
        if xs.shape[-1] == 1:  # a maximum over one entry: no kink
            return out
        self.smoothed += 1
        bsq = 2.0 * jnp.max(bs * bs, axis=-1)  # |x_i - x_j| <= b_i + b_j
        width = self.width(bsq, out.dtype)
        result = sign * order_blend(sign * xs, width, sign * out[..., None])[..., 0]
        self.bounds[id(result)] = (result, jnp.max(bs, axis=-1))
        return result

    def smooth_order(self, name: str, invals, outs: list, params: dict) -> list:
        """``outs`` of a sort or a ``top_k``, the derivative of the values blended over the
        entries within ``4 width`` of each (``order_blend``). A sort that carries other operands
        along (``jnp.argsort``: indices, which pick entries elsewhere) is left as it is."""
        if not self.is_live(*invals):
            return outs
        if name == "sort" and len(invals) > 1 or not _floating(outs[0]):
            self.left += 1
            return outs
        axis = params["dimension"] if name == "sort" else params.get("axis", -1)
        x, values = invals[0], outs[0]
        xs, bs = (jnp.moveaxis(v, axis, -1) for v in (x, self.bound(x)))
        if xs.shape[-1] == 1:  # one entry: no kink
            return outs
        self.smoothed += 1
        bsq = 2.0 * jnp.max(bs * bs, axis=-1)  # |x_i - x_j| <= b_i + b_j
        blended = order_blend(xs, self.width(bsq, values.dtype), jnp.moveaxis(values, axis, -1))
        result = jnp.moveaxis(blended, -1, axis)
        bound = jnp.broadcast_to(jnp.max(bs, axis=-1, keepdims=True), blended.shape)
        self.bounds[id(result)] = (result, jnp.moveaxis(bound, -1, axis))
        return [result, *outs[1:]]


def _gather_axes(x: Array, axes: tuple) -> Array:
    """``x`` with ``axes`` moved to the end and flattened into one."""
    keep = [d for d in range(x.ndim) if d not in axes]
    x = jnp.transpose(x, (*keep, *axes))
    return x.reshape(*x.shape[: len(keep)], -1)


def _gather_windows(x: Array, fill, params: dict) -> Array:
    """The windows of a ``reduce_window`` of ``x`` (padded with ``fill``), their entries along
    a new last axis: ``out[i, k]`` is the ``k``-th entry of window ``i``."""
    dims, strides = params["window_dimensions"], params["window_strides"]
    dilation = params["window_dilation"]
    x = jax.lax.pad(x, jnp.asarray(fill, x.dtype), [(lo, hi, 0) for lo, hi in params["padding"]])
    span = [(w - 1) * d + 1 for w, d in zip(dims, dilation)]
    count = [(n - s) // st + 1 for n, s, st in zip(x.shape, span, strides)]
    entries = []
    for offset in np.ndindex(*dims):
        start = [o * d for o, d in zip(offset, dilation)]
        limit = [s + (c - 1) * st + 1 for s, c, st in zip(start, count, strides)]
        entries.append(jax.lax.slice(x, start, limit, strides))
    return jnp.stack(entries, axis=-1)


def _dot_bound(a: Array, b: Array, params: dict) -> Array:
    """Cauchy-Schwarz's bound on ``|dot_general(a, b)|``: per output element, the norm of ``a``
    over the contracted axes times that of ``b``, laid out as ``dot_general``'s output."""
    (ca, cb), (ba, bb) = params["dimension_numbers"]
    free_a = [d for d in range(a.ndim) if d not in ca and d not in ba]
    free_b = [d for d in range(b.ndim) if d not in cb and d not in bb]
    sa = jnp.sum(jnp.transpose(a * a, (*ba, *free_a, *ca)), axis=tuple(range(-len(ca), 0)))
    sb = jnp.sum(jnp.transpose(b * b, (*bb, *free_b, *cb)), axis=tuple(range(-len(cb), 0)))
    nb = len(ba)
    sa = sa.reshape(sa.shape + (1,) * len(free_b))
    sb = sb.reshape(sb.shape[:nb] + (1,) * len(free_a) + sb.shape[nb:])
    return jnp.sqrt(sa * sb).astype(params.get("preferred_element_type") or a.dtype)


def _conv_bound(a: Array, b: Array, params: dict) -> Array:
    """Cauchy-Schwarz's bound on ``|conv(a, b)|``: per output, the norm of the input patch
    times that of the filter (over its overlap with the patch)."""
    conv = jax.lax.conv_general_dilated_p
    patch = conv.bind(a * a, jnp.ones_like(b), **params)
    filt = conv.bind(jnp.ones_like(a), b * b, **params)
    return jnp.sqrt(jnp.maximum(patch * filt, 0.0))


def smooth_kinks(fn: Callable, kappa: float, argnums: int | tuple[int, ...] = 0) -> Callable:
    """``fn`` with the derivative of each kink blended over a relative width ``kappa``: every
    ``max``, ``min``, ``abs`` and ``where`` on the sign of a difference ``z`` in ``fn``'s jaxpr
    gets the tangent ``s d pos + (1 - s) d neg``, ``s`` rising from 0 at ``z = -2 width`` to 1
    at ``z = 2 width`` (``kink_slope``), ``width = kappa sqrt(b^2 + mean b^2)`` with ``b`` a
    bound on ``|z|`` (Cauchy-Schwarz's for a product). A ``where`` keeps its value; ``max``,
    ``min`` and ``abs`` take within the layer the value of the ramp whose slope that is
    (``max(a, b) = b + kink_ramp(a - b)``, at most ``5 width / 16`` above it). A maximum over
    axes or windows (``jnp.max``, max pooling; minima likewise) passes on the derivatives of
    the entries within ``4 width`` of it, blended, and so does each output of a sort
    (``jnp.sort``, a GroupSort or MaxMin activation) or of ``lax.top_k`` (``order_blend``). An
    index of the values differentiated that picks entries (``argmax``, ``argsort``) is left as
    it is, and counted (``count_kinks``). A kink whose value there is
    0 and whose every use raises it to a power above 1 (ReLU^2) is left as it is; the bodies of
    ``lax.scan`` and the branches of ``lax.cond`` are smoothed in place, a ``while_loop``'s are
    left as they are. ``gradient_flow`` evaluates the vector field
    of any module with kinks this way (its ``kink_width``).

    **Arguments:**

    - `fn`: a function of arrays and pytrees of them (an equinox model's ``__call__``, say)
      returning a pytree of arrays; non-array leaves are held static.
    - `kappa`: the relative width; ``0`` gives ``fn`` itself.
    - `argnums`: the arguments the derivative is taken in, as for ``jax.grad``: a kink whose
      difference depends on none of them (a mask on the data alone) is no kink of that
      derivative, and is left as it is.

    **Returns:** a function with ``fn``'s arguments, and its values beyond two widths of every
    kink.

    >>> import jax, jax.numpy as jnp, equinox as eqx, wnjax
    >>> f = wnjax.smooth_kinks(lambda w, x: jax.nn.relu(w @ x), 0.1)
    >>> w, x = jnp.array([[1.0, -1.0]]), jnp.array([1.0, 1.0])  # z = 0, on the kink
    >>> jax.grad(lambda w: f(w, x)[0])(w).tolist()  # the middle of ReLU's subdifferential
    [[0.5, 0.5]]
    >>> w = jnp.array([[1.0, -2.0]])  # z = -1, beyond the layer (width 0.1 sqrt(2) ||w|| ||x||)
    >>> float(f(w, x)[0]), jax.grad(lambda w: f(w, x)[0])(w).tolist()
    (0.0, [[0.0, 0.0]])
    """

    def smoothed(*args):
        return _rewrite(fn, kappa, args, argnums)[0]

    return fn if not kappa else smoothed


def _rewrite(fn: Callable, kappa: float, args, argnums=0) -> tuple[PyTree, _Rewrite]:
    """``fn(*args)`` evaluated with its kinks in ``args[argnums]`` smoothed, and the
    ``_Rewrite`` that did it."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten(dynamic)
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    live = [i in argnums for i, arg in enumerate(dynamic) for _ in jax.tree_util.tree_leaves(arg)]

    def flat(*leaves):
        return fn(*eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static))

    closed, shapes = jax.make_jaxpr(flat, return_shape=True)(*leaves)
    outs, rewrite = _smooth_jaxpr(closed, kappa, leaves, live)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), outs), rewrite


def _smooth_jaxpr(closed, kappa: float, args, live) -> tuple[list, _Rewrite]:
    """``closed`` evaluated on ``args`` with its kinks smoothed, and the ``_Rewrite`` that did
    it: first its calls are inlined into one jaxpr (a kink's users may lie outside the call
    that holds it), then each kink not raised to a power is blended."""
    inline = _Rewrite(0.0)
    flat = jax.make_jaxpr(lambda *x: inline.eval(closed.jaxpr, closed.consts, x))(*args)
    rewrite = _Rewrite(kappa, _powered(flat.jaxpr))
    for x, differentiated in zip(args, live):
        if differentiated:
            rewrite.mark(x)
    return rewrite.eval(flat.jaxpr, flat.consts, args), rewrite


def _zero(v, defs: dict) -> bool:
    """Whether ``v`` is a literal zero, or one broadcast or converted."""
    while not isinstance(v, Literal):
        eqn = defs.get(v)
        if eqn is None or eqn.primitive.name not in ("broadcast_in_dim", "convert_element_type"):
            return False
        v = eqn.invars[0]
    return bool(np.all(np.asarray(v.val) == 0))


def _zero_at_kink(eqn, defs: dict) -> bool:
    """Whether a kinked equation's value is 0 on its kink: ``|z|``, ``max(z, 0)``, a ``where``
    on the sign of ``z`` itself (``z > 0``); not ``max(a, b)``, whose value there is ``a``."""
    name = eqn.primitive.name
    if name == "abs":
        return True
    if name in ("max", "min"):
        return any(_zero(v, defs) for v in eqn.invars)
    if name != "select_n" or len(eqn.invars) != 3:
        return False
    pred = defs.get(eqn.invars[0])
    while pred is not None and pred.primitive.name in _MOVES:
        pred = defs.get(pred.invars[0])
    return (
        pred is not None
        and pred.primitive.name in _COMPARE
        and any(_zero(v, defs) for v in pred.invars)
    )


def _powered(jaxpr) -> frozenset:
    """The kinked equations of ``jaxpr`` whose value is 0 on the kink and whose every user
    raises it to a power above 1 (``relu(z)^2``, ``|z|^3``): the derivative of that is
    continuous, so it is left as it is, as ``MLP`` leaves ReLU^p."""
    users: dict = {}
    defs = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, Literal):
                users.setdefault(v, []).append(eqn)
    outputs = {v for v in jaxpr.outvars if not isinstance(v, Literal)}

    def powers(eqn, v) -> bool:
        name = eqn.primitive.name
        if name == "integer_pow":
            return eqn.params["y"] >= 2
        if name == "square":
            return True
        if name == "pow":
            e = eqn.invars[1]
            return eqn.invars[0] is v and isinstance(e, Literal) and float(np.max(e.val)) > 1
        return name == "mul" and eqn.invars[0] is v and eqn.invars[1] is v

    keep = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _KINKS and eqn.outvars and _zero_at_kink(eqn, defs):
            v = eqn.outvars[0]
            if v not in outputs and users.get(v) and all(powers(u, v) for u in users[v]):
                keep.add(eqn)
    return frozenset(keep)


def count_kinks(model: PyTree, X) -> tuple[int, int]:
    """``(smoothed, left)``: how many kinked operations ``smooth_kinks`` blends in evaluating
    ``model`` on the rows of ``X`` (an array or a ``jax.ShapeDtypeStruct``; nothing is
    computed), and how many it leaves as they are (inside a ``while_loop`` of the model)."""
    counts = []

    def run(model, X):
        out, rewrite = _rewrite(apply_batch, 1.0, (model, X))
        counts.append((rewrite.smoothed, rewrite.left))
        return out

    eqx.filter_eval_shape(run, model, X)
    return counts[0]


class Smoothed(eqx.Module):
    """``model`` whose derivative ``smooth_kinks`` blends at its kinks (relative width
    ``kappa``); called like ``model``, with the same values. ``gradient_flow`` evaluates its
    vector field through it for a module that is not wnjax's ``MLP`` or ``CNN``."""

    model: PyTree
    kappa: float = eqx.field(static=True)

    def __call__(self, x, *args, **kwargs):
        return smooth_kinks(lambda m, x: m(x, *args, **kwargs), self.kappa)(self.model, x)

    def batched(self, X: Array) -> Array:
        """The outputs on every row of ``X``, smoothed as one batched jaxpr: the width's floor
        averages over the examples too."""
        return smooth_kinks(apply_batch, self.kappa)(self.model, X)


def unsmoothed(fn: Callable[[PyTree, PyTree], PyTree]) -> Callable:
    """``fn(grads, params)`` of a plain model, applied inside a ``Smoothed`` pair and wrapped
    back (a per-neuron rate on the smoothed field)."""

    def apply(grads, params):
        if isinstance(params, Smoothed):
            return Smoothed(fn(grads.model, params.model), params.kappa)
        return fn(grads, params)

    return apply
