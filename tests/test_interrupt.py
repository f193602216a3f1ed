"""SIGINT/SIGTERM: a flow, GD and a reproduction stop early and keep what they computed; output
directories are checked before computing."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from helpers import STOPS_WITHIN

import wnjax
import wnjax._cli as _cli
import wnjax._runtime.interrupt as _interrupt

X, Y = wnjax.data.lin_sep(jax.random.key(0))


def _signal_when_handled(signum=signal.SIGINT):
    """Send ``signum`` to this process as soon as a computation has installed its handlers."""

    def send():
        deadline = time.time() + 60
        while not _interrupt._state["depth"] and time.time() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


class _SignalAtPoll:
    """Replace ``_interrupt.poll_interval`` (the host side of a running solve's check) with one
    that sends ``signum`` to this process at its ``n``-th call, while the main thread waits on
    the solve, and answers once the request is recorded."""

    def __init__(self, monkeypatch, n: int, signum=signal.SIGTERM):
        self.calls, self.n, self.signum = 0, n, signum
        self.original = _interrupt.poll_interval
        monkeypatch.setattr(_interrupt, "poll_interval", self)

    def __call__(self, steps, since):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.signum)
            deadline = time.time() + 10
            while not _interrupt.requested() and time.time() < deadline:
                time.sleep(0.001)
        return self.original(steps, since)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw",
    [
        dict(time="normalized", t1=1e8, target_log_loss=-300.0),  # one solve per save level
        dict(t1=1e6, rtol=1e-12, atol=1e-14),  # one solve, save times
    ],
    ids=["levels", "times"],
)
def test_flow_signal_returns_the_partial_run(kw, monkeypatch):
    """SIGTERM while a solve runs: it stops at its next check, here the first (which comes
    ``POLL_FIRST_STEPS`` steps in), and returns what it reached."""
    model = wnjax.swn(wnjax.MLP(2, 8, 2, activation="relu2", key=jax.random.key(1)))
    opts = dict(solver="tsit5", diagnostics=False, throw=True, **kw)
    full = wnjax.gradient_flow(model, X, Y, n_save=8, **opts)
    assert full.ok and not full.interrupted
    stop_at = _interrupt.POLL_FIRST_STEPS
    assert int(full.stats["num_steps"]) > stop_at
    before = signal.getsignal(signal.SIGINT)
    spy = _SignalAtPoll(monkeypatch, n=1)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        # another n_save: a new trace, which calls the replaced check
        part = wnjax.gradient_flow(model, X, Y, n_save=9, **opts)  # no FlowFailed (throw=True)
    assert spy.calls == 1
    assert bool(part.interrupted) and not bool(part.ok)
    assert "interrupted" in part.message
    assert int(part.stats["num_steps"]) == stop_at
    assert float(part.final_log_loss) > float(full.final_log_loss)
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored
    with pytest.warns(RuntimeWarning, match="earlier call"):  # the signal stops later calls
        later = wnjax.gradient_flow(model, X, Y, n_save=8, **opts)
    assert bool(later.interrupted) and int(later.stats["num_steps"]) == stop_at
    _interrupt.clear()
    again = wnjax.gradient_flow(model, X, Y, n_save=8, **opts)  # a new call starts afresh
    assert again.ok and int(again.stats["num_steps"]) == int(full.stats["num_steps"])


@pytest.mark.slow
def test_flow_poll_leaves_the_numbers_unchanged():
    """The stop-request poll inside the solve changes no bit of an uninterrupted run."""
    import wnjax._dynamics.flow as _flow

    model = wnjax.ewn(wnjax.MLP(2, 4, 2, activation="relu2", key=jax.random.key(2)))
    kw = dict(time="normalized", t1=1e8, target_log_loss=-50.0, solver="tsit5", diagnostics=False)
    polled = wnjax.gradient_flow(model, X, Y, **kw)
    solve = _flow._solve
    try:
        _flow._solve = lambda *a, **k: solve(*a, **k, poll=False)
        plain = wnjax.gradient_flow(model, X, Y, **kw)
    finally:
        _flow._solve = solve
    for a, b in zip(jax.tree_util.tree_leaves(polled), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("loops", [1, 2, 8])
def test_concurrent_loops_each_check_about_every_poll_seconds(loops, monkeypatch):
    """Loops running at once (a sweep's blocks) each time their checks from their own previous
    one: simulated loops of 5,000, 3,800, 3,100, ... steps a second settle at POLL_SECONDS times
    their own rate between checks, however many check in between (timed from any loop's check,
    the intervals of loops that check close together grow up to 4x at each check)."""
    now = [0.0]
    monkeypatch.setattr(_interrupt, "clock", lambda: now[0])
    monkeypatch.setitem(_interrupt._state, "polled", 0.0)
    rates = [5000.0 / (1 + 0.3 * k) for k in range(loops)]
    first = _interrupt.POLL_FIRST_STEPS
    # each loop: [time of its next check, steps to it, clock of its previous check]
    state = [[first / rate, first, -1.0] for rate in rates]
    last = [0] * loops
    for _ in range(60 * loops):
        k = min(range(loops), key=lambda j: state[j][0])
        now[0], steps, since = state[k]
        stop, nxt, at = _interrupt.poll_interval(np.int32(steps), np.float32(since))
        assert not bool(stop) and float(at) == pytest.approx(now[0], abs=1e-3)
        state[k] = [now[0] + int(nxt) / rates[k], int(nxt), float(at)]
        last[k] = int(nxt)
    for k, rate in enumerate(rates):
        target = _interrupt.POLL_SECONDS * rate
        assert 0.8 * target <= last[k] <= 1.25 * target, (k, last[k], target)


def test_gradient_descent_signal_keeps_the_finished_chunks():
    model = wnjax.ewn(wnjax.MLP(2, 4, 2, key=jax.random.key(3)))
    thread = _signal_when_handled()
    with pytest.warns(RuntimeWarning, match="interrupted"):
        r = wnjax.gradient_descent(
            model,
            X,
            Y,
            num_steps=10**7,
            learning_rate=0.05,
            chunk_size=500,
            n_save=8,
            diagnostics=False,
        )
    thread.join()
    assert bool(r.interrupted) and not bool(r.ok)
    assert int(r.num_steps) == 500  # the chunk in progress at the signal, and no more
    assert "interrupted" in r.message


def _gd(num_steps):
    model = wnjax.ewn(wnjax.MLP(2, 4, 2, key=jax.random.key(3)))
    kw = dict(learning_rate=0.05, chunk_size=500, n_save=8, diagnostics=False)
    return wnjax.gradient_descent(model, X, Y, num_steps=num_steps, **kw)


@pytest.mark.parametrize(
    "signum, interactive, stands",
    [
        (signal.SIGINT, False, True),  # Ctrl-C in a script stops the script's later calls
        (signal.SIGTERM, False, True),
        (signal.SIGINT, True, False),  # at a prompt it ends the running call only
        (signal.SIGTERM, True, True),
    ],
    ids=["int-script", "term-script", "int-prompt", "term-prompt"],
)
def test_a_signal_outlives_its_call_where_the_process_should_stop(
    signum, interactive, stands, monkeypatch
):
    """After a signal stopped one call, a later call stops at its first check (a chunk of GD)
    where the process should stop, and runs in full where it should not."""
    monkeypatch.setattr(_interrupt, "_interactive", lambda: interactive)
    thread = _signal_when_handled(signum)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        first = _gd(10**7)
    thread.join()
    # the chunk in progress when the signal was recorded, and no more
    assert bool(first.interrupted) and int(first.num_steps) % 500 == 0
    if stands:
        with pytest.warns(RuntimeWarning, match="earlier call"):
            later = _gd(2000)
        assert bool(later.interrupted) and int(later.num_steps) == 500
        assert "earlier call" in later.message
    else:
        later = _gd(2000)
        assert not bool(later.interrupted) and int(later.num_steps) == 2000


def test_a_request_of_wnjax_itself_holds_for_its_block_only():
    """``request()`` (wnjax stopping its own parallel runs) does not stop a later call."""
    with _interrupt.handling():
        _interrupt.request()
        assert _interrupt.requested()
    later = _gd(2000)
    assert not bool(later.interrupted) and int(later.num_steps) == 2000


@pytest.mark.slow
def test_reproduce_sigint_writes_a_partial_report(tmp_path):
    """``wnjax reproduce lin-sep`` stopped by SIGINT once its first parameterization is written:
    exit 130, no traceback, the finished results (whichever run finished first) on disk in a
    report marked PARTIAL."""
    out = tmp_path / "lin-sep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wnjax", "reproduce", "lin-sep", "--seeds", "2", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if (out / "metrics.json").exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the signal"
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    took = time.time() - sent
    assert took < STOPS_WITHIN, took
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "PARTIAL" in stdout
    report = (out / "report.md").read_text()
    assert "PARTIAL" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["partial"] is True and metrics["finished"] and metrics["not_finished"]
    labels = {"ewn": "EWN", "swn": "SWN", "standard": "unnormalized"}
    for k in metrics["finished"]:  # whichever finished first is there, with both seeds
        assert len(metrics[f"{k}_epochs_to_target"]) == 2
        assert labels[k] in report


def test_output_that_is_a_file_fails_before_computing(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    t0 = time.time()
    assert _cli.main(["reproduce", "lin-sep", "--seeds", "2", "--out", str(taken)]) == 2
    assert "existing file" in capsys.readouterr().err
    assert _cli.main(["reproduce", "lin-sep", "--out", str(taken / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert time.time() - t0 < 10  # nothing was compiled (lin-sep compiles for longer)
    with pytest.raises(wnjax.InvalidInput, match="existing file"):
        wnjax.sweep(lambda k, c: {"x": jax.numpy.zeros(())}, 2, out=str(taken), progress=False)
    assert taken.read_text() == "not a directory"
