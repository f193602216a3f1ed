"""Keep a long process clear of the kernel's limit on memory maps.

XLA:CPU maps the code and data of each kernel of a compiled program separately: one gradient-flow
program holds ~1,600 of the process's memory maps for as long as JAX keeps it in memory. Linux
gives a process at most ``vm.max_map_count`` maps (65,530 by default); past it LLVM aborts the
process ("LLVM ERROR: Unable to allocate section memory"), and everything not yet written is
lost. Forty-odd distinct flow programs (a notebook trying models and sizes) reach it.

``relieve()`` runs before wnjax compiles (at the start of ``gradient_flow``,
``gradient_descent``, the experiments' runs and sweeps). After a compilation or a load from the
persistent cache (counted by a ``jax.monitoring`` listener; a warm call costs nothing) it counts
the process's maps, and past ``FRACTION`` of the limit it drops JAX's in-memory programs
(``jax.clear_caches()``) with a warning: later calls compile again, from the persistent cache
when it is on. Arrays are untouched. Nothing happens where ``/proc`` is absent (not Linux).
"""

from __future__ import annotations

import threading
import warnings

FRACTION = 0.75
LIMIT_FILE = "/proc/sys/vm/max_map_count"
MAPS_FILE = "/proc/self/maps"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _Compiles:
    """How many XLA compilations (persistent-cache loads included) this process has made since
    the listener was installed, and how many it had at the last count of the maps."""

    def __init__(self):
        self.lock = threading.Lock()
        self.made = 0
        self.checked = -1
        self.listening = False

    def on_event(self, event: str, *args, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            self.made += 1

    def listen(self) -> None:
        import jax.monitoring

        with self.lock:
            if not self.listening:
                jax.monitoring.register_event_duration_secs_listener(self.on_event)
                self.listening = True


_COMPILES = _Compiles()


def limit(path: str = LIMIT_FILE) -> int | None:
    """``vm.max_map_count``, or ``None`` where it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def count(path: str = MAPS_FILE) -> int | None:
    """The number of memory maps of this process (lines of ``/proc/self/maps``), or ``None``."""
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return None


def relieve(*, fraction: float = FRACTION, limit_path: str = LIMIT_FILE) -> bool:
    """Drop JAX's in-memory compiled programs if this process's memory maps have passed
    ``fraction`` of ``vm.max_map_count`` (checked only after a compilation since the last check).

    Call it outside any ``jit`` trace, between runs.

    **Arguments:**
    - `fraction`: the share of the limit that triggers the drop.
    - `limit_path`: where the limit is read (``/proc/sys/vm/max_map_count``).

    **Returns:** whether the programs were dropped.
    """
    _COMPILES.listen()
    with _COMPILES.lock:
        if _COMPILES.made == _COMPILES.checked:
            return False
        _COMPILES.checked = _COMPILES.made
    most, used = limit(limit_path), count()
    if most is None or used is None or used < fraction * most:
        return False
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
    after = count()
    warnings.warn(
        f"this process held {used:,} memory maps, near the kernel's limit vm.max_map_count = "
        f"{most:,} (XLA:CPU maps each compiled kernel; past the limit the process aborts), so "
        f"wnjax dropped JAX's compiled programs from memory ({after:,} maps now): programs used "
        "again compile again, from the persistent cache when it is on. To keep more, raise the "
        "limit: `sudo sysctl -w vm.max_map_count=262144`.",
        RuntimeWarning,
        stacklevel=3,
    )
    return True
