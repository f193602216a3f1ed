"""Bad input gives a clear ValueError (naming the problem) before anything is traced; failed runs
are reported with their partial result."""

import os
import re
import stat
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from core_problems import gd, mlp_problem

import wnjax


@pytest.fixture(scope="module")
def problem():
    return mlp_problem()


def _flow(model, X, y, **kw):
    kw.setdefault("t1", 1.0)
    return wnjax.gradient_flow(model, X, y, **kw)


def _gd(model, X, y, **kw):
    return wnjax.gradient_descent(model, X, y, num_steps=10, learning_rate=0.1, **kw)


RUNNERS = pytest.mark.parametrize("run", [_flow, _gd], ids=["flow", "gd"])


@RUNNERS
@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_labels_outside_plus_minus_one(run, loss, problem):
    model, X, y = problem
    with pytest.raises(ValueError, match=r"labels in \{-1, \+1\}"):
        run(model, X, (y + 1) / 2, loss=loss)  # {0, 1} labels
    with pytest.raises(ValueError, match="labels"):
        run(model, X, 2 * y, loss=loss)


@RUNNERS
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(run, bad, problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        run(model, X.at[2, 1].set(bad), y)
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        run(model, X, y.at[0].set(bad), loss="square")


@RUNNERS
@pytest.mark.slow
def test_narrow_float_data_run_in_the_models_precision_and_text_is_refused(run, problem):
    """bfloat16 and float16 data (JAX's narrow floats; bfloat16 is no NumPy float) run as the
    same data widened: the run's ``log L`` is the widened run's; a NaN in them, or data of
    strings, is refused by name."""
    model, X, y = problem
    for narrow in (jnp.bfloat16, jnp.float16):
        Xn = X.astype(narrow)
        got, want = run(model, Xn, y), run(model, Xn.astype(X.dtype), y)
        assert float(got.final_log_loss) == float(want.final_log_loss)
        with pytest.raises(ValueError, match="X contains NaN or inf"):
            run(model, Xn.at[2, 1].set(np.nan), y)
        with pytest.raises(ValueError, match="y contains NaN or inf"):
            run(model, X, y.astype(narrow).at[0].set(np.nan), loss="square")
    with pytest.raises(ValueError, match="X must hold numbers"):
        run(model, np.full(X.shape, "a"), y)


@RUNNERS
def test_shape_mismatches(run, problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="12 examples but y has shape"):
        run(model, X, y[:-1])
    with pytest.raises(ValueError, match="cannot be applied to examples of shape"):
        run(model, X[:, :2], y)  # wrong number of features
    with pytest.raises(ValueError, match="leading axis of examples"):
        run(model, X[0], y)
    wide = wnjax.MLP(3, 6, 2, out_size=3, key=jax.random.key(2))
    with pytest.raises(ValueError, match=r"one output per example.*\(3,\)"):
        run(wide, X, y)  # three outputs for a binary loss
    with pytest.raises(ValueError, match="labels go up to 5 but the model has only 3 outputs"):
        run(wide, X, jnp.arange(12) % 6, loss="cross_entropy")
    with pytest.raises(ValueError, match="integer class indices"):
        run(wide, X, y, loss="cross_entropy")  # -1 is not a class index


def test_unknown_names(problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        _flow(model, X, y, loss="hinge")
    with pytest.raises(ValueError, match="rate must be one of"):
        _flow(model, X, y, rate="adam")
    with pytest.raises(ValueError, match="time must be one of"):
        _flow(model, X, y, time="log")
    with pytest.raises(ValueError, match="unknown activation"):
        wnjax.MLP(3, 4, 2, activation="tanh2", key=jax.random.key(0))
    with pytest.raises(ValueError, match="per-neuron rate"):
        _flow(wnjax.ewn(model), X, y, rate="neuron_norm_sq")  # the rate is for plain weights


@pytest.mark.parametrize("kind", ["ewn", "swn"])
def test_zero_weight_row(kind, problem):
    model, _, _ = problem
    model = eqx.tree_at(lambda m: m.layers[0].weight, model, model.layers[0].weight.at[2].set(0.0))
    with pytest.raises(ValueError, match=r"weight layer 0 has zero row\(s\) \[2\]"):
        getattr(wnjax, kind)(model)
    # Leaving that layer unnormalized is fine.
    p = getattr(wnjax, kind)(model, where=lambda m: [m.layers[1]])
    assert isinstance(p.layers[0], wnjax.Standard)


@pytest.mark.slow
def test_max_steps_exhausted_keeps_partial_result(problem):
    model, X, y = problem
    p = wnjax.ewn(model)
    with pytest.raises(wnjax.FlowFailed, match="max_steps") as info:
        _flow(p, X, y, t1=50.0, max_steps=5, n_save=8)
    r = info.value.result
    assert not bool(r.ok)
    assert int(r.stats["num_steps"]) == 5
    assert isinstance(r.final, wnjax.Parameterized)
    assert 0 < float(r.final_time) < 50.0
    # The partial result is the real state: its loss matches the reported one and has decreased.
    np.testing.assert_allclose(
        float(wnjax.log_loss(r.final, X, y)), float(r.final_log_loss), rtol=1e-12
    )
    assert float(r.final_log_loss) < float(wnjax.log_loss(p, X, y))
    with pytest.raises(wnjax.FlowFailed):
        r.check()

    with pytest.warns(RuntimeWarning, match="max_steps"):
        r2 = _flow(p, X, y, t1=50.0, max_steps=5, n_save=8, throw=False)
    assert not bool(r2.ok)
    np.testing.assert_array_equal(weights(r2.final), weights(r.final))


def weights(model):
    return np.concatenate(
        [
            np.asarray(layer.weight).ravel()
            for layer in wnjax.weight_layers(wnjax.to_standard(model))
        ]
    )


def test_diverging_gd(problem):
    model, X, y = problem
    with pytest.raises(wnjax.GDFailed, match="diverged") as info:
        gd(model, X, y, num_steps=200, learning_rate=1e4)
    r = info.value.result
    assert not bool(r.ok)
    assert np.isfinite(float(r.final_log_loss))
    assert np.all(np.isfinite(weights(r.final)))
    # The kept state is the last good one: its loss is below the divergence level (200 above
    # the start), and it is the loss of the kept weights.
    assert float(r.final_log_loss) <= float(wnjax.log_loss(model, X, y)) + 200.0
    np.testing.assert_allclose(
        float(wnjax.log_loss(r.final, X, y)), float(r.final_log_loss), rtol=1e-12
    )
    with pytest.warns(RuntimeWarning, match="diverged"):
        r2 = gd(model, X, y, num_steps=200, learning_rate=1e4, throw=False)
    assert not bool(r2.ok)


def test_bad_gd_options(problem):
    model, X, y = problem
    with pytest.raises(ValueError, match="learning_rate"):
        wnjax.gradient_descent(model, X, y, num_steps=10)
    with pytest.raises(ValueError, match="batch_size must be an integer in 1..12"):
        _gd(model, X, y, batch_size=20, key=jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key"):
        _gd(model, X, y, batch_size=4)


# --- models that are not homogeneous ---

NOT_HOMOGENEOUS = {
    "hidden_bias": (lambda: wnjax.MLP(3, 6, 2, hidden_bias=True, key=jax.random.key(1)), "bias"),
    "linear_bias": (
        lambda: eqx.nn.Linear(3, "scalar", use_bias=True, key=jax.random.key(1)),
        "bias",
    ),
    "tanh": (lambda: wnjax.MLP(3, 6, 2, activation=jnp.tanh, key=jax.random.key(1)), "homogeneous"),
}


@RUNNERS
@pytest.mark.parametrize("kind", sorted(NOT_HOMOGENEOUS))
def test_not_homogeneous_model_needs_a_degree(run, kind, problem):
    _, X, y = problem
    build, cause = NOT_HOMOGENEOUS[kind]
    for model in (build(), wnjax.ewn(build())):
        with pytest.raises(wnjax.InvalidInput, match=rf"(?s){cause}.*Pass degree=") as info:
            run(model, X, y)
        assert isinstance(info.value, ValueError) and "bias-free" in str(info.value)


@RUNNERS
def test_explicit_degree_gives_finite_margins(run, problem):
    _, X, y = problem
    model = wnjax.MLP(3, 6, 2, activation="relu2", hidden_bias=True, key=jax.random.key(1))
    kw = dict(solver="tsit5") if run is _flow else {}
    r = run(model, X, y, degree=3.0, n_save=4, diagnostics=False, **kw)
    margins = np.asarray(r.summaries["normalized_margin"])
    assert margins.size and np.all(np.isfinite(margins))


# --- numeric options ---

BAD_GD = [
    ("num_steps", 0),
    ("num_steps", -3),
    ("learning_rate", 0.0),
    ("learning_rate", -0.1),
    ("learning_rate", np.nan),
    ("learning_rate", np.inf),
    ("target_log_loss", np.nan),
    ("target_log_loss", np.inf),
    ("n_save", 0),
    ("n_save", -1),
    ("num_steps", 10**12),  # past the loops' int32 counters
    ("learning_rate", np.array([0.1, 0.2])),  # one number per call
]
BAD_FLOW = [
    ("rtol", 0.0),
    ("rtol", -1e-8),
    ("rtol", np.nan),
    ("atol", 0.0),
    ("atol", np.nan),
    ("target_log_loss", np.nan),
    ("target_log_loss", -np.inf),
    ("n_save", 0),
    ("max_steps", 0),
    ("max_steps", -5),
    ("max_steps", 10**12),
    ("rtol", 1.0),  # accepts any step
    ("rtol", 10.0),
]


@pytest.mark.parametrize("name,value", BAD_GD)
def test_bad_gd_numbers(name, value, problem):
    model, X, y = problem
    kw = dict(num_steps=10, learning_rate=0.1)
    kw[name] = value
    with pytest.raises(wnjax.InvalidInput, match=rf"{name} must be .*got .*; pass "):
        wnjax.gradient_descent(model, X, y, **kw)


@pytest.mark.parametrize("name,value", BAD_FLOW)
def test_bad_flow_numbers(name, value, problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match=rf"{name} must be .*got .*; pass "):
        _flow(model, X, y, **{name: value})


# --- data ---


@RUNNERS
def test_empty_data(run, problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match="X has no rows"):
        run(model, X[:0], y[:0])


@pytest.mark.slow
def test_integer_and_float32_data_and_two_devices(problem):
    """Integer X becomes the default float, float32 X runs in the model's float64, and y on
    another device than X is moved to X's: each GD runs (the same program as float64 data)."""
    model, X, y = problem
    devices = jax.devices()
    cases = {
        "integer": (np.sign(np.asarray(X)).astype(np.int32), y),
        "float32": (X.astype(jnp.float32), y.astype(jnp.float32)),
    }
    if len(devices) > 1:
        cases["devices"] = (jax.device_put(X, devices[0]), jax.device_put(y, devices[1]))
    for name, (Xc, yc) in cases.items():
        r = _gd(model, Xc, yc)
        assert bool(r.ok) and np.isfinite(float(r.final_log_loss)), name
        assert r.final_log_loss.dtype == jnp.float64, name


@RUNNERS
@pytest.mark.filterwarnings("ignore:gradient flow stopped:RuntimeWarning")
@pytest.mark.slow
def test_all_zero_row_warns(run, problem):
    model, X, y = problem
    if run is _flow:  # the settings of test_max_steps_exhausted_keeps_partial_result
        model, kw = wnjax.ewn(model), dict(t1=50.0, max_steps=5, n_save=8, throw=False)
    else:
        kw = {}
    with pytest.warns(UserWarning, match=r"row\(s\) \[3\] of X are all zero.*margin stays 0"):
        run(model, X.at[3].set(0.0), y, **kw)


def _grid_data(n=24, d=3, period=4, seed=0):
    """Rows that repeat every ``period`` rows, with labels drawn independently: identical rows
    with different labels."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(period, d))
    return np.tile(base, (n // period, 1)), rng


def _least_group_loss(X, labels, lossfn, dim=1):
    """An independent reference: ``log`` of the least summed loss of the groups of identical
    rows whose labels differ, each group's output free (scipy BFGS over it)."""
    from scipy.optimize import minimize

    total = 0.0
    for row in np.unique(X, axis=0):
        idx = np.flatnonzero(np.all(X == row, axis=1))
        if len({repr(labels[i]) for i in idx}) < 2:
            continue
        res = minimize(
            lambda f: sum(lossfn(f, labels[i]) for i in idx),
            np.zeros(dim),
            method="BFGS",
            options={"gtol": 1e-12},
        )
        total += res.fun
    return np.log(total)


CONFLICT_LOSSES = {
    "exponential": lambda f, y: np.exp(-y * f[0]),
    "logistic": lambda f, y: np.logaddexp(0.0, -y * f[0]),
    "cross_entropy": lambda f, y: np.logaddexp.reduce(f) - f[y],
    "square": lambda f, y: 0.5 * (f[0] - y) ** 2,
}


@RUNNERS
@pytest.mark.parametrize("loss", sorted(CONFLICT_LOSSES))
def test_identical_rows_with_other_labels_put_a_target_out_of_reach(run, loss):
    X, rng = _grid_data()
    if loss == "cross_entropy":
        y, out, dim = rng.integers(0, 3, size=X.shape[0]), 3, 3
    elif loss == "square":
        y, out, dim = rng.normal(size=X.shape[0]), "scalar", 1
    else:
        y, out, dim = rng.choice([-1.0, 1.0], size=X.shape[0]), "scalar", 1
    model = eqx.nn.MLP(3, out, 6, 1, use_bias=False, use_final_bias=False, key=jax.random.key(0))
    floor = _least_group_loss(X, y, CONFLICT_LOSSES[loss], dim)
    match = r"cannot be reached: rows 0 and \d+ of X are identical"
    with pytest.raises(ValueError, match=match) as e:
        run(model, X, y, loss=loss, target_log_loss=floor - 0.01)
    quoted = float(re.search(r"log L >= ([-0-9.e+]+)", str(e.value)).group(1))
    np.testing.assert_allclose(quoted, floor, rtol=1e-5)


def test_identical_rows_warn_without_a_target_and_agreeing_rows_do_not(problem):
    model, _, _ = problem
    X, rng = _grid_data()
    y = rng.choice([-1.0, 1.0], size=X.shape[0])
    with pytest.warns(UserWarning, match=r"rows 0 and \d+ of X are identical.*Drop or relabel"):
        _gd(model, X, y)
    agreeing = np.tile([1.0, -1.0, 1.0, 1.0], X.shape[0] // 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _gd(model, X, agreeing, target_log_loss=-5.0)


def _multiples_data(dtype=np.float64, scale=0.7, classes=0):
    """Eight directions on the circle at two radii, 1 and ``scale``, with opposite labels (as
    ``make_circles`` without noise draws them), and eight more points of random directions."""
    t = np.linspace(0.0, 2 * np.pi, 8, endpoint=False)
    ring = np.c_[np.cos(t), np.sin(t)]
    rng = np.random.default_rng(3)
    X = np.r_[ring, scale * ring, rng.normal(size=(8, 2))].astype(dtype)
    if classes:
        y = np.r_[np.zeros(8), np.ones(8), rng.integers(0, classes, 8)].astype(int)
    else:
        y = np.r_[np.ones(8), -np.ones(8), rng.choice([-1.0, 1.0], 8)]
    return X, y


@RUNNERS
@pytest.mark.parametrize("loss", ["exponential", "logistic", "cross_entropy"])
def test_positive_multiples_with_other_labels_put_a_target_out_of_reach(run, loss):
    """Rows ``x`` and ``0.7 x`` with other labels: a bias-free ReLU net's outputs there have one
    sign (one argmax), so one margin of each of the 8 pairs stays <= 0 and its loss >= l(0)
    (cross-entropy: >= log 2): ``log L >= log(8 l(0))``. The true floor, each pair's output
    ``z`` free and the other's ``0.7 z`` (scipy), is above that bound."""
    from scipy.optimize import minimize

    classes = 3 if loss == "cross_entropy" else 0
    X, y = _multiples_data(classes=classes)
    model = wnjax.MLP(2, 8, 2, max(classes, 1), activation="relu", key=jax.random.key(0))
    l0 = {"exponential": 1.0, "logistic": np.log(2.0), "cross_entropy": np.log(2.0)}[loss]
    bound = np.log(8 * l0)
    lossfn = CONFLICT_LOSSES[loss]
    dim = max(classes, 1)
    pair = minimize(
        lambda z: lossfn(z, y[0]) + lossfn(0.7 * z, y[8]), np.zeros(dim), method="BFGS"
    ).fun
    assert np.log(8 * pair) >= bound - 1e-9
    with pytest.raises(ValueError, match=r"rows 0 and 8 of X are positive multiples") as e:
        run(model, X, y, loss=loss, target_log_loss=bound - 0.01)
    assert "x_8 = 0.7 x_0" in str(e.value) and "8 such groups, 16 rows" in str(e.value)
    quoted = float(re.search(r"log L >= ([-0-9.e+]*\d)", str(e.value)).group(1))
    np.testing.assert_allclose(quoted, bound, rtol=1e-5)
    # a target above the bound: a warning (made an error here: the flow is not run)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match=r"positive multiples.*Drop or relabel"):
            run(model, X, y, loss=loss, target_log_loss=bound + 1.0)


def test_positive_multiples_of_float32_data_are_found_and_near_ones_are_not():
    """In float32, ``0.7 x`` rounds each coordinate on its own: still a multiple to a few ulps.
    Rows turned ``1e-4`` off a multiple are not; nor are rows with agreeing labels."""
    from wnjax._runtime.validate import _multiples_floor

    loss = wnjax.get_loss("exponential")
    X, y = _multiples_data(np.float32)
    assert _multiples_floor(X, y, loss)[1:] == ((0, 8), 8, 16)
    near = X.copy()
    near[8:16] += 1e-4 * (X[8:16] @ np.array([[0.0, 1.0], [-1.0, 0.0]], np.float32))  # turned
    assert _multiples_floor(near, y, loss) is None
    agreeing = np.r_[np.ones(16), y[16:]]
    assert _multiples_floor(X, agreeing, loss) is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_make_circles_without_noise_is_refused_for_a_relu_net(dtype):
    """scikit-learn's ``make_circles(noise=0)`` draws both circles at the same angles: each inner
    point is ``factor`` times an outer one, with the other label. 50 pairs, ``l(0) = 1`` each."""
    from sklearn.datasets import make_circles

    X, labels = make_circles(n_samples=100, noise=0.0, factor=0.8, random_state=0)
    y = 2.0 * labels - 1.0
    net = wnjax.MLP(2, 16, 2, activation="relu", key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"50 such groups, 100 rows.*log L >= 3.91202"):  # log 50
        _gd(wnjax.ewn(net), X.astype(dtype), y, target_log_loss=-300.0)


def test_positive_multiples_only_warn_for_a_model_of_unknown_input_homogeneity():
    """An equinox MLP of the user's may not be homogeneous in its input: the check warns,
    naming the target it would put out of reach, and the run goes on."""
    X, y = _multiples_data()
    bias_free = dict(use_bias=False, use_final_bias=False)
    model = eqx.nn.MLP(
        2, "scalar", 8, 1, activation=jax.nn.relu, **bias_free, key=jax.random.key(0)
    )
    with pytest.warns(UserWarning, match=r"a model positively homogeneous.*cannot be reached"):
        _gd(model, X, y, target_log_loss=-5.0)


# --- GD results ---


def test_gd_save_arrays_hold_saved_points_only(problem):
    model, X, y = problem
    r = _gd(model, X, y)
    steps = np.asarray(r.steps)
    assert steps.shape == np.asarray(r.log_loss).shape
    assert np.all(steps >= 0) and steps[-1] == int(r.num_steps)
    assert np.all(np.isfinite(np.asarray(r.log_loss)))
    assert float(r.log_loss[-1]) == float(r.final_log_loss)
    for v in r.summaries.values():
        assert np.shape(v)[0] == steps.size


def test_stalled_gd_says_so(problem):
    """Six points and their doubles, with opposite labels: a bias-free ReLU^2 net gives ``2 x`` the
    output ``4 f(x)``, of ``f(x)``'s sign, so ``L >= 6 min_z (e^-z + e^4z) = 6 * 1.649`` (log
    2.29). The checks before the run see ``log L >= log 6`` only; a target between the two is
    never reached, and the run ends ok but warns and says why."""
    model, X, y = problem
    X2, y2 = jnp.concatenate([X[:6], 2 * X[:6]]), jnp.concatenate([y[:6], -y[:6]])
    stalled = r"(?s)target_log_loss.*stopped decreasing.*separable"
    bound = r"positive multiples.*log L >= 1.79176"  # log 6
    with pytest.warns(RuntimeWarning, match=stalled), pytest.warns(UserWarning, match=bound):
        r = wnjax.gradient_descent(
            model, X2, y2, num_steps=2000, learning_rate=0.02, target_log_loss=2.0
        )
    assert bool(r.ok) and not bool(r.reached_target)
    assert "is the data separable" in r.message.lower()
    # A run whose loss keeps falling says nothing of the kind.
    assert "stopped decreasing" not in _gd(model, X, y).message


def test_gd_whose_loss_rose_says_so():
    """EWN GD on a ReLU net (6-10-1, 30 points) with a step too large for it: log L falls, then
    a step throws the net onto a floor above where it was. The run's message names the lowest
    log L saved (numpy's minimum of ``result.log_loss``), its step, and the remedy."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    X = jax.random.normal(k1, (30, 6))
    y = jnp.sign(X @ jax.random.normal(k2, (6,)))
    net = eqx.nn.MLP(
        6, "scalar", 10, 1, activation=jax.nn.relu, use_bias=False, use_final_bias=False, key=k3
    )
    r = wnjax.gradient_descent(
        wnjax.ewn(net),
        X,
        y,
        num_steps=2000,
        learning_rate=0.1,
        target_log_loss=-30.0,
        throw=False,
    )
    log_l, steps = np.asarray(r.log_loss), np.asarray(r.steps)
    low = int(np.argmin(log_l))
    assert log_l[-1] - log_l[low] > 0.1
    assert f"log L fell to {log_l[low]:.6g} (step {steps[low]}) and then rose" in r.message
    assert "Lower learning_rate" in r.message and "separable" not in r.message


# --- errors and the command line ---


def test_error_classes_share_a_base():
    for cls, base in [
        (wnjax.InvalidInput, ValueError),
        (wnjax.FlowFailed, RuntimeError),
        (wnjax.GDFailed, RuntimeError),
        (wnjax.StoreMismatch, ValueError),
    ]:
        assert issubclass(cls, wnjax.WnjaxError) and issubclass(cls, base), cls


@pytest.mark.parametrize(
    "argv",
    [
        ["reproduce", "lin-sep", "--seeds", "0"],
        ["reproduce", "--seeds", "-1", "lin-sep"],
        ["sweep", "x.toml", "--seeds", "0"],
    ],
)
def test_cli_rejects_non_positive_counts(argv, capsys):
    import wnjax._cli as _cli

    with pytest.raises(SystemExit) as info:
        _cli.main(argv)
    assert info.value.code == 2
    assert "--seeds: expected a positive integer" in capsys.readouterr().err


def test_reproduce_rejects_bad_options(tmp_path, capsys):
    out = str(tmp_path / "never")
    with pytest.raises(
        wnjax.InvalidInput,
        match=r"no option\(s\) \['max_step'\]; its options are "
        r"\[.*'max_steps'.*\]",
    ):
        wnjax.reproduce("lin-sep", max_step=10, out=out)
    for bad, match in (
        (dict(seeds=0), "seeds must be a positive integer, got 0"),
        (dict(max_steps=-5), "max_steps must be a positive integer, got -5"),
        (dict(max_steps=2.5), "max_steps must be a positive integer"),
        (dict(schedule="paper"), "schedule must be one of paper-code, paper-text"),
        (dict(lr=float("nan")), "lr must be a positive number"),
        (dict(dynamics=None), "dynamics must be given"),
    ):
        with pytest.raises(wnjax.InvalidInput, match=match):
            wnjax.reproduce("lin-sep", out=out, **bad)
    with pytest.raises(wnjax.InvalidInput, match="unknown experiment 'lin_sep'; known: .*lin-sep"):
        wnjax.reproduce("lin_sep", out=out)
    assert not (tmp_path / "never").exists()
    # a value argparse accepts but the options reject: one line, exit 2
    import wnjax._cli as _cli

    assert _cli.main(["reproduce", "small-init", "--deltas", "1e-2,x", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "wnjax: error: deltas must be comma-separated positive numbers such as "
        "'1e-2,1e-3', got '1e-2,x'."
    ]


TYPOS = [
    ("[grdi]\nwidth = [8]\n", "table 'grdi'", "'grid'"),
    ("[model]\nwidht = 8\n", "key 'widht' in [model]", "'width'"),
    ("[sweep]\nseedz = 4\n", "key 'seedz' in [sweep]", "'seeds'"),
    ("[dynamics]\nrtoll = 1e-8\n", "key 'rtoll' in [dynamics]", "'rtol'"),
    (
        "[grid]\nlearning_rat = [0.1]\n[sweep]\ndynamics = 'descent'\n",
        "key 'learning_rat' in [grid]",
        "'learning_rate'",
    ),
]


@pytest.mark.parametrize("text,where,suggestion", TYPOS)
def test_sweep_config_typos(text, where, suggestion, tmp_path):
    import wnjax._cli.sweep as _sweep_cli

    cfg = tmp_path / "sweep.toml"
    cfg.write_text(text)
    with pytest.raises(
        wnjax.InvalidInput,
        match=rf"unknown {re.escape(where)}.*did you mean "
        rf"{suggestion}",
    ):
        _sweep_cli.load_config(str(cfg), [])


def test_example_sweep_config_is_valid():
    import wnjax._cli.sweep as _sweep_cli

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    settings = _sweep_cli.load_config(os.path.join(root, "examples", "sweep.toml"), [])
    assert "grid" in settings
    with pytest.raises(wnjax.InvalidInput, match="did you mean 'max_steps'"):
        _sweep_cli.load_config(
            os.path.join(root, "examples", "sweep.toml"), ["dynamics.max_step=10"]
        )


def test_cli_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    import wnjax._cli as _cli

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices writes it
    cfg = tmp_path / "sweep.toml"
    cfg.write_text("[model]\nwidht = 8\n")
    argv = ["sweep", str(cfg), "--out", str(tmp_path / "out"), "--devices", "1"]
    assert _cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wnjax: error: unknown key 'widht'")
    with pytest.raises(wnjax.InvalidInput, match="widht"):
        _cli.main([*argv, "--debug"])


@pytest.mark.parametrize(
    "argv,says",
    [
        (["sweep", "{tmp}/missing.toml"], "cannot read the sweep config .*No such file"),
        (["sweep", "{tmp}/bad.toml"], "the sweep config .* is not valid TOML: .*line 1"),
        (["problems", "--only", "linear-exp", "no-such"], r"unknown problem\(s\) \['no-such'\]"),
    ],
)
def test_cli_names_a_missing_or_unknown_input_in_one_line(argv, says, tmp_path, capsys):
    import wnjax._cli as _cli

    (tmp_path / "bad.toml").write_text("[grid\nwidth = [8]\n")
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out")]
    assert _cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match("wnjax: error: " + says, err[0]), err
    assert not (tmp_path / "out" / "results.json").exists()


def failing_run(settings, X, y):
    """A ``[sweep] run`` factory whose runs all fail."""
    return lambda key, cfg: {"ok": jnp.asarray(False), "final_log_loss": jnp.asarray(0.0)}


def test_cli_exits_non_zero_when_runs_failed(tmp_path, capsys, monkeypatch):
    import wnjax._cli as _cli

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices writes it
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(f"[sweep]\nrun = '{__name__}:failing_run'\nseeds = 2\nbatch_size = 1\n")
    code = _cli.main(
        ["sweep", str(cfg), "--out", str(tmp_path / "out"), "--devices", "1", "--no-progress"]
    )
    assert code == 1
    assert "2 of 2 runs failed" in capsys.readouterr().out


# --- files ---


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_store_files_follow_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        store = wnjax.Store(str(tmp_path), {"a": 1})
        paths = store.write_table({"x": np.arange(3)})
    finally:
        os.umask(old)
    for path in [os.path.join(str(tmp_path), "manifest.json"), *paths]:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


def half_reaching_run(settings, X, y):
    """A ``[sweep] run`` factory whose runs all succeed, odd seeds short of their target."""
    return lambda key, cfg: {
        "ok": jnp.asarray(True),
        "reached_target": jax.random.key_data(key)[-1] % 2 == 0,
        "final_log_loss": jnp.asarray(0.0),
    }


def test_cli_counts_the_runs_that_ended_short_of_their_target(tmp_path, capsys, monkeypatch):
    import wnjax._cli as _cli

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices writes it
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        f"[sweep]\nrun = '{__name__}:half_reaching_run'\nseeds = 4\nbatch_size = 2\n"
        "[dynamics]\ntarget_log_loss = -300.0\n"
    )
    argv = ["sweep", str(cfg), "--out", str(tmp_path / "out"), "--devices", "1", "--no-progress"]
    assert _cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "reached_target=0.5" in out
    assert "2 of 4 runs ended without reaching the target" in out


# --- models, save times, keys, optimizers, diagnostics ---


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(width=0), "width must be a positive integer"),
        (dict(width=4.5), "width must be a positive integer"),
        (dict(in_size=-1), "in_size must be a positive integer"),
        (dict(depth=0), "depth must be a positive integer"),
        (dict(init_scale=float("nan")), "init_scale must be a finite, nonzero"),
        (dict(init_scale=0.0), "init_scale must be a finite, nonzero"),
        (dict(activation="relu^-1"), "must be positive and finite"),
        (dict(activation="tanh"), "unknown activation"),
    ],
)
def test_bad_mlp_arguments(kw, match):
    args = {**dict(in_size=3, width=4, depth=2, key=jax.random.key(0)), **kw}
    with pytest.raises(wnjax.InvalidInput, match=match):
        wnjax.MLP(**args)


@pytest.mark.parametrize("kw", [dict(kernel_size=0), dict(channels=(0,)), dict(out_size=0)])
def test_bad_cnn_arguments(kw):
    args = {**dict(in_channels=1, channels=(3,), key=jax.random.key(0)), **kw}
    with pytest.raises(wnjax.InvalidInput, match="must be a positive integer"):
        wnjax.CNN(**args)


@RUNNERS
def test_non_finite_weights_fail_before_running(run, problem):
    model, X, y = problem
    bad = eqx.tree_at(
        lambda m: m.layers[0].weight, model, model.layers[0].weight.at[0, 0].set(np.nan)
    )
    with pytest.raises(wnjax.InvalidInput, match=r"layers\[0\]\.w.* NaN or inf"):
        run(bad, X, y)


@RUNNERS
def test_a_model_with_nothing_to_train(run, problem):
    model, X, y = problem
    frozen = wnjax.ewn(model, freeze=lambda m: list(m.layers))
    with pytest.raises(wnjax.InvalidInput, match="no trainable array"):
        run(frozen, X, y)


@RUNNERS
def test_complex_data(run, problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match="X must be real"):
        run(model, X.astype(jnp.complex128), y)


@pytest.mark.parametrize(
    "ts, match",
    [
        ([0.5, 5.0], r"in \[0, t1 = 1\]"),  # past t1
        ([-0.5, 0.5], r"in \[0, t1 = 1\]"),  # before t0
        ([0.5, 0.1], "increasing order"),
        ([0.5, np.nan], "finite numbers"),
    ],
)
def test_bad_save_times(ts, match, problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match=match):
        _flow(model, X, y, save=wnjax.AtTimes(ts))


def test_save_times_as_a_list(problem):
    """A list of times is an array of times: the saved times are those asked for."""
    model, X, y = problem
    r = _flow(model, X, y, save=wnjax.AtTimes([0.0, 0.25, 1.0]), solver="tsit5")
    np.testing.assert_allclose(np.asarray(r.ts), [0.0, 0.25, 1.0])


@RUNNERS
def test_a_target_met_at_the_start_warns(run, problem):
    model, X, y = problem
    start = float(wnjax.log_loss(model, X, y))
    with pytest.warns(UserWarning, match="already met at the start"):
        r = run(model, X, y, target_log_loss=start + 1.0)
    assert bool(r.reached_target)


def test_sgd_key_and_optimizer_names(problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match="key must be a JAX PRNG key"):
        _gd(model, X, y, batch_size=4, key=0)
    with pytest.raises(wnjax.InvalidInput, match="is not an optax optimizer"):
        _gd(model, X, y, optimizer="adamm")
    # a name is the optax factory it names: the same run, to the bit
    by_name = _gd(model, X, y, optimizer="adam")
    by_factory = _gd(model, X, y, optimizer=optax.adam)
    np.testing.assert_array_equal(np.asarray(by_name.log_loss), np.asarray(by_factory.log_loss))


def test_controller_arguments_are_checked(problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match="not diffrax.PIDController arguments"):
        _flow(model, X, y, controller_kwargs={"pcoef": 0.1})


@pytest.mark.parametrize(
    "fn",
    [
        lambda m, X, y: wnjax.log_loss(m, X, y),
        lambda m, X, y: wnjax.margins(m, X, y),
        lambda m, X, y: wnjax.normalized_margin(m, X, y, degree=3.0),
        lambda m, X, y: wnjax.alignment(m, X, y),
    ],
    ids=["log_loss", "margins", "normalized_margin", "alignment"],
)
def test_diagnostics_check_their_data(fn, problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match=r"labels in \{-1, \+1\}"):
        fn(model, X, (y + 1) / 2)  # {0, 1} labels
    with pytest.raises(wnjax.InvalidInput, match="NaN or inf"):
        fn(model, X.at[0, 0].set(np.nan), y)
    with pytest.raises(wnjax.InvalidInput, match="must match"):
        fn(model, X[:3], y)
    # under jit the data are traced and pass through unchecked, to the same number
    np.testing.assert_allclose(jax.jit(fn)(model, X, y), fn(model, X, y), rtol=1e-12)


def test_normalized_margin_needs_a_positive_degree(problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match="degree must be positive"):
        wnjax.normalized_margin(model, X, y, degree=0.0)


def test_gd_option_combinations(problem):
    model, X, y = problem
    with pytest.raises(wnjax.InvalidInput, match="on minibatches"):
        wnjax.gradient_descent(
            model, X, y, num_steps=10, learning_rate=0.1, batch_size=4, key=jax.random.key(0),
            optimizer=wnjax.loss_normalized_sgd, hyperparams={"backtracking": True},
        )  # fmt: skip
    with pytest.raises(wnjax.InvalidInput, match="checkpoints must be finite"):
        _gd(model, X, y, checkpoints=[np.nan])


@pytest.mark.parametrize("outputs, targets", [(3, None), (1, 3), (3, 2)])
def test_square_loss_needs_one_target_per_output(outputs, targets, problem):
    _, X, _ = problem
    net = wnjax.MLP(X.shape[1], 4, 2, out_size=outputs, key=jax.random.key(0))
    y = X[:, 0] if targets is None else jnp.tile(X[:, :1], (1, targets))
    with pytest.raises(wnjax.InvalidInput, match="one target per output"):
        _gd(net, X, y, loss="square")
