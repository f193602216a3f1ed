"""The asymptotic regime on lin-sep (docs/theory.md §3): EWN and SWN loss-normalized flows of a
ReLU^2 net to log L = -300 and below, their limit relations, and the solvers that get there.

References: Tsit5 runs (the explicit integrator) for the stiff and the default solver, and
``relation_residuals``/``alignment`` of the final states against the saved summaries. The other
asymptotic checks are in ``test_asymptotics.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax

pytestmark = pytest.mark.slow  # every test here shares one minute-long run


def _flat(p):
    """The plain weights of a parameterized model, as one vector."""
    return jnp.concatenate([w.ravel() for w in wnjax._nets.neurons.layer_weights(p.standard())])


@pytest.fixture(scope="module")
def lin_sep_flows():
    X, y = wnjax.data.lin_sep(jax.random.key(0))
    model = wnjax.MLP(2, 8, 2, activation="relu2", key=jax.random.key(1))
    runs = {
        name: wnjax.gradient_flow(
            f(model),
            X,
            y,
            time="normalized",
            t1=1e3,
            target_log_loss=-300.0,
            n_save=16,
            solver="tsit5",
        )
        for name, f in (("ewn", wnjax.ewn), ("swn", wnjax.swn))
    }
    return X, y, model, runs


def test_swn_stiff_solver_agrees_and_reaches_minus_10000(lin_sep_flows):
    """The loss-normalized SWN flow turns stiff at deep targets (ReLU^2 neurons pinned at the
    kink). The L-stable Kvaerno5 traces the same path as Tsit5 (the other integrator) at
    log L = -300, and goes on to -10,000 with every saved value finite, at the default
    tolerances (Tsit5 at the same rtol, 1e-8, is the reference)."""
    X, y, model, runs = lin_sep_flows
    # One program for both runs: the target is traced, max_steps is not.
    kw = dict(
        time="normalized",
        t1=1e6,
        n_save=16,
        solver="stiff",
        diagnostics=False,
        max_steps=50_000,
    )
    shallow = wnjax.gradient_flow(wnjax.swn(model), X, y, target_log_loss=-300.0, **kw)
    ref = runs["swn"]  # Tsit5, rtol 1e-8
    a, b = _flat(shallow.final), _flat(ref.final)
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-4
    assert abs(float(shallow.final_log_t - ref.final_log_t)) < 1e-4 * float(ref.final_log_t)
    deep = wnjax.gradient_flow(wnjax.swn(model), X, y, target_log_loss=-1e4, **kw)
    assert bool(deep.reached_target)
    assert abs(float(deep.final_log_loss) + 1e4) < 1e-3
    for key in ("log_loss", "normalized_margin", "neuron_norms"):
        assert np.all(np.isfinite(np.asarray(deep.summaries[key])))
    log_t = np.asarray(deep.log_t)[1:]
    assert np.all(np.isfinite(log_t)) and np.all(np.diff(log_t) > 0) and log_t[-1] > 9000


def test_default_solver_keeps_the_path(lin_sep_flows):
    """The default solver (AutoSwitch) on the loss-normalized SWN flow to log L = -300 ends where
    the plain Tsit5 run (the reference integrator, rtol 1e-8) ends, and its step counts add up."""
    X, y, model, runs = lin_sep_flows
    r = wnjax.gradient_flow(
        wnjax.swn(model),
        X,
        y,
        time="normalized",
        t1=1e3,
        target_log_loss=-300.0,
        n_save=16,
        diagnostics=False,
    )
    assert bool(r.reached_target)
    assert int(r.stats["explicit_steps"]) + int(r.stats["stiff_steps"]) == int(
        r.stats["num_accepted_steps"]
    )
    ref = runs["swn"]
    a, b = _flat(r.final), _flat(ref.final)
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-5
    np.testing.assert_allclose(np.asarray(r.log_t), np.asarray(ref.log_t), rtol=1e-5)


def test_relation_residuals_on_lin_sep(lin_sep_flows):
    """log L = -300: EWN's product relation is tighter than the ratio one; SWN the reverse."""
    X, y, _, runs = lin_sep_flows
    for name in ("ewn", "swn"):
        r = runs[name]
        assert abs(float(r.final_log_loss) + 300.0) < 1e-3
        res = wnjax.relation_residuals(r.final, X, y)
        assert int(jnp.sum(res["surviving"])) >= 2
        # the saved summary is the same quantity at the last level
        np.testing.assert_allclose(
            r.summaries["product_spread"][-1], res["product_spread"], rtol=1e-10
        )
    # Survivors: relative norm > 0.1. At log L = -300 EWN's decaying neurons still hold 0.06-0.1
    # (their share falls only like 1/log t), and the limit relation is about the survivors.
    ewn, swn = (
        wnjax.relation_residuals(runs[k].final, X, y, threshold=0.1) for k in ("ewn", "swn")
    )
    assert float(ewn["product_spread"]) < float(ewn["ratio_spread"])
    assert float(swn["ratio_spread"]) < float(swn["product_spread"])
    # Surviving neurons align with their negative gradients.
    cos = wnjax.alignment(runs["ewn"].final, X, y)
    # 0.98 at -300, 0.99 at -3000
    assert float(jnp.min(jnp.where(ewn["surviving"], cos, 1.0))) > 0.95
    # Save levels: log L falls through them monotonically, ending on the target.
    ll = np.asarray(runs["ewn"].log_loss)
    assert np.all(np.diff(ll) < 0) and abs(ll[-1] + 300.0) < 1e-3
