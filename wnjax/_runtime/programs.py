"""Traced programs kept on disk under a key that names them: a warm run loads them without
tracing.

JAX's persistent compilation cache (``wnjax._runtime.cache``) keys a program by its lowered
text, so even a hit traces and lowers it first: ~0.4-0.7 s for one of GD's vmapped chunk
programs on a 2-core CPU, most of a warm reproduction's fixed cost. ``compiled(fn, args,
key=...)`` keeps the traced, lowered program (``jax.export``, StableHLO) under a key made of

- ``key``: the caller's name for ``fn`` and everything it closes over (strings, numbers,
  booleans, ``None`` and tuples of them);
- the arguments: each array's shape, dtype and weak type, the tree structure (with the static
  fields of equinox modules) and the ``repr`` of every other leaf, memory addresses removed;
- wnjax's source (a digest of every module of the installed package), the JAX and jaxlib
  versions, the backend, its platform version and devices, ``XLA_FLAGS`` and every value of
  JAX's configuration.

A change to any of these misses (and traces again); so the caller need only name what the
arguments and wnjax's source do not show: a closure's values, code from outside wnjax. XLA's
compilation of a kept program goes through JAX's persistent cache like any other. Entries live
in ``programs/`` beside JAX's own entries, only while that cache is on (``directory()``); they
are written atomically, and one that cannot be read or does not fit its arguments is traced
again and replaced. A program that ``jax.export`` cannot serialize (one with host callbacks,
say) is compiled but not kept. Entries are unpickled when read: like JAX's own cache, the
directory must be one only you can write to.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import re
from collections.abc import Callable
from typing import Any

SUBDIR = "programs"
VERSION = "1"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]+")
_KEY_TYPES = (str, int, float, bool, type(None))


def directory() -> str | None:
    """Where programs are kept: ``programs/`` in JAX's persistent cache directory; ``None``
    (keep nothing) when that cache is off."""
    import jax

    if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
        return None
    return os.path.join(jax.config.jax_compilation_cache_dir, SUBDIR)


@functools.cache
def source_digest() -> str:
    """SHA-256 of every ``.py`` file of the installed ``wnjax`` package (paths and contents)."""
    import wnjax

    root = os.path.dirname(os.path.abspath(wnjax.__file__))
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _check_key(key) -> None:
    if isinstance(key, tuple):
        for k in key:
            _check_key(k)
    elif not isinstance(key, _KEY_TYPES):
        raise TypeError(
            f"a program key is made of str, int, float, bool, None and tuples; got {key!r} "
            f"({type(key).__name__}). Name the object by the settings that define it."
        )


def _environment() -> str:
    import jax
    import jaxlib

    client = jax.devices()[0].client
    devices = [(d.platform, d.device_kind, d.id) for d in jax.devices()]
    return repr(
        (
            VERSION,
            source_digest(),
            jax.__version__,
            jaxlib.__version__,
            client.platform,
            client.platform_version,
            devices,
            os.environ.get("XLA_FLAGS", ""),
            sorted(jax.config.values.items()),
        )
    )


def _split(args: tuple):
    """``(leaves, treedef, static)``: the array leaves of ``args`` and the rest."""
    import equinox as eqx
    import jax

    dynamic, static = eqx.partition(args, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten(dynamic)
    return leaves, treedef, static


def digest(key, args: tuple) -> str:
    """The hex key of ``fn(*args)``'s program under the caller's ``key`` (see the module)."""
    return _digest(key, *_split(args))


def _digest(key, leaves, treedef, static) -> str:
    import jax

    _check_key(key)
    avals = [(x.shape, str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves]
    values, structure = jax.tree_util.tree_flatten(static)
    text = repr((key, avals, str(treedef), str(structure), [repr(v) for v in values]))
    return hashlib.sha256((_ADDRESS.sub("", text) + _environment()).encode()).hexdigest()


class _Pickler(pickle.Pickler):
    """Pickles a tree structure, with equinox's ``MISSING`` sentinel by identity."""

    def persistent_id(self, obj):
        from equinox._module._flatten import MISSING

        return "equinox.MISSING" if obj is MISSING else None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        from equinox._module._flatten import MISSING

        if pid == "equinox.MISSING":
            return MISSING
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _dumps(obj) -> bytes:
    with io.BytesIO() as f:
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return f.getvalue()


