"""Count balloon troubleshooting events in log files: balloon_log lines."""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Callable

from .. import catalog
from ..config import LogsConfig
from ..log import Log
from ..model import PollResult

# The strings operators grep for (hypervisor logs, guest kernel and VMware Tools logs).
BUILTIN_EVENTS: tuple[tuple[str, str], ...] = (
    ("balloon_extend_failed", re.escape("Failed to extend balloon")),
    ("host_pin_failed", re.escape("Insufficient host resources to pin memory")),
    ("vmmemctl_freeze", re.escape("vmmemctl: G_FREEZE")),
    ("vmmemctl_pin_failed", re.escape("vmmemctl: PIN_FAILED")),
    ("virtio_out_of_puff", re.escape("Out of puff!")),
    # One match per kill: since Linux 4.19 a kill also logs an "oom-kill:" line, which would
    # count it twice; "Kill process" is the wording of older kernels, "Memory cgroup out of
    # memory" that of a cgroup limit.
    ("oom_kill", r"[Oo]ut of memory: Kill(?:ed)? process"),
)
READ_LIMIT = 8 << 20  # bytes read per file per poll; the rest waits for the next poll


MARK = 64  # bytes before the offset remembered to notice a file rewritten in place


class _Tail:
    __slots__ = ("inode", "mark", "offset", "partial", "totals")

    def __init__(self, inode: int, offset: int) -> None:
        self.inode = inode
        self.offset = offset
        self.mark = b""  # the last bytes read, which must still be there next time
        self.partial = b""
        self.totals: dict[str, int] = {}

    def restart(self, inode: int) -> None:
        self.inode, self.offset, self.mark, self.partial = inode, 0, b"", b""


class LogsSource:
    """Follows files like `tail -F`: new lines only, rotation and truncation handled."""

    kind = "logs"

    def __init__(
        self,
        config: LogsConfig,
        hostname: str,
        log: Log,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.instance = ",".join(config.files)
        self.hostname = hostname
        self.log = log
        self._clock = clock
        self.events = [(name, re.compile(regex)) for name, regex in BUILTIN_EVENTS]
        self.events += [(name, re.compile(regex)) for name, regex in config.patterns]
        self._tails: dict[str, _Tail] = {}
        self._started = False

    def close(self) -> None:
        pass

    def _files(self) -> list[str]:
        paths: set[str] = set()
        for pattern in self.config.files:
            paths.update(p for p in glob.glob(pattern) if os.path.isfile(p))
        return sorted(paths)

    def poll(self, now: float) -> PollResult:
        started = self._clock()
        result = PollResult()
        first = not self._started
        self._started = True
        seen: set[str] = set()
        for path in self._files():
            seen.add(path)
            try:
                with open(path, "rb") as handle:
                    stat = os.fstat(handle.fileno())
                    tail = self._tails.get(path)
                    if tail is None:
                        # Files present at start: only what is written from now on counts.
                        tail = self._tails[path] = _Tail(stat.st_ino, 0)
                        if first and stat.st_size:
                            handle.seek(max(0, stat.st_size - MARK))
                            tail.mark = handle.read(MARK)
                            tail.offset = stat.st_size
                    elif tail.inode != stat.st_ino or stat.st_size < tail.offset:
                        tail.restart(stat.st_ino)  # rotated, or truncated below our offset
                    elif tail.mark:
                        # Truncated and refilled past our offset (copytruncate): the bytes
                        # we read last are no longer where we left them.
                        handle.seek(tail.offset - len(tail.mark))
                        if handle.read(len(tail.mark)) != tail.mark:
                            tail.restart(stat.st_ino)
                    handle.seek(tail.offset)
                    data = handle.read(READ_LIMIT)
            except OSError as exc:
                self.log.fault(f"logs:{path}", f"logs source: cannot read {path}: {exc.strerror}")
                continue
            self.log.clear(f"logs:{path}")
            tail.offset += len(data)
            if data:
                tail.mark = (tail.mark + data)[-MARK:]
            data = tail.partial + data
            cut = data.rfind(b"\n") + 1
            tail.partial = data[cut:][-65536:]
            if not cut:
                continue
            text = data[:cut].decode("utf-8", "replace")
            for name, regex in self.events:
                count = sum(1 for _ in regex.finditer(text))
                if count:
                    tail.totals[name] = tail.totals.get(name, 0) + count
                    result.points.append(
                        (
                            catalog.LOG,
                            {"host": self.hostname, "file": path, "event": name},
                            {"count": count, "count_total": tail.totals[name]},
                        )
                    )
        for gone in set(self._tails) - seen:
            del self._tails[gone]
        result.api_latency_seconds = self._clock() - started
        return result
