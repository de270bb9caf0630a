"""The vSphere source: one poll of every VM of a vCenter (or of one agent's part of it,
shards.py), and its hosts.

A poll retrieves the inventory above the VMs (inventory.py), then every VM's properties in
pages (fields.py turns each powered-on, non-template VM's into its fields and tags), then the
balloon targets from realtime counters (perf.py), all on the client's session (session.py),
which logs in again or reconnects when it must.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Callable, Optional

from ...config import VsphereConfig
from ...gcpause import gc_paused
from ...log import Log, few
from ...model import HostInfo, PollResult, Sample, Tags
from .attributes import CUSTOM_VALUE, CustomAttributes
from .fields import COMPRESSED_QS, QUICK_PRESENT, SWAPPED_QS, VM_PATH_PATHS, VM_PATHS, vm_fields
from .inventory import INVENTORY_TYPES, Inventory, inventory_specs
from .perf import Chosen, RealtimeTargets
from .session import Client, Session
from .shards import Scope, scope


class VsphereSource:
    """One vCenter (or ESXi host): a session kept across polls, re-made when it is lost."""

    kind = "vsphere"

    def __init__(
        self,
        config: VsphereConfig,
        log: Log,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = Client(config, log, timeout, clock)
        self.config, self.log, self.timeout = config, log, timeout
        self.vcenter = self.client.instance
        # One agent's part of a vCenter is a source instance of its own (logs, collector line).
        self.instance = f"{self.vcenter}#{config.shard}" if config.shard else self.vcenter
        self._filter = tuple(config.vm_include) != ("*",)
        self._targets = RealtimeTargets(self.client, log, self.instance, clock)
        self._attributes: Optional[CustomAttributes] = None
        if config.custom_attributes:
            self._attributes = CustomAttributes(config.custom_attributes, self.client, log, clock)

    def close(self) -> None:
        self.client.close()

    def poll(self, now: float) -> PollResult:
        return self.client.run(lambda session: self._poll(session, now))

    def _poll(self, session: Session, now: float) -> PollResult:
        with gc_paused():
            return self._collect(session, now)

    def _collect(self, session: Session, now: float) -> PollResult:
        inventory = self._inventory(session)
        part = self._scope(session, inventory)  # None: the whole vCenter
        mine = part.hosts if part is not None else None
        self.client.retrieve_seconds = 0.0
        paths = VM_PATHS + (VM_PATH_PATHS if self._filter else ())
        attributes = self._attributes
        if attributes is not None and attributes.begin(session):
            paths += (CUSTOM_VALUE,)  # every VM's attribute values, on this poll's pages
        samples: list[Sample] = []
        # Per VM only what the counters step needs: each page's properties are reduced and
        # dropped as the next page streams in (10,000 VMs' property dicts would be ~25 MB).
        chosen = Chosen()
        vcenter = self.vcenter
        shard = self.config.shard
        partial: set[str] = set()  # hosts some of whose VMs vm_include leaves out
        # Several views may reach one VM (its host in one subtree, its resource pool in
        # another): the property collector answers each object once, and so does this.
        seen: Optional[set[str]] = set() if part is not None and len(part.roots) > 1 else None
        pages = self.client.retrieve(
            session,
            "VirtualMachine",
            [("VirtualMachine", paths)],
            part.roots if part is not None else None,
        )
        for _, moid, props in pages:
            if props.get("config.template") == "true":
                continue
            if props.get("runtime.powerState") != "poweredOn":
                continue  # as libvirt's shut-off domains: no line
            host_ref = props.get("runtime.host")
            host_id = host_ref[1] if isinstance(host_ref, tuple) else ""
            if mine is not None and host_id not in mine:
                continue  # runs on another shard's host (moved there since its pool was read)
            if seen is not None:
                if moid in seen:
                    continue
                seen.add(moid)
            if self._filter and not self._included(inventory.vm_path(moid, props)):
                partial.add(host_id)
                continue
            host = inventory.hosts.get(host_id)
            tags: Tags = {
                "host": host.name if host else "",
                "guest": str(props.get("name", moid)),
                "hypervisor": "vmware",
                "source": "vsphere",
                "vcenter": vcenter,
            }
            uuid = props.get("config.instanceUuid")
            if uuid:
                tags["uuid"] = str(uuid)
            if host is not None:
                if host.datacenter:
                    tags["datacenter"] = host.datacenter
                if host.cluster:
                    tags["cluster"] = host.cluster
            if shard:
                tags["shard"] = shard
            if attributes is not None:
                attributes.tag(props.get(CUSTOM_VALUE), tags, moid)
            fields = vm_fields(props)
            samples.append(Sample(str(uuid) if uuid else moid, tags, fields))
            chosen.moids.append(moid)
            chosen.present.append(QUICK_PRESENT[SWAPPED_QS in props, COMPRESSED_QS in props])
            chosen.fields.append(fields)
        del seen
        if attributes is not None:
            attributes.finish(session)  # the VMs new since the values were last on the pages
        # The VM pages' round trips, each parsed as it streamed in.
        latency = self.client.retrieve_seconds
        if self.config.target_counters and session.counter_ids:
            self._targets.fill(session, chosen, now)
        hosts = [
            HostInfo(
                {
                    "host": h.name,
                    "hypervisor": "vmware",
                    "source": "vsphere",
                    "vcenter": vcenter,
                    **({"datacenter": h.datacenter} if h.datacenter else {}),
                    **({"cluster": h.cluster} if h.cluster else {}),
                    **({"shard": shard} if shard else {}),
                },
                h.memory_bytes,
                h.free_bytes,
                partial=moid in partial,
            )
            for moid, h in inventory.hosts.items()
            if mine is None or moid in mine
        ]
        return PollResult(samples=samples, hosts=hosts, api_latency_seconds=latency)

    def _scope(self, session: Session, inventory: Inventory) -> Optional[Scope]:
        """This agent's part of the vCenter when it is one of several; None for the whole."""
        if not self.config.shards:
            return None
        root = session.content.rootFolder._moId
        part = scope(inventory, self.config.shards, self.config.shard, root)
        problems = []
        if part.unknown:
            problems.append(f"shards name {few(part.unknown, 3)}, found nowhere in the inventory")
        if part.unassigned:
            problems.append(
                f"{len(part.unassigned)} host(s) belong to no shard ({few(part.unassigned, 3)}): "
                'no agent reports their VMs; add them to a shard, or "*" to one'
            )
        key = f"vsphere-shards:{self.instance}"
        if problems:
            self.log.fault(key, f"vsphere {self.instance}: " + "; ".join(problems))
        else:
            self.log.clear(
                key, f"vsphere {self.instance}: every path of shards found, every host in a shard"
            )
        return part

    def _included(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in self.config.vm_include)

    def _inventory(self, session: Session) -> Inventory:
        inventory = Inventory()
        for kind, moid, props in self.client.retrieve(session, INVENTORY_TYPES, inventory_specs()):
            inventory.add(kind, moid, props)
        inventory.resolve()
        return inventory
