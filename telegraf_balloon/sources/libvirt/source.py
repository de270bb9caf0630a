"""The libvirt source: one connection to a KVM/QEMU (or Xen) host, one line per running domain.

A poll fetches every domain's balloon stats (stats.py), reads a domain's XML when it
(re)starts or reread.py says so (domainxml.py), maps the stats to fields (fields.py) and
adds the host's memory; with agent_ping, it pings the guest agents last (agent.py). How the
source connects is a parameter (connection.py).
"""

from __future__ import annotations

import contextlib
import math
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Optional

import libvirt

from ...config import LibvirtConfig
from ...log import Log
from ...model import Detail, Fields, HostInfo, PollResult, Sample, Tags
from ..context import cut_message
from ..hostfacts import HostReclaim, QemuProcess, find_qemu, local_host
from ..kvm import AGENT_TIMEOUT
from .agent import AgentPinger
from .connection import (
    AgentCommand,
    Connect,
    open_connection,
    open_libvirt,
    qemu_agent_command,
    silence_libvirt_errors,
    start_event_loop,
)
from .context import domain_context
from .domainxml import KIB, DomainFacts, parse_domain_xml, update_vmem
from .events import MetadataWatch
from .fields import MEMORY_STATS_KEYS, domain_fields
from .reread import needs_xml
from .stats import FETCH_SHARE, Record, StatsFetch, StatsStuck, StatsWorker, matches
from .uri import is_local, is_test_driver, redact_uri, scrub

# A domain undefined, or shut down, after the bulk call listed it.
_GONE = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
# The agent pings come last in a poll: they wait at most this long past the agent's own
# timeout (a ping queued behind others starts late), and never past this share of the
# runner's deadline, counted from the poll's start.
PING_MARGIN = 0.25
PING_DEADLINE_SHARE = 0.9


