"""Separate radial and angular rates for weight-normalized neurons ``w_u = r_u theta_u``.

For an SWN neuron (``r = g``, ``theta = v/||v||``, ``||v|| = 1``) the rates ``eta_r`` on ``g`` and
``eta_theta`` on ``v`` give the flow (derived, docs/theory.md §5)

    dw/dt = -[eta_r theta theta^T + eta_theta r^2 (I - theta theta^T)] grad L.

- gradient flow: ``wnjax.gradient_flow(p, ..., rate=polar_rates(eta_r, eta_theta))`` scales the
  vector field;
- GD: ``wnjax.gradient_descent(p, ..., optimizer=polar_sgd, learning_rate=eta_r,
  hyperparams={'angular_rate': eta_theta})`` takes
  ``r <- r - eta_r dL/dr`` and ``theta <- normalize(theta - eta_theta dL/dtheta)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from wnjax._nets.neurons import broadcast_rows, row_norms
from wnjax._nets.parameterize import EWN, SWN, Frozen, Parameterized, Standard
from wnjax._runtime.errors import InvalidInput


def _scale_param_name(layer) -> str:
    return "g" if isinstance(layer, SWN) else "a"


def _check_layers(params: Parameterized, who: str) -> None:
    if not isinstance(params, Parameterized):
        raise InvalidInput(
            f"{who} needs a weight-normalized model (wnjax.diagonal.polar_wn, wnjax.swn or "
            "wnjax.ewn), "
            f"got {type(params).__name__}."
        )
    if not any(isinstance(layer, (SWN, EWN)) for layer in params.layers):
        raise InvalidInput(
            f"{who}: no layer is weight-normalized, so there is no radius/direction to give "
            "separate rates; parameterize the model with wnjax.diagonal.polar_wn/swn/ewn first."
        )


class PolarRates(eqx.Module):
    """Rate ``radial`` on each neuron's scale parameter (``g``, or ``a`` for EWN), ``angular`` on
    ``v``.

    A callable ``rate(grads, params) -> grads`` for ``wnjax.gradient_flow(..., rate=...)``.
    Unnormalized layers and other leaves (biases) keep rate ``radial``.
    """

    radial: Array
    angular: Array

    def __call__(self, grads: Parameterized, params: Parameterized) -> Parameterized:
        _check_layers(params, "polar_rates")
        layers = []
        for g, layer in zip(grads.layers, params.layers):
            if isinstance(layer, (SWN, EWN)):
                name = _scale_param_name(layer)
                g = eqx.tree_at(
                    lambda l: (getattr(l, name), l.v),
                    g,
                    (self.radial * getattr(g, name), self.angular * g.v),
                )
            elif isinstance(layer, Standard):
                g = Standard(self.radial * g.w)
            layers.append(g)
        skeleton = jax.tree_util.tree_map(lambda x: self.radial * x, grads.skeleton)
        return Parameterized(skeleton=skeleton, layers=tuple(layers))


def polar_rates(radial: float | Array, angular: float | Array) -> PolarRates:
    """Separate rates ``eta_r`` (radius) and ``eta_theta`` (direction) for ``gradient_flow``'s
    ``rate=``.

    **Arguments:**
    - `radial`: ``eta_r``, the rate of each neuron's scale parameter.
    - `angular`: ``eta_theta``, the rate of each neuron's direction ``v``.

    **Returns:** a ``PolarRates`` callable; its rates are arrays, so new values reuse the
    compiled flow.
    """
    return PolarRates(jnp.asarray(radial), jnp.asarray(angular))


def _retract(v: Array, step: Array) -> Array:
    """``normalize(v + step) - v``, rescaled to the current ``||v_u||``, as an additive update."""
    new = v + step
    return new * broadcast_rows(row_norms(v) / row_norms(new), v) - v


def polar_sgd(
    learning_rate: float | Array,
    angular_rate: float | Array | None = None,
    retract: bool = True,
) -> optax.GradientTransformation:
    """GD in polar coordinates with separate rates (an optax factory for ``gradient_descent``).

    For each SWN/EWN neuron, with ``g = grad L``:

    - ``r <- r - eta_r dL/dr`` (``eta_r = learning_rate``; the scale parameter ``g`` or ``a``);
    - ``v <- v - eta_theta dL/dv``, then, with ``retract=True``, rescaled back to its previous
      norm (``||v|| = 1`` from ``polar_wn``): ``theta <- normalize(theta - eta_theta r (I -
      theta theta^T) grad_w L)``. Without the retraction ``||v||`` grows each step.

    Unnormalized layers and other leaves take ``-learning_rate * g``.
    """
    angular = learning_rate if angular_rate is None else angular_rate

    def init_fn(params):
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise InvalidInput("polar_sgd needs params: call update(g, state, params).")
        _check_layers(params, "polar_sgd")
        layers = []
        for g, layer in zip(updates.layers, params.layers):
            if isinstance(layer, (SWN, EWN)):
                name = _scale_param_name(layer)
                dv = -angular * g.v
                if retract:
                    dv = _retract(layer.v, dv)
                g = eqx.tree_at(
                    lambda l: (getattr(l, name), l.v),
                    g,
                    (-learning_rate * getattr(g, name), dv),
                )
            elif isinstance(layer, (Standard, Frozen)):
                g = type(layer)(-learning_rate * g.w)
            layers.append(g)
        skeleton = jax.tree_util.tree_map(lambda x: -learning_rate * x, updates.skeleton)
        return Parameterized(skeleton=skeleton, layers=tuple(layers)), state

    return optax.GradientTransformation(init_fn, update_fn)