def _loads(data: bytes):
    return _Unpickler(io.BytesIO(data)).load()


def _store(path: str, exported, out_tree) -> bool:
    """Write the exported program and its output structure to ``path`` atomically; ``False``
    when they cannot be kept."""
    from wnjax._sweeps.store import atomic_write_bytes

    try:
        tree = _dumps(out_tree)
        if _loads(tree) != out_tree:
            return False
        data = pickle.dumps((tree, bytes(exported.serialize())), pickle.HIGHEST_PROTOCOL)
        atomic_write_bytes(path, data)
        return True
    except Exception:  # a program that cannot be serialized, or no room: not kept
        return False


def _load(path: str):
    """``(exported, out_tree)`` stored at ``path``; ``None`` when there is none or it cannot be
    read."""
    from jax import export

    try:
        with open(path, "rb") as f:
            tree, payload = pickle.load(f)
        return export.deserialize(bytearray(payload)), _loads(tree)
    except Exception:
        return None


class Program:
    """A compiled ``fn``, called with arguments like those it was made for: ``program(*args)``
    is ``fn(*args)``. `loaded`: it came from disk (``fn`` was not traced)."""

    def __init__(self, executable, treedef, out_tree, loaded: bool):
        self._executable = executable
        self._treedef = treedef
        self._out_tree = out_tree
        self.loaded = loaded

    def __call__(self, *args) -> Any:
        import jax

        leaves, treedef, _ = _split(args)
        if treedef != self._treedef:
            raise TypeError(f"arguments of another structure than the program's: {treedef}")
        return jax.tree_util.tree_unflatten(self._out_tree, self._executable(*leaves))


def compiled(fn: Callable, args: tuple, *, key) -> Program:
    """``fn``'s compiled program for arguments like ``args``: loaded from disk when a run with
    the same key (see the module) stored it, else traced, exported (``jax.export``) and stored.
    Either way XLA compiles it through JAX's persistent cache.

    **Arguments:**
    - `fn`: a function of ``*args``; its array arguments are traced, everything else is static.
    - `args`: the arguments (a tuple of pytrees), as they will be passed.
    - `key`: names ``fn`` and what it closes over (str, int, float, bool, None, tuples).

    **Returns:** a ``Program``.
    """
    import jax
    from jax import export

    leaves, treedef, static = _split(args)
    folder = directory()
    path = (
        os.path.join(folder, _digest(key, leaves, treedef, static) + ".program") if folder else None
    )
    stored = _load(path) if path is not None and os.path.exists(path) else None
    if stored is not None:
        exported, out_tree = stored
        try:
            executable = jax.jit(exported.call).lower(*leaves).compile()
            return Program(executable, treedef, out_tree, loaded=True)
        except Exception:  # an entry that does not fit after all: traced again, replaced
            pass
    out = []

    def flat(*leaves):
        import equinox as eqx

        y = fn(*eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static))
        y, out_tree = jax.tree_util.tree_flatten(y)
        out.append(out_tree)
        return y

    try:
        exported = export.export(jax.jit(flat))(*leaves)
    except Exception:  # not exportable (host callbacks, say): compiled, not kept
        executable = jax.jit(flat).lower(*leaves).compile()  # (the trace may be reused)
        return Program(executable, treedef, out[-1], loaded=False)
    if path is not None:
        _store(path, exported, out[0])
    executable = jax.jit(exported.call).lower(*leaves).compile()
    return Program(executable, treedef, out[0], loaded=False)
