"""A stop signal while the loop waits for data: the wait is abandoned STOP_GRACE_S later (a real
signal to this process, a real blocking wait), and a wait that ends within the grace is left alone."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from vsrpp_dist.signals import STOP_GRACE_S, StopSignals, StopWhileWaiting


def sigterm_in(seconds: float) -> None:
    threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM)).start()


def test_a_stop_during_a_blocking_wait_ends_it_after_the_grace():
    signals = StopSignals()
    try:
        sigterm_in(0.2)
        started = time.monotonic()
        with pytest.raises(StopWhileWaiting), signals.interrupting():
            threading.Event().wait(60)  # data that never comes
        waited = time.monotonic() - started
        assert signals.received == "SIGTERM" and signals.exit_code == 143
        assert STOP_GRACE_S < waited < STOP_GRACE_S + 1.5
    finally:
        signals.restore()


def test_a_stop_before_the_wait_gives_it_the_grace_and_a_quick_batch_is_kept():
    signals = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert signals.requested  # outside a wait a stop only sets the flag
        with signals.interrupting():
            time.sleep(0.3)  # a batch that arrives in time: no interruption, the step stops at its boundary
        started = time.monotonic()
        with pytest.raises(StopWhileWaiting), signals.interrupting():
            threading.Event().wait(60)
        assert STOP_GRACE_S - 0.1 < time.monotonic() - started < STOP_GRACE_S + 1.5
        time.sleep(0.2)  # no stray signal from the grace timer after the wait
    finally:
        signals.restore()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_at_once_stops_at_the_first_signal_and_tells_which(signum, code):
    """pack has no step boundary to wait for: the first signal interrupts there and then, and the exit
    code still tells Ctrl-C from SIGTERM; the previous handlers come back afterwards."""
    before = signal.getsignal(signum)
    signals = StopSignals(at_once=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            threading.Event().wait(5)  # never reached in full: the handler raises in the main thread
        assert signals.exit_code == code
    finally:
        signals.restore()
    assert signal.getsignal(signum) is before
