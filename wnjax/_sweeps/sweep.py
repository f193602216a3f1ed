"""Seed sweeps: ``vmap`` over blocks of seeds, the blocks spread over devices, resumable.

A sweep runs ``run(key, cfg)`` (one seed, one config; any wnjax flow or GD run returning a dict
of arrays) for every seed and every config of a grid. The grid splits in two:

- *static* axes (ints, strings, bools: width, depth, parameterization) change the program, so
  each combination is a *grid cell*, compiled once;
- *array* axes (floats: init scale, learning rate, tolerances) only change array values, so
  inside a cell they are vmapped together with the seeds.

The rows of a cell, ``(seed, config)`` pairs, go in *blocks* of ``batch_size`` rows, each block
one ``jax.vmap`` of ``run`` compiled as a single-device program (``jax.jit``, compiled once per
device that runs it). A *chunk* (``chunk_size`` rows, the unit of storage and resumption) is a
list of blocks, dealt out in turn to the *workers*: threads, each running blocks on one device
(XLA runs a program in the thread that calls it). A GPU has one worker; the CPU devices share
the machine's cores, one worker per core (so one CPU device runs as many blocks at once as there
are cores, and ``N`` forced host devices ``cores / N`` each). By default a chunk is one block per
worker. The workers run their blocks at the same time, each block with its own adaptive
while-loops (it waits only for its own slowest seed), and the next chunk is dispatched before
the current one is read.

Every row is computed by the same program, a ``vmap`` of ``batch_size`` lanes, whatever the
number of devices or workers or the chunk size, so the table does not depend on them, bit for
bit. (One ``shard_map`` program over a mesh of D devices would not do: XLA optimizes a
multi-device program differently from a single-device one, and the last-bit differences,
amplified by adaptive step-size control, change step counts.) The numbers depend on
``batch_size``, the seeds, the grid, the config and the platform; the manifest holds all of them
(and the chunk size, which fixes the store's layout), and a resume with any other value raises
``StoreMismatch``, except more seeds after the stored ones: rows are seed-major and chunks cut
at fixed row counts, so the stored rows keep their chunks, blocks and lanes, and only the new
rows are computed (with a stored chunk cut short by the old seed count, again in full). A
resume with other package versions or another git revision of wnjax raises
``VersionMismatch`` (a ``StoreMismatch``) unless ``allow_version_change``.

Before the store is opened, the block program of every grid cell is traced (the trace is the
one compiled later), so a run that rejects its arguments fails before any file is written.

SIGINT/SIGTERM stop a sweep at the chunk in progress, which is dropped (its gradient flows stop
within ~0.2 s; a traced GD run finishes first): the finished chunks are stored,
and rerunning the same call resumes. A stored chunk
that cannot be read (a truncated file) is renamed ``*.corrupt``, named in a warning and
recomputed.

Multi-host: start every process with ``jax.distributed.initialize(...)`` (see
``wnjax sweep --help``) before calling ``sweep``; the devices then span all processes, each
process runs the blocks dealt to its own devices, the outputs are gathered to every process,
process 0 decides which chunks are pending and is the only writer of the store (a shared
filesystem is assumed).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import wnjax._runtime.interrupt as _interrupt
import wnjax._runtime.maps as _maps
from wnjax._runtime.cores import usable_cores
from wnjax._runtime.errors import InvalidInput
from wnjax._sweeps.store import Store

# What the program of a row is: recorded in the manifest, since the numbers depend on it.
PROGRAM = "jit(vmap(run)) over blocks of batch_size rows, one single-device program per block"


@dataclass
class SweepResult:
    """The table of a sweep: one row per ``(seed, config)``.

    - `table`: dict of columns (numpy arrays): ``cell``, ``config``, ``seed``, one column per grid
      axis, then every scalar output of ``run``;
    - `trajectories`: per grid cell, a dict of the non-scalar outputs stacked over that cell's rows
      (in table order), plus ``row``, their row indices in ``table``;
    - `cells`: the static config of each grid cell;
    - `path`: the results directory (``None`` for an in-memory sweep);
    - `elapsed`, `compile_seconds`: wall time of running the chunks, and of compiling;
    - `interrupted`: SIGINT/SIGTERM stopped the sweep, and the table holds only the rows of the
      chunks finished by then.
    """

    table: dict[str, np.ndarray]
    trajectories: list[dict[str, np.ndarray]]
    cells: list[dict]
    grid: dict
    path: str | None = None
    elapsed: float = field(default=float("nan"))
    compile_seconds: float = field(default=float("nan"))
    interrupted: bool = False

    def __len__(self) -> int:
        return int(self.table["seed"].shape[0])

    def groups(self) -> dict[tuple, np.ndarray]:
        """Row indices of each config (all seeds), keyed by ``(cell, config)``."""
        keys = np.stack([self.table["cell"], self.table["config"]], axis=1)
        out: dict[tuple, np.ndarray] = {}
        for i, k in enumerate(map(tuple, keys.tolist())):
            out.setdefault(k, []).append(i)
        return {k: np.asarray(v) for k, v in out.items()}

    def config_label(self, cell: int, config: int) -> str:
        i = self.groups()[(cell, config)][0]
        return ", ".join(f"{k}={self.table[k][i]}" for k in self.grid)

    def mean_std(self, name: str) -> dict[tuple, tuple[float, float]]:
        """Mean and standard deviation over seeds of a scalar column, per ``(cell, config)``."""
        col = np.asarray(self.table[name], dtype=float)
        return {
            k: (float(np.mean(col[r])), float(np.std(col[r]))) for k, r in self.groups().items()
        }

    def summary(self, names: Sequence[str] | None = None) -> str:
        """A text table: per config, the number of seeds and mean ± std of scalar outputs."""
        fixed = {"cell", "config", "seed", *self.grid}
        names = list(names) if names is not None else [k for k in self.table if k not in fixed]
        names = [
            n
            for n in names
            if np.issubdtype(np.asarray(self.table[n]).dtype, np.number)
            or np.asarray(self.table[n]).dtype == bool
        ]
        lines = []
        for (c, j), rows in self.groups().items():
            stats = []
            for n in names:
                col = np.asarray(self.table[n], dtype=float)[rows]
                stats.append(f"{n}={np.mean(col):.6g}±{np.std(col):.2g}")
            label = self.config_label(c, j) or "(no grid)"
            lines.append(f"{label} [{rows.size} seeds]: " + "  ".join(stats))
        return "\n".join(lines)


def _normalize_grid(grid: dict | None) -> dict[str, list]:
    out = {}
    for name, values in (grid or {}).items():
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
            values = [values]
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        if not values:
            raise InvalidInput(f"grid axis {name!r} has no values; give it at least one.")
        out[str(name)] = list(values)
    return out


def _is_array_axis(values: list) -> bool:
    return all(isinstance(v, float) for v in values)


def split_grid(grid: dict[str, list], static: Sequence[str] | None = None):
    """Split the grid into static axes (one compiled cell per combination) and array axes.

    An axis is an array axis when all its values are Python floats, unless named in ``static``.

    **Returns:** ``(cells, configs)``: lists of dicts, the static part of each grid cell and the
    array part of each config inside a cell.
    """
    static = set(static or ())
    unknown = static - set(grid)
    if unknown:
        raise InvalidInput(f"static names {sorted(unknown)} are not grid axes {sorted(grid)}.")
    array_axes = [k for k, v in grid.items() if _is_array_axis(v) and k not in static]
    static_axes = [k for k in grid if k not in array_axes]
    cells = [dict(zip(static_axes, c)) for c in itertools.product(*(grid[k] for k in static_axes))]
    configs = [dict(zip(array_axes, c)) for c in itertools.product(*(grid[k] for k in array_axes))]
    return cells, configs


def _seeds(seeds) -> np.ndarray:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise InvalidInput(f"seeds must be a positive count or a list of ints, got {seeds}.")
        return np.arange(int(seeds), dtype=np.int64)
    arr = np.asarray(list(seeds))
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInput("seeds must be a positive count or a non-empty list of ints.")
    if np.unique(arr).size != arr.size:
        raise InvalidInput("seeds contain duplicates; each seed may appear once.")
    return arr.astype(np.int64)


def _devices(devices) -> list:
    visible = jax.devices()
    if devices is None:
        return visible
    if isinstance(devices, int):
        if not 1 <= devices <= len(visible):
            raise InvalidInput(
                f"devices={devices} but {len(visible)} are visible. On CPU, force more with "
                "XLA_FLAGS=--xla_force_host_platform_device_count=N (or `wnjax sweep --devices N`) "
                "before JAX starts."
            )
        return visible[:devices]
    return list(devices)


def _workers_per_device(devs: list, workers: int | None) -> int:
    """Blocks run at once on each device: ``workers``, else 1 on a GPU and, on a CPU, this
    process's cores shared among its CPU devices in ``devs`` (at least 1)."""
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise InvalidInput(f"workers must be a positive int, got {workers!r}.")
        return workers
    local_cpus = [d for d in devs if d.platform == "cpu" and d.process_index == jax.process_index()]
    if not local_cpus or len(local_cpus) != len(devs):
        return 1
    return max(1, usable_cores() // len(local_cpus))


def _flatten(out, prefix="") -> dict:
    if not isinstance(out, dict):
        raise InvalidInput(
            f"the run function must return a dict of arrays (summaries), got {type(out).__name__}."
            " Return e.g. {'final_log_loss': r.final_log_loss, 'log_loss': r.log_loss}."
        )
    flat = {}
    for k, v in out.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, name + "/"))
        else:
            flat[name] = jnp.asarray(v)
    return flat


