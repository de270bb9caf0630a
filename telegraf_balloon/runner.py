"""The execd loop: triggers in, one flushed batch per poll out, each source behind a deadline."""

from __future__ import annotations

import itertools
import os
import queue
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

from . import catalog, lineprotocol
from .aggregate import HostSums, host_lines
from .config import Config
from .gcpause import gc_paused
from .health import Health
from .log import Log
from .model import Fields, HostInfo, PollResult, Sample, Source, Tags

_TRIGGER = "trigger"
_STOP = "stop"
_DONE = "done"
# A source's errors that the runner writes for a call that does not come back in time.
_NO_ANSWER = "no answer within timeout"
_BUSY = "previous poll still running"
_HUNG = "hung"  # both are one fault to the log
Point = tuple[str, Tags, Fields, int]  # measurement, tags, fields, time in ns
WRITE_CHUNK = 100  # points per write of a batch (one flush per batch): about 60 kB of text


class StdoutClosed(Exception):
    """The reader of our stdout went away: nothing more to do."""


@dataclass
class SourceBatch:
    """One source's part of a judged poll: what its lines will say, before serializing."""

    kind: str
    instance: str
    key: str  # the source's key in the health stage and the fault log
    error: Optional[str]  # None when the source answered
    samples: list[Sample]  # judged in place by the health stage
    hosts: list[tuple[Tags, Fields]]  # balloon_host lines, judged
    points: list[tuple[str, Tags, Fields]]  # other measurements (balloon_log)
    collector_tags: Tags
    status: Fields  # the balloon_collector fields
    # Not judged yet: the VMs are judged and summed into these hosts' lines as they are
    # written (Runner.points), each dropped once written. None: judged (samples, hosts).
    unjudged_hosts: Optional[list[HostInfo]] = None

    @property
    def up(self) -> bool:
        return self.error is None


@dataclass
class Batch:
    """Everything one poll judged, per source in config order."""

    now: float
    time_ns: int
    sources: list[SourceBatch]

    @property
    def all_up(self) -> bool:
        return all(part.up for part in self.sources)


class _Worker:
    """One source's own thread; at most one call in flight, however slow it is."""

    def __init__(
        self,
        source: Source,
        events: queue.SimpleQueue[tuple[object, ...]],
        hostname: str,
    ) -> None:
        self.source = source
        # One name for this source in logs (fault key) and in the health stage's state.
        self.key = f"source:{source.kind}:{source.instance}"
        self.collector_tags = {"host": hostname, "source": source.kind, "instance": source.instance}
        self.events = events
        self.requests: queue.SimpleQueue[Optional[tuple[int, float]]] = queue.SimpleQueue()
        self.busy = False
        self.busy_since = 0.0
        self.polls_total = 0
        self.errors_total = 0
        self.thread = threading.Thread(target=self._loop, name=f"source-{source.kind}", daemon=True)
        self.thread.start()

    def start(self, poll_id: int, now: float) -> bool:
        if self.busy:
            return False
        self.busy = True
        self.busy_since = time.monotonic()
        self.requests.put((poll_id, now))
        return True

    def stop(self) -> None:
        self.requests.put(None)

    def _loop(self) -> None:
        while True:
            request = self.requests.get()
            if request is None:
                return
            poll_id, now = request
            started = time.perf_counter()
            try:
                result = self.source.poll(now)
            except Exception as exc:  # a source bug must not end the process
                result = PollResult(error=f"{type(exc).__name__}: {exc}")
            duration = time.perf_counter() - started
            self.busy = False
            self.events.put((_DONE, self, poll_id, result, duration))
            # Handed over: holding it here would keep two polls' samples alive at once.
            del result


