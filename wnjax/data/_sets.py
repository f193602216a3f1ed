"""Data sets of the experiments: synthetic problems generated from an explicit key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from wnjax._runtime.errors import InvalidInput


def lin_sep(key: PRNGKeyArray) -> tuple[Array, Array]:
    """The lin-sep problem of Exp-WN (docs/theory.md §4): 4 points in R^2.

    Support points ``(1, 1)`` with ``y = -1`` and ``(-1, 1)`` with ``y = +1``, plus one point per
    class, uniform in ``[a, b]^2`` (``y = -1``) and ``[-b, -a]^2`` (``y = +1``), where
    ``a ~ U(1, 1.5)`` and ``b ~ U(1.5, 2)``.

    **Returns:** ``X`` of shape ``(4, 2)`` and ``y`` of shape ``(4,)`` in ``{-1, +1}``.
    """
    k_a, k_b, k_neg, k_pos = jax.random.split(key, 4)
    dtype = jnp.result_type(float)
    a = jax.random.uniform(k_a, (), dtype, 1.0, 1.5)
    b = jax.random.uniform(k_b, (), dtype, 1.5, 2.0)
    neg = jax.random.uniform(k_neg, (2,), dtype, a, b)
    pos = -jax.random.uniform(k_pos, (2,), dtype, a, b)
    X = jnp.stack([jnp.array([1.0, 1.0], dtype), jnp.array([-1.0, 1.0], dtype), neg, pos])
    y = jnp.array([-1.0, 1.0, -1.0, 1.0], dtype)
    return X, y


def xor() -> tuple[Array, Array]:
    """The 4 XOR points ``(+-1, +-1)`` with ``y = -x_1 x_2`` (docs/theory.md §4, XOR).

    **Returns:** ``X`` of shape ``(4, 2)`` and ``y`` of shape ``(4,)`` in ``{-1, +1}``.
    """
    dtype = jnp.result_type(float)
    X = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype)
    return X, -X[:, 0] * X[:, 1]


def conv_rate_data(key: PRNGKeyArray, n: int = 20) -> tuple[Array, Array]:
    """The conv-rate problem of Exp-WN (docs/theory.md §4): ``n`` separable points in R^2.

    Support points ``(1, 1)`` with ``y = -1`` and ``(-1, 1)`` with ``y = +1``; the other
    ``n - 2`` points split evenly, uniform in ``[1.5, 2]^2`` (``y = -1``) and ``[-2, -1.5]^2``
    (``y = +1``).

    **Returns:** ``X`` of shape ``(n, 2)`` and ``y`` of shape ``(n,)``.
    """
    if n < 4 or n % 2:
        raise InvalidInput(
            f"n must be even and at least 4 (two support points per class), got {n}."
        )
    dtype = jnp.result_type(float)
    m = (n - 2) // 2
    k_neg, k_pos = jax.random.split(key)
    neg = jax.random.uniform(k_neg, (m, 2), dtype, 1.5, 2.0)
    pos = -jax.random.uniform(k_pos, (m, 2), dtype, 1.5, 2.0)
    X = jnp.concatenate([jnp.array([[1.0, 1.0], [-1.0, 1.0]], dtype), neg, pos])
    y = jnp.concatenate([jnp.array([-1.0, 1.0], dtype), -jnp.ones(m, dtype), jnp.ones(m, dtype)])
    return X, y


def train_test_split(
    key: PRNGKeyArray, X, y, test_fraction: float = 0.3
) -> tuple[Array, Array, Array, Array]:
    """Split ``(X, y)`` into train and test sets by a permutation drawn from ``key``.

    **Returns:** ``X_train, y_train, X_test, y_test``; the test set holds
    ``round(test_fraction n)`` points.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInput(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    n = len(X)
    perm = np.asarray(jax.random.permutation(key, n))
    n_test = int(round(test_fraction * n))
    test, train = perm[:n_test], perm[n_test:]
    X, y = np.asarray(X), np.asarray(y)
    return jnp.asarray(X[train]), jnp.asarray(y[train]), jnp.asarray(X[test]), jnp.asarray(y[test])


def digits(key: PRNGKeyArray, test_fraction: float = 0.3):
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split into train and test.

    Pixels are scaled from ``0..16`` to ``[0, 1]`` and flattened to 64 features.

    **Returns:** ``X_train, y_train, X_test, y_test`` (labels are class indices).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    X = np.asarray(data.data, dtype=np.float64) / 16.0
    return train_test_split(key, X.astype(jnp.result_type(float)), data.target, test_fraction)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (plain or gzip), the format of the MNIST distribution.

    Layout: two zero bytes, a type code (``0x08`` unsigned byte, ...), the number of dimensions
    ``d``, then ``d`` big-endian int32 sizes, then the data.

    **Returns:** a NumPy array of the stored shape. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` for a corrupt one (bad gzip stream, bad magic number, wrong length).
    """
    import gzip
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file {path!r} does not exist.")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path!r} is a corrupt gzip file: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise InvalidInput(
            f"{path!r} is not an IDX file: its magic number is {raw[:4].hex() or 'missing'} "
            "(expected 0000 then a type code such as 08 and the number of dimensions)."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path!r} is truncated inside its IDX header.")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path!r} is corrupt: its header says shape {shape} ({expected} bytes in all) but "
            f"the file holds {len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _find_idx(data_dir: str, stem: str) -> str:
    import os

    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"no {stem}[.gz] in {data_dir!r}. Download the MNIST IDX files (for example "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz) into that folder."
    )


def load_mnist(data_dir: str, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images and labels of one split (``'train'`` or ``'t10k'``) from IDX files in
    ``data_dir``.

    Reads ``{split}-images-idx3-ubyte[.gz]`` (magic 2051) and ``{split}-labels-idx1-ubyte[.gz]``
    (magic 2049) and checks that they agree.

    **Returns:** ``images`` of shape ``(n, 28, 28)`` (``uint8``) and ``labels`` of shape
    ``(n,)`` (``uint8``, 0..9).
    """
    if split not in ("train", "t10k"):
        raise InvalidInput(f"split must be 'train' or 't10k', got {split!r}.")
    images_path = _find_idx(data_dir, f"{split}-images-idx3-ubyte")
    labels_path = _find_idx(data_dir, f"{split}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise InvalidInput(
            f"{images_path!r} should hold uint8 images (n, rows, cols), got {images.shape}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InvalidInput(
            f"{labels_path!r} holds {labels.shape} labels for {images.shape[0]} images."
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path!r} has labels above 9: not MNIST.")
    return images, labels


def mnist(key: PRNGKeyArray, data_dir: str, test_fraction: float = 1 / 6):
    """MNIST from ``data_dir`` as flat features in ``[0, 1]``, with a train/test split.

    If the training files are there, train on them and test on ``t10k``; otherwise split the
    10,000 ``t10k`` images into train and test with ``test_fraction``.

    **Returns:** ``X_train, y_train, X_test, y_test, note`` where ``note`` says which split ran.
    """
    dtype = jnp.result_type(float)

    def flat(images):
        return (images.reshape(images.shape[0], -1) / 255.0).astype(dtype)

    test_images, test_labels = load_mnist(data_dir, "t10k")
    try:
        train_images, train_labels = load_mnist(data_dir, "train")
    except FileNotFoundError:
        out = train_test_split(key, flat(test_images), test_labels.astype(np.int32), test_fraction)
        note = (
            f"MNIST test set only (no training files in {data_dir!r}): its {len(test_images)} "
            f"images split into {out[0].shape[0]} train / {out[2].shape[0]} test"
        )
        return (*out, note)
    return (
        jnp.asarray(flat(train_images)),
        jnp.asarray(train_labels.astype(np.int32)),
        jnp.asarray(flat(test_images)),
        jnp.asarray(test_labels.astype(np.int32)),
        "MNIST train (60,000) / t10k (10,000)",
    )
