"""The documentation: docstring examples run as doctests, the API reference covers the public
names, the theory sections cited in the code exist, and (with the docs extra installed) the
site builds with ``mkdocs build --strict``."""

import doctest
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import wnjax

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wnjax"
DOCS = ROOT / "docs"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules_with_examples() -> list[str]:
    """The ``wnjax`` modules whose source holds a ``>>>`` example."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = modules_with_examples()


def test_there_are_examples():
    assert MODULES, "no docstring in wnjax has a >>> example"


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False)
    assert result.attempted > 0, f"{name} has '>>>' in its source but no example ran"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_core_reference_lists_every_public_name():
    """``docs/api/core.md`` has a ``::: wnjax.NAME`` entry for each name of ``wnjax.__all__``."""
    text = (DOCS / "api" / "core.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: wnjax\.(\w+)\s*$", text, flags=re.MULTILINE))
    missing = sorted(set(wnjax.__all__) - documented)
    unknown = sorted(documented - set(wnjax.__all__))
    assert not missing, f"add these names to docs/api/core.md: {missing}"
    assert not unknown, f"docs/api/core.md documents names wnjax does not export: {unknown}"


def test_cited_theory_sections_exist():
    """Every ``docs/theory.md §N`` cited in the code, tests or benchmarks is a section there."""
    headings = (DOCS / "theory.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", headings, flags=re.MULTILINE))
    cited = {}
    for folder in ("wnjax", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in {".py", ".md"} or not path.is_file():
                continue
            for n in re.findall(r"theory\.md\s*§\s*(\d+)", path.read_text(encoding="utf-8")):
                cited.setdefault(n, path.relative_to(ROOT).as_posix())
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"cited but not in docs/theory.md (section: first file): {missing}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="the docs extra is not installed (make docs installs it)",
)
def test_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
