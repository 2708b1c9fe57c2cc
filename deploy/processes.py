"""Process plumbing shared by every qfleet process: logging, and a stop flag set by
SIGINT/SIGTERM or by the death of the parent (so no component outlives its launcher)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def setup_logging(role: str, level: int = logging.INFO, path: str | None = None) -> None:
    """Log lines tagged with the role and pid, to `path` (appended) or stderr."""
    fmt = f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(name)s: %(message)s"
    if path:
        logging.basicConfig(level=level, filename=path, format=fmt, force=True)
    else:
        logging.basicConfig(level=level, stream=sys.stderr, format=fmt, force=True)


class StopFlag:
    """Set by SIGINT/SIGTERM, by the parent process dying (`watch_parent`), or by code;
    loops poll `is_set()` between short waits."""

    def __init__(self, install_handlers: bool = True, watch_parent: bool = False):
        self._event = threading.Event()
        self.signal: int | None = None
        if install_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)
        if watch_parent:
            parent = os.getppid()
            threading.Thread(target=self._watch, args=(parent,), daemon=True, name="qfleet-parent-watch").start()

    def _watch(self, parent: int) -> None:
        while not self._event.wait(0.5):
            if os.getppid() != parent:  # re-parented: the launcher is gone
                self._event.set()

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
