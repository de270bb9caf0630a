"""Scaling out a vCenter: each host in exactly one shard, and each shard's subtrees to ask.

Plain inventories built here (the real simulator, two plugin processes and pyVmomi's list
of VMs: tests/integration/test_vsphere_shards.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from telegraf_balloon.aggregate import host_lines
from telegraf_balloon.config import ConfigError, load_text
from telegraf_balloon.model import HostInfo, Sample
from telegraf_balloon.sources.vsphere.inventory import Inventory
from telegraf_balloon.sources.vsphere.shards import owner, scope

ROOT = "group-d1"


def inventory(tree: Sequence[tuple[str, str, str, str]]) -> Inventory:
    """(type, moid, name, parent moid) per object, as the inventory retrieval reads them."""
    inv = Inventory()
    for kind, moid, name, parent in tree:
        inv.add(kind, moid, {"name": name, "parent": ("Folder", parent)})
    inv.resolve()
    return inv


# Two datacenters: DC1 with clusters C0 (h1, h2) and C1 (h3, h4) and a standalone host esx5,
# DC2 with cluster C0 (h6) in a host folder "rack".
TREE = [
    ("Datacenter", "dc1", "DC1", ROOT),
    ("Folder", "hf1", "host", "dc1"),
    ("Folder", "vf1", "vm", "dc1"),
    ("ClusterComputeResource", "c0", "C0", "hf1"),
    ("HostSystem", "h1", "h1", "c0"),
    ("HostSystem", "h2", "h2", "c0"),
    ("ClusterComputeResource", "c1", "C1", "hf1"),
    ("HostSystem", "h3", "h3", "c1"),
    ("HostSystem", "h4", "h4", "c1"),
    ("ComputeResource", "cr5", "esx5", "hf1"),
    ("HostSystem", "h5", "esx5", "cr5"),
    ("Datacenter", "dc2", "DC2", ROOT),
    ("Folder", "hf2", "host", "dc2"),
    ("Folder", "rack", "rack", "hf2"),
    ("ClusterComputeResource", "c20", "C0", "rack"),
    ("HostSystem", "h6", "h6", "c20"),
]


def test_a_datacenter_each() -> None:
    inv = inventory(TREE)
    shards = (("east", ("/DC1",)), ("west", ("/DC2",)))
    east = scope(inv, shards, "east", ROOT)
    assert east.hosts == {"h1", "h2", "h3", "h4", "h5"}
    assert east.roots == [("Datacenter", "dc1")]
    west = scope(inv, shards, "west", ROOT)
    assert west.hosts == {"h6"} and west.roots == [("Datacenter", "dc2")]
    assert not east.unassigned and not east.unknown


def test_a_cluster_carved_out_of_the_rest() -> None:
    inv = inventory(TREE)
    shards = (("c0", ("/DC1/host/C0",)), ("rest", ("*",)))
    assert scope(inv, shards, "c0", ROOT).roots == [("ClusterComputeResource", "c0")]
    rest = scope(inv, shards, "rest", ROOT)
    assert rest.hosts == {"h3", "h4", "h5", "h6"}
    # DC1 is shared, so its other clusters and the standalone host are asked one by one.
    assert rest.roots == [
        ("ClusterComputeResource", "c1"),
        ("ComputeResource", "cr5"),
        ("Datacenter", "dc2"),
    ]


def test_the_longest_path_wins_down_to_one_host() -> None:
    inv = inventory(TREE)
    shards = (("a", ("/DC1/host/C0",)), ("b", ("/DC1/host/C0/h2", "/DC2/host/rack")))
    a = scope(inv, shards, "a", ROOT)
    assert a.hosts == {"h1"} and a.roots == [("HostSystem", "h1")]
    b = scope(inv, shards, "b", ROOT)
    assert b.hosts == {"h2", "h6"}
    assert b.roots == [("Datacenter", "dc2"), ("HostSystem", "h2")]  # DC2 holds h6 only
    assert a.unassigned == ["esx5", "h3", "h4"]  # DC1's other hosts: in no shard


def test_one_shard_of_everything_asks_the_whole_vcenter() -> None:
    part = scope(inventory(TREE), (("all", ("*",)),), "all", ROOT)
    assert part.roots == [("Folder", ROOT)]
    assert len(part.hosts) == 6


def test_paths_that_lead_nowhere_are_named() -> None:
    part = scope(inventory(TREE), (("a", ("/DC1", "/DC9")),), "a", ROOT)
    assert part.unknown == ["/DC9"]
    assert part.unassigned == ["h6"]


def test_owner_is_the_longest_leading_path() -> None:
    shard_of = {"/DC1": "a", "/DC1/host/C0": "b", "*": "c"}
    assert owner("/DC1/host/C0/h1", shard_of) == "b"
    assert owner("/DC1/host/C01/h1", shard_of) == "a"  # a path, not a string prefix
    assert owner("/DC2/host/C0/h1", shard_of) == "c"
    assert owner("/DC2/host/C0/h1", {"/DC1": "a"}) is None


def _descendant_hosts(inv: Inventory, root: str) -> set[str]:
    out = set()
    for moid in inv.hosts:
        current = moid
        while current:
            if current == root:
                out.add(moid)
                break
            entity = inv.entities.get(current)
            current = entity[2] if entity else ""
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_maps_partition_the_hosts_and_the_roots_hold_exactly_a_shards_hosts(
    seed: int,
) -> None:
    """Whatever the map, every host is one shard's or none's, and a shard's subtrees hold its
    hosts and no other shard's."""
    rng = random.Random(seed)
    tree: list[tuple[str, str, str, str]] = []
    containers = []
    for d in range(rng.randint(1, 3)):
        tree += [("Datacenter", f"dc{d}", f"DC{d}", ROOT), ("Folder", f"hf{d}", "host", f"dc{d}")]
        parents = [f"hf{d}"]
        if rng.random() < 0.5:
            tree.append(("Folder", f"rack{d}", "rack", f"hf{d}"))
            parents.append(f"rack{d}")
        for c in range(rng.randint(1, 4)):
            kind = rng.choice(("ClusterComputeResource", "ComputeResource"))
            tree.append((kind, f"c{d}.{c}", f"C{c}", rng.choice(parents)))
            containers.append(f"c{d}.{c}")
            for h in range(rng.randint(1, 4)):
                tree.append(("HostSystem", f"h{d}.{c}.{h}", f"h{h}", f"c{d}.{c}"))
    inv = inventory(tree)
    every = [inv.path(moid) for moid in inv.entities]
    paths = rng.sample(every, min(len(every), rng.randint(1, 6)))
    if rng.random() < 0.5:
        paths.append("*")
    names = ["a", "b", "c"]
    assigned: dict[str, list[str]] = {}
    for path in paths:
        assigned.setdefault(rng.choice(names), []).append(path)
    shards = tuple((name, tuple(p)) for name, p in assigned.items())
    seen: dict[str, str] = {}
    for name, _ in shards:
        part = scope(inv, shards, name, ROOT)
        for host in part.hosts:
            assert host not in seen, (host, seen[host], name)
            seen[host] = name
        under: set[str] = set()
        for _, root in part.roots:
            reached = set(inv.hosts) if root == ROOT else _descendant_hosts(inv, root)
            assert not reached & under, "two subtrees of one shard overlap"
            under |= reached
        assert under == part.hosts
    unassigned = scope(inv, shards, shards[0][0], ROOT).unassigned
    assert len(seen) + len(unassigned) == len(inv.hosts)


