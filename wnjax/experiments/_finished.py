"""The finished runs of an interrupted reproduction, kept so that a rerun goes on from them.

An experiment's independent runs (``in_parallel``'s calls, ``concurrently``'s items) are written,
each as it returns complete, to ``OUT/.finished/`` beside an identity: the experiment, its
options, wnjax's source digest and the JAX version. A rerun into the same ``OUT`` with the same
identity takes them instead of running them again: each run is one deterministic program, so
the outputs are those of an uninterrupted run. Another identity empties the folder; a
reproduction that completes removes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil

from wnjax._sweeps.store import atomic_write_bytes

FOLDER = ".finished"


@dataclasses.dataclass
class Finished:
    """The finished runs kept under ``folder`` (see the module docstring).

    **Arguments:** `folder`: ``OUT/.finished``; `identity`: what the runs depend on (JSON).
    """

    folder: str
    identity: dict

    def __post_init__(self):
        path = os.path.join(self.folder, "identity.json")
        stored = None
        if os.path.exists(path):
            try:
                with open(path) as f:
                    stored = json.load(f)
            except (OSError, ValueError):
                stored = None
        if stored != self.identity:
            shutil.rmtree(self.folder, ignore_errors=True)
        os.makedirs(self.folder, exist_ok=True)
        if stored != self.identity:
            atomic_write_bytes(path, json.dumps(self.identity, indent=1).encode())

    def _path(self, key) -> str:
        return os.path.join(self.folder, hashlib.sha256(repr(key).encode()).hexdigest() + ".pkl")

    def get(self, key) -> tuple[bool, object]:
        """``(True, result)`` of the run ``key`` if kept, else ``(False, None)`` (an unreadable
        file counts as not kept)."""
        try:
            with open(self._path(key), "rb") as f:
                return True, pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            return False, None

    def put(self, key, result) -> None:
        """Keep ``result`` of the run ``key`` (a result that cannot be pickled is not kept)."""
        try:
            data = pickle.dumps(result)
        except (pickle.PicklingError, TypeError, AttributeError):
            return
        atomic_write_bytes(self._path(key), data)

    def remove(self) -> None:
        """Forget every kept run (the reproduction completed)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def finished_runs(name: str, options) -> Finished:
    """The ``Finished`` store of experiment ``name`` run with ``options`` (its ``out`` folder)."""
    import jax

    from wnjax._runtime.programs import source_digest

    fields = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else vars(options)
    settings = {k: repr(v) for k, v in sorted(fields.items()) if k != "out"}
    identity = {
        "experiment": name,
        "options": settings,
        "wnjax_source": source_digest(),
        "jax": jax.__version__,
        "x64": bool(jax.config.read("jax_enable_x64")),
    }
    return Finished(os.path.join(options.out, FOLDER), identity)
