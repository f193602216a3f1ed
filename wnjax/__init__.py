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
from ._flow import default_solver as default_solver
from ._flow import gradient_flow as gradient_flow
from ._save import AtLossLevels as AtLossLevels
from ._save import AtTimes as AtTimes
from ._save import LogSpaced as LogSpaced
from ._solver.auto import AutoSwitch as AutoSwitch
from ._solver.stiff import stiff_solver as stiff_solver
from ._flow import summaries as summaries
from ._transforms import neuron_rate_sgd as neuron_rate_sgd
from ._transforms import scale_by_neuron_norm_sq as scale_by_neuron_norm_sq

# --- equivalence ---
from ._equivalence import equivalence_check as equivalence_check
from ._equivalence import flow_equivalence as flow_equivalence
from ._equivalence import gd_equivalence as gd_equivalence

# --- asymptotics: schedules and diagnostics ---
from ._diagnostics import alignment as alignment
from ._diagnostics import asymptotic_summaries as asymptotic_summaries
from ._diagnostics import count_neurons_above as count_neurons_above
from ._diagnostics import approximate_kkt_residual as approximate_kkt_residual
from ._diagnostics import log_neuron_gradient_norms as log_neuron_gradient_norms
from ._diagnostics import loss_direction as loss_direction
from ._diagnostics import loss_rate_exponents as loss_rate_exponents
from ._diagnostics import normalized_margin as normalized_margin
from ._diagnostics import relation_residuals as relation_residuals
from ._diagnostics import relative_neuron_norms as relative_neuron_norms
from ._flow import loss_levels as loss_levels
from ._schedules import loss_normalized_sgd as loss_normalized_sgd

# --- data and experiments ---
from ._data import conv_rate_data as conv_rate_data
from ._data import digits as digits
from ._data import lin_sep as lin_sep
from ._data import load_mnist as load_mnist
from ._data import mnist as mnist
from ._data import read_idx as read_idx
from ._data import train_test_split as train_test_split
from ._data import xor as xor
from ._experiments.simple_traj import CoordinateLinear as CoordinateLinear
from ._reproduce import experiment_options as experiment_options
from ._reproduce import reproduce as reproduce
from ._reproduce import show_run as show_run

# --- diagonal nets ---
from ._diagonal import DiagonalNet as DiagonalNet
from ._diagonal import coordinate_wn as coordinate_wn
from ._diagonal import diagonal_net as diagonal_net
from ._diagonal import diagonal_signal as diagonal_signal
from ._diagonal import effective_alpha as effective_alpha
from ._diagonal import invariant_spread as invariant_spread
from ._diagonal import polar_wn as polar_wn
from ._diagonal import regroup as regroup
from ._diagonal import relative_error as relative_error
from ._diagonal import sparse_problem as sparse_problem
from ._diagonal import uv_products as uv_products
from ._diagonal import uv_ratio as uv_ratio
from ._polar import PolarRates as PolarRates
from ._polar import polar_rates as polar_rates
from ._polar import polar_sgd as polar_sgd
from ._sparse import l1_interpolator as l1_interpolator
from ._sparse import min_l2_interpolator as min_l2_interpolator
from ._sparse import q_alpha as q_alpha
from ._sparse import q_alpha_interpolator as q_alpha_interpolator

# --- linear tensor networks ---
from ._tensor import ConvolutionTensor as ConvolutionTensor
from ._tensor import DataTensor as DataTensor
from ._tensor import DenseTensor as DenseTensor
from ._tensor import DiagonalTensor as DiagonalTensor
from ._tensor import FullyConnectedTensor as FullyConnectedTensor
from ._tensor import OdecoTensor as OdecoTensor
from ._tensor import TensorNetwork as TensorNetwork
from ._tensor import circular_convolution as circular_convolution
from ._tensor import convolutional_tensor_net as convolutional_tensor_net
from ._tensor import diagonal_tensor_net as diagonal_tensor_net
from ._tensor import diagonal_regression_init as diagonal_regression_init
from ._tensor import fourier_features as fourier_features
from ._tensor import fourier_regression_init as fourier_regression_init
from ._tensor import fourier_rho as fourier_rho
from ._tensor import fully_connected_tensor_net as fully_connected_tensor_net
from ._tensor import fully_connected_regression_init as fully_connected_regression_init
from ._tensor import linear_predictor as linear_predictor
from ._tensor import odeco_tensor_net as odeco_tensor_net
from ._tensor import odeco_to_diagonal as odeco_to_diagonal
from ._tensor import tensor_network as tensor_network
from ._tensor import transformed_rho as transformed_rho
from ._tensor_predict import group_max_margin as group_max_margin
from ._tensor_predict import tensor_kkt_residual as tensor_kkt_residual
from ._tensor_predict import l1_max_margin as l1_max_margin
from ._tensor_predict import regression_link as regression_link
from ._tensor_predict import tensor_margin as tensor_margin
from ._tensor_predict import min_norm_interpolant as min_norm_interpolant
from ._tensor_predict import regression_limit as regression_limit

# --- small initialization ---
from ._ncf import KKTPoint as KKTPoint
from ._ncf import SecondOrder as SecondOrder
from ._ncf import kkt_residual as kkt_residual
from ._ncf import ncf_kkt_point as ncf_kkt_point
from ._ncf import ncf_second_order as ncf_second_order
from ._ncf import neural_correlation as neural_correlation
from ._ncf import trainable_degree as trainable_degree
from ._small_init import Plateau as Plateau
from ._small_init import ReducedNetwork as ReducedNetwork
from ._small_init import SmallInitDiagnostics as SmallInitDiagnostics
from ._small_init import SupportMask as SupportMask
from ._small_init import crossing_time as crossing_time
from ._small_init import direction_cosines as direction_cosines
from ._small_init import escape_time as escape_time
from ._small_init import find_plateaus as find_plateaus
from ._small_init import flow_escape_time as flow_escape_time
from ._small_init import fit_escape_scaling as fit_escape_scaling
from ._small_init import log_save_times as log_save_times
from ._small_init import reduced_network as reduced_network
from ._small_init import relu2_teacher_data as relu2_teacher_data
from ._small_init import scale_to_norm as scale_to_norm
from ._small_init import small_init_diagnostics as small_init_diagnostics
from ._small_init import unit_norms as unit_norms

# --- sweeps ---
from ._batched import traced_gradient_descent as traced_gradient_descent
from ._store import Store as Store
from ._store import StoreMismatch as StoreMismatch
from ._sweep import SweepResult as SweepResult
from ._sweep import plot_bands as plot_bands
from ._sweep import split_grid as split_grid
from ._sweep import sweep as sweep

__version__ = "0.1.0"
