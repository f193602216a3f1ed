"""Compiled programs kept on disk under a named key (``wnjax._runtime.programs``): a kept
program is loaded without tracing and computes what the traced one does; its key changes with
everything the program depends on; a damaged entry is compiled again."""

import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax._runtime.programs as programs
from wnjax._nets.models import MLP
from wnjax._nets.parameterize import ewn, swn


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "directory", lambda: str(tmp_path))
    return tmp_path


def _args(width=8, power=2, n=5, dtype=np.float64, scale=3):
    model = ewn(
        MLP(3, width, 2, activation=f"relu{power}" if power > 1 else "relu", key=jax.random.key(1))
    )
    X = np.asarray(np.random.default_rng(0).normal(size=(n, 3)), dtype)
    keys = jax.random.split(jax.random.key(2), 4)
    return (model, X, {"scale": scale, "count": np.asarray(7, np.int32)}, keys)


def _make_fn(traces):
    def fn(model, X, extra, keys):
        traces.append(1)
        noise = jax.vmap(lambda k: jax.random.normal(k, (X.shape[0],)))(keys)
        out = jax.vmap(model)(X)[:, 0] * extra["scale"] + extra["count"]
        g = jax.grad(lambda m: jnp.sum(jax.vmap(m)(X) ** 2))(model)
        return {"out": out + noise.sum(0), "grad": g, "n": extra["count"] + 1}

    return fn


def _same(a, b):
    la, ta = jax.tree_util.tree_flatten(eqx.filter(a, eqx.is_array))
    lb, tb = jax.tree_util.tree_flatten(eqx.filter(b, eqx.is_array))
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_kept_program_is_loaded_without_tracing_and_computes_the_same(store):
    traces = []
    fn = _make_fn(traces)
    args = _args()
    reference = eqx.filter_jit(fn)(*args)
    traced = programs.compiled(fn, args, key=("test", 1))
    assert not traced.loaded and len(list(store.iterdir())) == 1
    n = len(traces)
    loaded = programs.compiled(fn, args, key=("test", 1))
    assert loaded.loaded and len(traces) == n  # fn was not traced again
    # other numbers of the same shapes: the program, not a result, was kept
    other = (args[0], args[1] + 1.0, {"scale": 3, "count": np.asarray(-2, np.int32)}, args[3])
    for a in (args, other):
        expected = eqx.filter_jit(fn)(*a)
        _same(traced(*a), expected)
        _same(loaded(*a), expected)
    _same(loaded(*args), reference)
    # the output keeps its structure: an equinox module (with its static fields) comes back
    g = loaded(*args)["grad"]
    assert type(g) is type(args[0]) and g.layers[0].v.shape == (8, 3)


@pytest.mark.parametrize(
    "change",
    ["width", "power", "n", "dtype", "scale", "key", "parameterization", "source", "config"],
)
def test_the_key_changes_with_what_the_program_depends_on(store, monkeypatch, change):
    args, key = _args(), ("test", 1)
    base = programs.digest(key, args)
    assert programs.digest(key, _args()) == base  # built again the same: the same key
    if change == "width":
        args = _args(width=9)
    elif change == "power":  # a static field of a module inside the model
        args = _args(power=3)
    elif change == "n":
        args = _args(n=6)
    elif change == "dtype":
        args = _args(dtype=np.float32)
    elif change == "scale":  # a static Python number among the arguments
        args = _args(scale=4)
    elif change == "key":
        key = ("test", 2)
    elif change == "parameterization":
        args = (swn(args[0].standard()),) + args[1:]
    elif change == "source":
        monkeypatch.setattr(programs, "source_digest", lambda: "another wnjax")
    elif change == "config":
        before = jax.config.jax_default_matmul_precision
        jax.config.update("jax_default_matmul_precision", "highest")
        try:
            assert programs.digest(key, args) != base
        finally:
            jax.config.update("jax_default_matmul_precision", before)
        return
    assert programs.digest(key, args) != base


def test_the_source_digest_covers_every_module_of_the_package():
    import os

    import wnjax

    root = os.path.dirname(wnjax.__file__)
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py")]
    assert len(files) > 20 and os.path.join(root, "_runtime", "programs.py") in files
    assert programs.source_digest() == programs.source_digest.__wrapped__()


