"""From the shipped configs to InfluxDB to every query and dashboard panel, on real components.

Five plugin processes run in execd mode, each driven as Telegraf drives it (tests/stack/execd.py)
and each written to a real InfluxDB 1.6.7 one poll at a time, as Telegraf's output would:

* ``examples/all.toml`` on a KVM host: the real QEMU guest through libvirtd (its balloon set to
  hold 128 MiB of 512), the captured Firecracker guest tree as the guest side, a log file, a
  real vCenter simulator (two VMs on a cluster of two ESXi hosts: one ballooned 1 GiB of 4 GiB
  against a 2 GiB target and swapped by its host, one whose reservation pins it) and a QMP
  socket glob that matches nothing yet (the source is up with no VM, its host still counts);
* ``examples/kvm-host.toml`` on a second libvirt host: libvirt's test driver served by the same
  libvirtd, with a ballooned domain, one whose stats period is 0 and one with no balloon
  device (libvirtd names this machine for it too: the test gives its lines a host of their
  own, ``tdrv-host``, since the shipped queries count one machine's memory once);
* ``examples/guest.toml`` in two captured guest trees: an inflated virtio guest and a guest
  with no balloon device;
* one guest config of the test's own on the captured VMware guest whose balloon is short of
  its target, with ``stuck_for = "0s"`` (the shipped 5 minutes would outlast the test).

Then every query of examples/influxdb and every panel and variable query of the Grafana
dashboard runs against that database and is checked for the result it must give.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.lineprotocol import format_line
from tests.stack.common import memtotal, wait_for
from tests.stack.dashboard import generator
from tests.stack.execd import Execd, copy_guest_root
from tests.stack.fixtures import start_vcsim
from tests.stack.influx import InfluxDB
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.node_xml import DomainSpec, write_node_xml
from tests.stack.vsphere_setup import all_vms, configure_vm, connect, disconnect, vm_by_name

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/guest"
DB = "telegraf_e2e"
MIB = 1024 * 1024
GIB = 1024 * MIB
QEMU_FULL_MIB = 512
QEMU_NOW_MIB = 384  # the balloon holds 128 MiB
TEST_HOST_MEMORY = 4 * GIB
TDRV_HOST = "tdrv-host"
POLLS = 3


@dataclass
class World:
    """What the test set up, and what the plugins wrote."""

    db: InfluxDB
    qemu_guest: str
    kvm_host: str  # the host tag libvirt gives this machine
    host_memory: int  # this machine's MemTotal, bytes: the QEMU host's physical memory
    lines: int
    esxi_memory: dict[str, int]  # ESXi host name -> its physical memory, bytes
    vsphere_vm_host: dict[str, str]  # vSphere VM name -> the ESXi host it runs on
    qmp_hosts: set[str]  # host tags of the QMP source's balloon_host lines (it has no VM)


@pytest.fixture(scope="module")
def world(
    influxdb: InfluxDB,
    libvirt_stack: LibvirtStack,
    qemu_guest: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    import libvirt

    tmp = tmp_path_factory.mktemp("e2e")
    conn = libvirt.open(libvirt_stack.uri)
    domain = conn.lookupByName(qemu_guest)
    domain.setMemoryStatsPeriod(2, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    domain.setMemory(QEMU_NOW_MIB * 1024)
    wait_for(lambda: domain.info()[2] == QEMU_NOW_MIB * 1024, 60, f"{QEMU_NOW_MIB} MiB")

    node = tmp / "node.xml"
    write_node_xml(
        node,
        [
            DomainSpec(
                "tdrv-ballooned", memory_kib=1048576, current_kib=786432, metadata=NOVA_SHOP
            ),
            DomainSpec("tdrv-period0", memory_kib=1048576, current_kib=917504, stats_period=0),
            DomainSpec("tdrv-no-balloon", memory_kib=1048576, memballoon="none"),
        ],
        host_memory_kib=TEST_HOST_MEMORY // 1024,
    )
    logs = tmp / "qemu-logs"
    logs.mkdir()
    (logs / "web.log").write_text("qemu started\n")
    fc_root = copy_guest_root(tmp / "firecracker")
    # the guest's own memory pressure, as the same kind of guest reports it
    (fc_root / "proc/pressure").mkdir()
    pressure = FIXTURES / "firecracker-6.18-memory-pressure/root/proc/pressure/memory"
    (fc_root / "proc/pressure/memory").write_bytes(pressure.read_bytes())
    (tmp / "qmp-empty").mkdir()
    sim = start_vcsim({"dc": 1, "cluster": 1, "host": 2, "standalone_host": 0, "vm": 2})
    si = connect(sim)
    try:
        configure_vm(
            vm_by_name(si, VSPHERE_BALLOONED),
            memory_mb=4096,
            ballooned_mb=1024,
            vmmemctltarget_kb=2048 * 1024,
            swapped_mb=64,
            compressed_kb=2048,
        )
        configure_vm(vm_by_name(si, VSPHERE_PINNED), memory_mb=2048, reservation_mb=2048)
        vm_host = {vm.name: vm.runtime.host.name for vm in all_vms(si)}
        content = si.RetrieveContent()
        from pyVmomi import vim

        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
        esxi_memory = {h.name: h.summary.hardware.memorySize for h in view.view}
        view.Destroy()
    finally:
        disconnect(si)
    stuck_config = tmp / "stuck-guest.toml"
    stuck_config.write_text(
        '[agent]\nhostname = "stuck-guest"\n'
        f'[[sources.guest]]\nroot = "{FIXTURES / "vmware-4.20-current-below-target/root"}"\n'
        '[health]\nstuck_gap_ratio = 0.01\nstuck_for = "0s"\n'
        '[[thresholds]]\nfield = "stuck"\nwarn = 1\n'
    )
    examples = ROOT / "examples"
    runs: list[tuple[list[str], dict[str, str]]] = [
        (
            ["--config", str(examples / "all.toml")],
            {
                "LIBVIRT_URI": libvirt_stack.uri,
                "BALLOON_ROOT": str(fc_root),
                "BALLOON_HOSTNAME": "fc-guest",
                "BALLOON_LOGS": str(logs / "*.log"),
                "VCENTER_HOST": f"127.0.0.1:{sim.port}",
                "VSPHERE_USER": sim.username,
                "VSPHERE_PASSWORD": sim.password,
                "VSPHERE_CA_FILE": sim.cert_file or "",
                "QMP_SOCKETS": str(tmp / "qmp-empty" / "*.qmp"),
            },
        ),
        (
            ["--config", str(with_context_tags(examples / "kvm-host.toml", tmp))],
            {"LIBVIRT_URI": libvirt_stack.test_uri(node)},
        ),
        (
            ["--config", str(examples / "guest.toml")],
            {
                "BALLOON_ROOT": str(FIXTURES / "virtio-6.18-inflated-deflate-on-oom/root"),
                "BALLOON_HOSTNAME": "virtio-guest",
            },
        ),
        (
            ["--config", str(examples / "guest.toml")],
            {
                "BALLOON_ROOT": str(FIXTURES / "no-balloon-device/root"),
                "BALLOON_HOSTNAME": "blocked-guest",
            },
        ),
        (["--config", str(stuck_config)], {}),
    ]
    influxdb.drop_db(DB)
    influxdb.create_db(DB)
    plugins = [Execd(args, env) for args, env in runs]
    written = 0
    kvm_host = ""
    qmp_hosts: set[str] = set()
    try:
        for plugin in plugins:
            plugin.wait_ready(timeout=30)
        for poll in range(1, POLLS + 1):
            if poll == 2:  # the logs source reads from the end: an event after its first look
                with open(logs / "web.log", "a") as handle:
                    handle.write("error: Failed to extend balloon: guest refused\n")
            for plugin in plugins:
                assert plugin.tick()
            for plugin in plugins:
                batch = plugin.wait_batches(poll, timeout=60)[poll - 1]
                for collector in batch.of(catalog.COLLECTOR):
                    assert collector.fields["up"] is True, plugin.transcript()
                texts = [m.text for m in batch.metrics]
                if plugin is plugins[1]:  # the test driver: a machine of its own
                    texts = [_on_host(m, TDRV_HOST) for m in batch.metrics]
                status, text = influxdb.write(DB, "\n".join(texts))
                assert (status, text) == (204, ""), text  # no partial write, no type conflict
                written += len(batch.metrics)
                for host_line in batch.of(catalog.HOST):
                    if host_line.tags["source"] == "qmp":
                        qmp_hosts.add(host_line.tags["host"])
                    if (
                        host_line.tags["source"] == "libvirt"
                        and host_line.tags["hypervisor"] != "test"
                    ):
                        kvm_host = host_line.tags["host"]
            time.sleep(1.1)  # rates need time between polls
        for plugin in plugins:
            code, _ = plugin.shutdown()
            assert code == 0, plugin.transcript()
            plugin.assert_clean()
        assert kvm_host, "no balloon_host line from the QEMU host"
        yield World(
            influxdb, qemu_guest, kvm_host, memtotal(), written, esxi_memory, vm_host, qmp_hosts
        )
    finally:
        for plugin in plugins:
            plugin.kill()
        sim.stop()
        domain.setMemory(QEMU_FULL_MIB * 1024)
        wait_for(lambda: domain.info()[2] == QEMU_FULL_MIB * 1024, 60, "deflate to 512 MiB")
        conn.close()


def with_context_tags(example: Path, tmp: Path) -> Path:
    """The shipped config with its context_tags line taken in, as an OpenStack host would."""
    text = example.read_text()
    line = '  # context_tags = ["openstack"]\n'
    assert line in text, "the example documents context_tags"
    copy = tmp / example.name
    copy.write_text(text.replace(line, line.replace("# ", "", 1)))
    return copy


def _on_host(metric: Any, host: str) -> str:
    """A line of the plugin's with another host tag."""
    tags = {**metric.tags, "host": host} if "host" in metric.tags else metric.tags
    line = format_line(metric.measurement, tags, metric.fields, metric.time_ns)
    assert line is not None
    return line


