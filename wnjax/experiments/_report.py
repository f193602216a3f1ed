"""Shared output helpers of the experiments: mean ± std, verdicts, metrics.json, report.md.

A verdict is data, ``{"claim": str, "verdict": "reproduced" | "not reproduced" | "not answered",
"detail": str}`` (``judge``, ``not_answered``); an experiment returns its verdicts as
``metrics["verdicts"]`` and ``render_verdicts`` writes their report lines.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

import numpy as np


def pyplot():
    """Matplotlib's pyplot on the Agg backend (figures are written to files, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_std(x, fmt: str = ".3g") -> str:
    """``'mean ± std'`` over the seeds (NaNs ignored; ``'n/a'`` if none is finite)."""
    x = np.asarray(x, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return "n/a"
    return f"{np.mean(x):{fmt}} ± {np.std(x):{fmt}}"


REPRODUCED, NOT_REPRODUCED, NOT_ANSWERED = "reproduced", "not reproduced", "not answered"


def judge(ok: bool, claim: str, detail: str) -> dict:
    """One verdict as data: ``{"claim": claim, "verdict": "reproduced" | "not reproduced",
    "detail": detail}`` (``ok`` true: reproduced)."""
    return {"claim": claim, "verdict": REPRODUCED if bool(ok) else NOT_REPRODUCED, "detail": detail}


def not_answered(claim: str, detail: str) -> dict:
    """A verdict of a claim the run could not decide: ``verdict = "not answered"``, ``detail``
    says why."""
    return {"claim": claim, "verdict": NOT_ANSWERED, "detail": detail}


def render_verdict(v: dict) -> str:
    """The report line of verdict ``v``: ``- **<verdict>**: <claim> (<detail>)``, the
    parenthesis left out when the detail is empty."""
    detail = f" ({v['detail']})" if v.get("detail") else ""
    return f"- **{v['verdict']}**: {v['claim']}{detail}"


def render_verdicts(verdicts: Sequence[dict]) -> list[str]:
    """The report lines of ``verdicts``, one per verdict (``render_verdict``)."""
    return [render_verdict(v) for v in verdicts]


def verdict(ok: bool, claim: str, detail: str) -> str:
    """The report line of ``judge(ok, claim, detail)``, for experiments that write their report
    lines directly."""
    return render_verdict(judge(ok, claim, detail))


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def jsonable(obj):
    """Arrays to nested lists (NaN/inf to ``None``), recursively through dicts and lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "shape") or isinstance(obj, (float, int, np.number, bool, np.bool_)):
        a = np.asarray(obj)
        if a.dtype.kind == "b":
            return a.tolist()
        if a.dtype.kind in "iu":
            return a.tolist()
        a = a.astype(float)
        return (
            np.where(np.isfinite(a), a, np.nan).tolist()
            if a.ndim
            else (float(a) if np.isfinite(a) else None)
        )
    return obj


def json_text(obj, indent: int = 1) -> str:
    """``obj`` as JSON text: arrays and NumPy scalars (bools too) as plain values, every
    non-finite number as ``null``."""
    return json.dumps(_nan_to_none(jsonable(obj)), indent=indent)


def _nan_to_none(x):
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_outputs(out: str, metrics: dict, report: str) -> None:
    """Write ``metrics.json`` and ``report.md`` into ``out``, each atomically (a stopped process
    leaves the previous file or the new one, never a part). Both name the arithmetic the run
    used (``metrics["arithmetic"]``: ``metrics["dtype"]`` where the run records one, else
    ``'float64'``, or ``'float32'`` with x64 off)."""
    import jax

    from wnjax._sweeps.store import atomic_write_bytes

    # the run's own dtype where it records one (a float32 run with x64 on), else x64's
    arithmetic = metrics.get("dtype") or (
        "float64" if jax.config.read("jax_enable_x64") else "float32"
    )
    metrics = {**metrics, "arithmetic": arithmetic}
    report = f"{report.rstrip()}\n\nArithmetic: {arithmetic}.\n"
    atomic_write_bytes(os.path.join(out, "metrics.json"), json_text(metrics).encode())
    atomic_write_bytes(os.path.join(out, "report.md"), (report.rstrip() + "\n").encode())


def save_figure(fig, out: str, name: str) -> str:
    """Save ``fig`` as ``out/name`` (PNG, 120 dpi) and close it; return the file name."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return name


def finite(reduce, x) -> float:
    """``reduce`` over the finite values of ``x``; NaN (without a warning) if there are none, as
    when no seed has two limit neurons to spread."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(reduce(x)) if x.size else float("nan")


QUANTILES = (10, 90)


def seed_quantiles(table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(10%, median, 90%)`` over the seeds (axis 0) of ``table``, over its finite values (NaN
    where a column has none, without a warning)."""
    table = np.asarray(table, float)
    table = np.where(np.isfinite(table), table, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column no seed has
        low, median, high = np.nanpercentile(table, (QUANTILES[0], 50, QUANTILES[1]), axis=0)
    return low, median, high


def padded(rows) -> np.ndarray:
    """Per-seed 1-d arrays of different lengths as one ``(seeds, longest)`` table, NaN-padded."""
    rows = [np.asarray(r, float) for r in rows]
    T = max(len(r) for r in rows)
    return np.array([np.pad(r, (0, T - len(r)), constant_values=np.nan) for r in rows])


def seed_band(ax, xs, ys, *, color, label, log_x: bool = False, points: int = 200, **line) -> None:
    """Draw the median over seeds of curves ``ys[s]`` against ``xs[s]`` with the 10-90% band.

    Each seed's curve is interpolated on one grid over the union of the seeds' ranges (log-spaced
    with ``log_x``). A seed that stopped (at its target, say) keeps its last value past its last
    finite point, so the median at ``x`` is over every seed started by then, not only over the
    slow ones still running. One seed: its curve alone.

    **Arguments:** `ax`, the axes; `xs`, `ys`, shape ``(seeds, T)`` (NaN where there is no
    point); `color`, `label` and further keyword arguments (``ls``, ``lw``), the line's;
    `log_x`, a log-spaced grid; `points`, its size.
    """
    xs, ys = np.atleast_2d(np.asarray(xs, float)), np.atleast_2d(np.asarray(ys, float))
    curves = []
    for x, y in zip(xs, ys):
        ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
        if ok.sum() >= 1:
            order = np.argsort(x[ok], kind="stable")
            curves.append((x[ok][order], y[ok][order]))
    if not curves:
        return
    lo_x = min(c[0][0] for c in curves)
    hi_x = max(c[0][-1] for c in curves)
    if hi_x <= lo_x:
        grid = np.array([lo_x])
    else:
        grid = np.geomspace(lo_x, hi_x, points) if log_x else np.linspace(lo_x, hi_x, points)
    table = np.array([np.interp(grid, x, y, left=np.nan, right=y[-1]) for x, y in curves])
    low, median, high = seed_quantiles(table)
    many = len(curves) > 1
    ax.plot(
        grid,
        median,
        color=color,
        label=f"{label} (median of {len(curves)})" if many else label,
        **line,
    )
    if many:
        ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)


def median_bars(ax, xs, values, *, color, label, marker="o", **kwargs) -> None:
    """Draw the median over seeds of ``values[s, j]`` at ``xs[j]`` with 10-90% error bars (one
    seed: its values alone, no bars). NaNs are left out of each point's statistics.

    **Arguments:** `ax`, the axes; `xs`, shape ``(K,)``; `values`, shape ``(seeds, K)``;
    `color`, `label`, `marker` and further keyword arguments, the line's.
    """
    xs = np.asarray(xs, float)
    v = np.atleast_2d(np.asarray(values, float))
    low, median, high = seed_quantiles(v)
    many = v.shape[0] > 1
    label = f"{label} (median of {v.shape[0]})" if many else label
    if not many:
        ax.plot(xs, median, color=color, label=label, marker=marker, **kwargs)
        return
    ax.errorbar(
        xs,
        median,
        yerr=np.array([median - low, high - median]),
        color=color,
        label=label,
        marker=marker,
        capsize=2,
        **kwargs,
    )


def robust_limits(values, margin: float = 0.08, quantiles=(1, 99)) -> tuple[float, float]:
    """Axis limits spanning the ``quantiles`` of the finite ``values`` plus ``margin`` of that
    range on each side, so that a few outliers do not set the scale."""
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (-1.0, 1.0)
    lo, hi = np.percentile(v, quantiles)
    pad = margin * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.1
    return float(lo - pad), float(hi + pad)


PARAM_STYLE = {
    "ewn": dict(color="tab:red", label="EWN"),
    "swn": dict(color="tab:blue", label="SWN"),
    "standard": dict(color="tab:green", label="unnormalized"),
}
