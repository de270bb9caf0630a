"""Running --explain: one poll, or a watch of several, through the same Runner the plugin
uses (its health stage judges the fields), then the judge on the last poll."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Callable, Optional

from ..config import Config
from ..log import Log
from ..model import Source
from ..runner import Batch, Runner
from .judge import WATCH_INTERVAL, Judge
from .report import Report


def run(
    config: Config,
    sources: Sequence[Source],
    log: Log,
    hostname: str,
    watch: Optional[float] = None,
    interval: float = WATCH_INTERVAL,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Poll once (or every `interval` for `watch` seconds) and judge the last poll."""
    runner = Runner(config, sources, io.BytesIO(), log, hostname, clock=clock)
    judge = Judge(config, runner, watching=bool(watch))
    batch: Optional[Batch] = None
    polls = 0
    try:
        start = clock()
        end = start + (watch or 0.0)
        next_poll = start
        while True:
            polled = runner.poll_batch()
            if polled is None:
                break
            batch = polled
            polls += 1
            judge.remember(batch)
            if not watch or clock() >= end:
                break
            next_poll = min(next_poll + interval, end)
            sleep(max(0.0, next_poll - clock()))
    except KeyboardInterrupt:
        pass  # judge what was seen so far
    finally:
        runner.close()
    busy = any(worker.busy for worker in runner.workers)
    if batch is None:
        return Report([], polls, 0.0, busy)
    report = judge.report(batch, polls)
    report.busy = busy
    return report
