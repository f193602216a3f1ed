"""The experiments' vmapped GD runner: stalled seeds stop early, overflowed steps are undone."""

import functools
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax
from wnjax.experiments._runner import run_gd


def _dead_point_model(key):
    """A bias-free ReLU^2 net on which the lin-sep point (-1, 1) is dead: every first-layer row
    ``w`` has ``w . (-1, 1) < 0``, and the rows only move along ``(1, 1)``-type directions under
    the other points' gradients (see ``test_dead_point_seed_stalls``)."""
    model = wnjax.MLP(2, 8, 2, activation="relu2", key=key)
    rows = jnp.array([[1.0, 0.2], [-1.0, -3.0]] * 4)
    rows = rows * (1.0 + 0.1 * jax.random.uniform(key, (8, 1)))
    return eqx.tree_at(lambda m: m.layers[0].weight, model, rows)


def test_dead_point_seed_stalls_and_live_seed_reaches():
    """Seed 1 has a dead point (margin 0, zero gradient: ``L >= l(0) = 1`` for good), seed 0 not.
    The runner stops seed 1 early as stalled, with ``log L >= 0``, and seed 0 reaches the
    target; without the stall rule seed 1 would spend the whole budget."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    live = wnjax.MLP(2, 8, 2, activation="relu2", key=jax.random.key(3))
    dead = _dead_point_model(jax.random.key(4))
    out = jax.vmap(dead)(X).reshape(-1)
    assert float(out[1]) == 0.0  # the point (-1, 1) really is dead at the start
    models = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), live, dead)
    budget = 5000
    r = run_gd(
        models,
        X,
        y,
        num_steps=budget,
        learning_rate=0.1,
        optimizer=wnjax.loss_normalized_sgd,
        hyperparams=dict(power=1.0 - 1.0 / 30, backtracking=True, max_learning_rate=1.0),
        target_log_loss=-50.0,
        chunk_size=25,
        diverge_above=jnp.inf,
    )
    assert bool(r.reached[0]) and not bool(r.stalled[0])
    assert bool(r.stalled[1]) and not bool(r.reached[1])
    assert int(r.num_steps[1]) < budget // 10
    arrays, static = eqx.partition(r.final, eqx.is_inexact_array)
    last = eqx.combine(jax.tree_util.tree_map(lambda a: a[1], arrays), static)
    f = jax.vmap(last)(X).reshape(-1)
    assert float(jnp.log(jnp.sum(jnp.exp(-y * f)))) >= 0.0  # the dead point alone: exp(0) = 1
    assert float(f[1]) == 0.0  # and it is still dead


def test_backtracking_undoes_a_non_finite_loss():
    """A step whose loss comes back NaN (overflowed margins) is undone like a rise: the update is
    minus the previous one, and ``eta0`` is divided by ``shrink``."""
    opt = wnjax.loss_normalized_sgd(0.5, power=1.0, backtracking=True)
    params = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.3, 0.4])}
    state = opt.init(params)
    u1, state = opt.update(g, state, params, log_value=jnp.asarray(0.0))
    eta_after_first = float(state.eta0)
    u2, state = opt.update(g, state, params, log_value=jnp.asarray(jnp.nan))
    np.testing.assert_array_equal(np.asarray(u2["w"]), -np.asarray(u1["w"]))
    np.testing.assert_allclose(float(state.eta0), eta_after_first / 1.1, rtol=1e-15)
    assert bool(state.just_undone)


def test_loss_normalized_state_is_strongly_typed():
    """No weak-typed leaves in the optimizer state: a weak ``int`` there made every compiled
    loop trace twice (the state coming back from a step is strongly typed)."""
    opt = wnjax.loss_normalized_sgd(0.1, power=0.9, backtracking=True)
    state = opt.init({"w": jnp.ones(3)})
    weak = [x for x in jax.tree_util.tree_leaves(state) if getattr(x, "weak_type", False)]
    assert not weak


def test_epochs_and_undone_counts_match_a_plain_backtracking_loop():
    """Plain GD with backtracking on ``L(w) = w^2/2`` from ``eta0 = 3`` (``w <- (1 - eta0) w``
    rises for ``eta0 > 2``): the runner reports the epochs (kept steps) and the undone steps of
    a plain Python loop, and its final ``w``; an undone step is not an epoch."""
    lr, target = 3.0, -20.0
    w, eta0, retry, epochs, undone = 1.0, lr, False, 0, 0
    while np.log(w * w / 2) > target:
        if not retry:
            eta0 = min(1.1 * eta0, lr)
        trial = w - eta0 * w
        if not trial * trial <= w * w:
            eta0, undone, retry = eta0 / 1.1, undone + 1, True
            continue
        w, epochs, retry = trial, epochs + 1, False
    assert undone > epochs // 2  # most kept steps are followed by an undone one
    model = wnjax.MLP(1, 1, 1, activation="linear", key=jax.random.key(0))
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, jnp.ones((1, 1)))
    models = jax.tree_util.tree_map(lambda a: a[None], model)
    r = run_gd(
        models,
        jnp.ones((1, 1)),
        jnp.zeros((1, 1)),
        num_steps=1000,
        learning_rate=lr,
        optimizer=wnjax.loss_normalized_sgd,
        loss="square",
        chunk_size=7,
        hyperparams=dict(power=0.0, backtracking=True, max_learning_rate=lr),
        target_log_loss=target,
    )
    assert bool(r.reached[0])
    assert int(r.num_steps[0]) == epochs and int(r.undone[0]) == undone
    assert r.steps[-1, 0] == epochs
    np.testing.assert_allclose(float(r.final.layers[0].weight[0, 0, 0]), w, rtol=1e-12)


def _five_seeds():
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 5)
    models = eqx.filter_vmap(lambda k: wnjax.ewn(wnjax.MLP(2, 4, 2, activation="relu2", key=k)))(
        keys
    )
    return models, X, y


@pytest.mark.slow
def test_seed_blocks_run_each_seed_as_alone(monkeypatch):
    """Five seeds in blocks of two (three blocks, the last filled up with a copy of the last
    seed): every seed's accepted steps and final weights are those of ``gradient_descent`` run
    on that seed alone, whatever block it fell in; the filler is dropped."""
    import wnjax._dynamics.seeds as seeds_module

    assert seeds_module.seed_blocks(5, 2) == (3, 2)
    assert seeds_module.seed_blocks(100, 32) == (4, 25)
    monkeypatch.setattr(seeds_module, "BLOCK_SEEDS", 2)
    models, X, y = _five_seeds()
    kw = dict(num_steps=400, learning_rate=0.05, target_log_loss=-3.0)
    r = run_gd(models, X, y, chunk_size=50, stop_stalled=False, **kw)
    assert np.asarray(r.num_steps).shape == (5,)
    arrays, static = eqx.partition(r.final, eqx.is_inexact_array)
    for i in range(5):
        alone = wnjax.gradient_descent(
            jax.tree_util.tree_map(lambda a: a[i], models), X, y, n_save=2, **kw
        )
        assert int(r.num_steps[i]) == int(alone.num_steps)
        mine = eqx.combine(jax.tree_util.tree_map(lambda a: a[i], arrays), static)
        for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(alone.final)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-13)
        # the records: log L at each saved step is that of a run of exactly that many steps
        saved = np.asarray(r.steps)[:, i]  # (n_records,): accepted steps at each record
        assert saved.size > 3
        for j in range(0, saved.size, 3):
            steps = int(saved[j])
            short = wnjax.gradient_descent(
                jax.tree_util.tree_map(lambda a: a[i], models),
                X,
                y,
                n_save=2,
                **{**kw, "num_steps": steps},
            )
            np.testing.assert_allclose(
                float(np.asarray(r.history["log_loss"])[j, i]),
                float(short.final_log_loss),
                rtol=1e-10,
            )


BLOCKS_ON_DEVICES = """
import sys, jax, numpy as np
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
import wnjax._dynamics.seeds as seeds_module
from test_runner import _five_seeds
from wnjax.experiments._runner import run_gd
seeds_module.BLOCK_SEEDS = 2
models, X, y = _five_seeds()
r = run_gd(models, X, y, chunk_size=50, num_steps=400, learning_rate=0.05, target_log_loss=-3.0)
print(len(jax.devices()))
np.save({out!r}, np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(r.final)]))
"""


@pytest.mark.slow
def test_seed_blocks_give_the_same_numbers_on_two_devices(tmp_path, monkeypatch):
    """With two devices visible the numbers are those of one device, bit for bit (every block
    is the same single-device program, whatever the device count)."""
    import os
    import subprocess
    import sys

    import wnjax._dynamics.seeds as seeds_module

    out = tmp_path / "two.npy"
    script = BLOCKS_ON_DEVICES.format(tests=os.path.dirname(__file__), out=str(out))
    # (this process's code generation flags, with two devices)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "2"
    monkeypatch.setattr(seeds_module, "BLOCK_SEEDS", 2)
    models, X, y = _five_seeds()
    r = run_gd(models, X, y, chunk_size=50, num_steps=400, learning_rate=0.05, target_log_loss=-3.0)
    one = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(r.final)])
    np.testing.assert_array_equal(np.load(out), one)


def test_concurrently_compiles_in_turn_and_overlaps_the_runs():
    """The compile phases (before ``turn()``) take place one at a time, in order; each run
    starts at its ``turn()`` without waiting for the runs before it, so all three are in
    progress at once; the result keeps the items' order, and ``on_done`` sees each call as it
    finishes."""
    import threading

    from wnjax.experiments._runner import concurrently

    lock, log = threading.Lock(), []
    running = {k: threading.Event() for k in range(3)}
    finish = {k: threading.Event() for k in range(3)}

    def fn(k, turn):
        with lock:
            log.append(("compile", k))
        assert turn()
        with lock:
            log.append(("run", k))
        running[k].set()
        # every run waits for the others to be running: serial runs would time out here
        assert all(running[j].wait(10) for j in range(3))
        assert finish[k].wait(10)
        return 10 * k

    seen = []

    def on_done(out):
        seen.append(dict(out))
        order = [2, 0, 1]  # let the calls finish in this order
        if len(seen) < 3:
            finish[order[len(seen)]].set()

    def release_first():
        assert all(running[j].wait(10) for j in range(3))
        finish[2].set()

    starter = threading.Thread(target=release_first)
    starter.start()
    out = concurrently(fn, {"a": 0, "b": 1, "c": 2}, on_done=on_done)
    starter.join()
    assert out == {"a": 0, "b": 10, "c": 20} and list(out) == ["a", "b", "c"]
    assert seen == [{"c": 20}, {"a": 0, "c": 20}, {"a": 0, "b": 10, "c": 20}]
    assert [list(s) for s in seen] == [["c"], ["a", "c"], ["a", "b", "c"]]
    compiles = [e for e in log if e[0] == "compile"]
    assert compiles == [("compile", 0), ("compile", 1), ("compile", 2)]
    for k in (1, 2):  # call k compiles only after call k - 1 has reached its turn
        assert log.index(("compile", k)) > log.index(("run", k - 1))


def test_concurrently_stops_the_calls_not_yet_running_on_a_stop_request():
    """A stop requested during the first run: the calls not yet at their turn get ``False`` (or
    never start) and are left out; an exception in a call is raised."""
    import threading

    import wnjax._runtime.interrupt as interrupt
    from wnjax.experiments._runner import concurrently

    ran, requested = [], threading.Event()

    def fn(k, turn):
        if k > 0:
            assert requested.wait(10)
        if not turn():
            return None
        ran.append(k)
        if k == 0:
            interrupt.request()
            requested.set()
        return k

    try:
        out = concurrently(fn, {"a": 0, "b": 1, "c": 2})
    finally:
        interrupt.clear()
    assert out == {"a": 0} and ran == [0]

    def bad(k, turn):
        turn()
        if k == 1:
            raise RuntimeError("boom")
        return k

    try:
        with pytest.raises(RuntimeError, match="boom"):
            concurrently(bad, {"a": 0, "b": 1, "c": 2})
    finally:
        interrupt.clear()


def test_in_parallel_runs_a_group_after_its_first_call_and_the_rest_side_by_side():
    """Calls ``a``, ``b``, ``c`` share programs (one group), ``d`` is alone: ``a`` and ``d``
    run at once (each waits for the other to be running: serial calls would time out), ``b``
    and ``c`` start only after ``a`` has returned and run at once; the result keeps the calls'
    order, and ``on_done`` sees it grow. One worker runs them one after another, each group's
    first call first; an exception is raised."""
    import threading

    from wnjax.experiments._runner import in_parallel

    lock, log = threading.Lock(), []
    pairs = {"a": "d", "d": "a", "b": "c", "c": "b"}

    def calls(together: bool):
        running = {name: threading.Event() for name in pairs}

        def call(name):
            def run():
                with lock:
                    log.append(("start", name))
                running[name].set()
                if together:  # each waits for its pair to be running
                    assert running[pairs[name]].wait(10)
                with lock:
                    log.append(("end", name))
                return name.upper()

            return run

        return {name: call(name) for name in "abcd"}

    shares = {"a": "g", "b": "g", "c": "g"}
    seen = []
    out = in_parallel(calls(True), shares=shares, workers=2, on_done=seen.append)
    assert out == {"a": "A", "b": "B", "c": "C", "d": "D"} and list(out) == ["a", "b", "c", "d"]
    # on_done: after each call, the results so far in the calls' order
    assert [len(s) for s in seen] == [1, 2, 3, 4] and seen[-1] == out
    assert all(list(s) == [k for k in "abcd" if k in s] for s in seen)
    assert "a" in seen[1]  # b and c return after a
    assert log.index(("end", "a")) < min(log.index(("start", "b")), log.index(("start", "c")))
    log.clear()
    assert list(in_parallel(calls(False), shares=shares, workers=1)) == ["a", "b", "c", "d"]
    assert log == [(e, k) for k in "adbc" for e in ("start", "end")]

    def boom():
        raise RuntimeError("boom")

    import wnjax._runtime.interrupt as interrupt

    try:
        with pytest.raises(RuntimeError, match="boom"):
            in_parallel({"a": lambda: 1, "b": boom, "c": lambda: 3}, workers=2)
    finally:
        interrupt.clear()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            in_parallel({"a": lambda: 1}, workers=bad)


def test_in_parallel_skips_the_calls_not_started_at_a_stop_request():
    """A call that requests a stop: the calls not yet started are left out, the running ones
    return as they would alone."""
    import wnjax._runtime.interrupt as interrupt
    from wnjax.experiments._runner import in_parallel

    def stop():
        interrupt.request()
        return "stopped"

    seen = []
    try:
        out = in_parallel(
            {"a": lambda: 1, "b": stop, "c": lambda: 3, "d": lambda: 4},
            workers=1,
            on_done=seen.append,
        )
    finally:
        interrupt.clear()
    assert out == {"a": 1, "b": "stopped"} and seen[-1] == out


@pytest.mark.slow
def test_in_parallel_flows_give_the_numbers_of_serial_flows():
    """Gradient flows of several data sets run in two threads at once (each polling for stop
    requests from its own loop) end on the same bits as the same flows run one after another."""
    from wnjax.experiments._runner import in_parallel

    model = wnjax.ewn(wnjax.MLP(2, 4, 2, activation="relu2", key=jax.random.key(0)))

    def flow(k):
        X, y = wnjax.data.lin_sep(jax.random.key(k))
        r = wnjax.gradient_flow(model, X, y, t1=200.0, n_save=4, diagnostics=False)
        return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(r.final)])

    calls = {k: (lambda k=k: flow(k)) for k in range(4)}
    serial = in_parallel(calls, workers=1)
    together = in_parallel(calls, workers=2)
    for k in calls:
        np.testing.assert_array_equal(together[k], serial[k])


def test_run_gd_compiles_before_its_turn_and_skips_the_run_when_refused():
    """``run_gd(..., turn=...)``: a refused turn reports the run interrupted, every seed as it
    started; a granted one gives the numbers of a run without a turn."""
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    models = eqx.filter_vmap(lambda k: wnjax.MLP(2, 4, 2, activation="relu2", key=k))(
        jax.random.split(jax.random.key(1), 3)
    )
    kw = dict(num_steps=200, learning_rate=0.1, chunk_size=50)
    refused = run_gd(models, X, y, turn=lambda: False, **kw)
    assert refused.interrupted and np.all(refused.num_steps == 0)
    w0 = jax.tree_util.tree_leaves(eqx.filter(models, eqx.is_inexact_array))
    w1 = jax.tree_util.tree_leaves(eqx.filter(refused.final, eqx.is_inexact_array))
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    plain = run_gd(models, X, y, **kw)
    granted = run_gd(models, X, y, turn=lambda: True, **kw)
    assert not granted.interrupted
    np.testing.assert_array_equal(granted.num_steps, plain.num_steps)
    np.testing.assert_array_equal(granted.history["log_loss"], plain.history["log_loss"])


def test_concurrently_calls_meanwhile_after_every_compile_while_the_runs_go_on():
    """``meanwhile`` starts once the last call has reached its turn, runs while the calls are
    still running, is waited for before ``concurrently`` returns, and its error is ignored."""
    import threading

    from wnjax.experiments._runner import concurrently

    log, release = [], threading.Event()

    def fn(k, turn):
        log.append(("compile", k))
        assert turn()
        assert release.wait(10)  # every run waits until meanwhile has started
        log.append(("end", k))
        return k

    def meanwhile():
        log.append(("meanwhile", None))
        release.set()
        raise RuntimeError("ignored")

    out = concurrently(fn, {"a": 0, "b": 1, "c": 2}, meanwhile=meanwhile)
    assert out == {"a": 0, "b": 1, "c": 2}
    i = log.index(("meanwhile", None))
    assert {e for e in log[:i]} == {("compile", 0), ("compile", 1), ("compile", 2)}
    assert sorted(log[i + 1 :]) == [("end", 0), ("end", 1), ("end", 2)]


def test_runs_that_finished_before_a_stop_are_taken_by_the_rerun(tmp_path):
    """``in_parallel`` and ``concurrently`` with a ``Finished`` store: a run that returned
    before the stop request is kept and not run again by the rerun, which gives the results of
    an uninterrupted run; the one that returned after it, and those never started, run again.
    Other options (another identity) start afresh."""
    import wnjax._runtime.interrupt as interrupt
    from wnjax.experiments._finished import Finished
    from wnjax.experiments._runner import concurrently, in_parallel

    stored = threading.Event()

    class Store(Finished):
        def put(self, key, result):
            super().put(key, result)
            stored.set()

    def store(identity):
        return Store(str(tmp_path / ".finished"), identity)

    for runner in ("in_parallel", "concurrently"):
        interrupt.clear()
        stored.clear()
        store({"fresh": runner})  # another identity: an empty folder
        calls = []

        def work(name, stop=False):
            calls.append(name)
            if stop:  # as a signal during this run, once the run before it is kept
                assert stored.wait(10)
                interrupt.request()
            return {"name": name, "value": np.arange(3.0) * len(name)}

        def run(stop_at, identity):
            names = ["a", "bb", "ccc"]
            if runner == "in_parallel":
                fns = {n: functools.partial(work, n, n == stop_at) for n in names}
                return in_parallel(fns, workers=1, finished=store(identity))
            return concurrently(
                lambda n, turn: turn() and work(n, n == stop_at) or None,
                {n: n for n in names},
                finished=store(identity),
            )

        first = run("bb", {"k": 1})
        assert "a" in first and "bb" in first  # ("ccc" may have started beside "bb")
        interrupt.clear()
        calls.clear()
        again = run(None, {"k": 1})
        assert "a" not in calls and "bb" in calls  # "a" was kept, "bb" returned after the stop
        whole = {n: {"name": n, "value": np.arange(3.0) * len(n)} for n in ["a", "bb", "ccc"]}
        assert list(again) == list(whole)
        for n in whole:
            np.testing.assert_array_equal(again[n]["value"], whole[n]["value"])
        calls.clear()
        run(None, {"k": 2})
        assert calls == ["a", "bb", "ccc"]  # other options: nothing is taken
