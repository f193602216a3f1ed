"""JAX's persistent compilation cache, on by default: each program is compiled once per machine.

``enable()`` runs once, when ``wnjax`` is imported. It points JAX's cache at
``$XDG_CACHE_HOME/wnjax/jax`` (``~/.cache/wnjax/jax`` when ``XDG_CACHE_HOME`` is unset) and
caches every program, however fast it compiled. The environment variable
``WNJAX_COMPILATION_CACHE`` overrides it: ``0`` (or ``false``, ``no``, ``off``) leaves the cache
off, a path puts it there. It changes nothing when JAX already has a cache directory (set with
``JAX_COMPILATION_CACHE_DIR`` or ``jax.config.update("jax_compilation_cache_dir", ...)``) or has
its cache disabled (``jax_enable_compilation_cache``): those settings, and their thresholds,
stay the user's. A directory that cannot be created or written leaves the cache off.

Why the entries stay correct across versions: JAX keys an entry by a hash of the lowered
program (its StableHLO text, so any change in wnjax's code, its options or the shapes and
dtypes it traces changes the key), the jaxlib version, the backend and its platform version,
the XLA flags (``XLA_FLAGS``, such as the forced host-device count), the compile options and
the devices' topology. Upgrading wnjax, JAX or jaxlib therefore misses and recompiles; old
entries are never read again (delete the directory to reclaim the space). An XLA:CPU entry
also records the CPU features it was compiled for and is refused, with a warning and a
recompile, on a CPU without them. JAX itself never writes a program that contains a host
callback (``jax.pure_callback``, ``jax.debug.print``), and every gradient-flow solve has one (its
check for SIGINT/SIGTERM): on CPU, ``callback_cache.install`` keeps them, under keys JAX alone
never reads (a warm ``gradient_flow`` then skips its XLA compilation, about half its first-call
time; the tracing remains).

The thresholds: JAX writes only programs that took at least
``jax_persistent_cache_min_compile_time_secs`` (default 1 s) to compile. wnjax's CLI runs
compile hundreds of small programs (start states, eager ops, random inits) of 0.01-0.5 s
each, which together take most of a short run's time, so the threshold is 0 here; a cache hit
costs a file read and a deserialization (~1-5 ms for such programs).
``jax_persistent_cache_min_entry_size_bytes`` stays at its default (0: no lower bound).

A hit still traces and lowers the program to find its key. ``wnjax._runtime.programs`` keeps
the traced programs of the reproductions' GD runs in ``programs/`` of the same directory, under
keys of their own, so a warm run skips that too; it is on exactly when this cache is.
"""

from __future__ import annotations

import os

ENV = "WNJAX_COMPILATION_CACHE"
OFF = ("0", "false", "no", "off")
ON = ("", "1", "true", "yes", "on")
MIN_COMPILE_TIME_SECS = 0.0


def default_dir(environ=os.environ) -> str:
    """``$XDG_CACHE_HOME/wnjax/jax``, or ``~/.cache/wnjax/jax`` (``%LOCALAPPDATA%`` on Windows)."""
    base = (
        environ.get("XDG_CACHE_HOME")
        or (environ.get("LOCALAPPDATA") if os.name == "nt" else None)
        or os.path.join(os.path.expanduser("~"), ".cache")
    )
    return os.path.join(base, "wnjax", "jax")


def cache_dir(environ=os.environ) -> str | None:
    """The directory ``WNJAX_COMPILATION_CACHE`` asks for: ``None`` when it says off."""
    value = environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value.lower() in ON:
        return default_dir(environ)
    return os.path.abspath(os.path.expanduser(value))


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def enable(environ=os.environ) -> str | None:
    """Turn JAX's persistent compilation cache on at ``cache_dir()``, unless the user configured
    JAX's cache or ``WNJAX_COMPILATION_CACHE`` says off.

    **Returns:** the directory now in use (the user's own when JAX already had one), or
    ``None`` when the cache is off.
    """
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = cache_dir(environ)
    if path is None or not _writable(path):
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    from wnjax._runtime import callback_cache

    callback_cache.install()
    return path


# XLA:CPU code generation that compiles faster: the legacy fusion emitters instead of the MLIR
# ones, and LLVM at -O0 instead of -O3. The first ``gradient_flow`` call on a small EWN net
# (tracing, compiling and running a solve of ~17,000 HLO lines, ~570 kernels) takes ~0.5x the
# time; a step then runs ~2.7x slower on a small net and ~1.9x on an MNIST MLP
# (``benchmarks/compile_codegen.py``). ``make test``, whose programs mostly run for
# milliseconds, compiles under it; wnjax itself leaves XLA's defaults alone.
QUICK_CPU_CODEGEN = {"xla_cpu_use_fusion_emitters": "false", "xla_backend_optimization_level": "0"}


def quick_codegen_flags(flags: str = "") -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the flags of ``QUICK_CPU_CODEGEN`` added, except
    those ``flags`` already sets. Takes effect only in ``XLA_FLAGS`` before JAX's backend starts.
    """
    added = [f"--{k}={v}" for k, v in QUICK_CPU_CODEGEN.items() if f"--{k}=" not in flags]
    return " ".join([flags, *added]).strip()
