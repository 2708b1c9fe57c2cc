"""Process plumbing shared by every qfleet process: logging and a signal-driven stop flag."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def setup_logging(role: str, level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(message)s", force=True)


class StopFlag:
    """Set by SIGINT/SIGTERM (or by code); loops poll `is_set()` between short waits."""

    def __init__(self, install_handlers: bool = True):
        self._event = threading.Event()
        if install_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