def _rows(world: World, query: str) -> list[dict[str, Any]]:
    return world.db.rows(DB, query)


def _by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """Rows keyed by tag (or column) values; the last row of each series wins."""
    out = {}
    for row in rows:
        out[tuple(str(row["_tags"].get(k, row.get(k))) for k in keys)] = row
    return out


# --- what each query must give ------------------------------------------------------------------

GUESTS = {"fc-guest", "virtio-guest", "blocked-guest", "stuck-guest"}
TEST_VMS = {"tdrv-ballooned", "tdrv-period0", "tdrv-no-balloon"}
NOVA_SHOP = (  # Nova's <nova:instance>, as an OpenStack compute node writes it
    '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">'
    '<nova:package version="27.1.0"/><nova:name>shop-web</nova:name>'
    "<nova:creationTime>2024-05-02 09:14:55</nova:creationTime>"
    '<nova:flavor name="m1.small"><nova:memory>1024</nova:memory><nova:vcpus>1</nova:vcpus>'
    '</nova:flavor><nova:owner><nova:user uuid="8c1e5b9f">alice</nova:user>'
    '<nova:project uuid="3d9a7c1b">shop</nova:project></nova:owner></nova:instance>'
)
VSPHERE_BALLOONED, VSPHERE_PINNED = "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"
VSPHERE_VMS = {VSPHERE_BALLOONED, VSPHERE_PINNED}
# QEMU guest 128 MiB, test driver 256 + 128 MiB, vSphere 1 GiB
CLUSTER_RECLAIMED = (QEMU_FULL_MIB - QEMU_NOW_MIB) * MIB + 256 * MIB + 128 * MIB + GIB


