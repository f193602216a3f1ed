"""The errors wnjax raises itself, under one base class."""

from __future__ import annotations


class WnjaxError(Exception):
    """Base class of wnjax's own errors; ``wnjax`` on the command line reports them in one line."""


class InvalidInput(WnjaxError, ValueError):
    """An argument or the data is invalid; the message names it, its value and the fix."""


class TargetMetAtStart(UserWarning):
    """A run's ``target_log_loss`` was met at its start, so it took no step. A warning for a
    single run; ``wnjax.reproduce`` turns it into ``InvalidInput`` (an experiment would judge
    untrained nets), and ``warnings.simplefilter("error", TargetMetAtStart)`` does so
    anywhere."""