class Runner:
    """Polls every source on each trigger and writes one batch of line protocol."""

    def __init__(
        self,
        config: Config,
        sources: Sequence[Source],
        out: BinaryIO,
        log: Log,
        hostname: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.out = out
        self.log = log
        self.hostname = hostname
        self.clock = clock
        self.events: queue.SimpleQueue[tuple[object, ...]] = queue.SimpleQueue()
        self.workers = [_Worker(s, self.events, hostname) for s in sources]
        self.health = Health(config.health, config.thresholds)
        self._poll_id = 0
        self._pending = False
        self._stopping = False

    # -- one poll --

    def poll(self) -> bool:
        """Poll every source once, write the batch; True when every source answered.

        Each VM is judged as its line is written and dropped after: the judged fields (a few
        more keys per VM, which makes every VM's dict grow) never exist for every VM at once.
        """
        batch = self.poll_batch(judge_vms=False)
        if batch is None:
            return False  # abandoned: exit promptly, nothing half-judged is written
        with gc_paused():  # a line per VM made and dropped: no cycle among them (gcpause.py)
            self.write_points(self.points(batch))
        return batch.all_up

    def poll_batch(self, judge_vms: bool = True) -> Optional[Batch]:
        """Poll every source once and judge the answers; None when stopped meanwhile.

        With `judge_vms` false the VMs of every source that answered (and so its host
        lines) are judged by `points`, one at a time as they are written.
        """
        self._poll_id += 1
        poll_id = self._poll_id
        now = self.clock()
        time_ns = int(now * 1e9)
        timeout = self.config.agent.timeout
        deadline = time.monotonic() + timeout
        results: dict[_Worker, tuple[PollResult, float]] = {}
        waiting: set[_Worker] = set()
        for worker in self.workers:
            if worker.start(poll_id, now):
                waiting.add(worker)
            else:
                late = time.monotonic() - worker.busy_since
                results[worker] = (PollResult(error=f"{_BUSY} after {late:.1f}s"), 0.0)
        while waiting and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                break
            self._handle(event, poll_id, results, waiting)
        if self._stopping:
            return None
        for worker in waiting:
            results[worker] = (PollResult(error=f"{_NO_ANSWER} {timeout:g}s"), timeout)
        with gc_paused():
            return self._judge(results, now, time_ns, judge_vms)

    def _handle(
        self,
        event: tuple[object, ...],
        poll_id: int,
        results: dict[_Worker, tuple[PollResult, float]],
        waiting: set[_Worker],
    ) -> None:
        kind = event[0]
        if kind == _TRIGGER:
            self._pending = True  # triggers during a poll collapse into one follow-up
        elif kind == _STOP:
            self._stopping = True
        elif kind == _DONE:
            _, worker, done_id, result, duration = event
            assert isinstance(worker, _Worker)
            if done_id == poll_id and worker in waiting:
                waiting.discard(worker)
                assert isinstance(result, PollResult) and isinstance(duration, float)
                results[worker] = (result, duration)
            # else: a late answer to an abandoned poll; the worker is free again

    def _judge(
        self,
        results: dict[_Worker, tuple[PollResult, float]],
        now: float,
        time_ns: int,
        judge_vms: bool,
    ) -> Batch:
        """Judge every source's answer (health stage, host sums) into data, not yet text."""
        batch = Batch(now, time_ns, [])
        for worker in self.workers:
            result, duration = results[worker]
            source = worker.source
            worker.polls_total += 1
            up = result.error is None
            hosts: list[tuple[Tags, Fields]] = []
            if up:
                self.log.clear(worker.key, f"{source.kind} {source.instance}: answering again")
                if judge_vms:
                    self.health.vms(worker.key, ((s.key, s.fields) for s in result.samples), now)
                    hosts = host_lines(result.samples, result.hosts)
                    self._judge_hosts(worker.key, hosts, now)
            else:
                error = result.error or ""
                worker.errors_total += 1
                self.health.missed(worker.key)  # its VMs keep their state for a few polls
                self.log.fault(
                    worker.key,
                    f"{source.kind} {source.instance}: {error}",
                    level="E",
                    # a hung call: the poll it missed and the ones it keeps busy are one fault
                    same=_HUNG if error.startswith((_NO_ANSWER, _BUSY)) else None,
                )
            status: Fields = {
                "up": up,
                "duration_seconds": float(duration),
                "vms": len(result.samples),
                "polls_total": worker.polls_total,
                "errors_total": worker.errors_total,
            }
            if result.api_latency_seconds is not None:
                status["api_latency_seconds"] = float(result.api_latency_seconds)
            if result.error is not None:
                status["error"] = result.error
            batch.sources.append(
                SourceBatch(
                    source.kind,
                    source.instance,
                    worker.key,
                    result.error,
                    result.samples if up else [],
                    hosts,
                    result.points if up else [],
                    worker.collector_tags,
                    status,
                    None if judge_vms or not up else result.hosts,
                )
            )
        return batch

    def _judge_hosts(self, key: str, hosts: list[tuple[Tags, Fields]], now: float) -> None:
        self.health.hosts(key, [(t.get("host", ""), f) for t, f in hosts], now)

    def _judged_as_written(self, part: SourceBatch, now: float, time_ns: int) -> Iterator[Point]:
        """A source's VM lines, each judged and summed into its host's line as it goes out,
        then its host lines (judged once every VM was). The batch lets go of each VM."""
        assert part.unjudged_hosts is not None
        judge = self.health.vm_pass(part.key, now)
        sums = HostSums(part.unjudged_hosts)
        samples = part.samples
        samples.reverse()  # popped from the end, in the source's order
        while samples:
            sample = samples.pop()
            judge(sample.key, sample.fields)
            sums.add(sample)
            yield (catalog.BALLOON, sample.tags, sample.fields, time_ns)
        judge.finish()
        part.hosts = sums.lines()
        part.unjudged_hosts = None
        self._judge_hosts(part.key, part.hosts, now)

    def points(self, batch: Batch) -> Iterator[Point]:
        """The batch's points, in the order the sources were configured."""
        time_ns = batch.time_ns
        internal = self.config.agent.internal
        for part in batch.sources:
            if part.unjudged_hosts is not None:
                yield from self._judged_as_written(part, batch.now, time_ns)
            for sample in part.samples:
                yield (catalog.BALLOON, sample.tags, sample.fields, time_ns)
            for tags, fields in part.hosts:
                yield (catalog.HOST, tags, fields, time_ns)
            for name, tags, fields in part.points:
                yield (name, tags, fields, time_ns)
            if internal:
                yield (catalog.COLLECTOR, part.collector_tags, part.status, time_ns)

    def write_points(self, points: Iterable[Point]) -> None:
        """Write a batch in whole-line chunks and flush it once; StdoutClosed when nobody reads.

        Chunks keep a 10,000-VM batch from existing three times over (lines, their join, its
        bytes) at the poll's peak; the reader sees whole lines either way.
        """
        source = iter(points)
        while True:
            chunk = list(itertools.islice(source, WRITE_CHUNK))
            if not chunk:
                break
            self._send(lineprotocol.format_lines(chunk).encode("utf-8", "replace"))
        lineprotocol.end_batch()  # heads of VMs no longer written may go
        self._send(b"", flush=True)

    def write(self, text: str) -> None:
        """Write and flush one batch; StdoutClosed when nobody reads any more."""
        if text:
            self._send(text.encode("utf-8", "replace"), flush=True)

    def _send(self, data: bytes, flush: bool = False) -> None:
        try:
            if data:
                self.out.write(data)
            if flush:
                self.out.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise StdoutClosed() from exc
        except OSError as exc:
            if exc.errno in (32, 104):  # EPIPE, ECONNRESET
                raise StdoutClosed() from exc
            raise

    # -- the loop --

    def run(self, stdin: Optional[BinaryIO], interval: Optional[float] = None) -> int:
        """Execd mode: poll on each stdin line or signal (or every `interval`); 0 on EOF/TERM."""
        if stdin is not None:
            threading.Thread(
                target=self._read_stdin, args=(stdin,), name="stdin", daemon=True
            ).start()
        next_tick = time.monotonic() if interval else None
        while not self._stopping:
            if self._pending:
                self._pending = False
                self.poll()
                continue
            timeout = None
            if next_tick is not None:
                timeout = max(0.0, next_tick - time.monotonic())
            try:
                event = self.events.get(timeout=timeout if timeout is not None else 3600.0)
            except queue.Empty:
                if next_tick is not None and time.monotonic() >= next_tick:
                    assert interval is not None
                    next_tick = max(next_tick + interval, time.monotonic())
                    self._pending = True
                continue
            self._handle(event, -1, {}, set())
        return 0

    def _read_stdin(self, stdin: BinaryIO) -> None:
        """Drain stdin for ever: each chunk with a newline is one trigger; EOF stops."""
        fd = stdin.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.events.put((_STOP,))
                return
            if b"\n" in chunk:
                self.events.put((_TRIGGER,))

    def install_signals(self) -> None:
        """SIGHUP/SIGUSR1/SIGUSR2 trigger a poll; SIGTERM/SIGINT stop. Main thread only."""

        def trigger(signum: int, frame: object) -> None:
            self.events.put((_TRIGGER,))  # SimpleQueue.put is safe in a signal handler

        def stop(signum: int, frame: object) -> None:
            self.events.put((_STOP,))

        for name in ("SIGHUP", "SIGUSR1", "SIGUSR2"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), trigger)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            if not worker.busy:
                try:
                    worker.source.close()
                except Exception as exc:
                    self.log.debug(f"closing {worker.source.kind}: {exc}")
