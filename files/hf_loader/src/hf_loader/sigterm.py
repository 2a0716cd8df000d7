"""SIGTERM recorded instead of obeyed, in a training rank: `stop.StopOnSignal` acts on it.

Installed first thing in `hf-train`'s main, before the heavy imports, so that a stop during
start-up is recorded too, and again once Composer is imported (see `install`); stop.py says why
the handler only sets a flag.
"""

from __future__ import annotations

import os
import signal

_requested: dict[str, int | None] = {"signal": None, "pid": None}


def _on_signal(signum, frame) -> None:
    # A DataLoader worker forked from the rank inherits this handler; a worker is not the
    # training loop: it takes the signal's default action, as it would without this module.
    if os.getpid() != _requested["pid"]:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _requested["signal"] = signum


def install(signals: tuple[int, ...] = (signal.SIGTERM,)) -> dict:
    """Record `signals` instead of dying on them; returns the handlers that were there before.

    Installed again once Composer is imported: importing composer.core.engine replaces the
    SIGTERM handler with its own `sys.exit(143)`, which ends the rank at once, mid-batch, with
    nothing saved. A signal recorded before stays recorded.
    """
    if _requested["pid"] != os.getpid():
        _requested["pid"] = os.getpid()
        _requested["signal"] = None
    return {signum: signal.signal(signum, _on_signal) for signum in signals}


def restore(previous: dict) -> None:
    """Put back the handlers `install` returned and forget any recorded signal."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    _requested["pid"] = None
    _requested["signal"] = None


def requested() -> int | None:
    """The signal this process received since `install`, or None."""
    return _requested["signal"]