# --- config --------------------------------------------------------------------------------


def load(extra: str) -> object:
    text = '[[sources.vsphere]]\nurl = "https://vc.example.com/sdk"\n' + extra
    return load_text(text, "t.toml", {"SHARD": "west"})


def test_config_reads_the_map_and_the_agents_part() -> None:
    config = load(
        'shard = "${SHARD}"\n[sources.vsphere.shards]\neast = ["/DC-East/"]\n'
        'west = ["/DC-West//host/Cluster-A", "*"]\n'
    )
    vsphere = config.vsphere[0]  # type: ignore[attr-defined]
    assert vsphere.shard == "west"
    assert vsphere.shards == (("east", ("/DC-East",)), ("west", ("/DC-West/host/Cluster-A", "*")))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'shard = "a"\n[sources.vsphere.shards]\na = ["/DC1"]\nb = ["/DC1/"]\n',
            'shards.b: "/DC1/" is in shard "a" already',
        ),
        ('shard = "a"\n[sources.vsphere.shards]\na = ["*"]\nb = ["*"]\n', 'in shard "a" already'),
        ('shard = "a"\n[sources.vsphere.shards]\na = ["/DC1", "/DC1"]\n', "in this shard already"),
        ('[sources.vsphere.shards]\na = ["/DC1"]\n', "shard: set it to this agent's part"),
        ('shard = "c"\n[sources.vsphere.shards]\na = ["/DC1"]\n', 'one of "a"'),
        ('shard = "a"\n[sources.vsphere.shards]\na = ["DC1"]\n', "not an inventory path"),
        ('shard = "a"\n[sources.vsphere.shards]\na = ["/"]\n', "not an inventory path"),
        ('shard = "a"\n[sources.vsphere.shards]\na = []\n', "list the inventory paths"),
        ('shard = "a"\n[sources.vsphere.shards]\na = "/DC1"\n', "a list of strings"),
        ('shard = "a"\nshards = {}\n', "name at least one shard"),
    ],
)
def test_config_refuses_maps_that_could_overlap_or_leave_the_agent_without_a_part(
    extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(extra)


def test_two_shards_of_one_vcenter_in_one_config_are_two_sources() -> None:
    part = '[[sources.vsphere]]\nurl = "https://vc/sdk"\nshard = "{}"\n'
    config = load_text(part.format("a") + part.format("b"), "t.toml", {})
    assert [v.shard for v in config.vsphere] == ["a", "b"]
    with pytest.raises(ConfigError, match="duplicate"):
        load_text(part.format("a") + part.format("a"), "t.toml", {})


# --- partial host sums ---------------------------------------------------------------------


def test_a_partial_host_line_says_so_and_writes_no_ratio() -> None:
    GiB = 1 << 30
    samples = [
        Sample("a", {"host": "esx1"}, {"memory_max_bytes": 4 * GiB, "balloon_actual_bytes": GiB}),
        Sample("b", {"host": "esx2"}, {"memory_max_bytes": 4 * GiB, "balloon_actual_bytes": GiB}),
    ]
    hosts = [
        HostInfo({"host": "esx1"}, 64 * GiB, 10 * GiB, partial=True),
        HostInfo({"host": "esx2"}, 64 * GiB, 10 * GiB),
    ]
    (_, partial), (_, whole) = host_lines(samples, hosts)
    assert partial["partial"] is True and "partial" not in whole
    assert "reclaimed_ratio" not in partial and "overcommit_ratio" not in partial
    assert whole["reclaimed_ratio"] == 1 / 64
    assert partial["memory_max_bytes"] == 4 * GiB and partial["host_memory_bytes"] == 64 * GiB
