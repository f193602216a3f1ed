"""small-init's seeds in one vmapped program: the same flows and escape times as running the
seeds one after another, and escape times as the library's two-flow interpolation finds them."""

import functools

import jax
import numpy as np
import pytest
from helpers import needs_default_codegen

import wnjax
from wnjax.experiments._small_init import LOSS, seed_escapes, seed_flows, student

N_POINTS, DIM, DELTA = 100, 6, 1e-2


@functools.cache
def _setup():
    X, y = wnjax.small_init.relu2_teacher_data(jax.random.key(0), n=N_POINTS, d=DIM)
    return X, y, [student(jax.random.key(1 + s)) for s in range(2)]


@pytest.mark.slow
@needs_default_codegen
def test_vmapped_flows_equal_sequential_runs():
    X, y, models = _setup()
    t1s = [1e5, 0.8e5]
    grid = wnjax.small_init.log_save_times(1.0, 200, 6.0)
    bat = seed_flows(models, X, y, DELTA, t1s, grid)
    seq = seed_flows(models, X, y, DELTA, t1s, grid, batched=False)
    np.testing.assert_allclose(np.asarray(bat.ts), np.asarray(t1s)[:, None] * grid, rtol=1e-14)
    assert np.all(np.asarray(bat.ok))
    np.testing.assert_allclose(
        np.asarray(bat.log_loss), np.asarray(seq.log_loss), rtol=0, atol=1e-10
    )
    for a, b in zip(jax.tree_util.tree_leaves(bat.final), jax.tree_util.tree_leaves(seq.final)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-14)
    # the runs escape (the loss falls) within t1
    assert np.all(np.asarray(bat.log_loss)[:, -1] < np.asarray(bat.log_loss)[:, 0] - 0.1)
    # run in tau = t / t1, saved at t = t1 tau: the flow in t, integrated by another method
    # (DOP853, no rescaling) at tolerances 1000x tighter. The escape is steep (log L falls from
    # -5.7 to -32 between two saves), so the rtol-1e-10 run is held to a relative 1e-7 there.
    ref = wnjax.gradient_flow(
        wnjax.small_init.scale_to_norm(models[1], DELTA),
        X,
        y,
        loss=LOSS,
        t1=t1s[1],
        save_ts=t1s[1] * grid,
        rtol=1e-13,
        atol=1e-16,
        solver="dopri8",
        max_steps=2_000_000,
    )
    np.testing.assert_allclose(
        np.asarray(bat.log_loss[1]), np.asarray(ref.log_loss), rtol=1e-7, atol=1e-8
    )


@pytest.mark.slow
@needs_default_codegen
def test_vmapped_escapes_equal_sequential_and_interpolated_ones():
    X, y, models = _setup()
    t1s = [1e5, 0.9e5]
    T, steps = seed_escapes(models, X, y, DELTA, t1s)
    T_seq, _ = seed_escapes(models, X, y, DELTA, t1s, batched=False)
    np.testing.assert_allclose(T, T_seq, rtol=1e-10)
    assert np.all(np.isfinite(T)) and np.all(steps > 0)
    # independent of the event: the library's grid interpolation between two flows
    ref, _ = wnjax.small_init.flow_escape_time(
        wnjax.small_init.scale_to_norm(models[1], DELTA), X, y, t1=t1s[1], loss=LOSS
    )
    assert abs(T[1] / ref - 1) < 1e-5
    # a horizon before the escape: no escape (inf)
    T_short, _ = seed_escapes(models, X, y, DELTA, [1e-3 * t for t in t1s])
    assert np.all(np.isinf(T_short))
