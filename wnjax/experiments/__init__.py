"""Reproductions of the seed papers' experiments, one private module each.

``reproduce(name, **options)`` runs one (``wnjax reproduce NAME`` on the command line) and
returns its metrics, among them ``metrics["verdicts"]``: one ``{"claim", "verdict", "detail"}``
per claim, ``verdict`` being ``"reproduced"``, ``"not reproduced"`` or ``"not answered"``.
``names()`` lists the experiments, ``options(name)`` gives the option names an experiment takes
(the fields of its frozen ``Options`` dataclass, the flags of ``wnjax reproduce NAME`` with ``-``
written as ``_``), and ``show_run(out)`` prints the summary of a finished run.
"""

from wnjax.experiments._reproduce import EXPERIMENTS as EXPERIMENTS
from wnjax.experiments._reproduce import experiment_options as options
from wnjax.experiments._reproduce import names as names
from wnjax.experiments._reproduce import reproduce as reproduce
from wnjax.experiments._reproduce import show_run as show_run
from wnjax.experiments._scorecard import scorecard as scorecard

__all__ = ["EXPERIMENTS", "names", "options", "reproduce", "scorecard", "show_run"]
