"""Linear tensor networks ``f(x) = M(x)(v_1, ..., v_L)`` (Yun, Krishnan, Mobahi 2021; docs/theory.md
§6).

The data tensor ``M(x)`` is linear in ``x``; the parameters ``v_l`` are the weights of bias-free
``eqx.nn.Linear`` layers, so ``wnjax.ewn``/``swn``, the flow and the GD runners apply unchanged.
Special cases (each ``DataTensor`` contracts ``M(x)`` with the ``v_l`` without forming it):

- fully connected: ``f(x) = w_L^T W_{L-1} ... W_1 x`` (rows of ``W_l`` are neurons);
- diagonal: ``f(x) = (x o w_1 o ... o w_{L-1})^T w_L`` (each ``w_l`` is one neuron);
- circular 1-D convolution with full-length filters:
  ``f(x) = (x * w_1 * ... * w_{L-1})^T w_L``, computed with the FFT;
- orthogonally decomposable (odeco): ``M(x) = sum_j [Sx]_j U_1[:, j] x ... x U_L[:, j]``, so
  ``f(x) = (Sx)^T rho`` with ``rho_j = prod_l [U_l^T v_l]_j``: a diagonal net on ``Sx``;
- dense: an explicit tensor ``T`` of shape ``(d, k_1, ..., k_L)``, ``M(x) = T x_0 x``.

The convolution is odeco over the complex numbers (derived): with the unitary DFT ``F``,
``a_l = F w_l`` and ``z = d^{(L-2)/2} sqrt(d) F x``,
``f(x) = Re sum_j conj(z_j) rho_j`` with ``rho_j = conj(a_{1j} ... a_{L-1,j}) a_{Lj}``.
In real coordinates (``Re``, ``Im`` stacked) each frequency is a group of two numbers and the
product is complex multiplication; ``fourier_features`` and ``fourier_rho`` give this form.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from wnjax._nets.parameterize import to_standard
from wnjax._runtime.errors import InvalidInput


class Constant:
    """A fixed numpy array kept out of the trainable pytree (compared and hashed by value)."""

    def __init__(self, value):
        self.value = np.asarray(value, dtype=np.float64)
        self._hash = hash((self.value.shape, self.value.tobytes()))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, Constant) and np.array_equal(self.value, other.value)

    def __repr__(self) -> str:
        return f"Constant(shape={self.value.shape})"

    def array(self, dtype) -> Array:
        return jnp.asarray(self.value, dtype)


class DataTensor(eqx.Module):
    """The data tensor ``M(x)`` of a linear tensor network, contracted with ``v_1, ..., v_L``."""

    @property
    @abc.abstractmethod
    def weight_shapes(self) -> tuple[tuple[int, int], ...]:
        """Shape ``(out, in)`` of the ``eqx.nn.Linear`` weight holding each ``v_l``."""

    @abc.abstractmethod
    def contract(self, x: Array, weights: Sequence[Array]) -> Array:
        """``M(x)(v_1, ..., v_L)`` for one example ``x``: a scalar."""

    @property
    def depth(self) -> int:
        return len(self.weight_shapes)


class FullyConnectedTensor(DataTensor):
    """``f(x) = w_L^T W_{L-1} ... W_1 x``; ``widths = (k_1, ..., k_{L-1})``."""

    in_size: int = eqx.field(static=True)
    widths: tuple[int, ...] = eqx.field(static=True)

    @property
    def weight_shapes(self):
        sizes = (self.in_size, *self.widths, 1)
        return tuple((sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1))

    def contract(self, x, weights):
        h = x
        for w in weights:
            h = w @ h
        return h[0]


class DiagonalTensor(DataTensor):
    """``f(x) = sum_j x_j w_{1j} ... w_{Lj}``; each ``w_l`` is one neuron of shape ``(1, d)``."""

    size: int = eqx.field(static=True)
    num_layers: int = eqx.field(static=True)

    @property
    def weight_shapes(self):
        return ((1, self.size),) * self.num_layers

    def contract(self, x, weights):
        prod = x
        for w in weights:
            prod = prod * w[0]
        return jnp.sum(prod)


def circular_convolution(a: Array, b: Array) -> Array:
    """``(a * b)_k = sum_m a_m b_{(k - m) mod d}``, via ``rfft``: ``F(a * b) = F(a) F(b)``."""
    d = a.shape[-1]
    return jnp.fft.irfft(jnp.fft.rfft(a) * jnp.fft.rfft(b), n=d)


class ConvolutionTensor(DataTensor):
    """``f(x) = (x * w_1 * ... * w_{L-1})^T w_L``: circular convolutions, full-length filters.

    All convolutions are done at once in the Fourier domain:
    ``x * w_1 * ... * w_{L-1} = irfft(rfft(x) rfft(w_1) ... rfft(w_{L-1}))``.
    """

    size: int = eqx.field(static=True)
    num_layers: int = eqx.field(static=True)

    @property
    def weight_shapes(self):
        return ((1, self.size),) * self.num_layers

    def contract(self, x, weights):
        spectrum = jnp.fft.rfft(x)
        for w in weights[:-1]:
            spectrum = spectrum * jnp.fft.rfft(w[0])
        return jnp.dot(jnp.fft.irfft(spectrum, n=self.size), weights[-1][0])


class OdecoTensor(DataTensor):
    """``M(x) = sum_j [Sx]_j U_1[:, j] x ... x U_L[:, j]``, with orthonormal columns ``U_l``.

    ``f(x) = (Sx)^T rho``, ``rho_j = prod_l [U_l^T v_l]_j``. ``S`` has shape ``(m, d)``, each
    ``U_l`` shape ``(k_l, m)`` with ``k_l >= m``.
    """

    S: Constant = eqx.field(static=True)
    Us: tuple[Constant, ...] = eqx.field(static=True)

    @property
    def weight_shapes(self):
        return tuple((1, U.value.shape[0]) for U in self.Us)

    def contract(self, x, weights):
        rho = jnp.ones(self.S.value.shape[0], x.dtype)
        for U, w in zip(self.Us, weights):
            rho = rho * (U.array(x.dtype).T @ w[0])
        return jnp.dot(self.S.array(x.dtype) @ x, rho)


class DenseTensor(DataTensor):
    """An explicit tensor ``T`` of shape ``(d, k_1, ..., k_L)``: ``f(x) = T(x, v_1, ..., v_L)``."""

    T: Constant = eqx.field(static=True)

    @property
    def weight_shapes(self):
        return tuple((1, k) for k in self.T.value.shape[1:])

    def contract(self, x, weights):
        out = jnp.tensordot(x, self.T.array(x.dtype), axes=1)
        for w in weights:
            out = jnp.tensordot(w[0], out, axes=1)
        return out


class TensorNetwork(eqx.Module):
    """A linear tensor network ``f(x) = M(x)(v_1, ..., v_L)``, called on one example.

    ``layers[l].weight`` holds ``v_l`` (shape ``tensor.weight_shapes[l]``); the output has shape
    ``()``. The net is ``L``-homogeneous in the ``v_l`` and linear in ``x``.
    """

    tensor: DataTensor
    layers: tuple[eqx.nn.Linear, ...]

    def __call__(self, x: Array) -> Array:
        return self.tensor.contract(x, [layer.weight for layer in self.layers])

    @property
    def depth(self) -> int:
        return len(self.layers)


def _linear(w: Array) -> eqx.nn.Linear:
    layer = eqx.nn.Linear(w.shape[1], w.shape[0], use_bias=False, key=jax.random.key(0))
    return eqx.tree_at(lambda lin: lin.weight, layer, jnp.asarray(w))


def tensor_network(tensor: DataTensor, weights: Sequence[Array]) -> TensorNetwork:
    """The network on ``tensor`` with parameters ``weights`` (each reshaped to its layer shape).

    **Arguments:**
    - `tensor`: a ``DataTensor`` (``FullyConnectedTensor``, ``DiagonalTensor``, ...).
    - `weights`: one array per layer, ``v_l`` of ``prod(shape)`` numbers.

    **Returns:** a ``TensorNetwork``.
    """
    shapes = tensor.weight_shapes
    if len(weights) != len(shapes):
        raise InvalidInput(
            f"the tensor has {len(shapes)} layers but {len(weights)} weights were given."
        )
    layers = []
    for l, (w, shape) in enumerate(zip(weights, shapes)):
        w = jnp.asarray(w, jnp.result_type(float))
        if w.size != shape[0] * shape[1]:
            raise InvalidInput(f"weight {l} has {w.size} numbers; layer {l} needs shape {shape}.")
        layers.append(_linear(w.reshape(shape)))
    return TensorNetwork(tensor=tensor, layers=tuple(layers))


def random_tensor_network(
    tensor: DataTensor, *, key: PRNGKeyArray, init_scale: float = 1.0
) -> TensorNetwork:
    """The network on ``tensor`` with i.i.d. ``N(0, init_scale^2 / fan_in)`` weights."""
    keys = jax.random.split(key, tensor.depth)
    dtype = jnp.result_type(float)
    weights = [
        init_scale * jax.random.normal(k, shape, dtype) / np.sqrt(shape[1] if shape[0] > 1 else 1)
        for k, shape in zip(keys, tensor.weight_shapes)
    ]
    return tensor_network(tensor, weights)


def _check_depth(depth: int) -> None:
    if depth < 2:
        raise InvalidInput(f"a tensor network needs depth L >= 2, got {depth}.")


def fully_connected_tensor_net(
    in_size: int, depth: int, width: int | Sequence[int] | None = None, *, key, init_scale=1.0
) -> TensorNetwork:
    """A random deep linear fully-connected net ``x -> w_L^T W_{L-1} ... W_1 x``.

    **Arguments:**
    - `in_size`: input dimension ``d``.
    - `depth`: number of layers ``L >= 2``.
    - `width`: hidden width(s) (default ``d``).
    - `key`, `init_scale`: ``W_l ~ N(0, init_scale^2 / fan_in)``.
    """
    _check_depth(depth)
    widths = (width or in_size,) * (depth - 1) if not isinstance(width, Sequence) else tuple(width)
    if len(widths) != depth - 1:
        raise InvalidInput(f"give depth - 1 = {depth - 1} hidden widths, got {len(widths)}.")
    return random_tensor_network(
        FullyConnectedTensor(in_size, widths), key=key, init_scale=init_scale
    )


def diagonal_tensor_net(size: int, depth: int, *, key, init_scale: float = 1.0) -> TensorNetwork:
    """A random diagonal linear net ``f(x) = (x o w_1 o ... o w_{L-1})^T w_L``."""
    _check_depth(depth)
    return random_tensor_network(DiagonalTensor(size, depth), key=key, init_scale=init_scale)


def convolutional_tensor_net(
    size: int, depth: int, *, key, init_scale: float = 1.0
) -> TensorNetwork:
    """A random linear circular-convolution net with full-length filters (see
    ``ConvolutionTensor``)."""
    _check_depth(depth)
    return random_tensor_network(ConvolutionTensor(size, depth), key=key, init_scale=init_scale)


def odeco_tensor_net(
    S, Us: Sequence, weights: Sequence[Array] | None = None, *, key=None
) -> TensorNetwork:
    """An orthogonally decomposable network with transform ``S`` and factors ``U_l``.

    **Arguments:**
    - `S`: array ``(m, d)``; the network is a diagonal net on ``Sx``.
    - `Us`: ``L`` arrays ``(k_l, m)`` with orthonormal columns.
    - `weights`: the ``v_l`` (length ``k_l`` each); or ``key`` for a random ``N(0, 1)`` draw.
    """
    S = np.asarray(S, dtype=np.float64)
    Us = [np.asarray(U, dtype=np.float64) for U in Us]
    _check_depth(len(Us))
    for l, U in enumerate(Us):
        if U.ndim != 2 or U.shape[1] != S.shape[0]:
            raise InvalidInput(f"U_{l + 1} must have shape (k, {S.shape[0]}), got {U.shape}.")
        if not np.allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-10):
            raise InvalidInput(
                f"U_{l + 1} does not have orthonormal columns (U^T U != I); orthonormalize it, "
                "e.g. with np.linalg.qr."
            )
    tensor = OdecoTensor(Constant(S), tuple(Constant(U) for U in Us))
    if weights is None:
        if key is None:
            raise InvalidInput("pass weights=... or key=... for a random draw.")
        return random_tensor_network(tensor, key=key)
    return tensor_network(tensor, weights)


def _net(model: PyTree) -> TensorNetwork:
    net = to_standard(model)
    if not isinstance(net, TensorNetwork):
        raise InvalidInput(
            f"expected a TensorNetwork (or its ewn/swn form), got {type(net).__name__}."
        )
    return net


def network_weights(model: PyTree) -> list[Array]:
    """The parameters ``v_l`` as flat vectors (of a net or its weight-normalized form)."""
    return [layer.weight.ravel() for layer in _net(model).layers]


def linear_predictor(model: PyTree) -> Array:
    """``beta`` with ``f(x) = beta^T x`` (the net is linear in ``x``): ``beta = grad_x f``."""
    net = _net(model)
    x0 = jnp.zeros(_in_size(net.tensor), net.layers[0].weight.dtype)
    return jax.grad(net)(x0)


def _in_size(tensor: DataTensor) -> int:
    if isinstance(tensor, FullyConnectedTensor):
        return tensor.in_size
    if isinstance(tensor, (DiagonalTensor, ConvolutionTensor)):
        return tensor.size
    if isinstance(tensor, OdecoTensor):
        return tensor.S.value.shape[1]
    if isinstance(tensor, DenseTensor):
        return tensor.T.value.shape[0]
    raise InvalidInput(f"unknown data tensor {type(tensor).__name__}.")


def odeco_to_diagonal(model: PyTree) -> tuple[TensorNetwork, Array]:
    """Map an odeco network to the diagonal net on ``Sx``: ``f(x) = g(Sx)``.

    ``g`` is the diagonal net with ``w_l = U_l^T v_l``. When every ``U_l`` is square (orthogonal),
    ``v_l -> U_l^T v_l`` is an isometry, so gradients map as ``grad_{v_l} f = U_l grad_{w_l} g``
    and the two gradient flows are the same path.

    **Returns:** ``(g, S)``.
    """
    net = _net(model)
    if not isinstance(net.tensor, OdecoTensor):
        raise InvalidInput(
            "odeco_to_diagonal needs a network on an OdecoTensor (build it with "
            "wnjax.tensor.odeco_net); "
            f"got {type(net.tensor).__name__}. A diagonal net is already its own transform; a "
            "convolutional net is odeco over C: use fourier_features/fourier_rho."
        )
    dtype = net.layers[0].weight.dtype
    ws = [U.array(dtype).T @ layer.weight[0] for U, layer in zip(net.tensor.Us, net.layers)]
    m = net.tensor.S.value.shape[0]
    return tensor_network(DiagonalTensor(m, len(ws)), ws), net.tensor.S.array(dtype)


def transformed_rho(model: PyTree) -> Array:
    """``rho`` of an odeco or diagonal net: ``rho_j = prod_l [U_l^T v_l]_j`` (``U_l = I`` if
    diagonal)."""
    net = _net(model)
    if isinstance(net.tensor, OdecoTensor):
        net, _ = odeco_to_diagonal(net)
    if not isinstance(net.tensor, DiagonalTensor):
        raise InvalidInput(
            f"rho is defined for odeco and diagonal nets, got {type(net.tensor).__name__}; use "
            "fourier_rho for convolutional nets and linear_predictor for fully-connected ones."
        )
    return jnp.prod(jnp.stack([layer.weight[0] for layer in net.layers]), axis=0)


def unitary_dft(x: Array) -> Array:
    """``F x = fft(x) / sqrt(d)`` along the last axis (``F`` unitary)."""
    return jnp.fft.fft(x) / np.sqrt(x.shape[-1])


def fourier_features(X: Array, depth: int) -> tuple[Array, np.ndarray]:
    """Real transformed features of a depth-``L`` convolutional net, and their groups.

    ``z = d^{(L-1)/2} F x`` (complex), stacked as ``Z = [Re z, Im z]`` of shape ``(n, 2d)``, so
    that ``f(x) = Z rho`` with ``rho = fourier_rho(net)``. Group ``j`` is ``(j, d + j)``: the
    complex number of frequency ``j``.

    **Returns:** ``(Z, groups)``, ``groups`` an int array of shape ``(2d,)`` (the group of each
    coordinate).
    """
    X = jnp.asarray(X)
    d = X.shape[-1]
    z = d ** ((depth - 1) / 2) * unitary_dft(X)
    return jnp.concatenate([z.real, z.imag], axis=-1), np.concatenate([np.arange(d)] * 2)


def fourier_rho(model: PyTree) -> Array:
    """``rho_j = conj(a_{1j} ... a_{L-1,j}) a_{Lj}``, ``a_l = F w_l``, stacked as ``[Re, Im]``.

    ``sqrt(sum of squares)`` of a group is ``|rho_j| = prod_l |a_{lj}|``.
    """
    net = _net(model)
    if not isinstance(net.tensor, ConvolutionTensor):
        raise InvalidInput(
            f"fourier_rho needs a convolutional net, got {type(net.tensor).__name__}."
        )
    a = [unitary_dft(layer.weight[0]) for layer in net.layers]
    rho = a[-1]
    for al in a[:-1]:
        rho = rho * jnp.conj(al)
    return jnp.concatenate([rho.real, rho.imag])


def fourier_regression_init(
    size: int, depth: int, alpha: float, nu: Array | None = None
) -> TensorNetwork:
    """Convolutional net with ``F w_l(0) = alpha nu`` (``l < L``) and ``w_L(0) = 0``.

    ``nu`` must be symmetric (``nu_j = nu_{d-j}``) so that the filters are real; default ones.
    """
    nu = np.ones(size) if nu is None else np.asarray(nu, dtype=np.float64)
    if not np.allclose(nu, np.roll(nu[::-1], 1)):
        raise InvalidInput(
            "nu must satisfy nu_j = nu_{(d - j) mod d} so that the filters are real."
        )
    w = np.real(np.fft.ifft(alpha * nu) * np.sqrt(size))
    return tensor_network(ConvolutionTensor(size, depth), [w] * (depth - 1) + [np.zeros(size)])


def diagonal_regression_init(size: int, depth: int, alpha: float, nu=None) -> TensorNetwork:
    """Diagonal net with ``w_l(0) = alpha nu`` (``l < L``) and ``w_L(0) = 0`` (docs/theory.md
    §6)."""
    nu = np.ones(size) if nu is None else np.asarray(nu, dtype=np.float64)
    return tensor_network(
        DiagonalTensor(size, depth), [alpha * nu] * (depth - 1) + [np.zeros(size)]
    )


def fully_connected_regression_init(
    in_size: int, depth: int, alpha: float, width: int | None = None, *, key
) -> TensorNetwork:
    """Fully-connected net with ``W_l(0) = alpha G_l``, ``G_l ~ N(0, 1/fan_in)`` (``l < L``), and
    ``w_L(0) = 0``: small init as ``alpha -> 0``.

    (An orthogonal ``G_l`` would keep ``beta`` in the row space of ``X`` exactly, for every
    ``alpha``; a Gaussian one leaves an ``alpha``-dependent part outside it.)
    """
    _check_depth(depth)
    width = width or in_size
    sizes = (in_size,) + (width,) * (depth - 1)
    keys = jax.random.split(key, depth - 1)
    dtype = jnp.result_type(float)
    ws = [
        alpha * jax.random.normal(k, (n_out, n_in), dtype) / np.sqrt(n_in)
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])
    ]
    ws.append(jnp.zeros((1, width), dtype))
    return tensor_network(FullyConnectedTensor(in_size, (width,) * (depth - 1)), ws)
