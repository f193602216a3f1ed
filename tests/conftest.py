"""Test configuration: float64, several forced CPU devices, rank promotion as an error, one
persistent compilation cache for the whole run, a choice of XLA:CPU code generation, and a
fresh-key fixture.

The compilation cache is ``.pytest_cache/jax-cache`` under the repository (or wherever
``WNJAX_COMPILATION_CACHE`` points; ``0`` turns it off). It is set through that environment
variable, so the xdist workers and every ``wnjax`` subprocess a test starts (the CLI, the
notebooks) read and write the same entries: a program compiled once in a run, in any process,
is loaded by the others, and a later run starts warm. Every program is cached, however fast it
compiles (``wnjax._runtime.cache``); an entry's key covers the program, the JAX version and
the flags.
"""

import gc
import os
import statistics

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault(
    "WNJAX_COMPILATION_CACHE",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-cache"
    ),
)

# Implicit rank promotion (adding a (n,) to a (n, 1)) is an error, as in equinox's own tests; in
# the subprocesses too.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

# XLA:CPU code generation: ``WNJAX_TEST_CODEGEN=quick`` (what ``make test`` sets) compiles with
# ``wnjax._runtime.cache.QUICK_CPU_CODEGEN``, in ~0.5x the time: most of the fast set's time is
# compiling programs that then run for milliseconds (on a 2-core CPU, a clean clone: 590 short
# tests in ~10 min of pytest instead of ~23, the 149 slow ones in 52 min instead of 69).
# Unset or ``default``: XLA's defaults, what users run. ``make test-all`` (CI) runs every test
# under the quick code generation but those marked ``default_codegen``, which its second pass
# runs under XLA's defaults: long runs, where the quick code's slower steps cost more than its
# compilation saves, and comparisons that hold under XLA's defaults only. Values agree up to
# rounding; the tests that compare two programs bit for bit, or to 1e-10 after a saddle escape
# amplifies rounding a million-fold, or whose tolerance is within a factor of two of the
# rounding, hold under XLA's defaults (``helpers.DEFAULT_CODEGEN`` pins them for one program; the
# marker ``default_codegen`` skips the others under the quick code generation). Every wnjax
# subprocess a test starts inherits the flags; a flag already in ``XLA_FLAGS`` is kept.
CODEGEN = os.environ.get("WNJAX_TEST_CODEGEN", "default")
if CODEGEN not in ("default", "quick"):
    raise ValueError(f"WNJAX_TEST_CODEGEN must be 'default' or 'quick', got {CODEGEN!r}")
if CODEGEN == "quick":
    from wnjax._runtime.cache import quick_codegen_flags

    os.environ["XLA_FLAGS"] = quick_codegen_flags(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
try:
    jax.config.update("jax_num_cpu_devices", 8)
except Exception:  # backend already initialised
    pass

import pytest  # noqa: E402

import wnjax  # noqa: E402,F401  (turns on the compilation cache before any test compiles)

# --- Slowest files first. With ``--dist loadfile`` a file runs whole on one worker, and xdist
# hands files out in its queue's order (by default: most tests first), so a slow file with few
# tests (the demo, the benchmarks) would start last and keep one worker busy after the other
# has finished. Each run records its tests' seconds (setup + call + teardown) in the pytest
# cache; the next run orders the files by those, slowest first (a test not yet timed counts as
# the median), and tells xdist to keep that order. The controller reads the record once and
# hands it to the workers, so they all collect in the same order.

SECONDS_KEY = "wnjax/test-seconds"
_RUN_SECONDS: dict = {}


def _recorded_seconds(config) -> dict:
    if hasattr(config, "workerinput"):
        return config.workerinput.get(SECONDS_KEY, {})
    cache = getattr(config, "cache", None)
    return cache.get(SECONDS_KEY, {}) if cache is not None else {}


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    if not hasattr(config, "workerinput") and _recorded_seconds(config):
        if hasattr(config.option, "loadscopereorder"):
            config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput[SECONDS_KEY] = _recorded_seconds(node.config)


def pytest_collection_modifyitems(config, items):
    if CODEGEN == "quick":
        skip = pytest.mark.skip(reason="agrees under XLA's default code generation only")
        for item in items:
            if item.get_closest_marker("default_codegen"):
                item.add_marker(skip)
    seconds = _recorded_seconds(config)
    if not seconds:
        return
    typical = statistics.median(seconds.values())
    per_file: dict = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        per_file[path] = per_file.get(path, 0.0) + seconds.get(item.nodeid, typical)
    items.sort(key=lambda item: -per_file[item.nodeid.split("::")[0]])  # stable within a file


def pytest_runtest_logreport(report):
    _RUN_SECONDS[report.nodeid] = _RUN_SECONDS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    config = session.config
    cache = getattr(config, "cache", None)
    if hasattr(config, "workerinput") or cache is None or not _RUN_SECONDS:
        return
    root = str(config.rootpath)
    seconds = {
        k: v
        for k, v in cache.get(SECONDS_KEY, {}).items()
        if os.path.exists(os.path.join(root, k.split("::")[0]))
    }
    seconds.update(_RUN_SECONDS)
    cache.set(SECONDS_KEY, seconds)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's in-memory caches after each test module. Each compiled XLA:CPU program keeps
    a few memory mappings alive for as long as a jit cache holds it: two modules of flow tests
    leave ~22,000, and a worker that kept every program of the suite would pass the kernel's
    ``vm.max_map_count`` (65,530) and crash in an mmap (seen as a segfault or abort while
    serializing an executable for the persistent cache). Later modules load what they need
    from the persistent cache."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True)
def _no_standing_stop_request():
    """Forget a signal a test sent: in a script (as pytest is) a signal stops every later call."""
    yield
    import wnjax._runtime.interrupt as _interrupt

    _interrupt.clear()


@pytest.fixture
def getkey():
    """Return a function that hands out fresh PRNG keys."""
    counter = iter(range(10**9))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey
