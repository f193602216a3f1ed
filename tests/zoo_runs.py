"""Zoo problems for the tests, each built and run once per test process.

Building a problem computes its reference; running it compiles its flow, which is most of a
test's time. The results are kept with the ``FlowResult`` that the problem's error metric saw.
"""

import dataclasses

from wnjax import problems

_BUILT = {}
_SOLVED = {}


def make(name, size="test"):
    """``problems.make(name, size)``, built once."""
    if (name, size) not in _BUILT:
        _BUILT[name, size] = problems.make(name, size)
    return _BUILT[name, size]


def solve(name):
    """``(problem, result, flow)`` for ``name`` at size 'test': ``result`` from
    ``problems.run`` with the library's defaults, ``flow`` the ``FlowResult`` it measured."""
    if name not in _SOLVED:
        problem, seen = make(name), {}

        def error(flow):
            seen["flow"] = flow
            return problem.error(flow)

        result = problems.run(dataclasses.replace(problem, error=error))
        _SOLVED[name] = (problem, result, seen["flow"])
    return _SOLVED[name]
