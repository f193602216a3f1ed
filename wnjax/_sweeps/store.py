"""A resumable results store: one directory per sweep.

Layout::

    DIR/manifest.json          identity (the full config), its hash, package versions, git revision
    DIR/chunks/cCCC_kKKKKK.npz one compressed file per finished chunk of (seed, config) rows
    DIR/table.csv              one row per (seed, config), written when the sweep is complete
    DIR/table.parquet          the same, if pyarrow is installed
    DIR/trajectories/cCCC.npz  per-row arrays (trajectories) of grid cell CCC, in table order

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), so a killed sweep leaves only whole chunks behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from importlib import metadata

import numpy as np

from wnjax._runtime.errors import WnjaxError

MANIFEST = "manifest.json"
PACKAGES = ("wnjax", "jax", "jaxlib", "equinox", "diffrax", "optax", "numpy")


class StoreMismatch(WnjaxError, ValueError):
    """The directory holds a sweep with a different config."""


class CorruptChunk(WnjaxError, ValueError):
    """A stored chunk file cannot be read (truncated, or not an ``.npz``); the message names it."""


def canonical_json(obj) -> str:
    """JSON with sorted keys and no spacing: equal configs give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def identity_hash(identity: dict) -> str:
    """``sha256`` of the canonical JSON of the sweep's identity."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def package_versions() -> dict:
    """Installed versions of the packages that determine the numbers, and Python's."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict:
    """The git revision of the wnjax checkout (``None`` outside git) and whether it is dirty."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``;
    the file gets the permissions of a plain ``open`` (``0o666`` less the umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def writable_dir(path: str) -> str:
    """Create the directory ``path`` if it is missing and check that files can be written in it,
    before anything is computed; raise ``InvalidInput`` naming the problem otherwise."""
    from wnjax._runtime.errors import InvalidInput

    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidInput(
            f"output directory {path!r} is an existing file; give a directory (--out DIR)."
        )
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tmp-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise InvalidInput(
            f"cannot write in output directory {path!r}: "
            f"{err.strerror or err}; give a writable directory (--out DIR)."
        ) from None
    return path


def _umask() -> int:
    """The process's umask: from ``/proc/self/status`` where there is one, else read by setting
    it and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _diff(a, b, f"{prefix}{key}.")
        elif canonical_json(a) != canonical_json(b):
            lines.append(
                f"  {prefix}{key}: stored {canonical_json(a)[:80]} != new {canonical_json(b)[:80]}"
            )
    return lines


class Store:
    """The results directory of one sweep.

    **Arguments:**
    - `path`: the directory (created if missing).
    - `identity`: everything that determines the results (run, grid, seeds, batch layout,
      precision). Opening an existing directory with a different identity raises
      ``StoreMismatch``; the same identity resumes.
    - `overwrite`: delete the stored chunks and start again, even if the identity differs.
    """

    def __init__(self, path: str, identity: dict, *, overwrite: bool = False):
        self.path = path
        self.identity = json.loads(canonical_json(identity))
        self.hash = identity_hash(self.identity)
        writable_dir(path)
        os.makedirs(self.chunk_dir, exist_ok=True)
        manifest_path = os.path.join(path, MANIFEST)
        if os.path.exists(manifest_path) and not overwrite:
            with open(manifest_path) as f:
                stored = json.load(f)
            if stored.get("identity_hash") != self.hash:
                diff = "\n".join(_diff(stored.get("identity", {}), self.identity))
                raise StoreMismatch(
                    f"{path} holds a different sweep (config hash "
                    f"{stored.get('identity_hash', '?')[:12]}"
                    f" != {self.hash[:12]}); mixing their results would be wrong. Differences:\n"
                    f"{diff}\nUse another output directory, or pass overwrite=True "
                    "(--overwrite) to discard the stored results."
                )
            self.manifest = stored
            return
        if overwrite:
            for name in os.listdir(self.chunk_dir):
                os.remove(os.path.join(self.chunk_dir, name))
        self.manifest = {
            "identity": self.identity,
            "identity_hash": self.hash,
            "versions": package_versions(),
            "git": git_revision(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_bytes(manifest_path, json.dumps(self.manifest, indent=2, default=str).encode())

    @property
    def chunk_dir(self) -> str:
        return os.path.join(self.path, "chunks")

    def chunk_path(self, cell: int, chunk: int) -> str:
        return os.path.join(self.chunk_dir, f"c{cell:03d}_k{chunk:05d}.npz")

    def has_chunk(self, cell: int, chunk: int) -> bool:
        return os.path.exists(self.chunk_path(cell, chunk))

    def write_chunk(self, cell: int, chunk: int, arrays: dict[str, np.ndarray]) -> None:
        """Store one chunk's rows (compressed ``.npz``), atomically."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(self.chunk_path(cell, chunk), buf.getvalue())

    def read_chunk(
        self, cell: int, chunk: int, *, recover: bool = False
    ) -> dict[str, np.ndarray] | None:
        """One stored chunk's arrays. A file that cannot be read raises ``CorruptChunk``, which
        names it; with ``recover`` the file is renamed ``*.corrupt`` instead, a warning names
        it, and the result is ``None`` (the chunk is then computed again)."""
        path = self.chunk_path(cell, chunk)
        try:
            with np.load(path) as data:
                arrays = {k: data[k] for k in data.files}
            if "row" not in arrays:
                raise ValueError("it has no 'row' array")
            return arrays
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            why = f"{type(err).__name__}: {err}"
            if not recover:
                raise CorruptChunk(
                    f"stored chunk {path} cannot be read ({why}); delete it and "
                    "rerun the sweep to compute it again."
                ) from err
        os.replace(path, path + ".corrupt")
        warnings.warn(
            f"stored chunk {path} cannot be read ({why}); it is renamed "
            f"{os.path.basename(path)}.corrupt and computed again.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None

    def write_table(self, columns: dict[str, np.ndarray]) -> list[str]:
        """Write ``table.csv`` (and ``table.parquet`` with pyarrow); return the paths written."""
        names = list(columns)
        n = len(next(iter(columns.values()))) if columns else 0
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(names)
        cols = [np.asarray(columns[k]) for k in names]
        for i in range(n):
            writer.writerow([_cell_text(c[i]) for c in cols])
        paths = [os.path.join(self.path, "table.csv")]
        atomic_write_bytes(paths[0], text.getvalue().encode())
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return paths
        buf = pa.BufferOutputStream()
        pq.write_table(pa.table({k: np.asarray(columns[k]) for k in names}), buf)
        paths.append(os.path.join(self.path, "table.parquet"))
        atomic_write_bytes(paths[1], buf.getvalue().to_pybytes())
        return paths

    def write_trajectories(self, cell: int, arrays: dict[str, np.ndarray]) -> str:
        path = os.path.join(self.path, "trajectories", f"c{cell:03d}.npz")
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return path


def _cell_text(x) -> str:
    """Round-trip text for a table cell: ``repr`` of floats (shortest exact), plain otherwise."""
    if isinstance(x, (np.floating, float)):
        return repr(float(x))
    if isinstance(x, (np.bool_, bool)):
        return str(int(x))
    if isinstance(x, (np.integer, int)):
        return str(int(x))
    return str(x)