def _capacity(w: World) -> int:
    # this machine once (libvirt), the test driver's made-up host, the ESXi hosts; and this
    # machine again if the QMP source (no VM) wrote a host line under another name (all.toml's
    # BALLOON_HOSTNAME names the guest source's host, and the QMP source's too)
    again = len(w.qmp_hosts - {w.kvm_host}) * w.host_memory
    return w.host_memory + TEST_HOST_MEMORY + sum(w.esxi_memory.values()) + again


def check_var_host(w: World, rows: list[dict[str, Any]]) -> None:
    hosts = {w.kvm_host, TDRV_HOST} | GUESTS | set(w.vsphere_vm_host.values())
    assert {r["value"] for r in rows} == hosts


def check_var_project(w: World, rows: list[dict[str, Any]]) -> None:
    assert [r["value"] for r in rows] == ["shop"]  # the one Nova instance's project


def check_var_namespace(w: World, rows: list[dict[str, Any]]) -> None:
    assert rows == []  # no KubeVirt domain here


def check_var_owner(w: World, rows: list[dict[str, Any]]) -> None:
    assert rows == []  # the vSphere source reads no custom attribute here


def check_var_guest(w: World, rows: list[dict[str, Any]]) -> None:
    assert {r["value"] for r in rows} == {w.qemu_guest} | TEST_VMS | GUESTS | VSPHERE_VMS


