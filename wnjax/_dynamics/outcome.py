"""How a run ended, the same way for gradient flow and gradient descent.

``FlowResult`` and ``GDResult`` both derive from ``RunResult``: a ``stop_code`` field (an array;
the codes of each run type are listed on it), a ``reached_target`` field (an array), and the
properties ``ok``, ``interrupted`` and ``message``; ``check()`` raises the type's
``RunFailed`` subclass (``FlowFailed``, ``GDFailed``) unless every run is ``ok``.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import numpy as np

from wnjax._runtime.errors import WnjaxError


class RunFailed(WnjaxError, RuntimeError):
    """A flow or GD run failed; ``.result`` holds everything computed before it did."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


class RunResult(eqx.Module):
    """Base of ``FlowResult`` and ``GDResult`` (fields ``stop_code``, ``reached_target``; properties
    ``ok``, ``interrupted``, ``message``, defined by each)."""

    failure: ClassVar[type] = RunFailed

    def check(self):
        """Raise the result type's ``RunFailed`` subclass (carrying this partial result) unless
        every run succeeded (``ok``); return the result otherwise."""
        if not bool(np.all(np.asarray(self.ok))):
            raise self.failure(self.message, self)
        return self
