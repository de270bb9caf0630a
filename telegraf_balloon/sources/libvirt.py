"""KVM/QEMU (and Xen) hosts through libvirt: bulk stats of every domain, in concurrent slices."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import queue
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

import libvirt

from ..config import LibvirtConfig
from ..log import Log
from ..model import Fields, HostInfo, PollResult, Sample, Tags
from .hostfacts import local_host
from .kvm import driver_silent

KIB = 1024
STATE_RUNNING, STATE_PAUSED = 1, 3
RECHECK_SECONDS = 30.0  # least time between two XML re-reads of a disarmed domain whose stats move


def frozen_after(period: int) -> float:
    """Seconds without a stats report after which a period-`period` domain looks disarmed.

    Two missed reports, plus a second for last-update's whole seconds.
    """
    return 2.0 * period + 2.0


# At most this many slices at once when sized automatically: libvirtd keeps 5 worker threads
# for all its clients (min_workers) and serves 5 calls per connection (max_client_requests);
# each worker has a connection of its own, and one thread stays for everyone else.
MAX_AUTO_CHUNKS = 4
DOMAINS_PER_CHUNK = 16  # below this many domains a chunk gains nothing from its own call
FETCH_SHARE = 0.7  # of [agent] timeout: how long the stats fetch may take in all
FIRST_PASS_SHARE = 0.5  # of that: when a late chunk is fetched again without waiting

# balloon.* keys (KiB or counts) -> (field, scale)
_GUEST_KEYS: tuple[tuple[str, str, int], ...] = (
    ("balloon.available", "guest_total_bytes", KIB),
    ("balloon.unused", "guest_free_bytes", KIB),
    ("balloon.usable", "guest_available_bytes", KIB),
    ("balloon.disk_caches", "guest_disk_caches_bytes", KIB),
    ("balloon.swap_in", "swap_in_bytes_total", KIB),
    ("balloon.swap_out", "swap_out_bytes_total", KIB),
    ("balloon.major_fault", "major_faults_total", 1),
    ("balloon.minor_fault", "minor_faults_total", 1),
    ("balloon.rss", "rss_bytes", KIB),
)
# memoryStats() keys -> bulk keys, for the per-domain fallback
_MEMORY_STATS_KEYS = {
    "actual": "balloon.current",
    "available": "balloon.available",
    "unused": "balloon.unused",
    "usable": "balloon.usable",
    "disk_caches": "balloon.disk_caches",
    "swap_in": "balloon.swap_in",
    "swap_out": "balloon.swap_out",
    "major_fault": "balloon.major_fault",
    "minor_fault": "balloon.minor_fault",
    "rss": "balloon.rss",
    "last_update": "balloon.last-update",
}
_UNIT_BYTES = {
    "b": 1,
    "bytes": 1,
    "k": KIB,
    "kib": KIB,
    "kb": 1000,
    "m": KIB**2,
    "mib": KIB**2,
    "mb": 1000**2,
    "g": KIB**3,
    "gib": KIB**3,
    "gb": 1000**3,
    "t": KIB**4,
    "tib": KIB**4,
}
_UNLIMITED_KIB = 9007199254740991  # VIR_DOMAIN_MEMORY_PARAM_UNLIMITED
# A domain undefined, or shut down, after the bulk call listed it.
_GONE = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)


def redact_uri(uri: str) -> str:
    """The URI without a password (user names stay: they are not secret)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, user + host + port, parts.path, parts.query, parts.fragment))


def is_local(uri: str) -> bool:
    """A URI served on this machine (no host part), by a driver of a real hypervisor.

    The test driver is local but describes a made-up host: its node memory is the truth there.
    """
    parts = urlsplit(uri)
    return not parts.hostname and parts.scheme.split("+")[0] != "test"


def scrub(text: str, uri: str) -> str:
    """The text without the URI's password, should an error message quote the URI."""
    secret = urlsplit(uri).password
    return text.replace(secret, "***") if secret else text


class DomainFacts:
    """What the domain XML says; read when a domain (re)starts, not on every poll."""

    __slots__ = (
        "arm_failed",
        "blocked_model",
        "checked_at",
        "domain_id",
        "first_seen",
        "frozen_checked",
        "hypervisor",
        "last_update",
        "limit_bytes",
        "max_kib",
        "period",
        "reservation_bytes",
        "tags",
    )

    def __init__(self, domain_id: int, now: float) -> None:
        self.domain_id = domain_id
        self.checked_at = now
        self.first_seen = now
        self.hypervisor = "unknown"
        self.blocked_model = False  # <memballoon model='none'/> or no memballoon at all
        self.period: Optional[int] = None
        self.reservation_bytes: Optional[int] = None
        self.limit_bytes: Optional[int] = None
        self.max_kib: Optional[int] = None
        self.last_update = 0
        self.arm_failed = False
        self.frozen_checked = 0  # the last_update of a freeze already checked in the XML
        self.tags: Tags = {}


