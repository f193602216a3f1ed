"""The command line: negative numbers as option values, a bad ``--out`` as a one-line error, and
``equivalence``, ``problems``, ``asymptotics`` and ``reproduce --all`` stopped by a request:
what finished is kept and marked partial, with no verdict from a cut-short run."""

import json
import os
import sys
import types

import jax
import numpy as np
import pytest

import wnjax._cli as _cli
import wnjax._runtime.interrupt as _interrupt
from wnjax.experiments import _reproduce, _scorecard
from wnjax.experiments._report import judge

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _no_request_left():
    """Each test's stop request ends with it."""
    yield
    _interrupt.clear()


# --- negative numbers -----------------------------------------------------------------------


NUMBERS = ["-3", "-0.5", "-.5", "-5.", "-1e4", "-1E+04", "-2.5e-3", "-inf", "-Infinity", "-nan"]
NOT_NUMBERS = ["-x", "-e4", "-1e", "-1e4.5", "-.", "-", "--1", "-1..2", "-0x10", "-1e4x"]


@pytest.mark.parametrize("text", NUMBERS + NOT_NUMBERS)
def test_negative_number_matcher_agrees_with_float(text):
    """The parsers read as a number exactly what ``float()`` reads (the reference)."""
    try:
        float(text)
        is_number = True
    except ValueError:
        is_number = False
    assert bool(_cli.NEGATIVE_NUMBER.match(text)) == is_number


@pytest.mark.parametrize(
    "argv, key, value",
    [
        (["asymptotics", "--target", "-1e4"], "target", -1e4),
        (["asymptotics", "--target", "-3e6", "--seed", "-2"], "target", -3e6),
        (["asymptotics", "--target", "-300"], "target", -300.0),
        (["asymptotics", "--target", "-.5E-3"], "target", -5e-4),
        (["demo", "--target", "-1e2", "--xor-target", "-5E1"], "xor_target", -50.0),
        (["demo", "--target", "-1e2"], "target", -100.0),
        (["equivalence", "--seed", "-7"], "seed", -7),
        (["problems", "--seed", "-1", "--size", "test"], "seed", -1),
        (["sweep", "x.toml", "--process-id", "-1"], "process_id", -1),
    ],
)
def test_negative_numbers_are_option_values(argv, key, value):
    args = _cli.build_parser(argv[0]).parse_args(argv)
    assert getattr(args, key) == value


def test_negative_numbers_reach_an_experiments_own_flags():
    from wnjax._cli.reproduce import parse_options

    args = _cli.build_parser("reproduce").parse_args(
        ["reproduce", "lin-sep", "--target", "-1e4", "--seeds", "2"]
    )
    options = parse_options(args.name, args.rest)
    assert options.target == -1e4 and options.seeds == 2


def test_an_option_without_its_value_is_still_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        _cli.main(["asymptotics", "--target", "--seed", "1"])
    assert info.value.code == 2
    assert "--target: expected one argument" in capsys.readouterr().err


