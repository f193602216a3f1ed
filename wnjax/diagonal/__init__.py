"""Diagonal linear networks ``f(x) = <u * v, x>`` and their weight-normalized flows.

- **nets**: ``DiagonalNet``, ``net``, ``regroup``, ``signal`` (the predictor ``u * v``),
  ``polar_wn``, ``coordinate_wn``, ``uv_products``, ``uv_ratio``, ``invariant_spread``,
  ``effective_alpha``;
- **data and error**: ``sparse_problem``, ``relative_error``;
- **dynamics**: ``PolarRates``, ``polar_rates``, ``polar_sgd``;
- **predicted interpolators**: ``l1_interpolator``, ``min_l2_interpolator``, ``q_alpha``,
  ``q_alpha_interpolator``.
"""

from wnjax.diagonal._nets import DiagonalNet as DiagonalNet
from wnjax.diagonal._nets import coordinate_wn as coordinate_wn
from wnjax.diagonal._nets import diagonal_net as net
from wnjax.diagonal._nets import diagonal_signal as signal
from wnjax.diagonal._nets import effective_alpha as effective_alpha
from wnjax.diagonal._nets import invariant_spread as invariant_spread
from wnjax.diagonal._nets import polar_wn as polar_wn
from wnjax.diagonal._nets import regroup as regroup
from wnjax.diagonal._nets import relative_error as relative_error
from wnjax.diagonal._nets import sparse_problem as sparse_problem
from wnjax.diagonal._nets import uv_products as uv_products
from wnjax.diagonal._nets import uv_ratio as uv_ratio
from wnjax.diagonal._polar import PolarRates as PolarRates
from wnjax.diagonal._polar import polar_rates as polar_rates
from wnjax.diagonal._polar import polar_sgd as polar_sgd
from wnjax.diagonal._sparse import l1_interpolator as l1_interpolator
from wnjax.diagonal._sparse import min_l2_interpolator as min_l2_interpolator
from wnjax.diagonal._sparse import q_alpha as q_alpha
from wnjax.diagonal._sparse import q_alpha_interpolator as q_alpha_interpolator

__all__ = [
    "DiagonalNet",
    "PolarRates",
    "coordinate_wn",
    "effective_alpha",
    "invariant_spread",
    "l1_interpolator",
    "min_l2_interpolator",
    "net",
    "polar_rates",
    "polar_sgd",
    "polar_wn",
    "q_alpha",
    "q_alpha_interpolator",
    "regroup",
    "relative_error",
    "signal",
    "sparse_problem",
    "uv_products",
    "uv_ratio",
]
