"""The balloon stats of every running domain: one bulk call, or slices fetched side by side.

libvirtd asks one QEMU after another within a call, but serves a client's calls side by
side: the source splits the domain list into slices, each fetched by a worker thread on a
connection of its own, within a share of the runner's timeout. Both ways ask with NOWAIT
(a domain whose job another client holds answers what libvirt knows without its QEMU) and
do without it on a daemon that refuses the flag.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional

import libvirt

from ...config import LibvirtConfig
from ...log import Log, few

# At most this many slices at once when sized automatically: libvirtd keeps 5 worker threads
# for all its clients (min_workers) and serves 5 calls per connection (max_client_requests);
# each worker has a connection of its own, and one thread stays for everyone else.
MAX_AUTO_CHUNKS = 4
DOMAINS_PER_CHUNK = 16  # below this many domains a chunk gains nothing from its own call
FETCH_SHARE = 0.7  # of [agent] timeout: how long the stats fetch may take in all
FIRST_PASS_SHARE = 0.5  # of that: when a late chunk is fetched again without waiting

STATS = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_STATE
NOWAIT = getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)  # libvirt 4.5+

Record = tuple[Any, dict[str, Any]]  # (domain, its stats), as libvirt answers them


def matches(name: str, patterns: Iterable[str]) -> bool:
    """The domain filter: a name any of the config's `domains` globs matches."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def refuses_nowait(error: BaseException) -> bool:
    """The error of a daemon older than the NOWAIT flag."""
    return isinstance(error, libvirt.libvirtError) and error.get_error_code() in (
        libvirt.VIR_ERR_INVALID_ARG,
        libvirt.VIR_ERR_NO_SUPPORT,
    )


class StatsStuck(Exception):
    """Every stats worker still waits on a call of an earlier poll (hung QEMUs, a hung daemon)."""


_Answer = tuple[int, Any, Optional[Exception]]
_Task = tuple[list[Any], int, int, int, "queue.SimpleQueue[_Answer]", int]


