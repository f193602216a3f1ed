"""The errors wnjax raises itself, under one base class."""

from __future__ import annotations


class WnjaxError(Exception):
    """Base class of wnjax's own errors; ``wnjax`` on the command line reports them in one line."""


class InvalidInput(WnjaxError, ValueError):
    """An argument or the data is invalid; the message names it, its value and the fix."""