def check_vm_balloon_bytes(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "host", "guest")
    assert last[(w.kvm_host, w.qemu_guest)]["balloon"] == 128 * MIB
    assert last[(w.kvm_host, w.qemu_guest)]["current"] == QEMU_NOW_MIB * MIB
    assert last[(w.kvm_host, w.qemu_guest)]["target"] is None  # libvirt has no target
    stuck = last[("stuck-guest", "stuck-guest")]
    assert (stuck["balloon"], stuck["target"], stuck["gap"]) == (512 * MIB, GIB, 512 * MIB)
    assert last[(TDRV_HOST, "tdrv-ballooned")]["balloon"] == 256 * MIB
    vsphere = last[(w.vsphere_vm_host[VSPHERE_BALLOONED], VSPHERE_BALLOONED)]
    assert (vsphere["balloon"], vsphere["target"], vsphere["gap"]) == (GIB, 2 * GIB, GIB)
    assert vsphere["current"] == 3 * GIB


def check_vm_balloon_ratio(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "host", "guest")
    assert last[(w.kvm_host, w.qemu_guest)]["balloon_ratio"] == 0.25
    assert last[(TDRV_HOST, "tdrv-period0")]["balloon_ratio"] == 0.125
    assert last[(w.vsphere_vm_host[VSPHERE_BALLOONED], VSPHERE_BALLOONED)]["balloon_ratio"] == 0.25
    assert ("blocked-guest", "blocked-guest") not in last  # no balloon device: no ratio at all


def check_vm_swap_rates(w: World, rows: list[dict[str, Any]]) -> None:
    series = {(r["_tags"]["host"], r["_tags"]["guest"]) for r in rows}
    assert (w.kvm_host, w.qemu_guest) in series and ("virtio-guest", "virtio-guest") in series
    assert all(r["swap_in"] == 0 and r["swap_out"] == 0 for r in rows)  # idle guests, 3 polls


def check_vm_levels(w: World, rows: list[dict[str, Any]]) -> None:
    top: dict[str, int] = {}
    for row in rows:
        guest = row["_tags"]["guest"]
        top[guest] = max(top.get(guest, 0), row["alert_level"])
    # 0.25 of the QEMU guest is above the 0.20 rule, but not yet for its 10 minutes
    assert top[w.qemu_guest] == 0
    # the vSphere VM at 0.25 likewise; the pinned one is blocked (warn at once)
    assert top[VSPHERE_BALLOONED] == 0
    assert {g for g, level in top.items() if level >= 1} == TEST_VMS | {
        "stuck-guest",
        "blocked-guest",
        VSPHERE_PINNED,
    }


def check_vm_vsphere_memory(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "guest")
    assert set(last) == {(name,) for name in VSPHERE_VMS}
    ballooned = last[(VSPHERE_BALLOONED,)]
    assert (ballooned["host_swapped"], ballooned["compressed"]) == (64 * MIB, 2048 * 1024)
    assert last[(VSPHERE_PINNED,)]["host_swapped"] == 0


def check_vm_host_reclaim(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "host", "guest")
    vsphere = last[(w.vsphere_vm_host[VSPHERE_BALLOONED], VSPHERE_BALLOONED)]
    assert (vsphere["host_swapped"], vsphere["compressed"]) == (64 * MIB, 2048 * 1024)
    # the QEMU guest on a local URI: its QEMU's figures (the tests' daemon gives it no cgroup
    # of its own: its swap is its VmSwap, and there is no compressed figure)
    qemu = last[(w.kvm_host, w.qemu_guest)]
    assert isinstance(qemu["host_swapped"], int) and qemu["host_swapped"] >= 0
    assert isinstance(qemu["shared"], int) and qemu["compressed"] is None
    assert (TDRV_HOST, "tdrv-ballooned") not in last  # the test driver: no host to read


def check_vm_memory_stall(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "host", "guest")
    # the one guest tree with a pressure file; its totals do not move between polls
    assert set(last) == {("fc-guest", "fc-guest")}
    assert last[("fc-guest", "fc-guest")]["guest_stall"] == 0.0


def check_host_reclaim(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "host", "source")
    assert set(last) == {(w.kvm_host, "libvirt")}  # the one local KVM host (the QMP one has no VM)
    host = last[(w.kvm_host, "libvirt")]
    assert isinstance(host["swap_used"], int) and host["swap_used"] >= 0
    assert isinstance(host["ksm_saved"], int) and isinstance(host["ksm_profit"], int)


