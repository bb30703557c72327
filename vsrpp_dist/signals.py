"""Stop requests from Ctrl-C and SIGTERM (cluster pre-emption), turned into a flag the loop checks.

The first signal only sets the flag: the loop agrees on it across ranks at the next step boundary and
writes an emergency checkpoint on every rank together. A second stop signal of either kind forces the
exit at once; the checkpoint being written is then left as an ignored `.tmp-` folder, so no earlier
checkpoint is harmed. Under `accelerate launch` each rank runs in a session of its own, so a terminal's
Ctrl-C reaches it only through the launcher: the first as SIGINT, the second as SIGTERM (torch elastic's
shutdown, interrupted, falls back to its default death signal). A rank therefore sees one signal per
user action, and the second one, whatever its name, means "now".
DataLoader workers are kept out of these group-wide signals altogether (detach_worker_from_signals).
"""

from __future__ import annotations

import os
import signal
import threading


class StopSignals:
    def __init__(self) -> None:
        self.received: str | None = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            return
        raise KeyboardInterrupt(f"second stop signal ({name} after {self.received}): stopping without waiting "
                                "for the emergency checkpoint")

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def exit_code(self) -> int:
        return 128 + signal.Signals[self.received].value if self.received else 0

    def restore(self) -> None:
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
