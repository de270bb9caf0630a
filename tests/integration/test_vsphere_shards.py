"""Two agents share one vCenter: every VM once, every host's sums whole, against the simulator.

One config file, as every agent of a scaled-out deployment would hold it, with the shard map;
each plugin process takes its part from the environment (``shard = "${BALLOON_SHARD}"``). The
two run side by side (``--once``), and their lines are compared with pyVmomi's list of
powered-on VMs and with one unsharded poll of the same vCenter by the same file.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import line_protocol_parser
import pytest

from telegraf_balloon import catalog
from tests.stack.common import REPO, child_env
from tests.stack.execd import run_cli
from tests.stack.fixtures import running_vcsim
from tests.stack.vcsim import Vcsim
from tests.stack.vsphere_setup import all_vms, configure_vms, connect, disconnect, retrieve

pytestmark = pytest.mark.integration

# 2 datacenters of 2 clusters of 3 hosts and a standalone host, 20 VMs per cluster and
# standalone host: 120 VMs on 14 hosts, in pages of 7 (the continuation loop runs in every
# shard, over several views at once).
INVENTORY = {"dc": 2, "cluster": 2, "host": 3, "standalone_host": 1, "vm": 20, "page": 7}
# One datacenter, and one host carved out of the other's cluster (the longest path wins);
# the rest to the second shard.
SHARDS = {"east": ["/DC0", "/DC1/host/DC1_C0/DC1_C0_H1"], "rest": ["*"]}
CONFIG = """
[agent]
  timeout = "60s"
[[sources.vsphere]]
  url = "{url}"
  username = "{username}"
  password = "{password}"
  ca_file = "{ca_file}"
  page_size = 7
  vm_include = {vm_include}
  shard = "${{BALLOON_SHARD:-}}"
{shards}
[health]
  stuck_for = "0s"
[[thresholds]]
  measurement = "balloon_host"
  field = "reclaimed_ratio"
  warn = 0.01
