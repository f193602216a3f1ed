"""Gradient flow from small initialization: escape from the origin along a KKT direction of the
neural correlation function (NCF), plateaus, and the reduced network after escape.

- **the NCF**: ``neural_correlation``, ``trainable_degree``, ``kkt_residual``, ``KKTPoint``,
  ``ncf_kkt_point``, ``SecondOrder``, ``ncf_second_order``;
- **escape and plateaus**: ``escape_time``, ``flow_escape_time``, ``crossing_time``,
  ``fit_escape_scaling``, ``Plateau``, ``find_plateaus``, ``log_save_times``;
- **after escape**: ``SupportMask``, ``ReducedNetwork``, ``reduced_network``,
  ``direction_cosines``, ``unit_norms``, ``scale_to_norm``;
- **one call**: ``Diagnostics``, ``diagnostics``; data: ``relu2_teacher_data``.
"""

from wnjax.small_init._dynamics import Plateau as Plateau
from wnjax.small_init._dynamics import ReducedNetwork as ReducedNetwork
from wnjax.small_init._dynamics import SmallInitDiagnostics as Diagnostics
from wnjax.small_init._dynamics import SupportMask as SupportMask
from wnjax.small_init._dynamics import crossing_time as crossing_time
from wnjax.small_init._dynamics import direction_cosines as direction_cosines
from wnjax.small_init._dynamics import escape_time as escape_time
from wnjax.small_init._dynamics import find_plateaus as find_plateaus
from wnjax.small_init._dynamics import fit_escape_scaling as fit_escape_scaling
from wnjax.small_init._dynamics import flow_escape_time as flow_escape_time
from wnjax.small_init._dynamics import log_save_times as log_save_times
from wnjax.small_init._dynamics import reduced_network as reduced_network
from wnjax.small_init._dynamics import relu2_teacher_data as relu2_teacher_data
from wnjax.small_init._dynamics import scale_to_norm as scale_to_norm
from wnjax.small_init._dynamics import small_init_diagnostics as diagnostics
from wnjax.small_init._dynamics import unit_norms as unit_norms
from wnjax.small_init._ncf import KKTPoint as KKTPoint
from wnjax.small_init._ncf import SecondOrder as SecondOrder
from wnjax.small_init._ncf import kkt_residual as kkt_residual
from wnjax.small_init._ncf import ncf_kkt_point as ncf_kkt_point
from wnjax.small_init._ncf import ncf_second_order as ncf_second_order
from wnjax.small_init._ncf import neural_correlation as neural_correlation
from wnjax.small_init._ncf import trainable_degree as trainable_degree

__all__ = [
    "Diagnostics",
    "KKTPoint",
    "Plateau",
    "ReducedNetwork",
    "SecondOrder",
    "SupportMask",
    "crossing_time",
    "diagnostics",
    "direction_cosines",
    "escape_time",
    "find_plateaus",
    "fit_escape_scaling",
    "flow_escape_time",
    "kkt_residual",
    "log_save_times",
    "ncf_kkt_point",
    "ncf_second_order",
    "neural_correlation",
    "reduced_network",
    "relu2_teacher_data",
    "scale_to_norm",
    "trainable_degree",
    "unit_norms",
]