class LibvirtSource:
    """One libvirt connection; reconnects on the next poll after any connection fault."""

    kind = "libvirt"

    def __init__(
        self,
        config: LibvirtConfig,
        log: Log,
        clock: Callable[[], float] = time.perf_counter,
        fetch_budget: Optional[float] = None,
        connect: Connect = open_libvirt,
        agent: AgentCommand = qemu_agent_command,
    ) -> None:
        """`fetch_budget`: seconds the (chunked) stats fetch may take before the domains still
        missing are left out of the poll; give it a share of the runner's timeout (FETCH_SHARE
        of [agent] timeout by default, the timeout being 5 s).

        `connect(uri, read_only)`: how every connection of this source is opened, its own and
        its stats workers' (libvirt.open or openReadOnly by default); `agent` sends a guest
        agent command (libvirt-qemu's, by default).
        """
        self.config = config
        self.log = log
        self.instance = redact_uri(config.uri)
        self._clock = clock
        self._open = connect
        self._conn: Any = None
        self._host_tags: Tags = {}
        self._host_memory: Optional[int] = None
        self._facts: dict[str, DomainFacts] = {}
        self._driver_type = "unknown"
        # A local host's own /proc/meminfo has all its memory (libvirt's node info sums NUMA
        # nodes, which can leave memory out) and its /sys has the EDAC counters.
        self._local = is_local(config.uri)
        # The host's side of reclaim (swap, KSM, zswap, pressure; per VM from its QEMU's
        # process and cgroups) is only readable on the host itself.
        self._reclaim: Optional[HostReclaim] = None
        # domain UUID -> (its domain ID, its QEMU, when it was looked for)
        self._procs: dict[str, tuple[int, Optional[QemuProcess], float]] = {}
        self._said_shared = False
        if self._local:
            self._reclaim = HostReclaim(config.host_root)
            missing = self._reclaim.missing()
            if missing:
                log.info(f"libvirt {self.instance}: this host will not give {'; '.join(missing)}")
        elif not is_test_driver(config.uri):
            log.info(
                f"libvirt {self.instance}: a remote URI: no host reclaim figures (per VM "
                "host_swapped_bytes, compressed_bytes, shared_bytes, host_memory_stall_*; per "
                "host swap, KSM, zswap, pressure): they are read from the host's own /proc and "
                "/sys, by a plugin running there"
            )
        budget = FETCH_SHARE * 5.0 if fetch_budget is None else fetch_budget
        self.stats = StatsFetch(config, log, self.instance, self._open_for_stats, budget)
        self._deadline = budget / FETCH_SHARE  # the runner's timeout for one poll
        self.agent: Optional[AgentPinger] = None
        if config.agent_ping:
            self.agent = AgentPinger(self._open_for_stats, agent, log, self.instance)
        # Chunks run on connections of their own; the test driver gives every connection a
        # private copy of its node, so it keeps to the one connection (and one bulk call).
        self._chunking = config.concurrency != 1 and not is_test_driver(config.uri)
        # Context tags: read with the XML; a live metadata edit is told by libvirt's event.
        self._contexts = config.context_tags
        self._watch = MetadataWatch(log, self.instance) if self._contexts else None
        silence_libvirt_errors()

    # -- connection --

    def _connect(self) -> Any:
        if self._watch is not None:
            start_event_loop()  # before the open: the connection dispatches events through it
        conn, refused = open_connection(self._open, self.config, self.instance)
        if refused is not None:
            self.log.debug(f"libvirt {self.instance}: no keepalive: {refused}")
        hostname = conn.getHostname()
        self._host_memory = int(conn.getInfo()[1]) * KIB * KIB
        self._host_tags = {"host": hostname, "source": "libvirt"}
        self._driver_type = str(conn.getType()).lower()
        self.log.debug(f"libvirt {self.instance}: connected to {hostname}")
        if self._watch is not None:
            self._watch.attach(conn, self._facts)
        return conn

    def _open_for_stats(self) -> Any:
        """A connection of a stats worker: opened as the source's own (read-only, keepalive)."""
        return open_connection(self._open, self.config, self.instance)[0]

    def _drop_connection(self) -> None:
        self.stats.reconnected()
        if self.agent is not None:
            self.agent.reconnected()
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._watch is not None:
                self._watch.detach(conn)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        self._drop_connection()
        self.stats.close()
        if self.agent is not None:
            self.agent.close()

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

    def _bulk(self, conn: Any) -> list[Record]:
        """Every running domain's stats in one call (concurrency = 1, the test driver)."""
        return self.stats.bulk(conn)

    def _chunked(self, conn: Any) -> list[Record]:
        """Every wanted running domain's stats, in slices fetched side by side."""
        return self.stats.chunked(conn)

    @property
    def _workers(self) -> list[StatsWorker]:
        """The stats workers made so far."""
        return self.stats.workers

    def _poll(self, conn: Any, now: float) -> PollResult:
        started = self._clock()
        records = self._chunked(conn) if self._chunking else self._bulk(conn)
        latency = self._clock() - started
        patterns = self.config.domains
        host = self._host_tags
        reclaim = self._reclaim
        # the host's figures first: a host with nothing in swap has nothing of any VM there
        host_figures = reclaim.host_figures() if reclaim is not None else None
        local: list[tuple[str, str, int, Fields]] = []  # (UUID, name, domain ID, fields)
        samples: list[Sample] = []
        facts_by_key = self._facts
        refresh = self.config.refresh_interval
        edited = self._watch.take() if self._watch is not None else ()
        seen: set[str] = set()
        for dom, stats in records:
            name = dom.name()
            if patterns and not matches(name, patterns):
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
                    or key in edited
                    or needs_xml(facts, stats, now, refresh)
                ):
                    facts = self._read_facts(dom, name, key, domain_id, facts, now)
                    facts_by_key[key] = facts
                    maximum = stats.get("balloon.maximum")
                    facts.stats_max = int(maximum) if maximum is not None else None
                elif facts.vmem is not None:
                    self._reread_vmem(dom, name, key, facts)
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
            fields = domain_fields(stats, facts, now)
            sample = Sample(key, facts.tags, fields)
            if facts.vmem is not None:  # the device a remedy names: its alias and plugged size
                worst = facts.vmem.worst
                sample.detail = Detail(vmem_device=worst.name, vmem_device_plugged=worst.plugged)
            samples.append(sample)
            if reclaim is not None:
                local.append((key, name, domain_id, fields))
        for gone in set(facts_by_key) - seen:
            self._forget(gone)
        if reclaim is not None:
            self._processes(reclaim, local, now)
        if self.agent is not None:
            self._ping_agents(self.agent, samples, started)
        kinds = {s.tags["hypervisor"] for s in samples}
        hypervisor = kinds.pop() if len(kinds) == 1 else self._driver_type
        host_tags = {**host, "hypervisor": hypervisor}
        if self._local:
            info = local_host(host_tags, self.config.host_root, host_figures)
            if info.memory_bytes is None:  # no readable meminfo under host_root: libvirt's
                info.memory_bytes, info.free_bytes = self._host_memory, conn.getFreeMemory()
        else:
            info = HostInfo(host_tags, self._host_memory, int(conn.getFreeMemory()))
        hosts = [info]
        return PollResult(samples=samples, hosts=hosts, api_latency_seconds=latency)

    def _ping_agents(self, agent: AgentPinger, samples: list[Sample], started: float) -> None:
        """guest-ping the agent of every domain with an agent channel: an answer within the
        timeout is guest_agent_connected and its latency; none is guest_agent_connected =
        false for this poll; a ping that could not be judged in time leaves the XML's state."""
        pinged = [s for s in samples if self._facts[s.key].agent_channel]
        if not pinged:
            return
        left = PING_DEADLINE_SHARE * self._deadline - (self._clock() - started)
        answers = agent.ping([s.key for s in pinged], min(AGENT_TIMEOUT + PING_MARGIN, left))
        for sample in pinged:
            if sample.key not in answers:
                continue
            latency = answers[sample.key]
            sample.fields["guest_agent_connected"] = latency is not None
            if latency is not None:
                sample.fields["guest_agent_latency_seconds"] = latency

    def _forget(self, key: str) -> None:
        """A domain no longer running (or no longer there): its facts and its XML fault go."""
        del self._facts[key]
        if self.agent is not None:
            self.agent.forget({key})
        self._procs.pop(key, None)
        self.log.clear(f"libvirt-xml:{key}")  # quietly: the domain left, its XML was not fixed
        self.log.clear(f"libvirt-context:{key}")

    def _processes(
        self, reclaim: HostReclaim, domains: list[tuple[str, str, int, Fields]], now: float
    ) -> None:
        """Each domain's figures from its QEMU process and cgroups (local hosts).

        The process is found once per domain start (a new domain ID): libvirt's pid file
        under host_root, else the `-uuid` on QEMU command lines, one pass over /proc for all
        the domains new this poll. A domain whose QEMU cannot be found is looked for again
        after refresh_interval.
        """
        procs = self._procs
        retry = self.config.refresh_interval
        wanted: dict[str, str] = {}
        pidfiles: dict[str, tuple[str, ...]] = {}
        for key, name, domain_id, _ in domains:
            known = procs.get(key)
            fresh = known is not None and known[0] == domain_id
            if fresh and known is not None and (known[1] is not None or now - known[2] < retry):
                continue
            wanted[key] = key
            if "/" not in name and name not in (".", ".."):
                pidfiles[key] = (f"run/libvirt/qemu/{name}.pid",)
        if wanted:
            pids = find_qemu(wanted, self.config.host_root, pidfiles)
            for key, name, domain_id, _ in domains:
                if key not in wanted:
                    continue
                pid = pids.get(key)
                proc = reclaim.process(pid) if pid is not None else None
                procs[key] = (domain_id, proc, now)
                if proc is not None and proc.shared is not None and not self._said_shared:
                    self._said_shared = True
                    self.log.info(
                        f"libvirt {self.instance}: the QEMU of domain {name!r} has no cgroup "
                        f"of its own: {reclaim.shared_note(proc)}"
                    )
        for key, _, _, fields in domains:
            proc = procs[key][1]
            if proc is not None:
                proc.read(fields, reclaim)

    # -- one domain --

    def _fallback(self, dom: Any, stats: dict[str, Any]) -> dict[str, Any]:
        """One memoryStats() call for a domain the bulk call gave no balloon keys for.

        Writes into the bulk call's own record for the domain (ours to change).
        """
        keys = MEMORY_STATS_KEYS
        for key, value in dom.memoryStats().items():
            bulk_key = keys.get(key)
            if bulk_key is not None:
                stats[bulk_key] = value
        if "balloon.current" not in stats:
            stats["balloon.current"] = dom.info()[2]  # no balloon device: memoryStats is {}
        return stats

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
        context: Tags = {}
        try:
            text = dom.XMLDesc(0)
            skipped = parse_domain_xml(text, facts)
            if self._contexts:
                context = self._context(text, name, key)
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
            **context,
        }
        return facts

    def _context(self, text: str, name: str, key: str) -> Tags:
        """The domain's context tags; metadata of another shape or a value cut: one `W! `."""
        context = domain_context(text, name, self._contexts)
        said = list(context.problems)
        if context.cut:
            said.append(cut_message(context.cut))
        if said:
            self.log.fault(f"libvirt-context:{key}", f"libvirt: domain {name!r}: {'; '.join(said)}")
        else:
            self.log.clear(f"libvirt-context:{key}")
        return context.tags

    def _reread_vmem(self, dom: Any, name: str, key: str, facts: DomainFacts) -> None:
        """A domain with virtio-mem devices: their plugged and requested sizes, every poll.

        A requested size changes without any event (`virsh update-memory-device`), and a
        paused or stuck guest then sends none either: the live XML is fetched (one call, no
        QEMU round trip) and only the devices' own text is compared with the last poll's and
        parsed when it differs. Where that text cannot be found (an XML written otherwise),
        the whole XML is read again.
        """
        text = dom.XMLDesc(0)
        read = update_vmem if facts.vmem_text else parse_domain_xml
        try:
            skipped = read(text, facts)
        except ET.ParseError as exc:
            facts.vmem = None  # the sizes are not known this poll
            facts.checked_at = -math.inf  # the next poll reads the whole XML again
            self.log.fault(f"libvirt-xml:{key}", f"libvirt: domain {name!r}: bad XML: {exc}")
            return
        if skipped:
            self.log.fault(
                f"libvirt-xml:{key}", f"libvirt: domain {name!r}: skipped {'; '.join(skipped)}"
            )

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


def _message(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
