"""The problem zoo: implicit-bias theorems as runnable checks, each with an independent reference.

``wnjax.problems.make(name, size, seed)`` builds a ``Problem`` (data, a bias-free model, a loss,
a target, the theorem's prediction computed without the flow, and an error metric);
``run(problem)`` integrates its gradient flow with the library's defaults and returns a
``ProblemResult``; ``run_all`` does every problem. ``wnjax problems`` prints the table.
"""

from ._base import REGISTRY as REGISTRY
from ._base import SIZES as SIZES
from ._base import Problem as Problem
from ._base import ProblemResult as ProblemResult
from ._base import make as make
from ._base import names as names
from ._base import register as register
from ._base import run as run
from ._base import run_all as run_all

# The problems register themselves on import.
from . import _linear as _linear  # noqa: E402,F401
from . import _diagonal as _diagonal  # noqa: E402,F401
from . import _conv as _conv  # noqa: E402,F401
from . import _factorization as _factorization  # noqa: E402,F401