# --- a bad --out ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "asymptotics", "problems"])
def test_bad_out_is_a_one_line_error(command, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert _cli.main([command, "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wnjax: error: ") and "existing file" in err and "--out" in err
    assert "Traceback" not in err
    assert _cli.main([command, "--out", str(taken / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write in output directory" in err and "Traceback" not in err
    assert taken.read_text() == "a file"


# --- equivalence ----------------------------------------------------------------------------

SMALL = ["--n", "8", "--d", "3", "--width", "4", "--t1", "1", "--etas", "0.02", "0.01"]


def _request_after(module, name, calls, monkeypatch):
    """Make ``module.name`` record a stop request after its ``calls``-th call returns."""
    original, count = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            _interrupt.request()
        return out

    monkeypatch.setattr(module, name, wrapped)
    return count


@pytest.mark.slow
def test_equivalence_stopped_after_a_flow_prints_no_verdict(monkeypatch, capsys):
    """A request once the adaptive-rate flow is done: no other run starts, the JSON says
    ``interrupted`` and names what finished, no path error or verdict is given, exit 130."""
    import wnjax._analysis.equivalence as eq

    count = _request_after(eq, "gradient_flow", 1, monkeypatch)
    assert _cli.main(["equivalence", "--json", *SMALL]) == 130
    assert count[0] == 1  # the EWN and SWN flows and GD never ran
    r = json.loads(capsys.readouterr().out)
    assert r["interrupted"] is True
    assert r["equivalent"] is None and r["swn_differs"] is None
    assert r["ewn_max_rel_err"] is None and r["swn_max_rel_err"] is None
    assert r["finished"] == ["adaptive_rate flow"]
    assert r["not_finished"] == [
        "ewn flow",
        "swn flow",
        "GD at eta 0.02",
        "GD at eta 0.01",
    ]
    assert r["gd_drift"] == [] and r["gd_drift_exponent"] is None
    assert list(r["num_steps"]) == ["adaptive_rate"]
    report = eq.format_report(r)
    assert report.startswith("PARTIAL: interrupted") and "(not finished)" in report


@pytest.mark.slow
def test_gd_equivalence_stopped_keeps_the_finished_etas(monkeypatch):
    """A request after the first eta's two GD runs: the first eta's numbers are those of a run
    of that eta alone, the second eta is not run."""
    import wnjax._analysis.equivalence as eq
    from wnjax._nets.neurons import flat_weights

    net, X, y = eq.default_problem(jax.random.key(1), n=8, d=3, width=4)
    w = flat_weights(net)
    flows = (w, 1.01 * w)
    with _interrupt.handling():  # a block of its own: the request ends with it
        alone = eq.gd_equivalence(net, X, y, etas=(0.02,), horizon=0.1, flows=flows)
    assert not alone["interrupted"]
    count = _request_after(eq, "_gd_weights", 2, monkeypatch)
    with _interrupt.handling():
        part = eq.gd_equivalence(net, X, y, etas=(0.02, 0.01), horizon=0.1, flows=flows)
    assert count[0] == 2
    assert part["interrupted"] and part["finished"] == ["GD at eta 0.02"]
    assert part["not_finished"] == ["GD at eta 0.01"]
    for key in ("gd_drift", "gd_vs_flow_ewn", "gd_vs_flow_rate"):
        np.testing.assert_allclose(part[key], alone[key], rtol=1e-12)
    assert eq._slopes(part["gd_drift"]) is None  # one eta gives no exponent


# --- problems -------------------------------------------------------------------------------


@pytest.mark.slow
def test_problems_stop_before_the_next_problem(tmp_path, monkeypatch, capsys):
    """A request once the first problem is done: the second is not run, ``results.json`` holds
    the first and says partial, the table ends with a PARTIAL line, exit 130."""
    from wnjax import problems

    count = _request_after(problems, "run", 1, monkeypatch)
    argv = ["problems", "--size", "test", "--only", "linear-exp", "linear-logistic"]
    assert _cli.main([*argv, "--out", str(tmp_path)]) == 130
    assert count[0] == 1
    out = capsys.readouterr().out
    partial = [line for line in out.splitlines() if line.startswith("PARTIAL")]
    assert len(partial) == 1 and "finished: linear-exp" in partial[0]
    assert "not run: linear-logistic" in partial[0] and "passed;" not in out
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["partial"] is True and record["not_run"] == ["linear-logistic"]
    assert [r["name"] for r in record["results"]] == ["linear-exp"]
    assert record["results"][0]["passed"] is True and record["results"][0]["interrupted"] is False


def test_a_problem_stopped_mid_solve_has_no_verdict():
    """A request pending as a solve starts: it stops at its first check (before the target)
    and the row is ``interrupted`` with ``passed`` None; ``run_all`` starts nothing more."""
    from wnjax import problems

    problem = problems.make("linear-exp", "test", 0)
    with _interrupt.handling():
        _interrupt.request()
        r = problems.run(problem)
        assert problems.run_all("test", only=["linear-exp", "linear-logistic"]) == []
    assert r.interrupted and r.passed is None and not r.reached_target
    assert r.steps <= _interrupt.POLL_FIRST_STEPS
    assert r.as_dict()["interrupted"] is True


# --- asymptotics ----------------------------------------------------------------------------


@pytest.mark.slow
def test_asymptotics_stopped_after_a_run_writes_it_marked_partial(tmp_path, monkeypatch, capsys):
    """A request once the EWN flow is done: SWN and standard are not run; diagnostics.json
    holds EWN's finished run, says partial and names the runs not run; exit 130."""
    import wnjax

    count = _request_after(wnjax, "gradient_flow", 1, monkeypatch)
    out = tmp_path / "asy"
    argv = ["asymptotics", "--target", "-5", "--n-save", "4", "--solver", "tsit5"]
    assert _cli.main([*argv, "--out", str(out)]) == 130
    assert count[0] == 1
    text = capsys.readouterr().out
    assert "PARTIAL" in text and "not run: swn, standard" in text
    record = json.loads((out / "diagnostics.json").read_text())
    assert record["partial"] is True and record["interrupted"] is True
    assert record["not_run"] == ["swn", "standard"] and list(record["runs"]) == ["ewn"]
    ewn = record["runs"]["ewn"]
    assert ewn["interrupted"] is False and ewn["ok"] and ewn["final_log_loss"] <= -5 + 1e-6


# --- reproduce --all ------------------------------------------------------------------------


@pytest.fixture
def experiments(monkeypatch):
    """Three stand-in experiments; ``calls`` counts their runs, ``partial_once`` names one
    whose first run writes a partial result, ``stop_in`` one that records a stop request."""
    from wnjax.experiments._options import Common

    calls = {}
    setup = {"partial_once": None, "stop_in": None}

    def module(name):
        m = types.ModuleType(name)
        m.DESCRIPTION = name
        m.Options = Common

        def run(options):
            calls[name] = calls.get(name, 0) + 1
            partial = setup["partial_once"] == name and calls[name] == 1
            verdicts = [judge(True, f"claim of {name}", "ours vs paper")]
            metrics = {"verdicts": [] if partial else verdicts, "partial": partial}
            os.makedirs(options.out, exist_ok=True)
            note = "**PARTIAL**: finished so far: none\n\n" if partial else ""
            with open(os.path.join(options.out, "report.md"), "w") as f:
                f.write(note + "report\n")
            with open(os.path.join(options.out, "metrics.json"), "w") as f:
                json.dump(metrics, f)
            if setup["stop_in"] == name:
                _interrupt.request()
                return {"verdicts": verdicts}  # numbers of a cut-short run
            return metrics

        m.run = run
        monkeypatch.setitem(sys.modules, f"fake_{name}", m)
        return f"fake_{name}"

    registry = {k: module(k) for k in ("a", "b", "c")}
    monkeypatch.setattr(_reproduce, "EXPERIMENTS", registry)
    monkeypatch.setattr(_scorecard, "EXPERIMENTS", registry)
    return calls, setup


def test_reuse_runs_a_partial_experiment_again(experiments, tmp_path):
    calls, setup = experiments
    setup["partial_once"] = "b"
    out = str(tmp_path / "card")
    first = _scorecard.scorecard(out=out)
    assert first["counts"]["reproduced"] == 2  # b's partial run gave no verdict
    again = _scorecard.scorecard(out=out, rerun=False)
    assert calls == {"a": 1, "b": 2, "c": 1}  # only the partial one ran again
    assert again["counts"] == {"reproduced": 3, "not reproduced": 0, "not answered": 0}
    _scorecard.scorecard(out=out, rerun=False)
    assert calls == {"a": 1, "b": 2, "c": 1}  # now finished: reused


def test_reuse_takes_only_runs_with_the_scorecards_options(experiments, tmp_path, capsys):
    """A run stored with other options (``wnjax reproduce a --seeds 2`` into the scorecard's
    folder), or with none recorded, is run again at the defaults, and says why; a run with
    the scorecard's own options is read back."""
    calls, _ = experiments
    out = tmp_path / "card"
    assert _cli.main(["reproduce", "a", "--seeds", "2", "--out", str(out / "a")]) == 0
    assert json.loads((out / "a" / "metrics.json").read_text())["options"]["seeds"] == 2
    _reproduce.reproduce("b", out=str(out / "b"))  # the defaults: reusable
    os.makedirs(out / "c")
    (out / "c" / "metrics.json").write_text(json.dumps({"verdicts": []}))
    capsys.readouterr()
    assert _cli.main(["reproduce", "--all", "--reuse", "--out", str(out)]) == 0
    assert calls == {"a": 2, "b": 1, "c": 1}
    printed = capsys.readouterr().out
    assert "seeds=2 (scorecard: 5)" in printed and "does not record the options" in printed
    assert json.loads((out / "a" / "metrics.json").read_text())["options"]["seeds"] == 5
    assert _cli.main(["reproduce", "--all", "--reuse", "--seeds", "2", "--out", str(out)]) == 0
    assert calls == {"a": 3, "b": 2, "c": 2}  # --seeds 2 is not the runs' 5


def test_all_stopped_marks_the_scorecard_partial(experiments, tmp_path, capsys):
    """A request during b: its verdict is not counted, c is not run; index.md says PARTIAL and
    has a row for b and c; exit 130; ``--reuse`` then runs b and c only."""
    calls, setup = experiments
    setup["stop_in"] = "b"
    out = tmp_path / "card"
    assert _cli.main(["reproduce", "--all", "--out", str(out)]) == 130
    assert calls == {"a": 1, "b": 1}
    printed = capsys.readouterr().out
    assert "PARTIAL: interrupted during b" in printed and "not run: c" in printed
    index = (out / "index.md").read_text()
    assert "**PARTIAL**" in index and "during `b`" in index and "Not run: c." in index
    rows = [line for line in index.splitlines() if line.startswith("| ") and "](" in line]
    assert [row.split(" | ")[1] for row in rows] == ["a", "b", "c"]
    assert rows[0].endswith("**reproduced** | [report](a/report.md) |")
    assert all("**not answered**" in row for row in rows[1:])
    card = json.loads((out / "metrics.json").read_text())
    assert card["partial"] is True and card["interrupted"] == "b"
    assert card["finished"] == ["a"] and card["not_run"] == ["c"]
    assert card["counts"] == {"reproduced": 1, "not reproduced": 0, "not answered": 2}
    assert "PARTIAL" in (out / "b" / "report.md").read_text()
    setup["stop_in"] = None
    assert _cli.main(["reproduce", "--all", "--reuse", "--out", str(out)]) == 0
    assert calls == {"a": 1, "b": 2, "c": 1}
    card = json.loads((out / "metrics.json").read_text())
    assert card["partial"] is False and card["counts"]["reproduced"] == 3
    assert "PARTIAL" not in (out / "index.md").read_text()


# --- demo -----------------------------------------------------------------------------------


def test_demo_stopped_writes_the_finished_parts_marked_partial(tmp_path, monkeypatch, capsys):
    """A request during lin-sep: XOR is not run; report.md and metrics.json hold the finished
    equivalence check with its verdict, name lin-sep as cut short, and no summary figure is
    drawn; exit 130."""
    import wnjax._cli.demo as demo
    from wnjax.experiments import _reproduce as reproduce_module

    eq = {
        **dict(model="mlp", n=16, d=4, width=8, depth=2, activation="relu2", loss="exponential"),
        **dict(ewn_max_rel_err=5e-9, swn_max_rel_err=0.7, rtol=1e-10, gd_horizon=1.0),
        **dict(gd_drift=[[0.01, 4e-3], [0.005, 2e-3]], gd_vs_flow=[[0.01, 1e-2], [0.005, 5e-3]]),
        **dict(gd_drift_exponent=1.0, gd_vs_flow_exponent=1.0, interrupted=False),
        **dict(equivalent=True, swn_differs=True),
    }
    monkeypatch.setattr(demo, "equivalence_job", lambda seed, x64: (eq, 0.5))
    ran = []

    def reproduce(name, *, out, **options):
        ran.append(name)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write("**PARTIAL**: cut short\n")
        _interrupt.request(15)
        return {"verdicts": [judge(True, "a claim of a cut-short run", "")], "partial": True}

    monkeypatch.setattr(reproduce_module, "reproduce", reproduce)
    out = tmp_path / "demo"
    assert _cli.main(["demo", "--jobs", "1", "--out", str(out)]) == 143
    assert ran == ["lin-sep"]
    assert "PARTIAL: interrupted; finished: equivalence" in capsys.readouterr().out
    assert not (out / "demo.png").exists()
    report = (out / "report.md").read_text()
    assert report.startswith("# wnjax demo\n\n**PARTIAL**")
    assert "Not finished, no verdict: lin-sep (cut short), XOR." in report
    assert "- **reproduced**: EWN gradient flow" in report
    assert "a claim of a cut-short run" not in report
    m = json.loads((out / "metrics.json").read_text())
    assert m["partial"] is True and m["finished"] == ["equivalence"]
    assert m["not_finished"] == ["lin_sep", "xor"] and m["xor"] is None
    assert list(m["verdicts"]) == ["equivalence"] and m["lin_sep"]["partial"] is True
