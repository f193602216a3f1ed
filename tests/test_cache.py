"""The persistent compilation cache: its directory from ``WNJAX_COMPILATION_CACHE``, and gradient
flows (programs with a host callback) written by one process and loaded by another, with the
same numbers as a compile from scratch."""

import json
import os
import subprocess
import sys

import pytest

from wnjax._runtime import cache
from wnjax._runtime.callback_cache import KEY_SUFFIX


def test_cache_dir_from_the_environment(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert cache.cache_dir(env) == os.path.join(str(tmp_path), "wnjax", "jax")
    for off in ("0", "off", "False"):
        assert cache.cache_dir({**env, cache.ENV: off}) is None
    assert cache.cache_dir({**env, cache.ENV: "1"}) == cache.default_dir(env)
    assert cache.cache_dir({**env, cache.ENV: str(tmp_path / "c")}) == str(tmp_path / "c")


_FLOW = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import wnjax
X, y = wnjax.data.lin_sep(jax.random.key(0))
model = wnjax.ewn(wnjax.MLP(2, 4, 2, activation="relu2", key=jax.random.key(1)))
r = wnjax.gradient_flow(model, X, y, t1=20.0, n_save=4, solver="tsit5", diagnostics=False)
print(json.dumps([float(v) for v in r.log_loss]))
"""


def _flow(cache_dir):
    env = {**os.environ, cache.ENV: str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-c", _FLOW], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _callback_entries(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if KEY_SUFFIX in f)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="subprocess environment")
def test_flow_with_callbacks_is_cached_and_loaded(tmp_path):
    """The first process writes the flow's program (it polls for SIGINT through a host
    callback); the second loads it (no new entry) and runs it to the same numbers; a process
    with the cache off, compiling from scratch, agrees too."""
    first = _flow(tmp_path / "c")
    entries = _callback_entries(tmp_path / "c")
    assert entries, "no program with host callbacks was written"
    second = _flow(tmp_path / "c")
    assert _callback_entries(tmp_path / "c") == entries
    assert second == first
    assert _flow("0") == first
