"""QEMU without libvirt (Proxmox VE, plain QEMU): each VM's QMP socket, briefly, every poll.

QMP serves one client at a time, and Proxmox's own daemons use the same sockets. So every
poll connects to every VM side by side from one thread (exchange.py), sends all of its
commands in one write once greeted, reads the replies, and closes: nothing is held between
polls, and a VM whose monitor is busy costs at most `connect_timeout` and is skipped. A
socket whose peer answers what QEMU never would (a wrong type, a number out of range, a line
or a stream of events without end) is skipped the same way, at once: one peer's replies
never cost another VM its line. With agent_ping, a Proxmox VM whose config enables the
guest agent also gets a guest-ping on its <vmid>.qga socket, in the same loop (agent.py).
This module turns what each VM answered into its sample.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Callable, Optional

from ...config import QmpConfig
from ...log import Log
from ...model import Detail, Fields, PollResult, Sample, Tags
from ..context import cut_message, tag_value
from ..hostfacts import HostReclaim, QemuProcess, local_host, process_rss, process_start
from ..kvm import AGENT_TIMEOUT, driver_silent, vmem_fields
from ..proxmox import (
    MIB,
    PVE_DIR,
    PveConfig,
    read_config,
    read_pools,
    resolve_dir,
    user_cfg_path,
)
from .agent import AgentPing
from .exchange import exchange
from .protocol import VmFacts, VmPoll
from .replies import GUEST_STATS, MAX_INT64, PVE_BALLOON


class QmpSource:
    """Every QMP socket matching the configured globs, re-globbed each poll."""

    kind = "qmp"

    def __init__(
        self,
        config: QmpConfig,
        hostname: str,
        log: Log,
        pve_dir: str = PVE_DIR,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.log = log
        self.instance = ",".join(config.sockets)
        self.hostname = hostname
        self._pve_dir = pve_dir
        self._clock = clock
        self._facts: dict[str, VmFacts] = {}
        self._pve: dict[str, tuple[tuple[int, int], Optional[PveConfig]]] = {}
        self._now = 0.0
        self._faulted: set[str] = set()  # paths with a fault logged and not yet cleared
        self._unpinged: set[str] = set()  # VMs whose agent ping was not sent last poll
        # context_tags "proxmox": the pools of user.cfg, re-read when the file changed
        self._proxmox_context = "proxmox" in config.context_tags
        self._pools: tuple[tuple[str, int, int], dict[str, str]] = (("", 0, 0), {})
        self._pools_seen = -1.0  # the poll (its `now`) that last looked at user.cfg
        # The host's side of reclaim: the host's swap, KSM, zswap and pressure, and each VM's
        # QEMU process (from the socket's peer credentials), resolved once per QEMU start.
        self._reclaim = HostReclaim(config.host_root)
        self._procs: dict[str, QemuProcess] = {}  # socket path -> its QEMU
        self._said_shared = False
        missing = self._reclaim.missing()
        if missing:
            log.info(f"qmp {self.instance}: this host will not give {'; '.join(missing)}")

    def close(self) -> None:
        """Nothing is held between polls."""

    def _paths(self) -> list[str]:
        seen: dict[str, None] = {}
        for pattern in self.config.sockets:
            for path in sorted(glob.glob(pattern)):
                seen.setdefault(path)
        return list(seen)

    def _facts_for(self, poll: VmPoll, pid: int) -> VmFacts:
        """The VM's facts of this start; new ones when its QEMU process changed."""
        start = (pid, process_start(pid, self.config.host_root) if pid else 0)
        facts = self._facts.get(poll.path)
        if facts is None or facts.start != start or not pid:
            facts = self._facts[poll.path] = VmFacts(start, self._now)
        return facts

    def poll(self, now: float) -> PollResult:
        self._now = now
        paths = self._paths()
        polls = [VmPoll(path, self.config.set_stats_period) for path in paths]
        pve_dir = resolve_dir(self.config.proxmox_config, self._pve_dir)
        pings = self._agent_pings(paths, pve_dir)
        # An agent has AGENT_TIMEOUT to answer, never longer than a monitor has to greet:
        # the pings cannot make the poll longer than the monitors may.
        ping_timeout = min(AGENT_TIMEOUT, self.config.connect_timeout)
        started = time.monotonic()  # exchange's own clock
        monitors_done = exchange(
            polls,
            self.config.connect_timeout,
            self._facts_for,
            pings=list(pings.values()),
            ping_timeout=ping_timeout,
        )
        latency = monitors_done - started  # the monitors' exchange: the agents are not QMP
        self._unpinged = {p.path for p in pings.values() if p.error_kind == "late"}
        late_key = f"qmp-agent-late:{self.instance}"
        if self._unpinged:
            self.log.fault(
                late_key,
                f"qmp {self.instance}: {len(self._unpinged)} guest agent ping(s) not sent this "
                "poll: the agents that did not answer held every slot; pinged first next poll",
            )
        else:
            self.log.clear(late_key)
        host_tags: Tags = {"host": self.hostname, "source": "qmp"}
        # the host's figures first: a host with nothing in swap has nothing of any VM there
        host_figures = self._reclaim.host_figures()
        samples: list[Sample] = []
        denied = 0
        for poll in polls:
            key = f"qmp:{poll.path}"
            if poll.error is not None:
                if poll.error_kind == "denied":
                    denied += 1
                elif poll.error_kind != "gone":
                    self.log.fault(key, f"qmp: {poll.path}: skipped this poll: {poll.error}")
                    self._faulted.add(poll.path)
                else:
                    self.log.debug(f"qmp: {poll.path}: {poll.error}")
                continue
            self.log.clear(key, f"qmp: {poll.path}: answering again")
            if poll.armed:
                self.log.info(
                    f"qmp: {poll.path}: set guest-stats-polling-interval to "
                    f"{poll.set_period}s (it was 0)"
                )
            elif poll.arm_error is not None:
                self.log.warn(
                    f"qmp: {poll.path}: cannot set guest-stats-polling-interval: {poll.arm_error}"
                )
            if poll.vmem_problems:  # once until the devices read well again
                skipped = "; ".join(poll.vmem_problems[:3])
                self.log.fault(f"qmp-vmem:{poll.path}", f"qmp: {poll.path}: skipped {skipped}")
            else:
                self.log.clear(f"qmp-vmem:{poll.path}")
            sample = self._sample(poll, host_tags, pve_dir, now)
            ping = pings.get(poll.path)
            if ping is not None:
                self._agent_fields(ping, sample.fields)
            samples.append(sample)
        for path in self._faulted - {p.path for p in polls if p.error is not None}:
            self._faulted.discard(path)
            if path not in paths:
                self.log.clear(f"qmp:{path}")  # the VM is gone: forget its fault quietly
        for gone in set(self._facts) - set(paths):
            del self._facts[gone]
            self.log.clear(f"qmp-vmem:{gone}")
        for gone in set(self._procs) - set(paths):
            del self._procs[gone]
        stems = {os.path.basename(path).rsplit(".", 1)[0] for path in paths}
        for gone in [c for c in self._pve if os.path.basename(c)[: -len(".conf")] not in stems]:
            del self._pve[gone]  # its VM's socket is gone: the config may stay on disk for ever
            self.log.clear(f"qmp-pve:{gone}")
            self.log.clear(f"qmp-context:{gone}")
        denied_key = f"qmp-denied:{self.instance}"
        if denied:
            message = (
                f"permission denied on {denied} QMP socket(s): QEMU's sockets are root-only "
                "(srwxr-xr-x) and connecting needs write access; run telegraf-balloon as root"
            )
            if not samples:  # the runner logs a source that is down, once
                return PollResult(error=message, api_latency_seconds=latency)
            self.log.fault(denied_key, f"qmp {self.instance}: {message}", level="E")
        else:
            self.log.clear(denied_key)
        if not samples:  # no VM here: no host line (aggregate.host_lines), nothing to read
            return PollResult(api_latency_seconds=latency)
        kinds = {s.tags["hypervisor"] for s in samples}
        hypervisor = kinds.pop() if len(kinds) == 1 else ("kvm" if "kvm" in kinds else "qemu")
        host = local_host(
            {**host_tags, "hypervisor": hypervisor}, self.config.host_root, host_figures
        )
        return PollResult(samples=samples, hosts=[host], api_latency_seconds=latency)

    def _agent_pings(self, paths: list[str], pve_dir: Optional[str]) -> dict[str, AgentPing]:
        """The agent pings of this poll, by monitor socket: Proxmox VMs whose config enables
        the agent, at <vmid>.qga beside the monitor (with agent_ping)."""
        if not self.config.agent_ping or pve_dir is None:
            return {}
        pings: dict[str, AgentPing] = {}
        # those left unsent last poll go first
        for path in sorted(paths, key=lambda p: p not in self._unpinged):
            directory, name = os.path.split(path)
            stem = name.rsplit(".", 1)[0]
            pve = self._proxmox(pve_dir, stem) if stem.isdigit() else None
            if pve is not None and pve.agent:
                pings[path] = AgentPing(path, os.path.join(directory, f"{stem}.qga"))
        return pings

    def _agent_fields(self, ping: AgentPing, fields: Fields) -> None:
        """An answer is a connected agent and its latency; no answer in time, not connected.
        A socket another client holds with its queue full, or gone, or refused, or an answer
        that is not qemu-ga's: not judged this poll (the last two are logged)."""
        key = f"qmp-agent:{ping.socket}"
        if ping.latency is not None:
            fields["guest_agent_connected"] = True
            fields["guest_agent_latency_seconds"] = ping.latency
            self.log.clear(key, f"qmp: {ping.socket}: the guest agent answers again")
        elif ping.error_kind == "timeout":
            fields["guest_agent_connected"] = False
        elif ping.error_kind in ("protocol", "refused"):
            self.log.fault(key, f"qmp: {ping.socket}: guest agent not judged: {ping.error}")
        else:
            self.log.debug(f"qmp: {ping.socket}: guest agent not judged: {ping.error}")

    def _proxmox(self, pve_dir: Optional[str], vmid: Optional[str]) -> Optional[PveConfig]:
        """The VM's Proxmox config, re-read only when the file changed."""
        if pve_dir is None or vmid is None:
            return None
        path = os.path.join(pve_dir, f"{vmid}.conf")
        try:
            info = os.stat(path)
        except OSError:
            if self._pve.pop(path, None) is not None:
                self.log.clear(f"qmp-pve:{path}")
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        cached = self._pve.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        config = read_config(path)
        if config is not None and config.problems:
            self.log.fault(f"qmp-pve:{path}", f"qmp: {path}: {'; '.join(config.problems)}")
        else:
            self.log.clear(f"qmp-pve:{path}")
        self._pve[path] = (stamp, config)
        return config

    def _sample(self, poll: VmPoll, host_tags: Tags, pve_dir: Optional[str], now: float) -> Sample:
        facts = poll.facts
        assert facts is not None
        stem = os.path.basename(poll.path).rsplit(".", 1)[0]
        vmid = stem if pve_dir is not None and stem.isdigit() else None
        pve = self._proxmox(pve_dir, vmid)
        tags: Tags = dict(host_tags)
        if pve is not None:
            tags["guest"] = pve.name or f"vm{vmid}"  # QEMU's -name goes stale after a rename
        else:
            tags["guest"] = facts.name or stem
        tags["hypervisor"] = facts.hypervisor
        if facts.uuid:
            tags["uuid"] = facts.uuid
        if vmid is not None:
            tags["vmid"] = vmid
            if self._proxmox_context and pve_dir is not None:
                self._context_tags(tags, pve_dir, vmid, pve)
        fields = self._fields(poll, facts, pve, now)
        vmem = poll.vmem
        detail = None
        if vmem is not None:
            worst = vmem.worst
            detail = Detail(vmem_device=worst.name, vmem_device_plugged=worst.plugged)
        return Sample(poll.path, tags, fields, detail)

    def _context_tags(self, tags: Tags, pve_dir: str, vmid: str, pve: Optional[PveConfig]) -> None:
        """pve_tags (the config's tags:) and pool (user.cfg's pool: lines) of a Proxmox VM."""
        cut: list[str] = []
        found = {
            "pve_tags": ";".join(pve.tags) if pve is not None else "",
            "pool": self._pool_map(pve_dir).get(vmid, ""),
        }
        for tag, raw in found.items():
            value, was_cut = tag_value(raw)
            if value is not None:
                tags[tag] = value
            if was_cut:
                cut.append(tag)
        key = f"qmp-context:{os.path.join(pve_dir, f'{vmid}.conf')}"
        if cut:
            self.log.fault(key, f"qmp: VM {vmid}: {cut_message(cut)}")
        else:
            self.log.clear(key)

    def _pool_map(self, pve_dir: str) -> dict[str, str]:
        """vmid -> pool, from user.cfg beside the config directory: looked at once a poll,
        read again only when it changed (as the VM configs are)."""
        if self._pools_seen == self._now:
            return self._pools[1]
        self._pools_seen = self._now
        path = user_cfg_path(pve_dir)
        try:
            info = os.stat(path)
        except OSError:
            self._pools = (("", 0, 0), {})
            return {}
        stamp = (path, info.st_mtime_ns, info.st_size)
        if self._pools[0] != stamp:
            self._pools = (stamp, read_pools(path) or {})
        return self._pools[1]

    def _fields(self, poll: VmPoll, facts: VmFacts, pve: Optional[PveConfig], now: float) -> Fields:
        fields: Fields = {}
        balloon = poll.balloon
        # The balloon's own reference: boot memory and DIMMs. query-balloon's actual leaves
        # virtio-mem out, query-memory-size-summary's plugged-memory counts it: the virtio-mem
        # part of the latter is taken out here and today's plugged size added to both sides.
        reference = None
        if facts.max_bytes is not None and facts.vmem_base is not None:
            reference = facts.max_bytes - facts.vmem_base
        if balloon is not None and _count(balloon.get("max_mem")) is not None:
            reference = int(balloon["max_mem"])
        if reference is None and pve is not None and facts.max_bytes is None:
            reference = pve.memory_bytes
        actual = _count(balloon.get("actual")) if balloon is not None else None
        vmem = poll.vmem
        vmem_now = poll.vmem_plugged()  # None: some device could not be read
        maximum = current = None
        if reference is not None and vmem_now is not None:
            maximum = reference + vmem_now
            fields["memory_max_bytes"] = maximum
            if actual is None and poll.no_device:
                actual = reference  # no balloon: the guest has all of its memory
        if actual is not None and vmem_now is not None:
            current = actual + vmem_now
            fields["memory_current_bytes"] = current
        if actual is not None and reference is not None:
            fields["balloon_actual_bytes"] = max(0, reference - actual)
        if vmem is not None:
            vmem_fields(vmem, fields)
        last_update = 0
        if poll.stats is not None:
            stats = poll.stats.get("stats")
            if isinstance(stats, dict):
                for key, name in GUEST_STATS:
                    value = _count(stats.get(key))
                    if value is not None:
                        fields[name] = value
            last_update = _count(poll.stats.get("last-update")) or 0
        if balloon is not None and "last_update" in balloon:
            for key, name in PVE_BALLOON:
                value = _count(balloon.get(key))
                if value is not None:
                    fields.setdefault(name, value)
            last_update = max(last_update, _count(balloon.get("last_update")) or 0)
        proc = self._process(poll, facts)
        if proc is not None:
            proc.read(fields, self._reclaim, rss=True)
        elif poll.pid:
            rss = process_rss(poll.pid, self.config.host_root)
            if rss is not None:
                fields["rss_bytes"] = rss
        facts.last_update = max(facts.last_update, last_update)
        if facts.last_update > 0:
            fields["stats_age_seconds"] = max(0.0, now - facts.last_update)
        reservation = None
        if pve is not None and pve.balloon_mib:
            reservation = pve.balloon_mib * MIB
            fields["reservation_bytes"] = reservation
        period = poll.period
        if period is not None:
            fields["stats_period_seconds"] = period
            fields["stats_disabled"] = period == 0
        no_device = poll.no_device or (pve is not None and pve.balloon_mib == 0)
        floor_at_max = reservation is not None and maximum is not None and reservation >= maximum
        reported = facts.last_update > 0
        fields["inflation_blocked"] = (
            no_device
            or floor_at_max
            or driver_silent(period, reported, current, maximum, now - facts.first_seen)
        )
        return fields

    def _process(self, poll: VmPoll, facts: VmFacts) -> Optional[QemuProcess]:
        """The VM's QEMU process, resolved again only when the process changed."""
        pid, start = facts.start
        proc = self._procs.get(poll.path)
        if proc is not None and (proc.pid, proc.start) == (pid, start):
            return proc
        self._procs.pop(poll.path, None)
        proc = self._reclaim.process(pid) if pid and start else None
        if proc is None:
            return None
        self._procs[poll.path] = proc
        if proc.shared is not None and not self._said_shared:
            self._said_shared = True
            self.log.info(
                f"qmp: {poll.path}: its QEMU has no cgroup of its own: "
                f"{self._reclaim.shared_note(proc)}"
            )
        return proc


def _count(value: object) -> Optional[int]:
    """A reported figure: a non-negative int64 (not QEMU's 'not reported' marker, 2^64-1).

    The guest's figures pass through QEMU unchecked: a guest can send any uint64, and one
    beyond int64 is junk no line-protocol integer holds, so it is left out like a missing one.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_INT64 else None