"""

Point = dict[str, Any]


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with running_vcsim(INVENTORY) as simulator:
        si = connect(simulator)
        try:
            vms = sorted(all_vms(si), key=lambda vm: vm.name)
            items: list[tuple[Any, dict[str, Any]]] = []
            for i, vm in enumerate(vms):
                if i % 17 == 3:
                    items.append((vm, {"power": "off"}))
                elif i % 29 == 5:
                    items.append((vm, {"template": True}))
                elif i % 4 == 1:  # balloons, targets and a few stuck, spread over every host
                    items.append(
                        (
                            vm,
                            {
                                "memory_mb": 4096,
                                "ballooned_mb": 256 + i,
                                "vmmemctltarget_kb": (256 + i + (512 if i % 3 else 0)) * 1024,
                                "swapped_mb": i % 5,
                            },
                        )
                    )
            configure_vms(items, batch=8)
        finally:
            disconnect(si)
        yield simulator


def write_config(
    sim: Vcsim, path: Path, shards: dict[str, list[str]], vm_include: str = '["*"]'
) -> Path:
    table = ""
    if shards:
        table = "  [sources.vsphere.shards]\n" + "".join(
            f"    {name} = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in paths)}]\n"
            for name, paths in shards.items()
        )
    path.write_text(
        CONFIG.format(
            url=sim.url,
            username=sim.username,
            password=sim.password,
            ca_file=sim.cert_file or "",
            vm_include=vm_include,
            shards=table,
        ),
        encoding="utf-8",
    )
    return path


def run_agents(config: Path, shards: list[str]) -> dict[str, list[Point]]:
    """One plugin process per shard, side by side, each polling once: its points by shard."""
    procs = {
        shard: subprocess.Popen(
            [sys.executable, "-m", "telegraf_balloon", "--config", str(config), "--once"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env({"BALLOON_SHARD": shard}),
            cwd=str(REPO),
        )
        for shard in shards
    }
    out: dict[str, list[Point]] = {}
    for shard, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert "W! " not in stderr and "E! " not in stderr, stderr
        points = [line_protocol_parser.parse_line(line) for line in stdout.splitlines()]
        for p in points:
            assert not catalog.check_point(p["measurement"], p["tags"], p["fields"]), p
        out[shard] = points
    return out


def of(points: list[Point], measurement: str) -> list[Point]:
    return [p for p in points if p["measurement"] == measurement]


def powered_on_uuids(sim: Vcsim) -> list[str]:
    si = connect(sim)
    try:
        props, _ = retrieve(si, ["config.instanceUuid", "config.template", "runtime.powerState"])
    finally:
        disconnect(si)
    return sorted(
        v["config.instanceUuid"]
        for v in props.values()
        if v.get("runtime.powerState") == "poweredOn" and not v.get("config.template")
    )


def host_sums(points: list[Point]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in of(points, "balloon_host"):
        host = p["tags"]["host"]
        assert host not in out, f"{host} written twice"
        out[host] = p["fields"]
    return out


def test_two_agents_cover_every_vm_once_and_every_hosts_sums_whole(
    sim: Vcsim, tmp_path: Path
) -> None:
    expected = powered_on_uuids(sim)
    assert 95 <= len(expected) < 120  # some off, some templates
    config = write_config(sim, tmp_path / "balloon.toml", SHARDS)
    sim.reset_calls()
    agents = run_agents(config, ["east", "rest"])
    objects_sharded = sim.calls()["retrieve"]["objects"]
    (whole,) = run_agents(write_config(sim, tmp_path / "whole.toml", {}), [""]).values()
    sim.reset_calls()
    run_agents(write_config(sim, tmp_path / "whole.toml", {}), [""])
    objects_whole = sim.calls()["retrieve"]["objects"]

    uuids = [p["tags"]["uuid"] for points in agents.values() for p in of(points, "balloon")]
    assert len(uuids) == len(set(uuids)), "a VM reported by both agents"
    assert sorted(uuids) == expected
    assert sorted(p["tags"]["uuid"] for p in of(whole, "balloon")) == expected
    for shard, points in agents.items():
        assert {p["tags"].get("shard") for p in of(points, "balloon")} == {shard}
        (collector,) = of(points, "balloon_collector")
        assert collector["tags"]["instance"].endswith(f"#{shard}")
        assert collector["fields"]["up"] is True
        assert collector["fields"]["vms"] == len(of(points, "balloon"))
    east = {p["tags"]["host"] for p in of(agents["east"], "balloon")}
    assert "DC1_C0_H1" in east and any(h.startswith("DC0_") for h in east)
    assert not any(h.startswith("DC1_") and h != "DC1_C0_H1" for h in east)

    # Each host's line from exactly one agent, equal to the unsharded poll's.
    east_hosts, rest_hosts = host_sums(agents["east"]), host_sums(agents["rest"])
    assert not set(east_hosts) & set(rest_hosts)
    assert {**east_hosts, **rest_hosts} == host_sums(whole)
    assert all("partial" not in fields for fields in host_sums(whole).values())
    assert any(f["vms_stuck"] for f in host_sums(whole).values())
    assert any(f["reclaimed_ratio_level"] for f in host_sums(whole).values())
    # Each agent asked vCenter for its own part: the two together read about what one reads
    # (each reads the inventory above the VMs whole: 14 hosts and their parents).
    assert objects_sharded < objects_whole + 60


def test_agents_split_by_vm_include_mark_the_hosts_they_share_partial(
    sim: Vcsim, tmp_path: Path
) -> None:
    """vm_include divides by VM name, not by host: the hosts both agents report write
    partial=true and no ratios, and the two partial lines add up to the host's whole."""
    whole = host_sums(
        next(iter(run_agents(write_config(sim, tmp_path / "w.toml", {}), [""]).values()))
    )
    even = write_config(sim, tmp_path / "even.toml", {}, '["*[02468]"]')
    odd = write_config(sim, tmp_path / "odd.toml", {}, '["*[13579]"]')
    halves = [run_agents(even, ["even"])["even"], run_agents(odd, ["odd"])["odd"]]
    parts = [host_sums(points) for points in halves]
    assert set(parts[0]) == set(parts[1]) == set(whole)  # every host holds VMs of both
    for host, fields in whole.items():
        a, b = parts[0][host], parts[1][host]
        assert a["partial"] is True and b["partial"] is True
        for name in ("reclaimed_ratio", "overcommit_ratio", "reclaimed_ratio_level"):
            assert name not in a and name not in b
        for name in ("vms_total", "vms_ballooned", "vms_stuck", "memory_max_bytes"):
            assert a[name] + b[name] == fields[name], (host, name)
        assert a["host_memory_bytes"] == b["host_memory_bytes"] == fields["host_memory_bytes"]
    shards = {p["tags"].get("shard") for points in halves for p in of(points, "balloon_host")}
    assert shards == {"even", "odd"}  # the two agents' lines for one host stay apart


def test_a_map_that_leaves_hosts_out_says_so(sim: Vcsim, tmp_path: Path) -> None:
    """No "*", and a path that leads nowhere: the agent reports its part and names the rest."""
    config = write_config(sim, tmp_path / "gaps.toml", {"east": ["/DC0", "/DC9"]})
    done = run_cli("--config", str(config), "--once", env={"BALLOON_SHARD": "east"}, timeout=120)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("W! ")]
    assert len(warnings) == 1, done.stderr
    assert "/DC9, found nowhere" in warnings[0]
    assert (
        "7 host(s) belong to no shard (DC1_C0_H0, DC1_C0_H1, DC1_C0_H2 and 4 more)" in (warnings[0])
    )
    points = [line_protocol_parser.parse_line(line) for line in done.stdout.splitlines()]
    assert {p["tags"]["host"][:4] for p in of(points, "balloon")} == {"DC0_"}
