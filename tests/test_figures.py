"""The experiments' figure helpers: medians over seeds with quantile bands, and axis limits that
outliers do not set, against direct NumPy computations."""

import numpy as np

from wnjax.experiments._report import (
    median_bars,
    padded,
    pyplot,
    robust_limits,
    seed_band,
    seed_quantiles,
)


def test_seed_band_is_the_median_with_stopped_seeds_held():
    plt = pyplot()
    fig, ax = plt.subplots()
    # Three seeds, y = k x on x in [0, 1]; the third stops at x = 0.3 (NaN padding after) and
    # keeps its last value 1.2 from there on.
    x = np.tile(np.linspace(0.0, 1.0, 11), (3, 1))
    y = np.array([1.0, 2.0, 4.0])[:, None] * x
    y[2, 4:] = np.nan
    seed_band(ax, x, y, color="k", label="s", points=21)
    (line,) = ax.lines
    grid, median = line.get_xdata(), line.get_ydata()
    np.testing.assert_allclose(grid, np.linspace(0.0, 1.0, 21))
    held = np.where(grid <= 0.3, 4.0 * grid, 1.2)
    expected = np.median(np.stack([grid, 2.0 * grid, held]), axis=0)
    np.testing.assert_allclose(median, expected, atol=1e-12)
    assert np.any(np.abs(expected - 2.0 * grid) > 0.5)  # the held seed matters
    band = ax.collections[0].get_paths()[0].vertices
    top = np.percentile(np.stack([grid, 2.0 * grid, held]), 90, axis=0)
    np.testing.assert_allclose(band[:, 1].max(), top.max(), atol=1e-12)
    assert "median of 3" in line.get_label()
    plt.close(fig)
    # One seed: its own curve, no band.
    fig, ax = plt.subplots()
    seed_band(ax, x[:1], y[:1], color="k", label="one")
    assert not ax.collections and ax.lines[0].get_label() == "one"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), ax.lines[0].get_xdata(), atol=1e-12)
    plt.close(fig)


def test_robust_limits_ignore_a_far_outlier():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1.0, 1.0, 1000), [-250.0, np.nan, np.inf]])
    lo, hi = robust_limits(values)
    assert -1.3 < lo < -0.9 and 0.9 < hi < 1.3
    assert robust_limits([]) == (-1.0, 1.0)


def test_median_bars_are_the_median_and_the_10_90_quantiles():
    plt = pyplot()
    rng = np.random.default_rng(1)
    values = rng.lognormal(size=(101, 4))
    values[0, 2] = np.nan  # a seed without this point is left out of its statistics
    fig, ax = plt.subplots()
    median_bars(ax, [1.0, 2.0, 3.0, 4.0], values, color="k", label="m")
    line = ax.lines[0]
    expected = np.nanmedian(values, 0)
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    low, high = np.nanpercentile(values, (10, 90), axis=0)
    segments = ax.collections[0].get_segments()  # one vertical bar per point
    np.testing.assert_allclose([s[:, 1].min() for s in segments], low, rtol=1e-12)
    np.testing.assert_allclose([s[:, 1].max() for s in segments], high, rtol=1e-12)
    assert "median of 101" in ax.get_legend_handles_labels()[1][0]
    plt.close(fig)
    # One seed: its values, no bars.
    fig, ax = plt.subplots()
    median_bars(ax, [1.0, 2.0], [[3.0, 5.0]], color="k", label="one")
    assert not ax.collections and ax.lines[0].get_label() == "one"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [3.0, 5.0])
    plt.close(fig)


def test_padded_rows_and_seed_quantiles_against_numpy():
    table = padded([[1.0, 2.0, 3.0], [4.0], [5.0, np.inf]])
    assert table.shape == (3, 3)
    np.testing.assert_array_equal(np.isnan(table[1]), [False, True, True])
    low, median, high = seed_quantiles(table)
    # non-finite values are left out: column 1 holds 2.0 alone, column 2 holds 3.0 alone
    np.testing.assert_allclose(median, [4.0, 2.0, 3.0])
    np.testing.assert_allclose(low[0], np.percentile([1.0, 4.0, 5.0], 10))
    np.testing.assert_allclose(high[0], np.percentile([1.0, 4.0, 5.0], 90))