_INT64_MAX = 2**63 - 1


def _integer(text: str) -> Optional[int]:
    """A plain ASCII decimal, optionally negative (int() also takes '1_0' and other digits)."""
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return None
    return int(text)


def _size_bytes(element: Optional[ET.Element], where: str, skipped: list[str]) -> Optional[int]:
    """<memory unit='KiB'>1048576</memory> -> bytes; what cannot be read goes to `skipped`."""
    if element is None:
        return None
    text = (element.text or "").strip()
    value = _integer(text)
    unit = element.get("unit", "KiB")
    scale = _UNIT_BYTES.get(unit.lower())
    if value is None or value < 0:
        skipped.append(f"<{where}> {text[:40]!r} is not a size")
        return None
    if scale is None:
        skipped.append(f"<{where}> has an unknown unit {unit[:20]!r}")
        return None
    if scale == KIB and value >= _UNLIMITED_KIB:
        return None  # libvirt's "unlimited"
    if value * scale > _INT64_MAX:
        skipped.append(f"<{where}> {text[:40]!r} {unit[:20]} is out of range")
        return None
    return value * scale


# <domain type='kvm'>
#   <devices><memballoon model='virtio'><stats period='10'/></memballoon></devices>
#   <memtune><hard_limit unit='KiB'>1048576</hard_limit><min_guarantee ...>
def parse_domain_xml(text: str, facts: DomainFacts) -> list[str]:
    """Fill facts from a domain's XML description; return what was skipped, and why."""
    skipped: list[str] = []
    root = ET.fromstring(text)
    facts.hypervisor = root.get("type", "unknown")
    maximum = _size_bytes(root.find("memory"), "memory", skipped)
    facts.max_kib = None if maximum is None else maximum // KIB
    balloon = root.find("./devices/memballoon")
    model = balloon.get("model", "none") if balloon is not None else "none"
    facts.blocked_model = model == "none"
    if facts.blocked_model:
        facts.period = None
    else:
        stats = balloon.find("stats") if balloon is not None else None
        if stats is None:
            facts.period = 0
        else:
            raw = stats.get("period", "0")
            facts.period = _integer(raw.strip())
            if facts.period is None or facts.period < 0:
                skipped.append(f"<memballoon><stats period={raw[:20]!r}> is not a period")
                facts.period = None
    facts.limit_bytes = _size_bytes(
        root.find("./memtune/hard_limit"), "memtune/hard_limit", skipped
    )
    facts.reservation_bytes = _size_bytes(
        root.find("./memtune/min_guarantee"), "memtune/min_guarantee", skipped
    )
    return skipped


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _start_event_loop() -> None:
    """libvirt's keepalive needs its default event loop running in some thread."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _silence_libvirt(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours go through Log instead."""


class StatsStuck(Exception):
    """Every stats worker still waits on a call of an earlier poll (hung QEMUs, a hung daemon)."""


_Answer = tuple[int, Any, Optional[Exception]]
_Task = tuple[list[Any], int, int, int, "queue.SimpleQueue[_Answer]", int]


class _StatsWorker:
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

    def _fetch(
        self, doms: list[Any], stats: int, flags: int, generation: int
    ) -> list[tuple[Any, dict[str, Any]]]:
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


