"""Every notebook's percent-format script runs end to end at smoke size (WNJAX_SMOKE=1)."""

import os
import pathlib
import subprocess
import sys

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(script, tmp_path):
    env = dict(os.environ, WNJAX_SMOKE="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_notebooks_are_paired():
    """Each percent script has its .ipynb twin, so the notebooks open in Jupyter."""
    assert NOTEBOOKS, "no notebooks found"
    for script in NOTEBOOKS:
        assert script.with_suffix(".ipynb").exists(), f"{script.name} has no paired .ipynb"


@pytest.mark.parametrize("script", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_sync(script):
    """The .ipynb holds the same cells (type and source) as its percent script, so neither was
    edited without the other (`jupytext --sync notebooks/NAME.py` re-pairs them)."""
    jupytext = pytest.importorskip("jupytext")

    def cells(path):
        return [
            (c.cell_type, c.source.strip()) for c in jupytext.read(path).cells if c.source.strip()
        ]

    script_cells, notebook_cells = cells(script), cells(script.with_suffix(".ipynb"))
    assert [c for c in script_cells if c[0] == "code"], f"{script.name} has no code cell"
    assert script_cells == notebook_cells, (
        f"{script.name} and its .ipynb differ; run `jupytext --sync {script}`"
    )
