"""The scorecard: one row per verdict an experiment returned, counts that add up, and a failing
experiment recorded as not answered without stopping the others."""

import json
import os
import sys
import types

import pytest

from wnjax._cli import main
from wnjax.experiments import _reproduce, _scorecard
from wnjax.experiments._report import judge, not_answered

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def fake_experiments(monkeypatch):
    """Two stand-in experiments with known verdicts, and one that raises."""
    from wnjax.experiments._options import Common

    def module(name, verdicts=None, error=None):
        m = types.ModuleType(name)
        m.DESCRIPTION = name
        m.Options = Common

        def run(options):
            if error:
                raise RuntimeError(error)
            os.makedirs(options.out, exist_ok=True)
            with open(os.path.join(options.out, "report.md"), "w") as f:
                f.write("report\n")
            with open(os.path.join(options.out, "fig.png"), "wb") as f:
                f.write(b"png")
            with open(os.path.join(options.out, "metrics.json"), "w") as f:
                json.dump({"verdicts": verdicts}, f)
            return {"verdicts": verdicts}

        m.run = run
        monkeypatch.setitem(sys.modules, f"fake_{name}", m)
        return f"fake_{name}"

    registry = {
        "a": module(
            "a",
            [
                judge(True, "claim one", "ours 1 vs paper 1"),
                judge(False, "claim | two", "ours 2 vs paper 3"),
            ],
        ),
        "b": module("b", [not_answered("claim three", "too slow")]),
        "c": module("c", error="boom"),
    }
    monkeypatch.setattr(_reproduce, "EXPERIMENTS", registry)
    monkeypatch.setattr(_scorecard, "EXPERIMENTS", registry)
    return registry


def test_scorecard_counts_every_verdict(fake_experiments, tmp_path):
    out = str(tmp_path / "card")
    card = _scorecard.scorecard(out=out, seeds=1)
    assert card["counts"] == {"reproduced": 1, "not reproduced": 1, "not answered": 2}
    assert set(card["errors"]) == {"c"} and "boom" in card["errors"]["c"]
    with open(os.path.join(out, "index.md")) as f:
        text = f.read()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "](" in line]
    assert len(rows) == 4  # one per claim, the failed experiment's as one not-answered row
    assert "claim \\| two" in text  # a pipe inside a cell is escaped
    assert "[figure](a/fig.png)" in text and "[report](b/report.md)" in text
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["counts"] == card["counts"]
    # Reading the finished runs back (same options) gives the same claims without running
    # anything again.
    again = _scorecard.scorecard(out=out, rerun=False, names=["a", "b"], seeds=1)
    assert again["counts"] == {"reproduced": 1, "not reproduced": 1, "not answered": 1}
    # ... and each experiment's wall time as its own run recorded it in its metrics.json.
    with open(os.path.join(out, "a", "metrics.json")) as f:
        assert again["seconds"]["a"] == json.load(f)["wall_seconds"] == card["seconds"]["a"]


def test_cli_all_writes_the_scorecard(fake_experiments, tmp_path, capsys):
    out = str(tmp_path / "card")
    code = main(["reproduce", "--all", "--out", out])
    assert code == 1  # experiment c failed
    assert "1 reproduced, 1 not reproduced, 2 not answered" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "a", "report.md"))


def test_verdicts_keyed_by_stage_are_flattened():
    metrics = {"verdicts": {"-10": [judge(True, "x", "")], "-300": judge(False, "y", "")}}
    found = _scorecard.verdicts_of(metrics)
    assert [v["claim"] for v in found] == ["x (-10)", "y (-300)"]
    assert [v["verdict"] for v in found] == ["reproduced", "not reproduced"]
