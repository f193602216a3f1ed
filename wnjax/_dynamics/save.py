"""Where a gradient flow saves its summaries: small objects passed as ``gradient_flow(save=...)``,
in the manner of diffrax's ``SaveAt``."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import numpy as np

from wnjax._runtime.errors import InvalidInput


class LogSpaced(eqx.Module):
    """Save at the start, then at ``n - 1`` times log-spaced from ``t0 + 1e-6 (t1 - t0)`` to
    ``t1`` (in ``s`` for ``time='normalized'``).

    **Arguments:** `n`: the number of save points (>= 1).
    """

    n: int = 64

    def __check_init__(self):
        _check_count(self.n, "LogSpaced")


class AtTimes(eqx.Module):
    """Save at the given times (plain ``t``, or ``s`` for ``time='normalized'``).

    **Arguments:** `ts`: a 1-D array of increasing times within ``[t0, t1]``.
    """

    ts: Any = eqx.field(converter=lambda ts: ts if isinstance(ts, jax.Array) else np.asarray(ts))

    def __check_init__(self):
        if isinstance(self.ts, jax.core.Tracer):
            return
        ts = np.asarray(self.ts)
        if ts.ndim != 1 or ts.size == 0:
            raise InvalidInput(
                f"AtTimes needs a non-empty 1-D array of times, got shape {ts.shape}."
            )
        if ts.dtype.kind not in "iuf" or not np.all(np.isfinite(ts)):
            raise InvalidInput(f"AtTimes needs finite numbers as times, got {ts.tolist()[:6]}.")
        if np.any(np.diff(ts) < 0):
            raise InvalidInput(
                f"AtTimes needs its times in increasing order, got {ts.tolist()[:6]}; sort them."
            )

    def check_within(self, start, end, clock: str) -> None:
        """Raise ``InvalidInput`` unless every time lies in ``[start, end]`` (checked where
        none of them is traced); ``clock`` names the time they are in."""
        if any(isinstance(v, jax.core.Tracer) for v in (start, end, self.ts)):
            return
        ts, start, end = np.asarray(self.ts), float(start), float(end)
        if ts.min() < start or ts.max() > end:
            raise InvalidInput(
                f"AtTimes saves at {clock} in [{start:g}, t1 = {end:g}]; got times from "
                f"{ts.min():g} to {ts.max():g}. Drop those outside, or raise t1."
            )


class AtLossLevels(eqx.Module):
    """Save where ``log L`` crosses ``n`` levels from ``log L(0)`` down to the target
    (``wnjax.loss_levels``: drops geometric in ``log L(0) - log L``), one root-found stop per
    level, the state saved at the crossing; the solve goes on from the end of the step that
    crossed it with the solver's own state, so more levels change neither the path nor its
    cost. Needs ``time='normalized'`` or ``'loss'`` and a ``target_log_loss``.

    **Arguments:** `n`: the number of levels (>= 2: the start and the target).
    """

    n: int = 64

    def __check_init__(self):
        _check_count(self.n, "AtLossLevels", least=2)


Save = LogSpaced | AtTimes | AtLossLevels


def _check_count(n, name: str, least: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < least:
        raise InvalidInput(f"{name}(n) needs an integer n >= {least}, got {n!r}.")


def resolve_save(save, *, n_save: int, save_ts, normalized: bool, has_target: bool) -> Save:
    """The save object of a run: ``save`` when given; else ``AtTimes(save_ts)`` when
    ``save_ts`` is given; else ``AtLossLevels(n_save)`` for ``time='normalized'`` or ``'loss'``
    with a target (the path is then resolved where ``log L`` changes, whatever the clock does),
    and ``LogSpaced(n_save)`` otherwise."""
    if save is not None:
        if save_ts is not None:
            raise InvalidInput("pass either save= or save_ts=, not both.")
        if not isinstance(save, (LogSpaced, AtTimes, AtLossLevels)):
            raise InvalidInput(
                "save must be wnjax.LogSpaced(n), wnjax.AtTimes(ts) or wnjax.AtLossLevels(n), "
                f"got {save!r}."
            )
    elif save_ts is not None:
        save = AtTimes(save_ts)
    elif normalized and has_target:
        save = AtLossLevels(n_save)
    else:
        save = LogSpaced(n_save)
    if isinstance(save, AtLossLevels) and not (normalized and has_target):
        raise InvalidInput(
            "AtLossLevels saves at levels of log L down to the target: it needs "
            "time='normalized' or 'loss' and a target_log_loss. Use LogSpaced(n) or AtTimes(ts) "
            "otherwise."
        )
    return save
