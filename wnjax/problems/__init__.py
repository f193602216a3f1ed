"""The problem zoo: implicit-bias theorems as runnable checks, each with an independent reference.

``wnjax.problems.make(name, size, seed)`` builds a ``Problem`` (data, a bias-free model, a loss,
a target, the theorem's prediction computed without the flow, and an error metric);
``run(problem)`` integrates its gradient flow with the library's defaults and returns a
``ProblemResult``; ``run_all`` does every problem. ``wnjax problems`` prints the table.
"""

from wnjax.problems import _conv as _conv  # noqa: E402,F401
from wnjax.problems import _diagonal as _diagonal  # noqa: E402,F401
from wnjax.problems import _factorization as _factorization  # noqa: E402,F401

# The problems register themselves on import.
from wnjax.problems import _linear as _linear  # noqa: E402,F401
from wnjax.problems._base import REGISTRY as REGISTRY
from wnjax.problems._base import SIZES as SIZES
from wnjax.problems._base import Problem as Problem
from wnjax.problems._base import ProblemResult as ProblemResult
from wnjax.problems._base import make as make
from wnjax.problems._base import names as names
from wnjax.problems._base import register as register
from wnjax.problems._base import run as run
from wnjax.problems._base import run_all as run_all

__all__ = [
    "REGISTRY",
    "SIZES",
    "Problem",
    "ProblemResult",
    "make",
    "names",
    "register",
    "run",
    "run_all",
]