class StatsWorker:
    """A thread of one source that makes one stats call at a time, for the life of the source.

    Each worker has its own connection: a call stuck on a hung QEMU then holds up nothing
    but its own connection (libvirt's client can stall a connection's other calls behind
    one that never returns). A stuck worker gets nothing more to do until its call returns,
    so a hung QEMU costs one thread, never one more per poll.
    """

    def __init__(self, name: str, opener: Callable[[], Any]) -> None:
        self.busy = False
        self._opener = opener
        self._conn: Any = None
        self._generation = -1  # of the source's connection this worker's was opened for
        self._doms: dict[bytes, Any] = {}  # UUID -> this connection's domain object
        self._inbox: queue.SimpleQueue[Optional[_Task]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(
        self,
        doms: list[Any],
        stats: int,
        flags: int,
        generation: int,
        out: queue.SimpleQueue[_Answer],
        tag: int,
    ) -> None:
        """Fetch the stats of `doms` (the source's domain objects); answer (tag, records)."""
        self.busy = True
        self._inbox.put((doms, stats, flags, generation, out, tag))

    def stop(self) -> None:
        self._inbox.put(None)  # a worker stuck in a call leaves when the call returns

    def _run(self) -> None:
        while True:
            task = self._inbox.get()
            if task is None:
                self._close()
                return
            doms, stats, flags, generation, out, tag = task
            value: Any = None
            error: Optional[Exception] = None
            try:
                value = self._fetch(doms, stats, flags, generation)
            except Exception as exc:  # handed to the poll that asked, raised there
                error = exc
                self._close()  # the next task reconnects
            self.busy = False  # before the answer: the poll may reuse this worker at once
            out.put((tag, value, error))

    def _fetch(self, doms: list[Any], stats: int, flags: int, generation: int) -> list[Record]:
        if self._conn is None or generation != self._generation:
            self._close()  # the source reconnected: so does this worker
            self._conn = self._opener()
            self._generation = generation
        theirs = {dom.UUID(): dom for dom in doms}
        if not theirs.keys() <= self._doms.keys():  # domains new to this connection
            listed = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            self._doms = {dom.UUID(): dom for dom in listed}
        mine = [self._doms[key] for key in theirs if key in self._doms]
        if not mine:
            return []
        records = self._conn.domainListGetStats(mine, stats, flags)
        # the source's own domain objects: its later calls go over its own connection
        return [(theirs[dom.UUID()], record) for dom, record in records]

    def _close(self) -> None:
        conn, self._conn, self._doms = self._conn, None, {}
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


class StatsFetch:
    """How one source fetches the stats: its workers, and whether it still asks with NOWAIT.

    `opener` opens a worker's connection (the source's own way, through its connect seam);
    `budget`: seconds the chunked fetch may take before the domains still missing are left
    out of the poll.
    """

    def __init__(
        self,
        config: LibvirtConfig,
        log: Log,
        instance: str,
        opener: Callable[[], Any],
        budget: float,
    ) -> None:
        self.config = config
        self.log = log
        self.instance = instance
        self.budget = budget
        self.nowait = NOWAIT  # 0 once the daemon refused it
        self.workers: list[StatsWorker] = []
        self.generation = 0  # counts the source's connections: workers reconnect when it moves
        self._opener = opener

    def reconnected(self) -> None:
        """The source dropped its connection: every worker opens a new one on its next task."""
        self.generation += 1

    def close(self) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.stop()

    # -- one bulk call --

    def bulk(self, conn: Any) -> list[Record]:
        """Every running domain's stats from one getAllDomainStats call on `conn`."""
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        if self.nowait:
            try:
                return list(conn.getAllDomainStats(STATS, flags | self.nowait))
            except libvirt.libvirtError as exc:
                if not refuses_nowait(exc):
                    raise
                self.nowait = 0  # an old daemon: do without
        return list(conn.getAllDomainStats(STATS, flags))

    # -- slices side by side --

    def chunked(self, conn: Any) -> list[Record]:
        """The stats of every running domain (the name filter applied first), fetched in
        slices of the domain list from concurrent calls.

        A slice that misses its share of the budget is fetched again; the call stuck on a
        domain holds that domain's job, so with NOWAIT libvirtd answers the others (and that
        domain's balloon.current/maximum) without waiting on it. What is still missing when
        the budget is spent is left out of this poll, with a warning.
        """
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        patterns = self.config.domains
        if patterns:
            doms = [d for d in doms if matches(d.name(), patterns)]
        if not doms:
            return []
        workers = self._idle_workers(self._chunk_count(len(doms)))
        if not workers:
            raise StatsStuck(
                f"every stats worker ({len(self.workers)}) still waits on a call of an "
                "earlier poll (hung QEMUs?)"
            )
        count = len(workers)
        size, extra = divmod(len(doms), count)
        chunks, start = [], 0
        for i in range(count):  # contiguous slices keep libvirt's order of the domains
            end = start + size + (i < extra)
            chunks.append(doms[start:end])
            start = end
        got = self._fetch_chunks(chunks, workers)
        key = f"libvirt-late:{self.instance}"
        missing = [chunk for i, chunk in enumerate(chunks) if i not in got]
        if missing:
            names = sorted(d.name() for chunk in missing for d in chunk)
            shown = few(names)
            self.log.fault(
                key,
                f"libvirt {self.instance}: no stats within {self.budget:g}s for "
                f"{len(names)} domain(s), left out of this poll: {shown}",
            )
        else:
            self.log.clear(key, f"libvirt {self.instance}: every domain's stats arrive in time")
        return [record for i in range(count) for record in got.get(i, ())]

    def _chunk_count(self, domains: int) -> int:
        pinned = self.config.concurrency
        if pinned > 1:
            return min(pinned, domains)
        wanted = math.ceil(domains / DOMAINS_PER_CHUNK)
        return max(1, min(wanted, MAX_AUTO_CHUNKS, domains))

    def _idle_workers(self, wanted: int) -> list[StatsWorker]:
        """Up to `wanted` idle workers, made as needed up to the pool's size.

        The pool holds as many workers as a poll may use chunks (MAX_AUTO_CHUNKS, or the
        pinned count), and at least two: a chunk that hangs is fetched again by a worker whose
        own chunk came back, or by the second worker when there was one chunk.
        """
        pinned = self.config.concurrency
        size = max(2, pinned if pinned > 1 else MAX_AUTO_CHUNKS)
        idle = [w for w in self.workers if not w.busy][:wanted]
        while len(idle) < wanted and len(self.workers) < size:
            worker = StatsWorker(f"libvirt-stats-{len(self.workers)}", self._opener)
            self.workers.append(worker)
            idle.append(worker)
        return idle

    def _fetch_chunks(
        self, chunks: list[list[Any]], workers: list[StatsWorker]
    ) -> dict[int, list[Record]]:
        """Chunk index -> its records, for the chunks answered within the budget."""
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | self.nowait
        answers: queue.SimpleQueue[_Answer] = queue.SimpleQueue()
        got: dict[int, list[Record]] = {}

        def submit(worker: StatsWorker, i: int) -> None:
            worker.submit(chunks[i], STATS, flags, self.generation, answers, i)

        def wait(until: float) -> None:
            while len(got) < len(chunks):
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    i, records, error = answers.get(timeout=remaining)
                except queue.Empty:
                    return
                if error is not None:
                    if self.nowait and refuses_nowait(error):
                        self.nowait = 0  # an old daemon: the next poll does without
                    raise error
                got.setdefault(i, list(records))

        started = time.monotonic()
        for i, worker in enumerate(workers):
            submit(worker, i)
        wait(started + FIRST_PASS_SHARE * self.budget)
        late = [i for i in range(len(chunks)) if i not in got]
        if late:
            for worker, i in zip(self._idle_workers(len(late)), late):
                submit(worker, i)
            wait(started + self.budget)
        return got
