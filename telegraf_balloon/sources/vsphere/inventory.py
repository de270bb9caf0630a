"""Everything above the VMs: folders, datacenters, clusters and hosts, from one retrieval.

Each object's name and parent give a host its cluster and datacenter tags, and a folder or
vApp its inventory path ('/DC0/vm/prod'), which `vm_include` globs match a VM's path against.
The parents are followed at most 64 levels: a malformed parent loop ends there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .fields import HOST_PATHS, host_memory
from .soap import Props

INVENTORY_TYPES = (
    "Folder",
    "Datacenter",
    "ComputeResource",
    "ClusterComputeResource",
    "HostSystem",
    "VirtualApp",
)
_DEPTH = 64  # inventory depth bound


def inventory_specs() -> list[tuple[str, Sequence[str]]]:
    """The property paths asked per type: names and parents, and a host's memory."""
    specs: list[tuple[str, Sequence[str]]] = [
        (kind, ("name", "parent")) for kind in INVENTORY_TYPES if kind != "HostSystem"
    ]
    specs.append(("HostSystem", ("name", "parent", *HOST_PATHS)))
    return specs


class Host:
    __slots__ = ("cluster", "datacenter", "free_bytes", "memory_bytes", "name", "parent")

    def __init__(self, name: str, parent: str) -> None:
        self.name = name
        self.parent = parent
        self.cluster = ""
        self.datacenter = ""
        self.memory_bytes: Optional[int] = None
        self.free_bytes: Optional[int] = None


class Inventory:
    """Names and parents of everything above the VMs, from one retrieval."""

    def __init__(self) -> None:
        self.entities: dict[str, tuple[str, str, str]] = {}  # moid -> (type, name, parent moid)
        self.hosts: dict[str, Host] = {}
        self._paths: dict[str, str] = {}

    def add(self, kind: str, moid: str, props: Props) -> None:
        parent = props.get("parent")
        parent_id = parent[1] if isinstance(parent, tuple) else ""
        name = str(props.get("name", moid))
        self.entities[moid] = (kind, name, parent_id)
        if kind == "HostSystem":
            host = Host(name, parent_id)
            host.memory_bytes, host.free_bytes = host_memory(props)
            self.hosts[moid] = host

    def resolve(self) -> None:
        """Each host's cluster and datacenter, once every object is added."""
        for host in self.hosts.values():
            compute = self.entities.get(host.parent)
            if compute is not None and compute[0] == "ClusterComputeResource":
                host.cluster = compute[1]
            host.datacenter = self._datacenter(host.parent)

    def _datacenter(self, moid: str) -> str:
        for _ in range(_DEPTH):
            entity = self.entities.get(moid)
            if entity is None:
                return ""
            if entity[0] == "Datacenter":
                return entity[1]
            moid = entity[2]
        return ""

    def path(self, moid: str) -> str:
        """The inventory path of a folder or vApp ('/DC0/vm/prod'); the root folder is ''."""
        known = self._paths.get(moid)
        if known is not None:
            return known
        parts: list[str] = []
        current = moid
        for _ in range(_DEPTH):
            entity = self.entities.get(current)
            if entity is None:
                break
            parts.append(entity[1])
            current = entity[2]
        path = "".join(f"/{p}" for p in reversed(parts))
        self._paths[moid] = path
        return path

    def vm_path(self, moid: str, props: Props) -> str:
        """A VM's inventory path ('/DC0/vm/prod/web1'), from its parent folder or vApp."""
        parent = props.get("parent") or props.get("parentVApp")
        base = self.path(parent[1]) if isinstance(parent, tuple) else ""
        return f"{base}/{props.get('name', moid)}"
