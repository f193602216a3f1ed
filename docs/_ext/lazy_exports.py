"""Griffe extension: make the lazily exported names of ``wnjax`` visible to mkdocstrings.

``wnjax/__init__.py`` imports nothing eagerly: each public name is looked up in the table
``_EXPORTS`` (module -> names) on first use (PEP 562). Static analysis cannot follow that, so this
extension reads the table from the source (``ast.literal_eval``, nothing is imported) and adds an
alias ``wnjax.NAME -> MODULE.NAME`` for every entry. ``::: wnjax.gradient_flow`` then resolves
and the page shows the public path.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe

PACKAGE = "wnjax"
TABLE = "_EXPORTS"


def read_exports(source: str) -> dict[str, tuple[str, ...]]:
    """The literal value of ``_EXPORTS = {...}`` in ``source`` (module -> exported names)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == TABLE for t in targets) and value is not None:
            return ast.literal_eval(value)
    raise ValueError(f"{PACKAGE}/__init__.py defines no literal {TABLE} table")


class LazyExports(griffe.Extension):
    """Add an alias to the package for each name of its lazy export table."""

    def _add_aliases(self, pkg: griffe.Module) -> None:
        if pkg.path != PACKAGE:
            return
        for module, names in read_exports(pkg.filepath.read_text(encoding="utf-8")).items():
            for name in names:
                if name not in pkg.members:
                    pkg.set_member(name, griffe.Alias(name, f"{module}.{name}", parent=pkg))

    # ``on_package`` in recent griffe versions, ``on_package_loaded`` in older ones.
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._add_aliases(pkg)

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._add_aliases(pkg)
