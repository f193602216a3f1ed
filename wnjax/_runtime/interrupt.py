"""SIGINT and SIGTERM as requests to stop, honoured at safe points.

Inside ``handling()`` a signal only records the request. Long computations check ``requested()``
between their compiled pieces (GD chunks, sweep chunks, experiment stages), and a gradient-flow
solve checks it from inside its compiled loop (``poll_interval``), so each returns what it has
computed. No exception is raised inside a compilation or a running program.

A signal outlives the call it stopped where the process should stop: SIGTERM always, SIGINT
in a script (not at an interactive prompt, where Ctrl-C ends only the running call). Every later
``handling()`` block then starts with the request standing, so each later call stops at its
first check and returns its partial result at once: a script that runs many calls ends within
moments of the signal, having been handed everything computed. ``request()`` (a request made by
wnjax itself, as when one of several parallel runs fails) holds only for its block.

The request is recorded at once, even while the main thread waits on a running program (when
Python runs no signal handler): the signal's wakeup byte (``signal.set_wakeup_fd``) is read by a
watcher thread. A second signal raises ``KeyboardInterrupt`` in the main thread, or, with a
``grace`` period set (the command line), ends the process at once. With ``grace``, a request
that nothing answers (see ``stopping``) within it, as when XLA is compiling, ends the process
with ``exit_code()``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds between two checks for a request inside a compiled loop (``poll_interval``), and the
# steps from a loop's start to its first check.
POLL_SECONDS = 0.2
POLL_FIRST_STEPS = 256

_state: dict = {
    "signal": None,
    "delivered": False,  # the request came from a signal (not from ``request()``)
    "carried": False,  # ... delivered before the outermost block now open
    "count": 0,
    "handled": 0,
    "depth": 0,
    "answered": False,
    "timer": None,
    "grace": None,
    "on_timeout": None,
    "polled": 0.0,
}
_lock = threading.Lock()
_EPOCH = time.monotonic()


def requested() -> bool:
    """Whether SIGINT or SIGTERM arrived since the outermost ``handling()`` was entered, or
    before it and stands (``carried()``), or ``request()`` was called."""
    return _state["signal"] is not None


def carried() -> bool:
    """Whether the request is a signal that arrived before the outermost ``handling()`` block
    now open (or last closed), not during it: one that outlives its call (module docstring)."""
    return bool(_state["delivered"]) and _state["carried"]


def _interactive() -> bool:
    """Whether Python runs at an interactive prompt (``python -i``, the REPL, IPython, Jupyter)."""
    return bool(
        hasattr(sys, "ps1")
        or sys.flags.interactive
        or "IPython" in sys.modules
        or "ipykernel" in sys.modules
    )


def _outlives_its_call() -> bool:
    """Whether the standing request is a signal that should stop later calls too."""
    signum = _state["signal"]
    if signum is None or not _state["delivered"]:
        return False
    return signum == signal.SIGTERM or not _interactive()


def clock() -> float:
    """Seconds since this module was imported (``time.monotonic``), small enough for float32."""
    return time.monotonic() - _EPOCH


def poll_interval(steps, since):
    """The host side of the check inside a compiled loop: ``(requested(), steps to the next
    check, clock())``. ``steps`` are those since the loop's previous check (or its start: its
    first check comes ``POLL_FIRST_STEPS`` in), ``since`` the ``clock()`` of that check, which
    the loop carries (negative before its first). The steps to the next check are ``steps``
    scaled by ``POLL_SECONDS`` over the time since that check, or since the outermost
    ``handling()`` was entered if later, within 1/8x-4x: each loop checks about every
    ``POLL_SECONDS`` of its own, however many run at once, and a miscounted interval moves its
    checks only gradually."""
    import numpy as np

    now = clock()
    elapsed = now - max(float(since), _state["polled"])
    factor = min(max(POLL_SECONDS / max(elapsed, 1e-9), 0.125), 4.0)
    next_steps = int(min(max(int(steps) * factor, 1), 1 << 24))
    return np.asarray(requested()), np.asarray(next_steps, np.int32), np.asarray(now, np.float32)


def exit_code() -> int:
    """``128 + signal number`` of the request (130 for SIGINT, 143 for SIGTERM); 130 if none."""
    return 128 + int(_state["signal"] or signal.SIGINT)


def request(signum: int = signal.SIGINT) -> None:
    """Record a stop request, as the signal ``signum`` does (without a grace period), for the
    outermost block now open only."""
    with _lock:
        if _state["signal"] is None:
            _state["signal"] = int(signum)


def clear() -> None:
    """Forget any request, a signal's from an earlier call included."""
    with _lock:
        _state.update(signal=None, delivered=False, carried=False, count=0, handled=0)
        _state["answered"] = False


def _open() -> None:
    """The outermost block's start: forget a request unless it is a signal that outlives its call
    (``_outlives_its_call``), which stands, marked ``carried()``."""
    if _outlives_its_call():
        with _lock:
            _state.update(carried=True, count=0, handled=0, answered=False)
    else:
        clear()


