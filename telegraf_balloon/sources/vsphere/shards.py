"""Scaling out: which hosts are this agent's part of a vCenter, and where their VMs are asked.

Every agent holds the same map, shard name -> inventory paths ("/DC1", "/DC1/host/Cluster-A",
"*" for the rest), and names its own part. A host belongs to the shard whose path is the
longest that leads to it, so one map cannot give a host to two shards, and a VM goes with the
host it runs on: each VM, and each host's sums, are reported by exactly one agent. Hosts that no
path leads to are reported by none (each agent warns about them), unless a shard holds "*".

Each agent asks vCenter only for its own part: one container view per subtree of the
inventory whose hosts are all its own (a datacenter, a host folder, a cluster, or a single
host where a cluster is split), the fewest such subtrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .inventory import Inventory

ANY = "*"
_DEPTH = 64  # inventory depth bound, as in inventory.py


class Scope:
    """What one agent reports: its hosts, and the subtrees its VMs are retrieved from."""

    def __init__(
        self,
        hosts: frozenset[str],
        roots: list[tuple[str, str]],
        unassigned: list[str],
        unknown: list[str],
    ) -> None:
        self.hosts = hosts  # host moids of this shard
        self.roots = roots  # (type, moid) of each subtree to retrieve VMs from
        self.unassigned = unassigned  # names of hosts in no shard at all
        self.unknown = unknown  # paths of the map that lead to nothing in the inventory


def owner(path: str, shard_of: dict[str, str]) -> Optional[str]:
    """The shard of a host at inventory `path`: its longest leading path's, else "*"'s."""
    current = path
    while current:
        found = shard_of.get(current)
        if found is not None:
            return found
        current = current[: current.rfind("/")]
    return shard_of.get(ANY)


def scope(
    inventory: Inventory, shards: Sequence[tuple[str, Sequence[str]]], mine: str, root: str
) -> Scope:
    """This agent's hosts and subtrees, from the inventory, the map (config.VsphereConfig) and
    the root folder's moid (the inventory holds what is inside it, not the folder itself)."""
    shard_of = {path: name for name, paths in shards for path in paths}
    entities = inventory.entities
    # Which shards the hosts under each entity belong to (None: no shard).
    below: dict[str, set[Optional[str]]] = {}
    hosts: set[str] = set()
    unassigned: list[str] = []
    for moid in inventory.hosts:
        shard = owner(inventory.path(moid), shard_of)
        if shard == mine:
            hosts.add(moid)
        elif shard is None:
            unassigned.append(inventory.hosts[moid].name)
        current = moid
        for _ in range(_DEPTH):
            below.setdefault(current, set()).add(shard)
            entity = entities.get(current)
            if entity is None or not entity[2]:
                break
            current = entity[2]
    # The subtrees all of whose hosts are this shard's, each not inside a larger one.
    whole = {moid for moid, shards_below in below.items() if shards_below == {mine}}
    if root in whole:
        roots = [("Folder", root)]  # every host: the whole vCenter, as without shards
    else:
        roots = sorted(
            (entities[moid][0], moid)
            for moid in whole
            if moid in entities
            and not (entities[moid][2] in whole and entities[moid][2] in entities)
        )
    known = {inventory.path(moid) for moid in entities}
    unknown = [path for path in shard_of if path != ANY and path not in known]
    return Scope(frozenset(hosts), roots, sorted(unassigned), sorted(unknown))
