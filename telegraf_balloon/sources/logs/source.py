"""Count balloon troubleshooting events in log files and the kernel log: balloon_log lines."""

from __future__ import annotations

import os
import time
from typing import Callable

from ... import catalog
from ...config import LogsConfig
from ...log import Log
from ...model import PollResult, Tags
from .events import compile_events, count_events
from .files import OPEN_FILES, FollowedFiles
from .kmsg import KMSG_PATH, KMSG_TAG, Kmsg


class LogsSource:
    """Follows the configured files (see FollowedFiles) and the kernel log (see Kmsg), and
    counts the lines of each event in what they add: one point per file and event seen in
    the poll, with its count and its total since the plugin started."""

    kind = "logs"

    def __init__(
        self,
        config: LogsConfig,
        hostname: str,
        log: Log,
        clock: Callable[[], float] = time.perf_counter,
        kmsg_path: str = KMSG_PATH,
        kmsg_read: Callable[[int, int], bytes] = os.read,
        open_files: int = OPEN_FILES,
    ) -> None:
        self.config = config
        self.instance = ",".join([*config.files, KMSG_TAG] if config.kmsg else config.files)
        self.hostname = hostname
        self.log = log
        self._clock = clock
        self.events = compile_events(config.patterns)
        self._files = FollowedFiles(config.files, self.instance, log, open_files)
        self._kmsg = Kmsg(kmsg_path, kmsg_read) if config.kmsg else None

    def close(self) -> None:
        self._files.close()
        if self._kmsg is not None:
            self._kmsg.close()

    def poll(self, now: float) -> PollResult:
        started = self._clock()
        result = PollResult()
        for path, lines, totals in self._files.read():
            self._count(lines, path, totals, result)
        if self._kmsg is not None:
            lines = self._kmsg.poll(self.log)
            if lines:
                self._count(lines, KMSG_TAG, self._kmsg.totals, result)
        result.api_latency_seconds = self._clock() - started
        return result

    def _count(self, data: bytes, file: str, totals: dict[str, int], result: PollResult) -> None:
        for name, count in count_events(self.events, data):
            totals[name] = totals.get(name, 0) + count
            tags: Tags = {"host": self.hostname, "file": file, "event": name}
            result.points.append((catalog.LOG, tags, {"count": count, "count_total": totals[name]}))