def stopping() -> None:
    """Tell the grace timer that the request is being answered (the computation has stopped
    and is writing its partial results), so that the process is not ended."""
    _state["answered"] = True
    timer = _state["timer"]
    if timer is not None:
        timer.cancel()


def _received(signum: int) -> None:
    """Record one delivery of ``signum`` (from the watcher thread)."""
    with _lock:
        _state["count"] += 1
        first = _state["count"] == 1
        if _state["signal"] is None or not _state["delivered"]:
            _state.update(signal=int(signum), delivered=True, carried=False)
        grace = _state["grace"]
    if grace is None:
        return
    if not first:  # a second signal on the command line: stop at once
        _end(None, "a second signal")
    elif _state["timer"] is None:
        timer = threading.Timer(grace, _timeout, args=(_state["on_timeout"],))
        timer.daemon = True
        _state["timer"] = timer
        timer.start()


def _handle(signum, frame) -> None:
    """The Python-level handler (main thread): a second signal raises ``KeyboardInterrupt``."""
    with _lock:
        _state["handled"] += 1
        if _state["signal"] is None or not _state["delivered"]:
            _state.update(signal=int(signum), delivered=True, carried=False)
        second = max(_state["handled"], _state["count"]) >= 2
    if second:
        raise KeyboardInterrupt


_watcher: dict = {"pid": None, "wake": None}


def _wakeup_socket() -> socket.socket:
    """The write end of the signal wakeup socket, whose bytes the watcher thread reads. Both are
    made once per process (a thread start costs ~0.1 ms a block) and idle between blocks: the
    wakeup fd is set only inside ``handling()``."""
    if _watcher["pid"] != os.getpid():  # first use, or a forked child (which has no watcher)
        wake, read = socket.socketpair()
        wake.setblocking(False)
        threading.Thread(
            target=_watch, args=(read,), daemon=True, name="wnjax-signal-watcher"
        ).start()
        atexit.register(wake.close)  # the watcher then reads end-of-file and returns
        _watcher.update(pid=os.getpid(), wake=wake)
    return _watcher["wake"]


def _watch(sock: socket.socket) -> None:
    """Read the wakeup bytes (one signal number per delivery) until the other end closes."""
    with sock:
        while True:
            try:
                data = sock.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS:
                    _received(signum)


def _timeout(on_timeout: Callable[[], None] | None) -> None:
    """End the process when a request went unanswered for the grace period."""
    if not _state["answered"]:
        _end(on_timeout, "a step that cannot stop early (such as an XLA compilation)")


def _end(on_timeout: Callable[[], None] | None, during: str) -> None:
    """Run ``on_timeout``, say why, and exit with ``exit_code()`` (without unwinding)."""
    try:
        if on_timeout is not None:
            on_timeout()
        name = signal.Signals(exit_code() - 128).name
        print(f"wnjax: {name} during {during}; stopped.", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(exit_code())


@contextlib.contextmanager
def handling(grace: float | None = None, on_timeout: Callable[[], None] | None = None):
    """Record SIGINT/SIGTERM instead of acting on them, for the duration of the block.

    The outermost ``handling()`` clears earlier requests (but a signal that outlives its call,
    see the module docstring), installs the handlers (and points the
    signal wakeup fd at the watcher thread) and restores the previous ones on exit; nested ones
    only set ``grace``/``on_timeout`` for their block. Outside the main thread (where handlers
    cannot be installed) it does nothing. The request stays readable (``requested()``) after
    the block.

    **Arguments:**
    - `grace`: seconds after a signal within which ``stopping()`` must be called; otherwise
      ``on_timeout()`` runs (in another thread) and the process exits with ``exit_code()``;
      a second signal then exits at once. ``None``: the enclosing block's setting (outermost:
      never end the process).
    - `on_timeout`: what to write before such an exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {k: _state[k] for k in ("grace", "on_timeout")}
    if grace is not None:
        _state["grace"] = grace
    if on_timeout is not None:
        _state["on_timeout"] = on_timeout
    outermost = not _state["depth"]
    previous, old_fd = {}, -1
    if outermost:
        _open()
        _state["polled"] = clock()
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, _handle)
        old_fd = signal.set_wakeup_fd(_wakeup_socket().fileno(), warn_on_full_buffer=False)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        _state.update(saved)
        if outermost:
            timer, _state["timer"] = _state["timer"], None
            if timer is not None:
                timer.cancel()
            signal.set_wakeup_fd(old_fd)
            for s, h in previous.items():
                signal.signal(s, h)


def stop_note() -> str:
    """A sentence for a result's message where a signal that outlives its call stopped it."""
    if not _outlives_its_call():
        return ""
    name = signal.Signals(int(_state["signal"])).name
    when = "an earlier call" if carried() else "this call"
    where = "this process" if _state["signal"] == signal.SIGTERM else "this script"
    return (
        f" {name} arrived during {when}: every later wnjax call in {where} stops at its first "
        "check and returns at once."
    )
