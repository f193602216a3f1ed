"""Seed sweeps: the same bits on any device count, kill-and-resume, interrupt, config mismatch,
corrupt chunks, reproducibility.

The conftest forces 8 CPU devices; the CLI runs in subprocesses with ``--devices 8``.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import STOPS_WITHIN

import wnjax
import wnjax._cli as _cli
import wnjax._cli.sweep as _sweep_cli
from wnjax._sweeps.store import CorruptChunk

X, Y = wnjax.data.lin_sep(jax.random.key(0))

CONFIG = """
[sweep]
seeds = 12
batch_size = 2
chunk_size = 4
dynamics = "descent"

[data]
name = "lin_sep"
seed = 0

[model]
depth = 2
width = 4

[dynamics]
num_steps = 8000
learning_rate = 0.05
n_save = 8
chunk_size = 2000

[grid]
init_scale = [0.5, 1.0]
"""
N_ROWS, CHUNK = 24, 4


def _launch(cfg, out, cache, *extra):
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    cmd = [
        sys.executable,
        "-m",
        "wnjax",
        "sweep",
        str(cfg),
        "--out",
        str(out),
        "--devices",
        "8",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run the CLI, SIGKILL it after its first chunk, rerun it; also an in-process reference."""
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = tmp / "sweep.toml"
    cfg.write_text(CONFIG)
    out, cache = tmp / "killed", tmp / "cache"
    chunks = out / "chunks"
    proc = _launch(cfg, out, cache)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if chunks.exists() and any(n.endswith(".npz") for n in os.listdir(chunks)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_at_kill = len([n for n in os.listdir(chunks) if n.endswith(".npz")])
    table_at_kill = (out / "table.csv").exists()
    resumed = _launch(cfg, out, cache)
    log = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, log

    settings = _sweep_cli.load_config(str(cfg), [])
    reference = wnjax.sweep(
        _sweep_cli.make_run(settings, X, Y),
        12,
        settings["grid"],
        out=str(tmp / "reference"),
        batch_size=2,
        chunk_size=CHUNK,
        devices=8,
        progress=False,
    )
    return dict(
        out=out,
        cfg=cfg,
        n_at_kill=n_at_kill,
        table_at_kill=table_at_kill,
        log=log,
        reference=reference,
        ref_dir=tmp / "reference",
    )


@pytest.mark.slow
def test_kill_and_resume_gives_identical_table(killed_and_resumed):
    r = killed_and_resumed
    assert 0 < r["n_at_kill"] < N_ROWS // CHUNK, "the kill did not land mid-sweep"
    assert not r["table_at_kill"]
    assert "24 runs" in r["log"]
    # Killed + resumed (two processes) against an uninterrupted in-process run: same bytes.
    assert (r["out"] / "table.csv").read_bytes() == (r["ref_dir"] / "table.csv").read_bytes()
    with (
        np.load(r["out"] / "trajectories" / "c000.npz") as a,
        np.load(r["ref_dir"] / "trajectories" / "c000.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
def test_rows_equal_single_runs(killed_and_resumed):
    """Each row equals an independent, unvmapped ``wnjax.gradient_descent`` run of its seed."""
    ref = killed_and_resumed["reference"]
    t = ref.table
    for i in (0, 7):
        model = wnjax.MLP(
            2, 4, 2, init_scale=float(t["init_scale"][i]), key=jax.random.key(int(t["seed"][i]))
        )
        r = wnjax.gradient_descent(
            wnjax.ewn(model), X, Y, num_steps=8000, learning_rate=0.05, n_save=8, chunk_size=2000
        )
        np.testing.assert_allclose(t["final_log_loss"][i], r.final_log_loss, rtol=1e-12, atol=0)
        np.testing.assert_allclose(ref.trajectories[0]["log_loss"][i], r.log_loss, rtol=1e-12)
        assert t["num_steps"][i] == 8000 and t["ok"][i]


@pytest.mark.slow
def test_config_mismatch_is_an_error(killed_and_resumed, tmp_path):
    r = killed_and_resumed
    with pytest.raises(wnjax.StoreMismatch, match="grid.init_scale"):
        _cli.main(
            [
                "sweep",
                str(r["cfg"]),
                "--out",
                str(r["out"]),
                "--no-progress",
                "--debug",
                "--set",
                "grid.init_scale=[0.25, 1.0]",
            ]
        )
    with pytest.raises(wnjax.StoreMismatch, match="dynamics"):
        _cli.main(
            [
                "sweep",
                str(r["cfg"]),
                "--out",
                str(r["out"]),
                "--no-progress",
                "--debug",
                "--set",
                "dynamics.learning_rate=0.1",
            ]
        )
    wnjax.Store(str(tmp_path), {"a": 1}).write_chunk(0, 0, {"row": np.arange(2)})
    wnjax.Store(str(tmp_path), {"a": 1})  # the same config resumes
    with pytest.raises(wnjax.StoreMismatch):
        wnjax.Store(str(tmp_path), {"a": 2})


@pytest.mark.slow
def test_same_seed_same_bits(killed_and_resumed):
    """Rerunning the stored sweep in-process (a resume with every chunk present) and a fresh
    sweep of a subset of the seeds reproduce those rows bit for bit."""
    ref = killed_and_resumed["reference"]
    settings = _sweep_cli.load_config(str(killed_and_resumed["cfg"]), [])
    fn = _sweep_cli.make_run(settings, X, Y)
    again = wnjax.sweep(
        fn,
        12,
        settings["grid"],
        out=str(killed_and_resumed["ref_dir"]),
        batch_size=2,
        devices=8,
        progress=False,
    )
    for k in ref.table:
        np.testing.assert_array_equal(again.table[k], ref.table[k])
    subset = wnjax.sweep(
        fn, [5, 9], settings["grid"], batch_size=2, chunk_size=CHUNK, devices=8, progress=False
    )
    rows = np.flatnonzero(np.isin(ref.table["seed"], [5, 9]))
    for k in ("final_log_loss", "final_normalized_margin", "num_steps"):
        np.testing.assert_array_equal(subset.table[k], ref.table[k][rows])


@pytest.mark.slow
def test_flow_rows_do_not_depend_on_the_device_count():
    """Adaptive GF runs on 1 and on 2 devices, and with 3 blocks at once on one device (each
    block its own while-loops; other chunk sizes too, by default ``batch_size`` times the
    workers): the same bits."""

    def run(key, cfg):
        # ReLU^2: smooth, as the theory assumes (ReLU kinks make the adaptive solver chatter).
        model = wnjax.MLP(2, 4, 2, activation="relu2", init_scale=cfg["init_scale"], key=key)
        r = wnjax.gradient_flow(
            wnjax.ewn(model),
            X,
            Y,
            t1=50.0,
            rtol=1e-9,
            atol=1e-12,
            n_save=6,
            save_states=False,
            max_steps=4000,
            throw=False,
            diagnostics=False,
        )
        return {
            "final_log_loss": r.final_log_loss,
            "steps": r.stats["num_steps"],
            "ok": r.ok,
            "log_loss": r.log_loss,
        }

    grid = {"init_scale": [0.5, 1.0], "width": [4]}
    one = wnjax.sweep(run, 6, grid, batch_size=2, devices=1, progress=False)
    two = wnjax.sweep(run, 6, grid, batch_size=2, devices=2, progress=False)
    three = wnjax.sweep(run, 6, grid, batch_size=2, devices=1, workers=3, progress=False)
    assert one.table["ok"].all() and len(one) == 12
    for r in (one, two, three):  # the runs' wall time, the compilations apart
        assert 0 <= r.elapsed and 0 <= r.compile_seconds
    # Seeds differ in their step counts, so each block's while-loop ran its own length.
    assert np.unique(one.table["steps"]).size > 1
    for other in (two, three):
        for k in one.table:
            np.testing.assert_array_equal(other.table[k], one.table[k])
        np.testing.assert_array_equal(
            other.trajectories[0]["log_loss"], one.trajectories[0]["log_loss"]
        )


def test_grid_split_and_bad_input():
    cells, configs = wnjax.split_grid(
        {"width": [4, 8], "parameterization": ["ewn"], "init_scale": [0.5, 1.0, 2.0]}
    )
    assert cells == [
        {"width": 4, "parameterization": "ewn"},
        {"width": 8, "parameterization": "ewn"},
    ]
    assert [c["init_scale"] for c in configs] == [0.5, 1.0, 2.0]
    cells, configs = wnjax.split_grid({"lr": [0.1, 0.2]}, static=["lr"])
    assert len(cells) == 2 and configs == [{}]
    with pytest.raises(ValueError, match="duplicates"):
        wnjax.sweep(lambda k, c: {}, [1, 1])
    with pytest.raises(ValueError, match="visible"):
        wnjax.sweep(lambda k, c: {}, 2, devices=10_000)
    with pytest.raises(ValueError, match="no values"):
        wnjax.sweep(lambda k, c: {}, 2, {"width": []})
    for workers in (0, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive int"):
            wnjax.sweep(lambda k, c: {}, 2, workers=workers)


def test_workers_share_the_cores_of_a_cpu():
    """By default each CPU device runs this process's cores' share of blocks at once; a GPU
    runs one."""
    from wnjax._sweeps.sweep import _workers_per_device

    cpus = jax.devices("cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _workers_per_device(cpus[:1], None) == cores
    assert _workers_per_device(cpus[:2], None) == max(1, cores // 2)
    assert _workers_per_device(cpus, None) == max(1, cores // len(cpus))
    assert _workers_per_device(cpus[:2], 5) == 5


MULTIHOST = """
import sys
import jax
jax.config.update("jax_enable_x64", True)
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[3], num_processes=2,
                           process_id=int(sys.argv[1]))
import wnjax
X, y = wnjax.data.lin_sep(jax.random.key(0))
def run(key, cfg):
    m = wnjax.MLP(2, 4, 2, init_scale=cfg["init_scale"], key=key)
    r = wnjax.traced_gradient_descent(wnjax.ewn(m), X, y, num_steps=200, learning_rate=0.05,
                                      n_save=4, chunk_size=100)
    return {"final_log_loss": r.final_log_loss}
assert jax.process_count() == 2 and len(jax.devices()) == 4
wnjax.sweep(run, 6, {"init_scale": [0.5, 1.0]}, out=sys.argv[2], batch_size=2, chunk_size=4,
            progress=False)
"""


@pytest.mark.skipif(
    os.environ.get("WNJAX_TEST_MULTIHOST") != "1",
    reason="2-process loopback sweep (~30 s); set WNJAX_TEST_MULTIHOST=1",
)
def test_two_processes_on_loopback(tmp_path):
    """``jax.distributed`` with 2 local processes x 2 CPU devices equals a 1-process sweep."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "host.py"
    script.write_text(MULTIHOST)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(tmp_path / "out"), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs

    def run(key, cfg):
        m = wnjax.MLP(2, 4, 2, init_scale=cfg["init_scale"], key=key)
        r = wnjax.traced_gradient_descent(
            wnjax.ewn(m), X, Y, num_steps=200, learning_rate=0.05, n_save=4, chunk_size=100
        )
        return {"final_log_loss": r.final_log_loss}

    ref = wnjax.sweep(
        run, 6, {"init_scale": [0.5, 1.0]}, batch_size=2, chunk_size=4, devices=4, progress=False
    )
    got = np.genfromtxt(tmp_path / "out" / "table.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(got["seed"], ref.table["seed"])
    np.testing.assert_allclose(got["final_log_loss"], ref.table["final_log_loss"], rtol=1e-12)


def test_sweep_cli_defaults_to_one_device_per_core():
    """``wnjax sweep`` without ``--devices`` forces one CPU host device per core, unless the
    user's ``XLA_FLAGS`` already set a count or the run is multi-host."""
    import argparse

    import wnjax._cli as _cli

    def ns(**kw):
        return argparse.Namespace(
            **({"command": "sweep", "devices": None, "coordinator": None} | kw)
        )

    assert _cli.host_devices(ns(), {}) == os.cpu_count()
    assert _cli.host_devices(ns(devices=3), {}) == 3
    assert (
        _cli.host_devices(ns(), {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}) is None
    )
    assert _cli.host_devices(ns(coordinator="host:1234"), {}) is None
    assert _cli.host_devices(argparse.Namespace(command="demo"), {}) is None


EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "sweep.toml")
# The example sweep, shrunk: one compiled cell, 4 rows in 2 blocks, a near target.
SMALL = [
    "--seeds",
    "2",
    "--batch-size",
    "2",
    "--chunk-size",
    "4",
    "--no-progress",
    "--set",
    'grid.parameterization=["swn"]',
    "--set",
    "dynamics.target_log_loss=-30.0",
    "--set",
    "dynamics.n_save=4",
    "--set",
    "dynamics.diagnostics=false",
]


@pytest.mark.slow
def test_example_table_bytes_do_not_depend_on_the_device_count(tmp_path):
    """``wnjax sweep examples/sweep.toml`` with 1 and with 2 forced CPU devices (separate
    processes): byte-identical ``table.csv``."""
    tables = []
    for n in (1, 2):
        out = tmp_path / f"devices{n}"
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "wnjax",
                "sweep",
                EXAMPLE,
                "--devices",
                str(n),
                "--out",
                str(out),
                *SMALL,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"on {n} device(s)" in proc.stdout
        tables.append((out / "table.csv").read_bytes())
    assert tables[0].count(b"\n") == 5  # the header and 4 rows
    assert tables[0] == tables[1]


def _descent_run(key, cfg):
    m = wnjax.MLP(2, 4, 2, init_scale=cfg["init_scale"], key=key)
    r = wnjax.traced_gradient_descent(
        wnjax.ewn(m),
        X,
        Y,
        num_steps=200,
        learning_rate=0.05,
        n_save=4,
        chunk_size=100,
        diagnostics=False,
    )
    return {"final_log_loss": r.final_log_loss, "log_loss": r.log_loss}


def test_truncated_chunk_is_named_and_recomputed(tmp_path):
    grid = {"init_scale": [0.5, 1.0]}
    kw = dict(batch_size=2, chunk_size=2, devices=1, progress=False, out=str(tmp_path))
    first = wnjax.sweep(_descent_run, 2, grid, **kw)
    table = (tmp_path / "table.csv").read_bytes()
    bad = tmp_path / "chunks" / "c000_k00001.npz"
    bad.write_bytes(bad.read_bytes()[:40])  # a file cut short, as by a full disk
    store = wnjax.Store(
        str(tmp_path), json.loads((tmp_path / "manifest.json").read_text())["identity"]
    )
    with pytest.raises(CorruptChunk, match="c000_k00001.npz"):
        store.read_chunk(0, 1)
    with pytest.warns(RuntimeWarning, match="c000_k00001.npz"):
        again = wnjax.sweep(_descent_run, 2, grid, **kw)
    assert (tmp_path / "chunks" / "c000_k00001.npz.corrupt").exists()
    assert store.read_chunk(0, 1)["row"].tolist() == [2, 3]  # recomputed and stored
    np.testing.assert_array_equal(again.table["final_log_loss"], first.table["final_log_loss"])
    assert (tmp_path / "table.csv").read_bytes() == table


@pytest.mark.slow
def test_sigint_stops_a_sweep_keeping_finished_chunks(tmp_path):
    """SIGINT after the first stored chunk: exit 130, no traceback, a PARTIAL message, the
    finished chunks stored and no table."""
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(CONFIG.replace("num_steps = 8000", "num_steps = 200000"))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "wnjax",
        "sweep",
        str(cfg),
        "--out",
        str(out),
        "--devices",
        "1",
        "--no-progress",
        "--seeds",
        "4",
        "--chunk-size",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunks = out / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if chunks.exists() and any(n.endswith(".npz") for n in os.listdir(chunks)):
            break
        time.sleep(0.01)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    took = time.time() - sent
    assert took < STOPS_WITHIN, took
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "PARTIAL" in stdout
    stored = [n for n in os.listdir(chunks) if n.endswith(".npz")]
    assert 0 < len(stored) < 4 and not (out / "table.csv").exists()


@pytest.mark.slow
def test_reached_target_within_rounding_is_the_same_decision_in_a_sweep():
    """A run that ends at t1 within rounding above its target has reached it (and its message
    says so); one that ends further above has not. A sweep row decides the same."""
    from wnjax._dynamics.flow import target_tolerance

    kw = dict(t1=20.0, n_save=4, solver="tsit5", diagnostics=False, save_states=False, throw=False)

    def model():
        return wnjax.swn(wnjax.MLP(2, 4, 2, activation="relu2", key=jax.random.key(0)))

    end = float(wnjax.gradient_flow(model(), X, Y, **kw).final_log_loss)
    tol = target_tolerance(X.dtype) * (1 + abs(end))
    near, far = end - 0.5 * tol, end - 2 * tol
    for target, reached in ((near, True), (far, False)):
        r = wnjax.gradient_flow(model(), X, Y, target_log_loss=target, **kw)
        assert abs(float(r.final_log_loss) - end) < 0.1 * tol  # it ran to t1, above the target
        assert bool(r.ok) and bool(r.reached_target) is reached
        assert ("reached the target log loss" in r.message) is reached, r.message

    def run(key, cfg):
        r = wnjax.gradient_flow(model(), X, Y, target_log_loss=cfg["target"], **kw)
        return {"reached_target": r.reached_target, "ok": r.ok}

    rows = wnjax.sweep(run, 1, {"target": [near, far]}, batch_size=2, devices=1, progress=False)
    assert rows.table["ok"].all()
    assert rows.table["reached_target"].tolist() == [True, False]


@pytest.mark.slow
def test_example_sweep_in_float32_reaches_the_target_on_ewn_seeds_that_blow_up(tmp_path):
    """``wnjax sweep examples/sweep.toml --float32`` on the EWN rows (init scale 0.5, seeds 11,
    24, 28) whose normalized flow runs out of steps in float32 near its blow-up: on the
    example's clock (``time = "loss"``) every row reaches log L = -300, at float64's log t to
    1e-3."""
    import csv

    logt = {}
    for arithmetic in ("--float32", None):
        out = tmp_path / (arithmetic or "float64")
        args = [sys.executable, "-m", "wnjax", "sweep", EXAMPLE, "--out", str(out)]
        args += [arithmetic] if arithmetic else []
        args += ["--batch-size", "3", "--no-progress", "--set", "sweep.seeds=[11, 24, 28]"]
        args += ["--set", 'grid.parameterization=["ewn"]', "--set", "grid.init_scale=[0.5]"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(out / "table.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 3
        assert all(float(r["ok"]) == 1 and float(r["reached_target"]) == 1 for r in rows)
        logt[arithmetic] = np.array([float(r["final_log_t"]) for r in rows])
    np.testing.assert_allclose(logt["--float32"], logt[None], rtol=1e-3)