def test_a_key_names_settings_not_objects():
    with pytest.raises(TypeError, match="str, int, float, bool, None and tuples"):
        programs.digest(("test", print), _args())


def test_a_damaged_entry_is_compiled_again_and_replaced(store):
    traces = []
    fn = _make_fn(traces)
    args = _args()
    programs.compiled(fn, args, key=("test",))
    (entry,) = store.iterdir()
    entry.write_bytes(b"not a program")
    again = programs.compiled(fn, args, key=("test",))
    assert not again.loaded
    _same(again(*args), eqx.filter_jit(fn)(*args))
    assert programs.compiled(fn, args, key=("test",)).loaded


def test_programs_are_kept_exactly_when_the_compilation_cache_is_on(tmp_path):
    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path))
        assert programs.directory() == str(tmp_path / "programs")
        jax.config.update("jax_enable_compilation_cache", False)
        assert programs.directory() is None
    finally:
        jax.config.update("jax_enable_compilation_cache", before[0])
        jax.config.update("jax_compilation_cache_dir", before[1])


def test_without_a_store_nothing_is_kept(monkeypatch):
    monkeypatch.setattr(programs, "directory", lambda: None)
    traces = []
    fn = _make_fn(traces)
    args = _args()
    p = programs.compiled(fn, args, key=("test",))
    assert not p.loaded
    _same(p(*args), eqx.filter_jit(fn)(*args))


def test_tree_structures_with_equinox_modules_survive_the_round_trip():
    model = swn(MLP(2, 4, 2, activation="relu2", key=jax.random.key(0)))
    params, _ = eqx.partition(model, eqx.is_inexact_array)
    tree = jax.tree_util.tree_structure({"params": params, "x": (1.0, None)})
    back = programs._loads(programs._dumps(tree))
    assert back == tree
    # without the sentinel kept by identity, the structure does not come back equal
    assert pickle.loads(pickle.dumps(tree)) != tree


@pytest.mark.slow
def test_run_gd_with_a_program_key_matches_the_traced_run(store):
    from wnjax.data._sets import lin_sep
    from wnjax.experiments._lin_sep import gd_options, neuron_diagnostics
    from wnjax.experiments._runner import run_gd, stacked

    X, y = jax.jit(jax.vmap(lin_sep))(jax.random.split(jax.random.key(3), 3))
    models = stacked(
        lambda k: swn(MLP(2, 8, 2, activation="relu2", key=k)),
        jax.random.split(jax.random.key(4), 3),
    )
    options = dict(
        per_seed_data=True,
        num_steps=400,
        learning_rate=0.01,
        chunk_size=25,
        summarize=neuron_diagnostics,
        diverge_above=jnp.inf,
        target_log_loss=-20.0,
        **gd_options("paper-code"),
    )
    plain = run_gd(models, X, y, **options)
    kept = run_gd(models, X, y, program_key=("test-lin-sep",), **options)
    assert len(list(store.iterdir())) == 2  # the start state and the chunk
    loaded = run_gd(models, X, y, program_key=("test-lin-sep",), **options)
    for r in (kept, loaded):
        np.testing.assert_array_equal(r.num_steps, plain.num_steps)
        _same(r.final, plain.final)
        for k in plain.history:
            np.testing.assert_array_equal(r.history[k], plain.history[k])


def test_an_entry_for_other_shapes_is_never_used(store):
    fn = _make_fn([])
    small, large = _args(n=5), _args(n=6)
    programs.compiled(fn, small, key=("test",))
    (entry,) = store.iterdir()
    # put the 5-point program where the 6-point one's entry belongs
    entry.rename(store / (programs.digest(("test",), large) + ".program"))
    p = programs.compiled(fn, large, key=("test",))
    assert not p.loaded
    _same(p(*large), eqx.filter_jit(fn)(*large))
    assert programs.compiled(fn, large, key=("test",)).loaded


def test_a_program_with_a_host_callback_runs_but_is_not_kept(store):
    def fn(x):
        return jax.pure_callback(
            lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x
        )

    x = np.arange(3.0)
    p = programs.compiled(fn, (x,), key=("callback",))
    np.testing.assert_array_equal(p(x), 2 * x)
    assert list(store.iterdir()) == []
