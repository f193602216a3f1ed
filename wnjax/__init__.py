"""wnjax: implicit bias of gradient flow and descent on weight-normalized homogeneous nets.

Data flow: model (``MLP``, ``CNN``, any bias-free equinox net) -> parameterization (``ewn``,
``swn``, ``standard``) -> loss (``Exponential``, ...) -> dynamics (``gradient_flow``,
``gradient_descent``) -> diagnostics -> experiments and sweeps.
"""

# --- models ---
from ._models import CNN as CNN
from ._models import MLP as MLP
from ._models import Identity as Identity
from ._models import ReLUPower as ReLUPower
from ._models import homogeneity_degree as homogeneity_degree
from ._models import relu_power as relu_power
from ._neurons import neuron_norms as neuron_norms
from ._neurons import weight_layers as weight_layers

# --- parameterizations ---
from ._parameterize import EWN as EWN
from ._parameterize import SWN as SWN
from ._parameterize import Frozen as Frozen
from ._parameterize import LayerWeight as LayerWeight
from ._parameterize import Parameterized as Parameterized
from ._parameterize import Standard as Standard
from ._parameterize import ewn as ewn
from ._parameterize import parameterize as parameterize
from ._parameterize import standard as standard
from ._parameterize import swn as swn
from ._parameterize import to_standard as to_standard

# --- losses ---
from ._losses import CrossEntropy as CrossEntropy
from ._losses import Exponential as Exponential
from ._losses import Logistic as Logistic
from ._losses import Loss as Loss
from ._losses import Square as Square
from ._losses import get_loss as get_loss
from ._losses import log_loss as log_loss
from ._losses import log_softplus as log_softplus
from ._losses import margins as margins

# --- dynamics ---
from ._descent import GDFailed as GDFailed
from ._descent import GDResult as GDResult
from ._descent import gradient_descent as gradient_descent
from ._flow import FlowFailed as FlowFailed
from ._flow import FlowResult as FlowResult
from ._flow import gradient_flow as gradient_flow
from ._flow import summaries as summaries
from ._transforms import neuron_rate_sgd as neuron_rate_sgd
from ._transforms import scale_by_neuron_norm_sq as scale_by_neuron_norm_sq

# --- equivalence (issue: core) ---

# --- asymptotics: schedules and diagnostics (issue: asymptotic regime) ---

# --- data and experiments (issue: reproductions) ---
from ._data import lin_sep as lin_sep

# --- diagonal nets (issue: diagonal WN) ---

# --- linear tensor networks (issue: tensor nets) ---

# --- small initialization (issue: small init) ---

# --- sweeps (issue: sweeps) ---

__version__ = "0.1.0"
