"""Diagnostics on stderr with Telegraf's level prefixes; repeated faults logged once."""

from __future__ import annotations

import re
import sys
import threading
from typing import Optional, TextIO

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Faults remembered at once. Sources clear a VM's faults when it goes; this bounds what a
# source forgets to clear (a VM that left mid-fault): the oldest is dropped, and logged again
# if it is still going on.
MAX_FAULTS = 4096


def few(names: list[str], most: int = 5) -> str:
    """The first `most` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


class Log:
    """Writes `E! `/`W! `/`I! `/`D! ` lines; a fault is logged when it starts and when it clears."""

    def __init__(self, stream: Optional[TextIO] = None, debug: bool = False) -> None:
        self._stream = stream
        self.debug_enabled = debug
        self._faults: dict[str, str] = {}
        self._lock = threading.Lock()

    def _write(self, prefix: str, message: str) -> None:
        stream = self._stream or sys.stderr
        # One diagnostic is one line: Telegraf reads stderr line by line.
        text = " ".join(message.splitlines()) if "\n" in message else message
        with self._lock:
            try:
                stream.write(prefix + text + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # stderr gone: nothing else to tell

    def error(self, message: str) -> None:
        self._write("E! ", message)

    def warn(self, message: str) -> None:
        self._write("W! ", message)

    def info(self, message: str) -> None:
        self._write("I! ", message)

    def debug(self, message: str) -> None:
        if self.debug_enabled:
            self._write("D! ", message)

    def fault(self, key: str, message: str, level: str = "W", same: Optional[str] = None) -> None:
        """Log a fault under `key` once, until it clears or its message changes.

        Numbers do not make a new message: "still running after 1.2s" and "after 1.4s" are
        the same fault going on. Messages given the same `same` are one fault, whatever
        their words.
        """
        shape = _NUMBER.sub("#", message if same is None else same)
        with self._lock:
            faults = self._faults
            if faults.get(key) == shape:
                return
            if key not in faults and len(faults) >= MAX_FAULTS:
                del faults[next(iter(faults))]
            faults[key] = shape
        self._write(level + "! ", message)

    def faults(self) -> int:
        """Faults logged and not cleared (for tests)."""
        return len(self._faults)

    def clear(self, key: str, message: Optional[str] = None) -> None:
        """The fault under `key` is over: say so once."""
        with self._lock:
            had = self._faults.pop(key, None)
        if had is not None and message:
            self.info(message)