def check_host_ratios(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "host")  # per machine: its sources summed, its memory once
    test_host = last[(TDRV_HOST,)]
    assert test_host["reclaimed_ratio"] == 384 * MIB / TEST_HOST_MEMORY
    assert test_host["overcommit_ratio"] == 3 * GIB / TEST_HOST_MEMORY
    assert last[(w.kvm_host,)]["reclaimed_ratio"] == pytest.approx(128 * MIB / w.host_memory)
    esxi = w.vsphere_vm_host[VSPHERE_BALLOONED]
    assert last[(esxi,)]["reclaimed_ratio"] == pytest.approx(GIB / w.esxi_memory[esxi])


def check_overcommit_by_host(w: World, rows: list[dict[str, Any]]) -> None:
    last = _by(rows, "host", "vcenter")
    # two libvirt hosts, every ESXi host, and the QMP source's host if it wrote a line
    assert len(last) == 2 + len(w.esxi_memory) + len(w.qmp_hosts - {w.kvm_host})
    test_host = last[(TDRV_HOST, "")]
    assert (test_host["vms"], test_host["ballooned"]) == (3, 2)
    assert test_host["overcommit_ratio"] == 0.75
    for host in w.qmp_hosts - {w.kvm_host}:
        assert (last[(host, "")]["vms"], last[(host, "")]["overcommit_ratio"]) == (0, 0.0)
    vsphere = [r for k, r in last.items() if k[1]]
    assert sum(r["vms"] for r in vsphere) == 2 and sum(r["ballooned"] for r in vsphere) == 1
    qemu_host = last[(w.kvm_host, "")]
    assert (qemu_host["vms"], qemu_host["ballooned"]) == (1, 1)
    assert qemu_host["overcommit_ratio"] == pytest.approx(512 * MIB / w.host_memory)


def check_cluster_reclaimed_bytes(w: World, rows: list[dict[str, Any]]) -> None:
    [row] = rows
    assert row["reclaimed_bytes"] == CLUSTER_RECLAIMED  # 128 + 256 + 128 MiB + 1 GiB


def check_cluster_reclaimed_ratio(w: World, rows: list[dict[str, Any]]) -> None:
    [row] = rows
    expected = CLUSTER_RECLAIMED / _capacity(w)
    assert row["reclaimed_ratio"] == pytest.approx(expected)


def check_cluster_reclaimed_bytes_over_time(w: World, rows: list[dict[str, Any]]) -> None:
    values = [r["reclaimed_bytes"] for r in rows]
    # a minute boundary between the hosts' polls leaves some hosts alone in a bucket
    assert all(0 <= v <= CLUSTER_RECLAIMED for v in values)
    assert CLUSTER_RECLAIMED in values


def check_stuck_vms(w: World, rows: list[dict[str, Any]]) -> None:
    assert [(r["host"], r["guest"], r["gap_bytes"]) for r in rows] == [
        ("stuck-guest", "stuck-guest", 512 * MIB)
    ]


def check_stale_vms(w: World, rows: list[dict[str, Any]]) -> None:
    # the test driver's made-up last_update is years old; the QEMU guest reports every 2 s
    assert {r["guest"]: r["stats_disabled"] for r in rows} == {
        "tdrv-ballooned": False,
        "tdrv-period0": True,
    }


def check_blocked_vms(w: World, rows: list[dict[str, Any]]) -> None:
    assert sorted((r["guest"], r["source"]) for r in rows) == [
        (VSPHERE_PINNED, "vsphere"),
        ("blocked-guest", "guest"),
        ("tdrv-no-balloon", "libvirt"),
    ]


def check_vms_at_warning_or_worse(w: World, rows: list[dict[str, Any]]) -> None:
    assert {r["guest"] for r in rows} == TEST_VMS | {"stuck-guest", "blocked-guest", VSPHERE_PINNED}
    assert all(r["alert_level"] == 1 for r in rows)


def check_log_events(w: World, rows: list[dict[str, Any]]) -> None:
    # one "Failed to extend balloon" line written to the watched QEMU log after the first poll
    assert [(r["_tags"]["host"], r["_tags"]["event"], r["events"]) for r in rows] == [
        ("fc-guest", "balloon_extend_failed", 1)
    ]
    assert rows[0]["_tags"]["file"].endswith("web.log")


