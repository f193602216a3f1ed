"""Linear tensor networks: ``f(x) = <rho(theta), x>`` for a tensor-network predictor ``rho``.

- **networks**: ``TensorNetwork``, ``network``, ``fully_connected_net``, ``diagonal_net``,
  ``convolutional_net``, ``odeco_net``, and their tensors ``DataTensor``, ``DenseTensor``,
  ``FullyConnectedTensor``, ``DiagonalTensor``, ``ConvolutionTensor``, ``OdecoTensor``;
- **predictors**: ``linear_predictor``, ``transformed_rho``, ``fourier_rho``,
  ``fourier_features``, ``circular_convolution``, ``odeco_to_diagonal``;
- **regression inits**: ``fully_connected_regression_init``, ``diagonal_regression_init``,
  ``fourier_regression_init``;
- **predicted limits**: ``margin``, ``kkt_residual``, ``l1_max_margin``, ``group_max_margin``,
  ``min_norm_interpolant``, ``regression_limit``, ``regression_link``.
"""

from wnjax.tensor._nets import ConvolutionTensor as ConvolutionTensor
from wnjax.tensor._nets import DataTensor as DataTensor
from wnjax.tensor._nets import DenseTensor as DenseTensor
from wnjax.tensor._nets import DiagonalTensor as DiagonalTensor
from wnjax.tensor._nets import FullyConnectedTensor as FullyConnectedTensor
from wnjax.tensor._nets import OdecoTensor as OdecoTensor
from wnjax.tensor._nets import TensorNetwork as TensorNetwork
from wnjax.tensor._nets import circular_convolution as circular_convolution
from wnjax.tensor._nets import convolutional_tensor_net as convolutional_net
from wnjax.tensor._nets import diagonal_regression_init as diagonal_regression_init
from wnjax.tensor._nets import diagonal_tensor_net as diagonal_net
from wnjax.tensor._nets import fourier_features as fourier_features
from wnjax.tensor._nets import fourier_regression_init as fourier_regression_init
from wnjax.tensor._nets import fourier_rho as fourier_rho
from wnjax.tensor._nets import fully_connected_regression_init as fully_connected_regression_init
from wnjax.tensor._nets import fully_connected_tensor_net as fully_connected_net
from wnjax.tensor._nets import linear_predictor as linear_predictor
from wnjax.tensor._nets import odeco_tensor_net as odeco_net
from wnjax.tensor._nets import odeco_to_diagonal as odeco_to_diagonal
from wnjax.tensor._nets import tensor_network as network
from wnjax.tensor._nets import transformed_rho as transformed_rho
from wnjax.tensor._predict import group_max_margin as group_max_margin
from wnjax.tensor._predict import l1_max_margin as l1_max_margin
from wnjax.tensor._predict import min_norm_interpolant as min_norm_interpolant
from wnjax.tensor._predict import regression_limit as regression_limit
from wnjax.tensor._predict import regression_link as regression_link
from wnjax.tensor._predict import tensor_kkt_residual as kkt_residual
from wnjax.tensor._predict import tensor_margin as margin

__all__ = [
    "ConvolutionTensor",
    "DataTensor",
    "DenseTensor",
    "DiagonalTensor",
    "FullyConnectedTensor",
    "OdecoTensor",
    "TensorNetwork",
    "circular_convolution",
    "convolutional_net",
    "diagonal_net",
    "diagonal_regression_init",
    "fourier_features",
    "fourier_regression_init",
    "fourier_rho",
    "fully_connected_net",
    "fully_connected_regression_init",
    "group_max_margin",
    "kkt_residual",
    "l1_max_margin",
    "linear_predictor",
    "margin",
    "min_norm_interpolant",
    "network",
    "odeco_net",
    "odeco_to_diagonal",
    "regression_limit",
    "regression_link",
    "transformed_rho",
]
