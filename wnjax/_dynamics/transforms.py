"""Optax transforms specific to wnjax.

``scale_by_neuron_norm_sq``: the per-neuron learning rate ``eta_u = ||w_u||^2`` of the
EWN = adaptive-rate equivalence, ``g_u -> ||w_u||^2 g_u``.
"""

from __future__ import annotations

import optax

from wnjax._nets.neurons import scale_neuron_rows
from wnjax._nets.parameterize import Parameterized, neuron_norm_sq_rate
from wnjax._runtime.errors import InvalidInput


def scale_by_neuron_norm_sq(power: float = 2.0) -> optax.GradientTransformation:
    """Scale each neuron's update by ``||w_u||^power`` of the current weights.

    ``optax.chain(scale_by_neuron_norm_sq(), optax.sgd(eta))`` is GD with rate
    ``eta ||w_u||^2``: ``w_u <- w_u - eta ||w_u||^2 grad_u L``. Works on plain models and on
    ``wnjax.standard(model)`` parameterizations (``params`` must be passed to ``update``).
    """

    def init_fn(params):
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise InvalidInput("scale_by_neuron_norm_sq needs params: call update(g, s, params).")
        if isinstance(params, Parameterized):
            return neuron_norm_sq_rate(updates, params, power), state
        return scale_neuron_rows(updates, params, power), state

    return optax.GradientTransformation(init_fn, update_fn)


def neuron_rate_sgd(learning_rate) -> optax.GradientTransformation:
    """GD with the per-neuron rate ``eta ||w_u||^2``: ``w_u <- w_u - eta ||w_u||^2 grad_u L``."""
    return optax.chain(scale_by_neuron_norm_sq(), optax.sgd(learning_rate))
