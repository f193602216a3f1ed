"""Reproductions of the seed papers' experiments, one private module each.

``reproduce(name, **options)`` runs one (``wnjax reproduce NAME`` on the command line);
``names()`` lists them, ``options(name)`` gives the options an experiment takes, and
``show_run(out)`` prints the summary of a finished run.
"""

from wnjax.experiments._reproduce import EXPERIMENTS as EXPERIMENTS
from wnjax.experiments._reproduce import experiment_options as options
from wnjax.experiments._reproduce import names as names
from wnjax.experiments._reproduce import reproduce as reproduce
from wnjax.experiments._reproduce import show_run as show_run

__all__ = ["EXPERIMENTS", "names", "options", "reproduce", "show_run"]
