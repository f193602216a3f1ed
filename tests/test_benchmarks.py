"""Smoke runs of the benchmark scripts: each ``--quick`` run exits cleanly and writes valid JSON.

Nothing about speed is asserted. Every script runs in CI; where the ``bench`` extra (torch,
torchdiffeq) is not installed, the script must mark its baseline "not measured", and only the
wnjax side is checked.
"""

import json
import math
import os
import subprocess
import sys
import tarfile

import pytest
from helpers import needs_default_codegen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TORCH = _has_torch()


def _script(name: str, *args, timeout=600) -> subprocess.CompletedProcess:
    """``benchmarks/NAME.py ARGS`` in a child process on the CPU, its output captured."""
    env = dict(os.environ, MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, os.path.join(BENCH, f"{name}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def _run(name: str, out) -> dict:
    proc = _script(name, "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = out / f"{name}.json"
    assert path.exists(), proc.stdout[-2000:]
    with open(path) as f:
        doc = json.load(f)
    assert doc["benchmark"] == name and doc["quick"] is True
    assert doc["dtype"] == "float64"
    assert doc["machine"]["versions"]["jax"]
    assert "not measured" in doc["gpu"]
    return doc


def test_results_are_named_by_backend_and_dtype():
    """CPU float64 figures keep NAME.json; float32 and GPU runs go beside them, never over them."""
    sys.path.insert(0, BENCH)
    try:
        import _common as C
    finally:
        sys.path.remove(BENCH)
    import jax

    backend = jax.default_backend()
    if backend == "cpu":
        assert C.result_name("roofline", float32=False) == "roofline"
        assert "not measured" in C.gpu_status()
    else:
        assert C.result_name("roofline", float32=False) == f"roofline.{backend}-float64"
        assert C.gpu_status()["measured"] is True
    assert C.result_name("roofline", float32=True) == f"roofline.{backend}-float32"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _baseline(doc: dict, key: str):
    """The torch side of ``doc``, or ``None`` where torch is not installed (CI), in which case
    the script must say so instead of failing."""
    if HAS_TORCH:
        return doc[key]
    assert isinstance(doc[key], str) and "not measured" in doc[key], doc[key]
    return None


@pytest.mark.slow
@needs_default_codegen
def test_gf_vs_torchdiffeq(tmp_path):
    doc = _run("gf_vs_torchdiffeq", tmp_path)
    assert _positive(doc["wnjax"]["solve_s"]) and doc["wnjax"]["steps"] > 0
    # The tight reference solve is the same flow: the default solve is close to it.
    assert doc["wnjax"]["rel_err_vs_tight_reference"] < 1e-3
    if (torch_run := _baseline(doc, "torchdiffeq")) is not None:
        assert _positive(torch_run["solve_s"]) and torch_run["steps"] > 0
        # Both solve the same flow at rtol 1e-8: the final weights agree far below O(1).
        assert doc["final_relative_difference"] < 1e-3


@pytest.mark.slow
def test_compile_codegen(tmp_path):
    doc = _run("compile_codegen", tmp_path)
    from wnjax._runtime.cache import quick_codegen_flags

    assert doc["flags"] == {"default": "", "quick": quick_codegen_flags()}
    for mode in ("default", "quick"):
        seconds = doc["seconds"][mode]
        assert _positive(seconds["first"]["median"]) and _positive(seconds["step"]["median"])
    assert doc["steps"]["step"] > 0
    assert all(_positive(v) for v in doc["quick_over_default"].values())


@pytest.mark.slow
def test_gd_vs_torch(tmp_path):
    doc = _run("gd_vs_torch", tmp_path)
    for form in ("wnjax 1", "wnjax vmap", "wnjax sharded", "wnjax jit+sharding"):
        assert _positive(doc["per_seed_step_us"][form]["median"]), form
    # vmapped, sharded (shard_map and GSPMD) and wnjax.sweep runs of the same seeds agree.
    assert all(v < 1e-10 for v in doc["max_abs_diff_final_log_loss_vs_vmap"].values())
    if _baseline(doc, "torch") is not None:
        for form in ("torch eager 1", "torch eager loop", "torch func.vmap"):
            assert _positive(doc["per_seed_step_us"][form]["median"]), form
        # The same GD from the same start: the weights agree to rounding.
        assert doc["final_relative_difference"] < 1e-8
        assert set(doc["goal_20x_vs_eager_loop"]) == {"1", str(doc["problem"]["seeds"])}


@pytest.mark.slow
def test_linsep_pipeline(tmp_path):
    doc = _run("linsep_pipeline", tmp_path)
    target = doc["problem"]["target_log_loss"]
    ours = (doc["wnjax"]["1"], doc["wnjax"]["1_paper_length"])
    for run in ours:
        assert _positive(run["per_epoch_us"]) and run["final_log_loss"] <= target
    # No growth from a 10x smaller eta0: a longer run, as the paper's.
    assert ours[1]["epochs"] > ours[0]["epochs"]
    if _baseline(doc, "torch") is None:
        return
    for run, torch_run in zip(ours, (doc["torch"], doc["torch_paper_length"])):
        assert _positive(torch_run["per_epoch_us"]) and torch_run["final_log_loss"] <= target
        # The same schedule from the same start in both: the same run, to rounding. torch counts
        # the final loss evaluation as an epoch, and an undone step as two (the step, the undo):
        # wnjax's calls.
        assert torch_run["epochs"] - run["calls"] in (0, 1)
        assert math.isclose(run["final_log_loss"], torch_run["final_log_loss"], rel_tol=1e-9)


@pytest.mark.slow
def test_scaling(tmp_path):
    doc = _run("scaling", tmp_path)
    for sweep in ("width", "points", "seeds", "steps"):
        assert doc[sweep], sweep
    assert all(_positive(r["step_s"]) for r in doc["width"] + doc["points"])
    for r in doc["width"] + doc["points"]:  # the cost model splits the whole step
        assert all(v >= 0 for v in r["shares"].values())
        assert sum(r["shares"].values()) >= 1 - 1e-9 and r["cost"] in r["shares"]
    assert all(math.isfinite(v) for v in doc["exponents"].values())
    assert (tmp_path / doc["plot"]).exists()
    # --plot-only redraws the figure from the results file alone
    (tmp_path / doc["plot"]).unlink()
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "scaling.py"), "--plot-only", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, MPLBACKEND="Agg", JAX_PLATFORMS="cpu"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / doc["plot"]).exists()


@pytest.mark.slow
def test_roofline(tmp_path):
    doc = _run("roofline", tmp_path)
    assert _positive(doc["peak_matmul"]["flops_per_s"])
    for r in doc["widths"]:
        assert _positive(r["flops"]) and _positive(r["fraction_of_peak"])
        assert _positive(r["peak_flops_per_s_here"]) and r["steps"] >= 1
        lo, hi = r["fraction_range"]
        assert lo <= r["fraction_of_peak"] <= hi
        assert all(_positive(v) for v in r["gemm_fraction_of_peak"].values())
        # The step's matmuls re-costed at their kinds' speeds: the same FLOPs, so a positive time.
        assert _positive(r["gemm_model_step_s"])
        if r["xla_flops"] is not None:
            # The shape count covers the matmuls; XLA also counts elementwise work.
            assert 0.8 < r["xla_flops"] / r["flops"] < 1.5


@pytest.mark.slow
def test_gd_block_step(tmp_path):
    doc = _run("gd_block_step", tmp_path)
    med = doc["median_us_per_block_step"]
    assert set(med) == {
        f"{s}/{lp}" for s in ("sgd", "paper-text", "paper-code") for lp in ("packed", "plain")
    }
    assert all(_positive(v) for v in med.values())
    assert all(_positive(v) for v in doc["packed_over_plain"].values())


@pytest.mark.slow
def test_seeds_one_program(tmp_path):
    """Through ``run_all.py --archive``: the archive holds the finished script's results."""
    out, tgz = tmp_path / "r", tmp_path / "r.tgz"
    proc = _script(
        "run_all",
        "--only",
        "seeds_one_program",
        "--quick",
        "--out",
        str(out),
        "--archive",
        str(tgz),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(tgz) as tar:
        doc = json.load(tar.extractfile("r/seeds_one_program.json"))
    assert doc["quick"] is True and "not measured" in doc["gpu"]
    for name in ("gf", "gd"):
        run = doc["runs"][name]
        assert _positive(run["sweep"]["seconds"])
        for way in ("jit", "call"):
            assert run[way]["seeds_run"] >= 8 and _positive(run[way]["per_seed_ms_median"])
        # The same per-seed program, batched or not, gives the same numbers; the untraced
        # call runs the flow with another solver at the same tolerance.
        assert run["jit"]["max_abs_diff_final_log_loss_vs_sweep"] < 1e-10
        assert run["call"]["max_abs_diff_final_log_loss_vs_sweep"] < 1e-4


@pytest.mark.slow
def test_sweep_scaling(tmp_path):
    doc = _run("sweep_scaling", tmp_path)
    for key, setting in doc["settings"]["configurations"].items():
        assert doc[key]["devices"] == setting["devices"]
        assert doc[key]["workers_per_device"] >= 1
        for name in ("gf", "gd"):
            rows = doc[key]["runs"][name]
            assert [r["seeds"] for r in rows] == [1, 4]
            assert all(_positive(r["seconds"]["median"]) for r in rows)
            assert all(_positive(r["per_seed_step_us"]) for r in rows)
    assert doc["one_device_one_worker"]["workers_per_device"] == 1
    # The same seeds give the same numbers on any number of devices or workers, bit for bit.
    assert doc["max_abs_diff_final_log_loss"] == 0.0


@pytest.mark.slow
@needs_default_codegen
def test_time_to_result(tmp_path):
    doc = _run("time_to_result", tmp_path)
    assert _positive(doc["import"]["jax"]["median"]) and _positive(doc["import"]["wnjax"]["median"])
    # import wnjax loads none of the heavy optional modules (they load on first use)
    assert doc["import"]["heavy_modules_loaded"] == []
    assert all(_positive(doc["lin_sep"][mode]["median"]) for mode in ("off", "cold", "warm"))
    assert "not measured" in doc["demo"]  # --quick leaves the demo out


@pytest.mark.slow
def test_stiff_crossover(tmp_path):
    doc = _run("stiff_crossover", tmp_path)
    for row in doc["rows"]:
        assert _positive(row["dense"]["step_s"]) and _positive(row["krylov"]["step_s"])
        # the dense and Krylov linear solves take the same steps to nearly the same state
        assert row["dense"]["steps"] == row["krylov"]["steps"]
        assert row["final_log_loss_gap"] < 1e-6


@pytest.mark.slow
def test_implicit_cost(tmp_path):
    doc = _run("implicit_cost", tmp_path)
    for row in doc["rows"]:
        assert row["n_params"] > 0 and _positive(row["implicit_step_cost"])
        assert all(v > 0 for v in row["steps"].values())
        assert math.isfinite(row["ratio"])


@pytest.mark.slow
def test_pruning_full(tmp_path):
    doc = _run("pruning_full", tmp_path)
    assert [r["run"] for r in doc["rows"]] == ["ewn", "swn", "standard"]
    assert all(_positive(v) for v in doc["seconds_per_attempted_epoch"].values())
    assert all(math.isfinite(r["log L"]) for r in doc["rows"])


@pytest.mark.slow
def test_problems(tmp_path):
    doc = _run("problems", tmp_path)
    assert doc["rows"] and all(_positive(r["explicit_s"]) for r in doc["rows"] if r["explicit_ok"])
    # the default solver solves every problem that one of the single methods solves
    assert doc["default_never_fails_where_one_succeeds"] is True


@pytest.mark.slow
def test_ready_queue():
    """Prints only: the replayed executors' table and the default solve's summary line."""
    proc = _script("ready_queue", "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "voluntary context switches a run" in proc.stdout


def test_run_all_deadline(tmp_path):
    """A script that would start with under 20 s of the deadline left is not started and counts
    as failed; nothing finished, so no archive is written."""
    out, tgz = tmp_path / "r", tmp_path / "r.tgz"
    proc = _script(
        "run_all",
        "--only",
        "roofline",
        "--quick",
        "--out",
        str(out),
        "--archive",
        str(tgz),
        "--deadline",
        "5",
        timeout=60,
    )
    assert proc.returncode == 1
    assert "roofline: not started" in proc.stdout and "failed: roofline" in proc.stdout
    assert not tgz.exists()


@pytest.mark.slow
@needs_default_codegen
def test_gpu_smoke_agrees_with_itself_on_a_cpu(tmp_path):
    """On a CPU both sides of ``gpu_smoke.py`` are the CPU: every check agrees exactly, and the
    EWN equivalence error is small."""
    proc = _script("gpu_smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "gpu_smoke.json") as f:
        doc = json.load(f)
    assert doc["ok"] is True and doc["backend"] == "cpu"
    assert all(v == 0.0 for v in doc["agreement"].values()), doc["agreement"]
    assert doc["default"]["ewn_max_rel_err"] < 1e-6


@pytest.mark.slow
def test_reproduce_workers(tmp_path):
    doc = _run("reproduce_workers", tmp_path)
    assert doc["rounds"] == 1 and doc["cores"] >= 1
    for name, row in doc["experiments"].items():
        assert _positive(row["default_workers_s"]["median"]), name
        assert _positive(row["one_worker_s"]["median"]), name
        # the numbers do not depend on how many runs go side by side
        assert row["same_metrics"] is True, name


@pytest.mark.slow
def test_vmapped_relu(tmp_path):
    doc = _run("vmapped_relu", tmp_path)
    for row in doc["rows"]:
        assert _positive(row["default_s"]["median"]) and _positive(row["autoswitch_s"]["median"])
        # both solvers take every run of the batch to its target
        assert all(all(v) for v in row["reached"].values())
