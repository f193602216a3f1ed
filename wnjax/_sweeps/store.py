"""A resumable results store: one directory per sweep.

Layout::

    DIR/manifest.json          identity (the full config), its hash, package versions, git revision,
                               and a record of each resume that added seeds or changed versions
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
import re
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
_CHUNK_NAME = re.compile(r"c\d+_k\d+\.npz")
PACKAGES = ("wnjax", "jax", "jaxlib", "equinox", "diffrax", "optax", "numpy")


class StoreMismatch(WnjaxError, ValueError):
    """The directory holds a sweep with a different config."""


class VersionMismatch(StoreMismatch):
    """The directory holds chunks computed with other package versions or another git revision."""


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
    """The git revision of the wnjax checkout and whether it is dirty; ``None`` where wnjax is
    not a tracked file of a git work tree (an installed package)."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)

    try:
        tracked = git("ls-files", "--error-unmatch", "--", os.path.basename(__file__))
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if tracked.returncode != 0 or rev.returncode != 0:
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
    """One line per differing leaf of two identities, each showing where they differ."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _diff(a, b, f"{prefix}{key}.")
        elif canonical_json(a) != canonical_json(b):
            lines.append(f"  {prefix}{key}: {_difference(a, b)}")
    return lines


_WIDTH = 80  # characters of a value shown whole in a difference


def _is_int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _ranges(v: list[int]) -> str:
    """Ints as runs of consecutive values, with their count: ``0..511 (512)``, ``3, 5..9 (6)``."""
    runs: list[list[int]] = []
    for x in v:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    text = [f"{a}..{b}" if b > a + 1 else (f"{a}, {b}" if b > a else f"{a}") for a, b in runs]
    if len(text) > 6:
        text = [*text[:3], f"… ({len(runs) - 5} runs) …", *text[-2:]]
    return f"{', '.join(text) or 'none'} ({len(v)})"


def _clip(text: str, at: int = 0) -> str:
    """``text``, or a window of it around character ``at`` where it is long."""
    if len(text) <= _WIDTH:
        return text
    lo = max(0, min(at - _WIDTH // 3, len(text) - _WIDTH))
    return ("…" if lo else "") + text[lo : lo + _WIDTH] + ("…" if lo + _WIDTH < len(text) else "")


def _difference(a, b) -> str:
    """``stored A != new B``, shown where they differ: long int lists as ranges with their
    counts, other long lists by their lengths and first differing item, long text around its
    first differing character."""
    short = max(len(canonical_json(a)), len(canonical_json(b))) <= _WIDTH
    if _is_int_list(a) and _is_int_list(b) and not short:
        return f"stored {_ranges(a)} != new {_ranges(b)}"
    if isinstance(a, list) and isinstance(b, list) and not short:
        i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        text = f"stored {len(a)} items != new {len(b)} items" if len(a) != len(b) else ""
        if i < min(len(a), len(b)):
            x, y = _clip(canonical_json(a[i])), _clip(canonical_json(b[i]))
            item = f"item {i}: stored {x} != new {y}"
            return f"{text}; {item}" if text else item
        return f"{text} (the first {i} equal)"
    strings = isinstance(a, str) and isinstance(b, str)
    ja, jb = (a, b) if strings else (canonical_json(a), canonical_json(b))
    at = next((j for j, (x, y) in enumerate(zip(ja, jb)) if x != y), min(len(ja), len(jb)))
    where = f" (first difference at character {at})" if max(len(ja), len(jb)) > _WIDTH else ""
    ja, jb = _clip(ja, at), _clip(jb, at)
    if strings:
        ja, jb = json.dumps(ja, ensure_ascii=False), json.dumps(jb, ensure_ascii=False)
    return f"stored {ja} != new {jb}{where}"


def _added_seeds(old: dict, new: dict) -> list | None:
    """The stored seeds, where ``new`` is ``old`` with seeds added after them; else ``None``."""
    seeds_old, seeds_new = old.get("seeds"), new.get("seeds")
    if not (_is_int_list(seeds_old) and _is_int_list(seeds_new)):
        return None
    if len(seeds_new) <= len(seeds_old) or seeds_new[: len(seeds_old)] != seeds_old:
        return None
    rest = lambda d: {k: v for k, v in d.items() if k != "seeds"}  # noqa: E731
    return seeds_old if canonical_json(rest(old)) == canonical_json(rest(new)) else None


def _seeds_hint(old: dict, new: dict) -> str:
    """How to add seeds, where the seeds are the only difference but not an extension."""
    rest = lambda d: {k: v for k, v in d.items() if k != "seeds"}  # noqa: E731
    if canonical_json(rest(old)) != canonical_json(rest(new)):
        return ""
    return (
        "\nA stored sweep takes more seeds when its seeds come first in the new list, in the "
        "same order (--seeds N after fewer); run other seeds into a separate directory "
        "(--out DIR2) instead."
    )


# What must match on resume, besides the identity: each package version and the git revision.
def _provenance(record: dict) -> dict:
    versions = {k: v for k, v in record.get("versions", {}).items() if k in PACKAGES}
    return {**versions, "git revision": record.get("git", {}).get("revision")}


def _version_changes(stored: dict, current: dict) -> list[str]:
    """``name: stored A != installed B`` for each package (and the git revision) that differs;
    a git revision unknown on either side is not compared."""
    old, new = _provenance(stored), _provenance(current)
    lines = []
    for name in (*PACKAGES, "git revision"):
        a, b = old.get(name), new.get(name)
        if name == "git revision" and (a is None or b is None):
            continue
        if a != b:
            lines.append(f"  {name}: stored {a} != installed {b}")
    return lines


class Store:
    """The results directory of one sweep.

    **Arguments:**
    - `path`: the directory (created if missing).
    - `identity`: everything that determines the results (run, grid, seeds, batch layout,
      precision). Opening a directory that holds finished chunks of the same identity resumes;
      of the same identity with more ``seeds`` after the stored ones, extends it (the stored
      chunks are kept); of any other identity raises ``StoreMismatch``. A directory with a
      manifest but no finished chunk is taken over.
    - `overwrite`: delete the stored chunks and start again, even if the identity differs.
    - `allow_version_change`: resume chunks computed with other package versions (wnjax, jax,
      jaxlib, equinox, diffrax, optax, numpy) or another git revision of wnjax; without it
      that raises ``VersionMismatch``. The manifest records the versions of every such resume.
    - `defer`: check only (nothing is created or written) until ``open()`` is called.
    """

    def __init__(
        self,
        path: str,
        identity: dict,
        *,
        overwrite: bool = False,
        allow_version_change: bool = False,
        defer: bool = False,
    ):
        self.path = path
        self.identity = json.loads(canonical_json(identity))
        self.hash = identity_hash(self.identity)
        self.added_to: list | None = None  # the stored seeds, where seeds were added to them
        self._overwrite = overwrite
        if os.path.exists(path) or not defer:
            writable_dir(path)
        self.manifest, self._changed = self._check(overwrite, allow_version_change)
        if not defer:
            self.open()

    def _check(self, overwrite: bool, allow_version_change: bool) -> tuple[dict, bool]:
        """The manifest to keep, and whether it must be written; raise where the directory
        holds finished chunks of another sweep, or of other versions."""
        manifest_path = os.path.join(self.path, MANIFEST)
        current = {"versions": package_versions(), "git": git_revision()}
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        fresh = {"identity": self.identity, "identity_hash": self.hash, **current, "created": now}
        if overwrite or not self.finished_chunks():
            return fresh, True  # nothing stored would be lost
        if not os.path.exists(manifest_path):
            raise StoreMismatch(
                f"{self.path} holds chunks but no {MANIFEST}, so they cannot be matched to this "
                "sweep; use another output directory, or pass overwrite=True (--overwrite) to "
                "discard them."
            )
        stored = self._read_manifest(manifest_path)
        if stored.get("identity_hash") != self.hash:
            old = stored.get("identity", {})
            self.added_to = _added_seeds(old, self.identity)
            if self.added_to is None:
                diff = "\n".join(_diff(old, self.identity))
                raise StoreMismatch(
                    f"{self.path} holds a different sweep (config hash "
                    f"{stored.get('identity_hash', '?')[:12]}"
                    f" != {self.hash[:12]}); mixing their results would be wrong. "
                    f"Differences:\n{diff}{_seeds_hint(old, self.identity)}\nUse another "
                    "output directory, or pass overwrite=True (--overwrite) to discard the "
                    "stored results."
                )
        changes = _version_changes((stored.get("resumes") or [stored])[-1], current)
        if changes and not allow_version_change:
            raise VersionMismatch(
                f"{self.path} holds chunks computed with other versions:\n"
                + "\n".join(changes)
                + "\nResuming would mix results of both. Pass allow_version_change=True "
                "(--allow-version-change) to resume anyway (the manifest records the "
                "versions of each resume), overwrite=True (--overwrite) to start again, or "
                "use another output directory (--out DIR)."
            )
        if self.added_to is None and not changes:
            return stored, False
        record = {**current, "seeds": len(self.identity.get("seeds", [])), "time": now}
        resumes = [*stored.get("resumes", []), record]
        return {
            **stored,
            "identity": self.identity,
            "identity_hash": self.hash,
            "resumes": resumes,
        }, True

    def open(self) -> None:
        """Create the directory and write the manifest (with ``overwrite``, after deleting the
        stored chunks); ``Store(..., defer=True)`` checks only, and leaves this to be called."""
        writable_dir(self.path)
        os.makedirs(self.chunk_dir, exist_ok=True)
        if self._overwrite:
            for name in os.listdir(self.chunk_dir):
                os.remove(os.path.join(self.chunk_dir, name))
            self._overwrite = False
        if self._changed:
            atomic_write_bytes(
                os.path.join(self.path, MANIFEST),
                json.dumps(self.manifest, indent=2, default=str).encode(),
            )
            self._changed = False

    def _read_manifest(self, manifest_path: str) -> dict:
        try:
            with open(manifest_path) as f:
                stored = json.load(f)
            if not isinstance(stored, dict):
                raise ValueError("it is not a JSON object")
        except (OSError, ValueError) as err:
            raise StoreMismatch(
                f"the manifest {manifest_path} cannot be read ({err}), so the stored chunks "
                "cannot be matched to this sweep; use another output directory, or pass "
                "overwrite=True (--overwrite) to discard them."
            ) from err
        return stored

    def finished_chunks(self) -> list[str]:
        """The names of the stored chunk files."""
        if not os.path.isdir(self.chunk_dir):
            return []
        return sorted(n for n in os.listdir(self.chunk_dir) if _CHUNK_NAME.fullmatch(n))

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