def _run_identity(run: Callable, run_name: str | None) -> dict:
    name = (
        run_name or f"{getattr(run, '__module__', '?')}.{getattr(run, '__qualname__', repr(run))}"
    )
    try:
        source = hashlib.sha256(inspect.getsource(run).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        source = None
    return {"name": name, "source_sha256": source}


def _block_program(run: Callable, cell: dict) -> Callable:
    """``(seeds, configs)`` of one block (leading axis ``batch_size``) -> outputs: one ``vmap``
    of ``run``, jitted (a single-device program wherever its inputs are)."""

    def one(seed, cfg):
        return _flatten(run(jax.random.key(seed), {**cell, **cfg}))

    return jax.jit(jax.vmap(one))


def _gather(outs: list[dict], owners: list[int], shapes: dict) -> list[dict]:
    """Every block's outputs on every process: ``outs`` are this process's blocks (in block
    order), ``owners[b]`` the process that ran block ``b``, ``shapes`` a block's output
    shapes."""
    if jax.process_count() == 1:
        return outs
    from jax.experimental import multihost_utils

    width = max(owners.count(p) for p in range(jax.process_count()))
    pad = [{n: np.zeros(v.shape, v.dtype) for n, v in shapes.items()}] * (width - len(outs))
    local = {n: np.stack([o[n] for o in outs + pad]) for n in shapes}
    every = multihost_utils.process_allgather(local, tiled=False)  # (processes, width, ...)
    seen = [0] * jax.process_count()
    blocks = []
    for p in owners:
        blocks.append({n: np.asarray(v[p, seen[p]]) for n, v in every.items()})
        seen[p] += 1
    return blocks


def _read_stored(store: Store | None, n_cells: int, row_seed: np.ndarray, chunk_size: int) -> dict:
    """The readable stored chunks that hold their chunk's rows and seeds, ``{(cell, chunk):
    arrays}`` (process 0 reads). An unreadable chunk is set aside and recomputed (see
    ``Store.read_chunk``); so is one cut short by a smaller seed count (seeds added since), and
    one holding other rows, with a warning."""
    done = {}
    n_rows = row_seed.size
    if store is not None and jax.process_index() == 0:
        for c in range(n_cells):
            for k in range(math.ceil(n_rows / chunk_size)):
                if store.has_chunk(c, k):
                    arrays = store.read_chunk(c, k, recover=True)
                    if arrays is None:
                        continue
                    rows = np.arange(k * chunk_size, min((k + 1) * chunk_size, n_rows))
                    have_rows, have_seeds = np.asarray(arrays["row"]), arrays.get("seed")
                    fits = have_seeds is not None and have_rows.shape == have_seeds.shape
                    n = have_rows.size
                    if fits and n <= rows.size:
                        fits = np.array_equal(have_rows, rows[:n]) and np.array_equal(
                            have_seeds, row_seed[rows[:n]]
                        )
                    if fits and n == rows.size:
                        done[c, k] = arrays
                    elif not fits:
                        warnings.warn(
                            f"stored chunk {store.chunk_path(c, k)} holds other rows than this "
                            "sweep's; it is computed again.",
                            RuntimeWarning,
                            stacklevel=3,
                        )
    return done


def _pending_mask(done: dict, n_cells: int, n_chunks: int) -> np.ndarray:
    mask = np.ones((n_cells, n_chunks), bool)
    for c, k in done:
        mask[c, k] = False
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return mask


def _trace_cells(
    programs: list, cells: list[dict], batch_size: int, seed_dtype, cfg_values: dict
) -> list:
    """Trace each cell's block program (``jax.eval_shape``): a run that rejects its arguments
    raises here, before any file is written (``InvalidInput`` names the grid cell). Returns each
    cell's output shapes."""
    canon = jax.dtypes.canonicalize_dtype
    example = (
        jax.ShapeDtypeStruct((batch_size,), canon(seed_dtype)),
        {n: jax.ShapeDtypeStruct((batch_size,), canon(v.dtype)) for n, v in cfg_values.items()},
    )
    shapes = []
    for program, cell in zip(programs, cells):
        try:
            shapes.append(jax.eval_shape(program, *example))
        except InvalidInput as err:
            if not cell:
                raise
            label = ", ".join(f"{k}={v!r}" for k, v in cell.items())
            raise InvalidInput(f"grid cell {label}: {err}") from err
    return shapes


def _stored_chunk_size(out: str | None) -> int | None:
    import json

    if not out:
        return None
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            size = json.load(f).get("identity", {}).get("chunk_size")
    except (OSError, ValueError, AttributeError):
        return None  # no manifest, or one that Store reports
    return size if isinstance(size, int) else None


def sweep(
    run: Callable[[Any, dict], dict],
    seeds: int | Sequence[int],
    grid: dict | None = None,
    *,
    out: str | None = None,
    static: Sequence[str] | None = None,
    batch_size: int = 16,
    chunk_size: int | None = None,
    devices: int | Sequence | None = None,
    workers: int | None = None,
    config: dict | None = None,
    run_name: str | None = None,
    overwrite: bool = False,
    allow_version_change: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Run ``run(key, cfg)`` for every seed and config, vmapped in blocks spread over the devices,
    into a results table.

    ``key = jax.random.key(seed)``; ``cfg`` holds one value per grid axis: static axes as Python
    values, array axes (floats) as traced scalars, so that inside a grid cell all configs and seeds
    share one compiled program. ``run`` must be traceable and vmappable: build the model from
    ``key``, call ``wnjax.gradient_flow`` (its Python-side checks are skipped under tracing) or
    ``wnjax.traced_gradient_descent``, and return a dict of arrays. Scalars become table columns;
    other arrays (trajectories) are kept per row.

    **Arguments:**
    - `run`: ``run(key, cfg) -> dict`` of arrays (nested dicts are flattened with ``/``).
    - `seeds`: a count ``S`` (seeds ``0..S-1``) or a list of distinct ints.
    - `grid`: ``{name: [values]}``; the sweep covers their product.
    - `out`: results directory; rerunning with the same arguments skips finished chunks, and
      with more seeds after the stored ones computes only the new rows (the table is the same,
      bit for bit, as that of one sweep of all the seeds); any other change of the config raises
      ``StoreMismatch``. ``None`` keeps results in memory only.
    - `static`: grid axes to treat as static even if their values are floats.
    - `batch_size`: rows per vmapped block (the vmap width; part of the config, since it fixes
      each row's floating-point program).
    - `chunk_size`: rows per stored chunk (default ``batch_size`` times the number of workers, or
      the stored value); it sets only how rows are stored, not their numbers.
    - `devices`: a count or a list of devices (default: all visible, across all processes); the
      numbers do not depend on it.
    - `workers`: blocks run at once on each device, from threads of their own (default: 1 on a
      GPU; on a CPU, this process's cores shared among its CPU devices, at least 1); the numbers
      do not depend on it.
    - `config`: extra settings that determine the results (data, fixed run arguments); stored in
      the manifest and compared on resume.
    - `run_name`: a stable name for ``run`` in the manifest (default module.qualname).
    - `overwrite`: discard what ``out`` holds and start again.
    - `allow_version_change`: resume chunks stored by other versions of wnjax, jax, jaxlib,
      equinox, diffrax, optax or numpy, or another git revision of wnjax (refused by default
      with ``VersionMismatch``, a ``StoreMismatch``: new rows could differ from stored ones); the
      manifest records the versions of each such resume.
    - `progress`: show a progress bar over chunks (runs/s and ETA).

    **Returns:** a ``SweepResult``; with ``out``, also ``table.csv`` (and ``table.parquet`` with
    pyarrow) and ``trajectories/cCCC.npz`` in ``out``. After SIGINT/SIGTERM the result holds the
    rows of the finished chunks (``interrupted`` is set), which are stored, and the table files
    are not written.
    """
    grid = _normalize_grid(grid)
    cells, configs = split_grid(grid, static)
    seeds_arr = _seeds(seeds)
    devs = _devices(devices)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size must be a positive int, got {batch_size!r}.")
    # worker w runs its blocks on slots[w]: devices in turn, then each again
    slots = [dev for _ in range(_workers_per_device(devs, workers)) for dev in devs]
    if chunk_size is None:
        chunk_size = (None if overwrite else _stored_chunk_size(out)) or batch_size * len(slots)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInput(f"chunk_size must be a positive int, got {chunk_size!r}.")
    n_cfg = len(configs)
    n_rows = seeds_arr.size * n_cfg
    n_chunks = math.ceil(n_rows / chunk_size)
    identity = {
        "run": _run_identity(run, run_name),
        "config": config or {},
        "grid": grid,
        "static": sorted(static or ()),
        "seeds": seeds_arr.tolist(),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "x64": bool(jax.config.jax_enable_x64),
        "key_impl": str(jax.config.jax_default_prng_impl),
    }
    identity["platform"] = devs[0].platform
    identity["program"] = PROGRAM
    writer = jax.process_index() == 0

    # Row r of a cell is (seed r // n_cfg, config r % n_cfg): seed-major, so a partial sweep
    # already covers every config, and more seeds only add rows at the end.
    row_seed = np.repeat(seeds_arr, n_cfg)
    row_cfg = np.tile(np.arange(n_cfg), seeds_arr.size)
    cfg_values = {
        k: np.asarray([c[k] for c in configs], float) for k in (configs[0] if configs else {})
    }
    # The store is checked, then every cell traced, and only then is anything written.
    store = (
        Store(
            out,
            identity,
            overwrite=overwrite,
            allow_version_change=allow_version_change,
            defer=True,
        )
        if out is not None
        else None
    )
    programs = [_block_program(run, cell) for cell in cells]
    t0 = time.perf_counter()
    shapes_of = _trace_cells(programs, cells, batch_size, row_seed.dtype, cfg_values)
    trace_seconds = time.perf_counter() - t0
    if store is not None and writer:
        store.open()
    done = _read_stored(store, len(cells), row_seed, chunk_size)
    pending = _pending_mask(done, len(cells), n_chunks)
    n_blocks = math.ceil(chunk_size / batch_size)

    # Block b of a chunk runs on worker b mod W, in the process that owns its device (a chunk of
    # fewer blocks than devices compiles for fewer).
    block_worker = [b % len(slots) for b in range(n_blocks)]
    block_device = [slots[w] for w in block_worker]
    owners = [d.process_index for d in block_device]

    bar = None
    if progress and writer:
        try:
            from tqdm.auto import tqdm

            finished_rows = sum(
                min(chunk_size, n_rows - k * chunk_size)
                for c in range(len(cells))
                for k in range(n_chunks)
                if not pending[c, k]
            )
            bar = tqdm(
                total=n_rows * len(cells),
                initial=finished_rows,
                unit="run",
                unit_scale=True,
                desc="sweep",
                smoothing=0.1,
                dynamic_ncols=True,
            )
        except ImportError:
            bar = None

    start, compile_seconds = time.perf_counter(), trace_seconds
    results: dict = {}
    interrupted = False
    # XLA runs a program in the thread that calls it (on a CPU, for any number of devices), so
    # each worker runs its blocks from a thread of its own, in the order they were dispatched:
    # the workers run at once, and this thread stores one chunk while the next one runs.
    runners = {
        w: ThreadPoolExecutor(1, thread_name_prefix=f"wnjax-sweep-{slots[w].id}-{w}")
        for w in dict.fromkeys(block_worker)
        if slots[w].process_index == jax.process_index()
    }

    def launch(c, k, program, compiled):
        """Dispatch this process's blocks of chunk ``k`` (asynchronously); compile the block
        program for a device on its first block there."""
        nonlocal compile_seconds
        lo, hi = k * chunk_size, min((k + 1) * chunk_size, n_rows)
        rows = np.arange(lo, hi)
        used = math.ceil(rows.size / batch_size)  # a short chunk runs fewer blocks
        # the last block is filled up with the chunk's first row (its outputs are dropped)
        take = np.concatenate([rows, np.full(used * batch_size - rows.size, rows[0])])
        s_in = row_seed[take].reshape(used, batch_size)
        c_in = {n: v[row_cfg[take]].reshape(used, batch_size) for n, v in cfg_values.items()}
        outs = []
        for b, (w, dev) in enumerate(zip(block_worker[:used], block_device[:used])):
            if dev.process_index != jax.process_index():
                continue
            args = (
                jax.device_put(s_in[b], dev),
                {n: jax.device_put(v[b], dev) for n, v in c_in.items()},
            )
            if dev not in compiled:  # timed apart from the runs
                if jax.process_count() == 1 and _interrupt.requested():
                    # stopped while compiling for the devices before: launch no more blocks
                    return c, k, rows, used, None
                t0 = time.perf_counter()
                compiled[dev] = program.lower(*args).compile()
                compile_seconds += time.perf_counter() - t0
            outs.append(runners[w].submit(compiled[dev], *args))
        return c, k, rows, used, outs

    def collect(launched, shapes):
        """The chunk's rows, or ``None`` where its launch stopped short (a stop request)."""
        c, k, rows, used, outs = launched
        if outs is None:
            return None
        blocks = _gather(
            [{n: np.asarray(v) for n, v in o.result().items()} for o in outs],
            owners[:used],
            shapes,
        )
        merged = {n: np.concatenate([blk[n] for blk in blocks])[: rows.size] for n in blocks[0]}
        return {"row": rows, "seed": row_seed[rows], "config": row_cfg[rows], **merged}

    def stop_requested() -> bool:
        stop = _interrupt.requested()
        if jax.process_count() > 1:  # every process stops at the same chunk
            from jax.experimental import multihost_utils

            stop = bool(multihost_utils.broadcast_one_to_all(np.asarray(stop)))
        return stop

    _maps.relieve()
    with _interrupt.handling(), contextlib.ExitStack() as stack:
        for runner in runners.values():  # waits for blocks still running on the way out
            stack.enter_context(runner)
        for c in range(len(cells)):
            todo = [k for k in range(n_chunks) if pending[c, k]]
            if not todo or interrupted:
                continue
            if stop_requested():
                interrupted = True
                _interrupt.stopping()
                continue
            program, compiled, shapes = programs[c], {}, shapes_of[c]
            # the next chunk is dispatched before this one is read, so the devices stay busy
            inflight = launch(c, todo[0], program, compiled)
            for i in range(len(todo)):
                # (with several processes only the broadcast decision below counts)
                more = i + 1 < len(todo) and (jax.process_count() > 1 or not _interrupt.requested())
                nxt = launch(c, todo[i + 1], program, compiled) if more else None
                arrays = collect(inflight, shapes)
                # its flows may have stopped early: recomputed on resume
                if stop_requested() or arrays is None:
                    interrupted = True
                    _interrupt.stopping()
                    break
                if store is not None and writer:
                    store.write_chunk(c, todo[i], arrays)
                results[c, todo[i]] = arrays
                if bar is not None:
                    bar.update(arrays["row"].size)
                inflight = nxt
    if bar is not None:
        bar.close()
    # the chunks' wall time: since ``start``, less the compilations after it (tracing came before)
    elapsed = time.perf_counter() - start - (compile_seconds - trace_seconds)

    chunks = []
    for c in range(len(cells)):
        have = []
        for k in range(n_chunks):
            if (c, k) in results:
                have.append(results[c, k])
            elif (c, k) in done:
                have.append(done[c, k])
            elif not pending[c, k]:  # stored, read by process 0 only
                have.append(store.read_chunk(c, k))
        chunks.append(have)
    result = _assemble(chunks, cells, configs, grid, out, elapsed)
    result.compile_seconds = compile_seconds
    result.interrupted = interrupted
    if store is not None and writer and not interrupted:
        store.write_table(result.table)
        for c, traj in enumerate(result.trajectories):
            store.write_trajectories(c, traj)
    return result


def _assemble(chunks, cells, configs, grid, out, elapsed) -> SweepResult:
    """Merge the chunks of every cell into one table (rows in cell, then row order); a cell
    without chunks (an interrupted sweep) has no rows."""
    per_cell, trajectories, offset = [], [], 0
    for c, cell_chunks in enumerate(chunks):
        if not cell_chunks:
            trajectories.append({"row": np.zeros(0, int)})
            continue
        merged = {n: np.concatenate([ch[n] for ch in cell_chunks]) for n in cell_chunks[0]}
        n = merged["row"].size
        cols = {"cell": np.full(n, c), "config": merged["config"], "seed": merged["seed"]}
        for k in grid:
            cols[k] = np.asarray([{**cells[c], **configs[j]}[k] for j in merged["config"]])
        traj = {"row": offset + np.arange(n)}
        for name, v in merged.items():
            if name not in ("row", "seed", "config"):
                (cols if v.ndim == 1 else traj)[name] = v
        per_cell.append(cols)
        trajectories.append(traj)
        offset += n
    names = list(dict.fromkeys(k for cols in per_cell for k in cols))
    table = (
        {
            k: np.concatenate(
                [cols.get(k, np.full(cols["seed"].size, np.nan)) for cols in per_cell]
            )
            for k in names
        }
        if per_cell
        else {"cell": np.zeros(0, int), "config": np.zeros(0, int), "seed": np.zeros(0, int)}
    )
    return SweepResult(
        table=table, trajectories=trajectories, cells=cells, grid=grid, path=out, elapsed=elapsed
    )


def plot_bands(
    result: SweepResult,
    name: str,
    *,
    x: str | None = None,
    ax=None,
    out: str | None = None,
    title: str | None = None,
):
    """Mean ± one standard deviation across seeds of a saved trajectory, one band per config.

    Non-finite entries (save points past the end of a run) are left out of the statistics.

    **Arguments:**
    - `result`: a ``SweepResult``.
    - `name`: a trajectory (non-scalar output), e.g. ``'log_loss'``.
    - `x`: another trajectory for the horizontal axis (its mean across seeds), or ``None`` for
      the save index.
    - `ax`: a matplotlib axis (default: a new figure).
    - `out`: save the figure to this path.

    **Returns:** the matplotlib axis.
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not any(name in t for t in result.trajectories):
        have = sorted({k for t in result.trajectories for k in t if k != "row"})
        raise InvalidInput(f"no trajectory named {name!r}; saved trajectories: {have}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for c, traj in enumerate(result.trajectories):
        if name not in traj:
            continue
        configs = result.table["config"][traj["row"]]
        for j in np.unique(configs):
            sel = configs == j
            ys = np.where(np.isfinite(traj[name][sel]), traj[name][sel], np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0)
                xs = (
                    np.arange(mean.shape[0])
                    if x is None
                    else np.nanmean(
                        np.where(np.isfinite(traj[x][sel]), traj[x][sel], np.nan), axis=0
                    )
                )
            label = result.config_label(c, int(j)) or name
            (line,) = ax.plot(xs, mean, label=f"{label} (n={int(sel.sum())})")
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.25)
    ax.set_xlabel(x or "save index")
    ax.set_ylabel(name)
    ax.set_title(title or f"{name}: mean ± std over seeds")
    ax.legend(fontsize="small")
    if out is not None:
        ax.figure.savefig(out, dpi=120, bbox_inches="tight")
    return ax
