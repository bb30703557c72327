"""Stop requests from Ctrl-C and SIGTERM (cluster pre-emption), turned into a flag the loop checks.

The first signal only sets the flag: the loop agrees on it across ranks at the next step boundary and
writes an emergency checkpoint on every rank together. A second stop signal of either kind forces the
exit at once; the checkpoint being written is then left as an ignored `.tmp-` folder, so no earlier
checkpoint is harmed. Under `accelerate launch` each rank runs in a session of its own, so a terminal's
Ctrl-C reaches it only through the launcher: the first as SIGINT, the second as SIGTERM (torch elastic's
shutdown, interrupted, falls back to its default death signal). A rank therefore sees one signal per
user action, and the second one, whatever its name, means "now".
DataLoader workers are kept out of these group-wide signals altogether (detach_worker_from_signals).
A stop that arrives while the loop waits for data does not wait for a step boundary that may never come
(a server that stopped sending): after STOP_GRACE_S the wait is abandoned (StopSignals.interrupting).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


# How long a wait for data may go on after a stop was asked for before it is abandoned: long enough
# that an ordinary batch still arrives (all ranks then stop together at the step boundary, with the
# collective emergency checkpoint), short enough that a stop ends a run stuck on its data within seconds.
STOP_GRACE_S = 3.0


class StopWhileWaiting(Exception):
    """A stop was asked for and the loop has waited for data STOP_GRACE_S since (StopSignals.interrupting):
    the wait is abandoned instead of waiting for a step boundary that may never come (a server
    trickling bytes, a shard that never ends)."""


class StopSignals:
    """`at_once`: for a command without step boundaries to stop at (pack), the first signal is recorded
    and raised as KeyboardInterrupt there and then; `exit_code` still tells Ctrl-C (130) from SIGTERM (143)."""

    def __init__(self, at_once: bool = False) -> None:
        self.at_once = at_once
        self.received: str | None = None
        self._interrupting = False  # inside interrupting(): a wait for data
        self._grace: threading.Timer | None = None
        self._grace_over = False  # set by the grace timer just before it signals the main thread
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        self._main_thread = threading.main_thread().ident

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._grace_over:  # the grace timer's own signal, not the user's
            self._grace_over = False
            if self._interrupting:
                self._interrupting = False
                raise StopWhileWaiting(self.received)
            return  # the wait ended just in time
        if self.received is None:
            self.received = name
            if self.at_once:
                raise KeyboardInterrupt(name)
            if self._interrupting:
                self._arm_grace()
            return
        raise KeyboardInterrupt(f"second stop signal ({name} after {self.received}): stopping without waiting "
                                "for the emergency checkpoint")

    @contextlib.contextmanager
    def interrupting(self):
        """Around a wait for data: once a stop has been asked for (before or during the wait), the wait
        may go on for STOP_GRACE_S more; then a timer signals the main thread (a real signal, so that it
        breaks into any blocking call Python can interrupt) and StopWhileWaiting is raised there."""
        if not self._previous:
            yield  # no handlers here (not the main thread): nothing can interrupt
            return
        self._interrupting = True
        if self.received is not None:
            self._arm_grace()
        try:
            yield
        finally:
            self._interrupting = False
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None

    def _arm_grace(self) -> None:
        if self._grace is None:
            self._grace = threading.Timer(STOP_GRACE_S, self._end_grace)
            self._grace.daemon = True
            self._grace.start()

    def _end_grace(self) -> None:  # in the timer's thread
        self._grace_over = True
        signal.pthread_kill(self._main_thread, signal.SIGTERM)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def exit_code(self) -> int:
        return 128 + signal.Signals[self.received].value if self.received else 0

    def restore(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def detach_worker_from_signals(_worker_id: int) -> None:
    """DataLoader workers start in their rank's process group, and both the terminal (Ctrl-C) and
    torchrun (SIGTERM via killpg) signal that whole group: a worker killed mid-batch makes torch raise
    in the rank at once, before the emergency checkpoint is written. A process group of its own keeps
    group signals away while signals sent to the worker itself still work (multiprocessing terminates
    leftover workers at exit with SIGTERM; ignoring SIGTERM instead made that join hang). A worker
    whose rank dies exits by itself: it polls for its parent."""
    os.setpgrp()
