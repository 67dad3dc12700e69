"""SIGTERM as a clean interruption: the command unwinds like on Ctrl-C (pools and writers closed, locks
released, outputs left resumable) and exits 143 with one line, instead of dying mid-write with tracebacks
from worker processes and leaked semaphores."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def handle_sigterm() -> None:
    """Turn SIGTERM into `Terminated` in this process; a forked child that inherits the handler dies the
    default way instead (its parent does the cleanup). Only the main thread can set handlers; elsewhere
    (a command run from a thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    owner = os.getpid()

    def terminate(signum: int, _: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        signal.signal(signum, signal.SIG_IGN)  # one clean unwind; a second TERM during it changes nothing
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)