class LibvirtSource:
    """One libvirt connection; reconnects on the next poll after any connection fault."""

    kind = "libvirt"

    def __init__(
        self,
        config: LibvirtConfig,
        log: Log,
        clock: Callable[[], float] = time.perf_counter,
        fetch_budget: Optional[float] = None,
    ) -> None:
        """`fetch_budget`: seconds the (chunked) stats fetch may take before the domains still
        missing are left out of the poll; give it a share of the runner's timeout (FETCH_SHARE
        of [agent] timeout by default, the timeout being 5 s)."""
        self.config = config
        self.log = log
        self.instance = redact_uri(config.uri)
        self._clock = clock
        self._conn: Any = None
        self._host_tags: Tags = {}
        self._host_memory: Optional[int] = None
        self._facts: dict[str, DomainFacts] = {}
        self._driver_type = "unknown"
        self._nowait = getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)
        # A local host's own /proc/meminfo has all its memory (libvirt's node info sums NUMA
        # nodes, which can leave memory out) and its /sys has the EDAC counters.
        self._local = is_local(config.uri)
        self._fetch_budget = FETCH_SHARE * 5.0 if fetch_budget is None else fetch_budget
        self._workers: list[_StatsWorker] = []
        self._generation = 0  # counts the connections made: workers reconnect when it moves
        # Chunks run on connections of their own; the test driver gives every connection a
        # private copy of its node, so it keeps to the one connection (and one bulk call).
        test_driver = urlsplit(config.uri).scheme.split("+")[0] == "test"
        self._chunking = config.concurrency != 1 and not test_driver
        libvirt.registerErrorHandler(_silence_libvirt, None)

    # -- connection --

    def _connect(self) -> Any:
        # Every driver but the in-process test driver talks to a daemon over libvirt's RPC,
        # where keepalive notices a dead or hung daemon.
        remote = not self.config.uri.startswith("test:")
        if remote and self.config.keepalive_interval > 0:
            _start_event_loop()
        if self.config.read_only:
            conn = libvirt.openReadOnly(self.config.uri)
        else:
            conn = libvirt.open(self.config.uri)
        if conn is None:
            raise libvirt.libvirtError(f"cannot connect to {self.instance}")
        if remote and self.config.keepalive_interval > 0:
            try:
                conn.setKeepAlive(self.config.keepalive_interval, self.config.keepalive_count)
            except libvirt.libvirtError as exc:
                self.log.debug(f"libvirt {self.instance}: no keepalive: {exc}")
        hostname = conn.getHostname()
        self._host_memory = int(conn.getInfo()[1]) * KIB * KIB
        self._host_tags = {"host": hostname, "source": "libvirt"}
        self._driver_type = str(conn.getType()).lower()
        self.log.debug(f"libvirt {self.instance}: connected to {hostname}")
        return conn

    def _drop_connection(self) -> None:
        self._generation += 1
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        self._drop_connection()
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()

    # -- the poll --

    def poll(self, now: float) -> PollResult:
        try:
            if self._conn is None or not self._conn.isAlive():
                self._drop_connection()
                self._conn = self._connect()
            return self._poll(self._conn, now)
        except StatsStuck as exc:
            return PollResult(error=str(exc))  # the connection is fine: the QEMUs are not
        except libvirt.libvirtError as exc:
            # Drop the connection so the next poll reconnects (daemon restarted, socket gone).
            self._drop_connection()
            return PollResult(error=scrub(_message(exc), self.config.uri))

    def _bulk(self, conn: Any) -> list[tuple[Any, dict[str, Any]]]:
        stats = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_STATE
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        if self._nowait:
            try:
                return list(conn.getAllDomainStats(stats, flags | self._nowait))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (
                    libvirt.VIR_ERR_INVALID_ARG,
                    libvirt.VIR_ERR_NO_SUPPORT,
                ):
                    raise
                self._nowait = 0  # an old daemon: do without
        return list(conn.getAllDomainStats(stats, flags))

    def _poll(self, conn: Any, now: float) -> PollResult:
        started = self._clock()
        records = self._chunked(conn) if self._chunking else self._bulk(conn)
        latency = self._clock() - started
        patterns = self.config.domains
        host = self._host_tags
        samples: list[Sample] = []
        facts_by_key = self._facts
        seen: set[str] = set()
        for dom, stats in records:
            name = dom.name()
            if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            key = dom.UUIDString()
            try:
                fallback = "balloon.current" not in stats
                if fallback:
                    stats = self._fallback(dom, stats)
                facts = facts_by_key.get(key)
                domain_id = dom.ID()
                if (
                    facts is None
                    or facts.domain_id != domain_id
                    or self._needs_xml(facts, stats, now)
                ):
                    facts = self._read_facts(dom, name, key, domain_id, facts, now)
                    facts_by_key[key] = facts
                if fallback and "balloon.maximum" not in stats:
                    # from the cached XML's <memory>, not one more round trip
                    known = facts.max_kib
                    stats["balloon.maximum"] = known if known is not None else dom.info()[1]
                if self.config.set_stats_period and facts.period == 0 and not facts.arm_failed:
                    self._arm(dom, name, facts)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _GONE:
                    continue  # gone or stopped between the bulk call and ours: not an error
                raise
            seen.add(key)
            samples.append(Sample(key, facts.tags, self._fields(stats, facts, now)))
        for gone in set(facts_by_key) - seen:
            del facts_by_key[gone]
        kinds = {s.tags["hypervisor"] for s in samples}
        hypervisor = kinds.pop() if len(kinds) == 1 else self._driver_type
        host_tags = {**host, "hypervisor": hypervisor}
        if self._local:
            info = local_host(host_tags, self.config.host_root)
            if info.memory_bytes is None:  # no readable meminfo under host_root: libvirt's
                info.memory_bytes, info.free_bytes = self._host_memory, conn.getFreeMemory()
        else:
            info = HostInfo(host_tags, self._host_memory, int(conn.getFreeMemory()))
        hosts = [info]
        return PollResult(samples=samples, hosts=hosts, api_latency_seconds=latency)

    # -- the chunked stats fetch --

    def _chunked(self, conn: Any) -> list[tuple[Any, dict[str, Any]]]:
        """The stats of every running domain (the name filter applied first), fetched in
        slices of the domain list from concurrent calls: libvirtd asks one QEMU after another
        within a call, but serves a client's calls side by side.

        A slice that misses its share of the budget is fetched again; the call stuck on a
        domain holds that domain's job, so with NOWAIT libvirtd answers the others (and that
        domain's balloon.current/maximum) without waiting on it. What is still missing when
        the budget is spent is left out of this poll, with a warning.
        """
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        patterns = self.config.domains
        if patterns:
            doms = [d for d in doms if any(fnmatch.fnmatchcase(d.name(), p) for p in patterns)]
        if not doms:
            return []
        workers = self._idle_workers(self._chunk_count(len(doms)))
        if not workers:
            raise StatsStuck(
                f"every stats worker ({len(self._workers)}) still waits on a call of an "
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
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            self.log.fault(
                key,
                f"libvirt {self.instance}: no stats within {self._fetch_budget:g}s for "
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

    def _idle_workers(self, wanted: int) -> list[_StatsWorker]:
        """Up to `wanted` idle workers, made as needed up to the pool's size.

        The pool holds as many workers as a poll may use chunks (MAX_AUTO_CHUNKS, or the
        pinned count), and at least two: a chunk that hangs is fetched again by a worker whose
        own chunk came back, or by the second worker when there was one chunk.
        """
        pinned = self.config.concurrency
        size = max(2, pinned if pinned > 1 else MAX_AUTO_CHUNKS)
        idle = [w for w in self._workers if not w.busy][:wanted]
        while len(idle) < wanted and len(self._workers) < size:
            worker = _StatsWorker(f"libvirt-stats-{len(self._workers)}", self._open_for_stats)
            self._workers.append(worker)
            idle.append(worker)
        return idle

    def _open_for_stats(self) -> Any:
        """A connection of a stats worker: opened as the source's own (read-only, keepalive)."""
        uri = self.config.uri
        conn = libvirt.openReadOnly(uri) if self.config.read_only else libvirt.open(uri)
        if conn is None:
            raise libvirt.libvirtError(f"cannot connect to {self.instance}")
        if not uri.startswith("test:") and self.config.keepalive_interval > 0:
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(self.config.keepalive_interval, self.config.keepalive_count)
        return conn

    def _fetch_chunks(
        self, chunks: list[list[Any]], workers: list[_StatsWorker]
    ) -> dict[int, list[tuple[Any, dict[str, Any]]]]:
        """Chunk index -> its records, for the chunks answered within the budget."""
        stats = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_STATE
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | self._nowait
        answers: queue.SimpleQueue[_Answer] = queue.SimpleQueue()
        got: dict[int, list[tuple[Any, dict[str, Any]]]] = {}

        def submit(worker: _StatsWorker, i: int) -> None:
            worker.submit(chunks[i], stats, flags, self._generation, answers, i)

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
                    if (
                        self._nowait
                        and isinstance(error, libvirt.libvirtError)
                        and error.get_error_code()
                        in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)
                    ):
                        self._nowait = 0  # an old daemon: the next poll does without
                    raise error
                got.setdefault(i, list(records))

        started = time.monotonic()
        for i, worker in enumerate(workers):
            submit(worker, i)
        wait(started + FIRST_PASS_SHARE * self._fetch_budget)
        late = [i for i in range(len(chunks)) if i not in got]
        if late:
            for worker, i in zip(self._idle_workers(len(late)), late):
                submit(worker, i)
            wait(started + self._fetch_budget)
        return got

    def _fallback(self, dom: Any, stats: dict[str, Any]) -> dict[str, Any]:
        """One memoryStats() call for a domain the bulk call gave no balloon keys for.

        Writes into the bulk call's own record for the domain (ours to change).
        """
        keys = _MEMORY_STATS_KEYS
        for key, value in dom.memoryStats().items():
            bulk_key = keys.get(key)
            if bulk_key is not None:
                stats[bulk_key] = value
        if "balloon.current" not in stats:
            stats["balloon.current"] = dom.info()[2]  # no balloon device: memoryStats is {}
        return stats

    def _needs_xml(self, facts: DomainFacts, stats: dict[str, Any], now: float) -> bool:
        """Re-read the XML when it is old, or when the stats contradict the cached period.

        A period set to 0 while the domain runs shows only as stats that stop: checked
        (one XML read per freeze) once two reports are missing, so that stats_disabled
        shows within max(3 periods, 10 s) of the change at any poll interval below that.
        """
        if now - facts.checked_at >= self.config.refresh_interval:
            return True
        if facts.blocked_model:
            return False
        last_update = int(stats.get("balloon.last-update", 0))
        if facts.period == 0:
            # Someone armed it: stats move again. Not more often than RECHECK_SECONDS: a
            # period set behind libvirt's back leaves the XML at 0 while the stats move.
            return last_update > facts.last_update and now - facts.checked_at >= RECHECK_SECONDS
        if not facts.period or not last_update:
            return False
        overdue = frozen_after(facts.period)
        if now - last_update <= overdue:
            return False
        # Once per freeze, not on every poll (a paused guest or a dead driver stays frozen
        # for long); and not when the last read came after this freeze was already evident.
        if last_update == facts.frozen_checked or facts.checked_at - last_update > overdue:
            return False
        facts.frozen_checked = last_update
        return True

    def _read_facts(
        self,
        dom: Any,
        name: str,
        key: str,
        domain_id: int,
        old: Optional[DomainFacts],
        now: float,
    ) -> DomainFacts:
        # The same domain start is re-read in place: parse_domain_xml sets every XML fact,
        # and what the plugin learnt of this run (first seen, arming, freezes) stays.
        if old is not None and old.domain_id == domain_id:
            facts = old
            facts.checked_at = now
        else:
            facts = DomainFacts(domain_id, now)
        try:
            skipped = parse_domain_xml(dom.XMLDesc(0), facts)
        except ET.ParseError as exc:
            self.log.fault(f"libvirt-xml:{key}", f"libvirt: domain {name!r}: bad XML: {exc}")
        else:
            if skipped:
                self.log.fault(
                    f"libvirt-xml:{key}", f"libvirt: domain {name!r}: skipped {'; '.join(skipped)}"
                )
            else:
                self.log.clear(f"libvirt-xml:{key}")
        facts.tags = {
            **self._host_tags,
            "guest": name,
            "uuid": key,
            "hypervisor": facts.hypervisor,
        }
        return facts

    def _arm(self, dom: Any, name: str, facts: DomainFacts) -> None:
        """Set the stats period on a running domain where it is 0 (again if someone zeroes it)."""
        period = self.config.set_stats_period
        try:
            dom.setMemoryStatsPeriod(period, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _GONE:
                raise
            self.log.warn(f"libvirt: cannot arm the stats period on {name!r}: {_message(exc)}")
            facts.arm_failed = True  # not again until the domain restarts
            return
        facts.period = period
        self.log.info(f"libvirt: armed balloon stats period {period}s on domain {name!r}")

    def _fields(self, stats: dict[str, Any], facts: DomainFacts, now: float) -> Fields:
        fields: Fields = {}
        maximum = stats.get("balloon.maximum")
        current = stats.get("balloon.current")
        if maximum is not None:
            fields["memory_max_bytes"] = int(maximum) * KIB
        if current is not None:
            fields["memory_current_bytes"] = int(current) * KIB
            if maximum is not None:
                fields["balloon_actual_bytes"] = max(0, int(maximum) - int(current)) * KIB
        for key, name, scale in _GUEST_KEYS:
            value = stats.get(key)
            if value is not None:
                fields[name] = int(value) * scale
        # A poll without last-update (another client holds the domain's job: NOWAIT then
        # gives only current and maximum) is no news of the driver: the age runs on from
        # the last report this plugin saw of this domain start.
        facts.last_update = max(facts.last_update, int(stats.get("balloon.last-update", 0)))
        if facts.last_update > 0:
            fields["stats_age_seconds"] = max(0.0, now - facts.last_update)
        if facts.reservation_bytes is not None:
            fields["reservation_bytes"] = facts.reservation_bytes
        if facts.limit_bytes is not None:
            fields["limit_bytes"] = facts.limit_bytes
        period = facts.period
        if period is not None:
            fields["stats_period_seconds"] = period
            fields["stats_disabled"] = period == 0
        fields["inflation_blocked"] = facts.blocked_model or driver_silent(
            period, facts.last_update > 0, current, maximum, now - facts.first_seen
        )
        return fields


def _message(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
