"""The problem object, the registry, and the runner shared by every zoo problem."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from wnjax._dynamics.flow import FlowResult, gradient_flow
from wnjax._runtime import interrupt as _interrupt
from wnjax._runtime.errors import InvalidInput

SIZES = ("test", "full")


@dataclasses.dataclass(frozen=True)
class Problem:
    """An implicit-bias theorem as a runnable check.

    **Fields:**
    - `name`: the registry name (``wnjax.problems.make(name)``);
    - `citation`: the paper whose theorem is checked;
    - `prediction`: one line, what the theorem predicts;
    - `model`: a bias-free equinox model (or a ``wnjax.Parameterized`` one);
    - `X`, `y`: seeded data;
    - `loss`: the loss name or ``wnjax.Loss``;
    - `target_log_loss`: the run stops at this ``log L`` (classification: ``-1e4`` at full size;
      regression: the log of a residual of ``1e-10`` or less);
    - `flow_options`: further ``wnjax.gradient_flow`` keywords (``time``, ``t1``, ``rate``, ...);
      the solver is left to the default unless the caller of ``run`` names one;
    - `reference`: the prediction, computed independently of the flow (scipy QP/LP/root, a
      closed form, a scipy ODE solve);
    - `error`: ``error(result) -> float``, the distance of the flow's end from ``reference``;
    - `metric`: what ``error`` measures, in words;
    - `tolerance`: the check passes when ``error <= tolerance``.
    """

    name: str
    citation: str
    prediction: str
    model: Any
    X: Any
    y: Any
    loss: Any
    target_log_loss: float
    flow_options: dict
    reference: Any
    error: Callable[[FlowResult], float]
    metric: str
    tolerance: float


@dataclasses.dataclass(frozen=True)
class ProblemResult:
    """The outcome of ``run``: one row of the zoo's table.

    **Fields:** `name`; `steps` (solver steps, all attempts); `wall_s` (wall time of the solve,
    compilation included); `final_log_loss`; `reached_target`; `error` and `tolerance` (see
    ``Problem``); `passed` (the run succeeded and ``error <= tolerance``; ``None``, no verdict,
    when interrupted); `metric`; `message` (how the run ended); `stats` (the solver's
    statistics, as numbers); `interrupted` (SIGINT/SIGTERM stopped the solve: `error` is
    measured at the state it reached).
    """

    name: str
    steps: int
    wall_s: float
    final_log_loss: float
    reached_target: bool
    error: float
    tolerance: float
    passed: bool | None
    metric: str
    message: str
    stats: dict
    interrupted: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# name -> constructor(size="full", seed=0) -> Problem; filled by ``register``.
REGISTRY: dict[str, Callable[..., Problem]] = {}


def register(name: str):
    """Decorator: add a problem constructor ``f(size='full', seed=0) -> Problem`` to the zoo."""

    def add(f):
        if name in REGISTRY:
            raise InvalidInput(f"problem {name!r} is registered twice.")
        REGISTRY[name] = f
        return f

    return add


def names() -> list[str]:
    """The zoo's problem names, in registry order."""
    return list(REGISTRY)


def make(name: str, size: str = "full", seed: int = 0) -> Problem:
    """Build problem ``name`` at ``size`` (``'test'``: small and quick; ``'full'``) from
    ``seed``."""
    if name not in REGISTRY:
        raise InvalidInput(f"unknown problem {name!r}; choose from {names()}.")
    if size not in SIZES:
        raise InvalidInput(f"size must be one of {SIZES}, got {size!r}.")
    return REGISTRY[name](size=size, seed=seed)


def _number(x) -> float:
    return float(np.asarray(x))


def run(problem: Problem, **overrides) -> ProblemResult:
    """Run ``problem``'s gradient flow with the library's defaults and measure its error.

    **Arguments:**
    - `problem`: a ``Problem``;
    - `overrides`: ``wnjax.gradient_flow`` keywords that replace the problem's own (``solver``,
      ``rtol``, ``max_steps``, ...).

    **Returns:** a ``ProblemResult``; a failed solve is reported (``passed=False``), not raised,
    and one that SIGINT/SIGTERM stopped is returned with ``interrupted=True`` and
    ``passed=None``.
    """
    options = dict(problem.flow_options)
    options.update(overrides)
    options.setdefault("target_log_loss", problem.target_log_loss)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = gradient_flow(
            problem.model, problem.X, problem.y, loss=problem.loss, throw=False, **options
        )
        final = _number(result.final_log_loss)  # waits for the solve
    wall = time.perf_counter() - start
    ok = bool(np.asarray(result.ok))
    interrupted = bool(np.asarray(result.interrupted))
    try:
        error = float(problem.error(result))
    except Exception as e:  # noqa: BLE001 - a broken metric is a failed check, with its reason
        error, message = math.nan, f"error metric failed: {e}"
    else:
        message = result.message
    stats = {k: _number(v) for k, v in result.stats.items()}
    return ProblemResult(
        name=problem.name,
        steps=int(stats["num_steps"]),
        wall_s=wall,
        final_log_loss=final,
        reached_target=bool(np.asarray(result.reached_target)),
        error=error,
        tolerance=problem.tolerance,
        passed=None if interrupted else ok and math.isfinite(error) and error <= problem.tolerance,
        metric=problem.metric,
        message=message,
        stats=stats,
        interrupted=interrupted,
    )


def run_all(size: str = "full", seed: int = 0, only=None, **overrides) -> list[ProblemResult]:
    """``run`` every zoo problem (or those named in ``only``) at ``size`` from ``seed``.

    SIGINT/SIGTERM stop it before the next problem: the results then end with the one the
    signal stopped (``interrupted``), if any, and leave out those not started.
    """
    chosen = names() if not only else list(only)
    results = []
    with _interrupt.handling():
        for name in chosen:
            if _interrupt.requested():
                break
            problem = make(name, size, seed)
            if _interrupt.requested():
                break
            results.append(run(problem, **overrides))
    return results
