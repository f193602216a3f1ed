"""The guard against the kernel's limit on memory maps (``wnjax._runtime.maps``).

References: ``/proc/self/maps`` read here, a limit file written here, and the cache size of a
``jax.jit`` function (``_cache_size``)."""

import sys

import jax
import jax.numpy as jnp
import pytest

import wnjax
from wnjax._runtime import maps

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _limit_file(tmp_path, value):
    path = tmp_path / "max_map_count"
    path.write_text(f"{value}\n")
    return str(path)


def test_the_maps_are_counted_and_a_compilation_adds_some():
    with open("/proc/self/maps") as f:
        lines = sum(1 for _ in f)
    assert abs(maps.count() - lines) < 50  # the process may map or unmap in between
    before = maps.count()
    keep = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cumsum(x)).lower(jnp.ones(7)).compile()
    assert maps.count() > before  # a compiled kernel is mapped
    del keep


def test_programs_are_dropped_past_the_limit_and_only_after_a_compilation(tmp_path):
    f = jax.jit(lambda x: x * 2.0 + 1.0)
    maps.relieve()  # counts anything compiled so far
    f(jnp.ones(3))  # a compilation
    assert f._cache_size() == 1
    high = _limit_file(tmp_path, 10**9)
    assert not maps.relieve(limit_path=high)  # far below the limit: kept
    assert f._cache_size() == 1
    f(jnp.ones(4))  # another compilation
    low = _limit_file(tmp_path, maps.count() // 2)
    with pytest.warns(RuntimeWarning, match="vm.max_map_count"):
        assert maps.relieve(limit_path=low)
    assert f._cache_size() == 0
    assert not maps.relieve(limit_path=low)  # no compilation since: not even counted
    f(jnp.ones(3))  # still computes, compiled again
    assert f._cache_size() == 1


@pytest.mark.slow
def test_gradient_flow_relieves_before_it_compiles(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(maps, "relieve", lambda **kw: calls.append(kw) or False)
    X = jnp.array([[1.0, 0.5], [-1.0, 0.2], [0.3, -1.0]])
    y = jnp.array([1.0, -1.0, -1.0])
    model = wnjax.MLP(2, 3, 2, activation="relu2", key=jax.random.key(0))
    wnjax.gradient_flow(model, X, y, t1=1.0)
    assert calls
    n = len(calls)
    wnjax.gradient_descent(model, X, y, learning_rate=0.01, num_steps=10)
    assert len(calls) > n


@pytest.mark.slow
def test_flows_go_on_after_their_programs_are_dropped(monkeypatch):
    """With the limit set just above this process's maps, the second of three flows of other
    shapes drops the programs: every flow still runs, and the first, run again (recompiled),
    gives the same bits."""
    start = maps.count()
    monkeypatch.setattr(
        maps, "limit", lambda path=maps.LIMIT_FILE: int((start + 200) / maps.FRACTION)
    )
    X = jnp.array([[1.0, 0.5], [-1.0, 0.2], [0.3, -1.0], [0.7, 0.9]])
    y = jnp.array([1.0, -1.0, -1.0, 1.0])

    def flow(width):
        model = wnjax.MLP(2, width, 2, activation="relu2", key=jax.random.key(width))
        return wnjax.gradient_flow(model, X, y, t1=2.0, n_save=4, diagnostics=False)

    with pytest.warns(RuntimeWarning, match="dropped JAX's compiled programs"):
        finals = [flow(width).final_log_loss for width in (3, 4, 5)]
    assert maps.count() < start + 1500  # three such flows hold ~1,700 maps together
    again = flow(3).final_log_loss
    assert float(again) == float(finals[0])
