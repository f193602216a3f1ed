"""``wnjax demo`` at small size: its outputs, their keys and shapes, the equivalence it checks and
the experiments' verdicts it collects."""

import json

import numpy as np
import pytest

import wnjax._cli as _cli


@pytest.mark.slow
def test_demo_small(tmp_path):
    out = tmp_path / "demo"
    code = _cli.main(
        [
            "demo",
            "--out",
            str(out),
            "--seeds",
            "2",
            "--target",
            "-100",
            "--xor-target",
            "-20",
            "--max-steps",
            "3000",
            "--jobs",
            "2",
        ]
    )
    assert code == 0  # the equivalence holds
    for name in (
        "demo.png",
        "report.md",
        "metrics.json",
        "lin-sep/lin_sep.png",
        "lin-sep/report.md",
        "xor/xor.png",
        "xor/report.md",
    ):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) >= {"equivalence", "lin_sep", "xor", "verdicts", "settings", "seconds"}
    eq = m["equivalence"]
    # EWN flow = rate-||w_u||^2 flow to solver precision; SWN does not; GD error ~ eta^1.
    assert eq["ewn_max_rel_err"] < 1e-6 < 1e-3 < eq["swn_max_rel_err"]
    assert abs(eq["gd_vs_flow_exponent"] - 1.0) < 0.2
    for name in ("ewn", "swn", "standard"):
        assert np.shape(m["lin_sep"][f"{name}_relative_norms"]) == (2, 8)
        assert np.shape(m["xor"][f"{name}_relative_norms"]) == (2, 20)
        rel = np.asarray(m["xor"][f"{name}_relative_norms"])
        np.testing.assert_allclose(np.sum(rel**2, axis=1), 1.0, rtol=1e-9)  # unit-norm profile
    assert [len(m["verdicts"][k]) for k in ("equivalence", "lin_sep", "xor")] == [1, 5, 4]
    # the experiments' verdicts are the data their runs returned, and their reports render them
    assert m["verdicts"]["lin_sep"] == m["lin_sep"]["verdicts"]
    assert m["verdicts"]["xor"] == m["xor"]["verdicts"]
    assert m["verdicts"]["equivalence"][0]["verdict"] == "reproduced"  # both errors as above
    for part, folder in (("lin_sep", "lin-sep"), ("xor", "xor")):
        lines = (out / folder / "report.md").read_text().splitlines()
        for v in m["verdicts"][part]:
            assert v["verdict"] in ("reproduced", "not reproduced", "not answered")
            assert f"- **{v['verdict']}**: {v['claim']} ({v['detail']})" in lines
    assert m["settings"] == {
        "seed": 0,
        "seeds": 2,
        "lin_sep_target": -100.0,
        "xor_target": -20.0,
        "max_steps": 3000,
        "jobs": 2,
    }
    report = (out / "report.md").read_text()
    assert "![demo](demo.png)" in report and "(lin-sep/lin_sep.png)" in report
    assert report.count("reproduced") >= 10
