"""The data sets of the experiments: synthetic sets, scikit-learn's digits and MNIST (IDX).

``lin_sep``, ``xor``, ``conv_rate`` (synthetic), ``digits``, ``mnist``, ``load_mnist``,
``read_idx``, ``train_test_split``.
"""

from wnjax.data._sets import conv_rate_data as conv_rate
from wnjax.data._sets import digits as digits
from wnjax.data._sets import lin_sep as lin_sep
from wnjax.data._sets import load_mnist as load_mnist
from wnjax.data._sets import mnist as mnist
from wnjax.data._sets import read_idx as read_idx
from wnjax.data._sets import train_test_split as train_test_split
from wnjax.data._sets import xor as xor

__all__ = [
    "conv_rate",
    "digits",
    "lin_sep",
    "load_mnist",
    "mnist",
    "read_idx",
    "train_test_split",
    "xor",
]
