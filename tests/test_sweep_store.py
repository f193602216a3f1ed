"""The sweep store: config errors before any file, version checks on resume, readable
differences, and sweeps extended by more seeds."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wnjax
import wnjax._cli as _cli
import wnjax._sweeps.store as _store
from wnjax._sweeps.store import VersionMismatch

X, Y = wnjax.data.lin_sep(jax.random.key(0))
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "sweep.toml")


def _run(key, cfg):
    """A cheap run: one normal draw of its key (known without the sweep) and a short GD run."""
    m = wnjax.MLP(2, 4, 2, init_scale=cfg["init_scale"], key=key)
    r = wnjax.traced_gradient_descent(
        wnjax.ewn(m), X, Y, num_steps=50, learning_rate=0.05, n_save=4, diagnostics=False
    )
    return {
        "z": jax.random.normal(key) * cfg["init_scale"],
        "final_log_loss": r.final_log_loss,
        "log_loss": r.log_loss,
    }


GRID = {"init_scale": [0.5, 1.0]}
KW = dict(batch_size=2, chunk_size=4, devices=1, progress=False)


def _chunks(path):
    return sorted(n for n in os.listdir(path / "chunks") if n.endswith(".npz"))


@pytest.mark.parametrize(
    "setting,says",
    [
        ("dynamics.rtol=0", r"\[dynamics\] rtol: rtol must be positive"),
        ("dynamics.t1=-1", r"\[dynamics\] t1: t1 must exceed 0"),
        ('model.activation="foo"', r"\[model\] activation: unknown activation 'foo'"),
        ("grid.width=[0]", r"\[grid\] width: width must be a positive integer, got 0"),
        ("grid.rtol=[1e-8, 0.0]", r"\[grid\] rtol: rtol must be positive"),
        ("grid.init_scale=[0.0, 1.0]", r"\[grid\] init_scale: init_scale must be .*nonzero"),
        ('grid.time=["foo", "loss"]', r"grid cell .*time='foo': time must be one of"),
        ('sweep.plot=["loss"]', r"\[sweep\] plot: no trajectory 'loss'"),
    ],
)
def test_bad_config_fails_before_the_store_is_written(setting, says, tmp_path, capsys, monkeypatch):
    """Each bad value is named, and the results directory is not even created; the same
    ``--out`` then takes a good config (checked here up to the store, with a run that stops at
    once)."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices writes it
    out = tmp_path / "out"
    argv = ["sweep", EXAMPLE, "--out", str(out), "--seeds", "2", "--devices", "1", "--no-progress"]
    assert _cli.main([*argv, "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(says, err[0]), err
    assert not out.exists()


def test_a_run_that_rejects_its_arguments_writes_nothing(tmp_path):
    """The library: a run whose ``gradient_flow`` call is invalid fails while traced, before the
    store; a manifest without any finished chunk is replaced by the next sweep."""

    def bad(key, cfg):
        m = wnjax.ewn(wnjax.MLP(2, 4, 2, activation="relu2", key=key))
        r = wnjax.gradient_flow(m, X, Y, t1=1.0, rtol=0.0, throw=False, save_states=False)
        return {"final_log_loss": r.final_log_loss}

    out = tmp_path / "out"
    with pytest.raises(wnjax.InvalidInput, match="rtol must be positive"):
        wnjax.sweep(bad, 2, {"width": [4, 8]}, out=str(out), **KW)
    assert not out.exists()

    wnjax.Store(str(out), {"seeds": [0, 1], "rtol": 0.0})  # a manifest, no chunk
    done = wnjax.sweep(_run, 2, GRID, out=str(out), **KW)
    stored = json.loads((out / "manifest.json").read_text())
    assert stored["identity"]["seeds"] == [0, 1] and "rtol" not in stored["identity"]
    assert len(done) == 4 and _chunks(out) == ["c000_k00000.npz"]
    # With a finished chunk, another config is refused.
    with pytest.raises(wnjax.StoreMismatch, match="init_scale"):
        wnjax.sweep(_run, 2, {"init_scale": [0.25, 1.0]}, out=str(out), **KW)


def test_store_differences_show_where_values_differ(tmp_path):
    """A mismatch names the seed counts and ranges, and shows a long value around its first
    difference."""
    long_a = "x" * 200 + "A" + "y" * 50
    long_b = "x" * 200 + "B" + "y" * 50
    store = wnjax.Store(str(tmp_path), {"seeds": list(range(512)), "note": long_a})
    store.write_chunk(0, 0, {"row": np.arange(2)})
    with pytest.raises(wnjax.StoreMismatch) as info:
        wnjax.Store(str(tmp_path), {"seeds": list(range(600)), "note": long_b})
    text = str(info.value)
    assert "seeds: stored 0..511 (512) != new 0..599 (600)" in text
    note = next(line for line in text.splitlines() if "note:" in line)
    assert "xA" in note and "xB" in note and "character 200" in note
    # Other seeds, the rest unchanged: the message says how to add seeds.
    with pytest.raises(wnjax.StoreMismatch) as info:
        wnjax.Store(str(tmp_path), {"seeds": [*range(100, 300), 7], "note": long_a})
    text = str(info.value)
    assert "stored 0..511 (512) != new 100..299, 7 (201)" in text
    assert "--out DIR2" in text and "seeds come first" in text
    # Chunks without a manifest cannot be matched to any sweep.
    os.remove(tmp_path / "manifest.json")
    with pytest.raises(wnjax.StoreMismatch, match="holds chunks but no manifest.json"):
        wnjax.Store(str(tmp_path), {"seeds": list(range(512)), "note": long_a})
    assert _store._difference([1, 2], [1, 5]) == "stored [1,2] != new [1,5]"
    a, b = list(range(40)), [*range(20), *range(30, 60)]
    assert _store._difference(a, b) == "stored 0..39 (40) != new 0..19, 30..59 (50)"
    a, b = ["ab"] * 20, ["ab"] * 5 + ["cd"] * 20
    assert _store._difference(a, b) == (
        'stored 20 items != new 25 items; item 5: stored "ab" != new "cd"'
    )


def test_resume_with_other_versions_is_refused_unless_allowed(tmp_path, monkeypatch):
    """Chunks stored by another jax (or git revision) are not mixed with new ones, unless
    ``allow_version_change``; the manifest records that resume and later ones compare with it."""
    out = tmp_path / "out"
    wnjax.sweep(_run, 2, GRID, out=str(out), **KW)  # one finished chunk
    real = _store.package_versions()
    upgraded = {**real, "jax": real["jax"] + ".post1"}
    monkeypatch.setattr(_store, "package_versions", lambda: upgraded)
    with pytest.raises(VersionMismatch) as info:
        wnjax.sweep(_run, 4, GRID, out=str(out), **KW)
    text = str(info.value)
    assert f"jax: stored {real['jax']} != installed {real['jax']}.post1" in text
    assert "--allow-version-change" in text and "--overwrite" in text
    assert "jaxlib" not in text and _chunks(out) == ["c000_k00000.npz"]

    wnjax.sweep(_run, 4, GRID, out=str(out), allow_version_change=True, **KW)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["jax"] == real["jax"]  # the versions it was created with
    assert manifest["resumes"][-1]["versions"]["jax"] == upgraded["jax"]
    assert manifest["resumes"][-1]["seeds"] == 4
    wnjax.sweep(_run, 4, GRID, out=str(out), **KW)  # the versions of the last resume

    git = {"revision": "0" * 40, "dirty": False}
    monkeypatch.setattr(_store, "git_revision", lambda: git)
    with pytest.raises(VersionMismatch, match="git revision: stored .* != installed 0000"):
        wnjax.sweep(_run, 4, GRID, out=str(out), **KW)
    wnjax.sweep(_run, 4, GRID, out=str(out), overwrite=True, **KW)  # starts again
    assert "resumes" not in json.loads((out / "manifest.json").read_text())


def test_more_seeds_extend_a_stored_sweep_bit_for_bit(tmp_path):
    """3 seeds, then 5 (a chunk of 4 rows, so the 3-seed sweep ends in a half chunk): the full
    chunk is kept untouched, the rest computed, and the table and trajectories equal one sweep
    of all 5 seeds, bit for bit; each row's draw is that of its own seed's key."""
    out, ref = tmp_path / "extended", tmp_path / "at-once"
    first = wnjax.sweep(_run, 3, GRID, out=str(out), **KW)
    assert len(first) == 6 and _chunks(out) == ["c000_k00000.npz", "c000_k00001.npz"]
    kept = os.stat(out / "chunks" / "c000_k00000.npz")
    extended = wnjax.sweep(_run, 5, GRID, out=str(out), **KW)
    again = os.stat(out / "chunks" / "c000_k00000.npz")
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert _chunks(out) == ["c000_k00000.npz", "c000_k00001.npz", "c000_k00002.npz"]

    at_once = wnjax.sweep(_run, 5, GRID, out=str(ref), **KW)
    for k in at_once.table:
        np.testing.assert_array_equal(extended.table[k], at_once.table[k])
    assert (out / "table.csv").read_bytes() == (ref / "table.csv").read_bytes()
    with (
        np.load(out / "trajectories" / "c000.npz") as a,
        np.load(ref / "trajectories" / "c000.npz") as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    t = extended.table
    assert t["seed"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    expect = [
        float(jax.random.normal(jax.random.key(s))) * v for s, v in zip(t["seed"], t["init_scale"])
    ]
    np.testing.assert_allclose(t["z"], expect, rtol=1e-15)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["identity"]["seeds"] == [0, 1, 2, 3, 4] and manifest["resumes"][-1]["seeds"] == 5
    )
    # Seeds that do not extend the stored ones are refused.
    with pytest.raises(wnjax.StoreMismatch, match="seeds come first"):
        wnjax.sweep(_run, [1, 2, 3, 4, 5, 6], GRID, out=str(out), **KW)


def sweep_factory(settings, X, y):
    """A ``[sweep] run`` factory for the CLI tests."""
    return lambda key, cfg: {"ok": jnp.asarray(True), "z": jax.random.normal(key)}


def test_cli_extends_a_sweep_and_takes_allow_version_change(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # --devices writes it
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(f"[sweep]\nrun = '{__name__}:sweep_factory'\nbatch_size = 2\nchunk_size = 2\n")
    out = tmp_path / "out"
    argv = ["sweep", str(cfg), "--out", str(out), "--devices", "1", "--no-progress"]
    assert _cli.main([*argv, "--seeds", "3"]) == 0
    assert _cli.main([*argv, "--seeds", "4"]) == 0
    assert "4 runs" in capsys.readouterr().out
    z = np.genfromtxt(out / "table.csv", delimiter=",", names=True)["z"]
    np.testing.assert_allclose(z, [float(jax.random.normal(jax.random.key(s))) for s in range(4)])
    real = _store.package_versions()
    monkeypatch.setattr(_store, "package_versions", lambda: {**real, "wnjax": "0.0.0"})
    assert _cli.main([*argv, "--seeds", "4"]) == 2
    assert "wnjax: stored" in capsys.readouterr().err
    assert _cli.main([*argv, "--seeds", "4", "--allow-version-change"]) == 0