CHECKS: dict[str, Callable[[World, list[dict[str, Any]]], None]] = {
    name[len("check_") :]: fn for name, fn in globals().items() if name.startswith("check_")
}


# --- the tests ----------------------------------------------------------------------------------


def test_every_query_of_the_file_gives_its_result(world: World) -> None:
    queries = generator().read_queries()
    assert set(queries) == set(CHECKS), "a query without a check, or a check without a query"
    for name, query in queries.items():
        CHECKS[name](world, _rows(world, query))


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # several selectors in one query stamp rows with the start of the range, which moves
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_every_dashboard_query_gives_the_files_result(world: World) -> None:
    """Each panel's and variable's query, as Grafana sends it (all hosts, all guests, the last
    hour), gives what the file's query gives, and so passes the same check."""
    import json

    gen = generator()
    queries = gen.read_queries()
    board = json.loads((ROOT / "examples/grafana/balloon.json").read_text())
    sent: list[tuple[str, str]] = []
    for panel in board["panels"]:
        if panel["type"] != "row":
            sent.append((panel["title"], panel["targets"][0]["query"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            sent.append((variable["name"], variable["query"]))
    by_grafana = {}
    for name, query in queries.items():
        by_grafana[gen.to_grafana(query)] = name
    checked = set()
    for title, query in sent:
        plain = query
        for variable in ("host", "guest", *gen.CONTEXT_VARIABLES):
            plain = plain.replace(f' AND "{variable}" =~ /^${variable}$/', "")
        plain = plain.replace(' WHERE "host" =~ /^$host$/', "")
        name = by_grafana[plain]
        rows = _rows(world, gen.expand(query))
        CHECKS[name](world, rows)
        if name not in ("cluster_reclaimed_bytes_over_time",):  # minute buckets may shift
            assert _comparable(rows) == _comparable(_rows(world, queries[name])), title
        checked.add(name)
    assert checked == set(queries)


def test_context_variables_narrow_the_vm_panels_and_the_guest_list(world: World) -> None:
    """Choosing the project "shop" in the dashboard leaves its one instance; "All" leaves
    every VM, those without the tag too (the test above)."""
    import json

    gen = generator()
    board = json.loads((ROOT / "examples/grafana/balloon.json").read_text())
    [guest_variable] = [v for v in board["templating"]["list"] if v["name"] == "guest"]
    [ratio_panel] = [p for p in board["panels"] if p.get("title") == "Balloon ratio"]
    for query in (guest_variable["query"], ratio_panel["targets"][0]["query"]):
        rows = _rows(world, gen.expand(query.replace("/^$project$/", "/^shop$/")))
        guests = {r.get("value") or r["_tags"]["guest"] for r in rows}
        assert guests == {"tdrv-ballooned"}, query
    [row] = _rows(world, 'SELECT last("balloon_ratio") FROM "balloon" WHERE "project" = \'shop\'')
    assert row["last"] == 0.25
    tags = _rows(world, 'SHOW TAG VALUES FROM "balloon" WITH KEY = "instance_name"')
    assert [r["value"] for r in tags] == ["shop-web"]


def test_field_types_are_the_catalogs_across_polls_and_sources(world: World) -> None:
    influx_type = {int: "integer", float: "float", bool: "boolean", str: "string"}
    seen: dict[str, set[str]] = {}
    for row in _rows(world, "SHOW FIELD KEYS"):
        measurement = row["_measurement"]
        seen.setdefault(measurement, set()).add(row["fieldKey"])
        base = row["fieldKey"]
        if base.endswith("_level"):
            assert row["fieldType"] == "integer", row
            continue
        entry = catalog.field(measurement, base)
        assert entry is not None, row
        assert row["fieldType"] == influx_type[entry.type], row
    # one type per field key: a conflict would list a key twice
    keys = [(r["_measurement"], r["fieldKey"]) for r in _rows(world, "SHOW FIELD KEYS")]
    assert len(keys) == len(set(keys))
    assert set(seen) == set(catalog.MEASUREMENTS)  # every measurement arrived, logs included
    [event] = _rows(world, 'SELECT last("count_total") FROM "balloon_log" GROUP BY "event"')
    assert event["_tags"]["event"] == "balloon_extend_failed" and event["last"] == 1
    assert world.lines > 0
