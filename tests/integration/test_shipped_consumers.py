"""The shipped queries, rules and outputs on real lines of several sources per machine.

One plugin, run by the real runner, polls what a busy site has: this machine through the
libvirt test driver (its node file says this machine's memory) and through QMP (three real
QEMUs, Proxmox's layout), both naming the machine alike, so one machine has two balloon_host
lines, each with VMs; two vCenter simulators with the same inventory (ESXi hosts and VMs of
the same names, only the vcenter tag apart); and a guest tree. Its lines go

* to a real InfluxDB 1.6.7, where the host queries of examples/influxdb (as written and as the
  Grafana dashboard sends them) must count this machine's memory once, also when tags flip;
* through outputs.prometheus_client as telegraf.d/outputs-prometheus.conf sets it up
  (tests/stack/telegraf_outputs.py) into promtool, where the recording rules must do the same
  and no string field may become a label;
* through outputs.graphite as telegraf.d/outputs-graphite.conf sets it up, where every series
  must keep a path of its own (the two vCenters' same-named hosts and VMs too).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.lineprotocol import format_line
from tests.stack.common import memtotal
from tests.stack.dashboard import generator
from tests.stack.influx import InfluxDB
from tests.stack.promtool import test_rules
from tests.stack.qemu_stack import QemuHost
from tests.stack.telegraf_outputs import (
    GraphiteOutput,
    graphite_lines,
    prometheus_samples,
    scraped,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GUEST_ROOT = ROOT / "tests/fixtures/guest/virtio-6.18-inflated-deflate-on-oom/root"
DB = "consumers"
MIB = 1024 * 1024
INVENTORY = {"dc": 1, "cluster": 1, "host": 2, "standalone_host": 0, "vm": 2}
POLLS = 3

Line = dict[str, Any]


@dataclass
class Site:
    polls: list[list[Line]]  # every poll's lines, parsed
    machine: str  # the host tag libvirt and QMP give this machine
    memory: int  # this machine's physical memory as its sources say it (the larger figure)
    esxi_memory: int  # every ESXi host's physical memory, both simulators, summed

    @property
    def last(self) -> list[Line]:
        return self.polls[-1]

    def of(self, measurement: str, lines: list[Line] | None = None) -> list[Line]:
        return [ln for ln in (lines or self.last) if ln["measurement"] == measurement]

    @property
    def reclaimed(self) -> int:
        """Every hypervisor-side VM's balloon now (read from the VM lines, not host lines)."""
        vms = [ln for ln in self.of(catalog.BALLOON) if ln["tags"]["source"] != "guest"]
        return sum(int(ln["fields"].get("balloon_actual_bytes", 0)) for ln in vms)

    @property
    def promised_here(self) -> int:
        return sum(int(ln["fields"]["memory_max_bytes"]) for ln in self.vms_here)

    @property
    def vms_here(self) -> list[Line]:
        """The VMs libvirt and QMP see on this machine (not the guest source's own line)."""
        return [
            ln
            for ln in self.of(catalog.BALLOON)
            if ln["tags"]["host"] == self.machine and ln["tags"]["source"] != "guest"
        ]


@pytest.fixture(scope="module")
def site(
    qmp_host: QemuHost,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    import libvirt

    from tests.stack.fixtures import start_vcsim
    from tests.stack.node_xml import DomainSpec, write_node_xml

    tmp = tmp_path_factory.mktemp("consumers")
    memory = memtotal()
    node = tmp / "node.xml"
    write_node_xml(
        node,
        [
            DomainSpec("web-01", memory_kib=4 * 1048576, current_kib=3 * 1048576),
            DomainSpec("db-01", memory_kib=2 * 1048576, current_kib=1572864),
        ],
        host_memory_kib=memory // 1024,
    )
    uri = f"test://{node}"
    conn = libvirt.openReadOnly(uri)
    machine = conn.getHostname()
    conn.close()
    sims = []
    try:
        for _ in range(2):
            sims.append(start_vcsim(INVENTORY))
        yield from _run(qmp_host, sims, node, uri, machine, memory)
    finally:
        for sim in sims:
            sim.stop()


def _run(
    qmp_host: QemuHost, sims: list[Any], node: Path, uri: str, machine: str, memory: int
) -> Iterator[Site]:
    from tests.stack.inprocess import Plugin
    from tests.stack.vsphere_setup import configure_vm, connect, disconnect, vm_by_name

    esxi_memory = 0
    for n, sim in enumerate(sims):
        si = connect(sim)
        try:
            configure_vm(
                vm_by_name(si, "DC0_C0_RP0_VM0"), memory_mb=4096, ballooned_mb=512 * (n + 1)
            )
            from pyVmomi import vim

            content = si.RetrieveContent()
            view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.HostSystem], True
            )
            esxi_memory += sum(h.summary.hardware.memorySize for h in view.view)
            view.Destroy()
        finally:
            disconnect(si)
    vsphere = "".join(
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "{sim.username}"\n'
        f'password = "{sim.password}"\nca_file = "{sim.cert_file}"\n'
        for sim in sims
    )
    plugin = Plugin(
        f'[agent]\nhostname = "{machine}"\ntimeout = "20s"\n'
        f'[[sources.libvirt]]\nuri = "{uri}"\n'
        f'[[sources.qmp]]\nsockets = ["{qmp_host.glob}"]\n'
        f'proxmox_config = "{qmp_host.conf_dir}"\n'
        f'[[sources.guest]]\nroot = "{GUEST_ROOT}"\n' + vsphere
    )
    try:
        polls = [plugin.poll() for _ in range(POLLS)]
    finally:
        plugin.close()
    # libvirt's node memory is whole MiB (the test driver's node file says this machine's
    # MemTotal), QMP reads MemTotal itself: the machine counts once, with the larger figure
    here = [
        int(ln["fields"]["host_memory_bytes"])
        for ln in polls[-1]
        if ln["measurement"] == catalog.HOST and ln["tags"]["host"] == machine
    ]
    assert len(here) == 2 and all(memory - MIB < m <= memory for m in here), (here, memory)
    yield Site(polls, machine, max(here), esxi_memory)


def test_the_site_is_what_the_checks_assume(site: Site) -> None:
    hosts = site.of(catalog.HOST)
    here = [ln for ln in hosts if ln["tags"]["host"] == site.machine]
    assert sorted(ln["tags"]["source"] for ln in here) == ["libvirt", "qmp"]
    assert all(ln["fields"]["vms_total"] > 0 for ln in here)  # both sources have VMs
    vcenters = {ln["tags"]["vcenter"] for ln in hosts if ln["tags"]["source"] == "vsphere"}
    assert len(vcenters) == 2
    esxi = [(ln["tags"]["host"], ln["tags"]["vcenter"]) for ln in hosts if "vcenter" in ln["tags"]]
    assert len({h for h, _ in esxi}) == len(esxi) // 2  # the same host names in both
    for ln in site.of(catalog.COLLECTOR):
        assert ln["fields"]["up"] is True, ln
    assert any("thp_mode" in ln["fields"] for ln in site.of(catalog.BALLOON))
    assert site.reclaimed > 0


# --- InfluxDB -----------------------------------------------------------------------------------


def _flipped(line: Line, poll: int) -> Line:
    """Poll 0 as a KVM host and a vSphere cluster change would have written it.

    The libvirt source tags its host line kvm while every domain is KVM and qemu otherwise,
    so the tag flips as VMs come and go; this machine runs no KVM domain (TCG only, and the
    test driver says "test"), so the test writes the first poll's host line as a KVM host's.
    An ESXi host moved to another cluster likewise starts a new series: the vSphere host lines
    of the first poll name a cluster they have left since.
    """
    if poll != 0 or line["measurement"] != catalog.HOST:
        return line
    tags = dict(line["tags"])
    if tags["source"] == "libvirt":
        tags["hypervisor"] = "kvm"
    if "cluster" in tags:
        tags["cluster"] = "old-cluster"
    return {**line, "tags": tags}


@pytest.fixture(scope="module")
def written(site: Site, influxdb: InfluxDB) -> InfluxDB:
    influxdb.drop_db(DB)
    influxdb.create_db(DB)
    text = []
    for poll, lines in enumerate(site.polls):
        for line in lines:
            line = _flipped(line, poll)
            formatted = format_line(line["measurement"], line["tags"], line["fields"], line["time"])
            assert formatted is not None
            text.append(formatted)
    status, body = influxdb.write(DB, "\n".join(text))
    assert (status, body) == (204, "")
    return influxdb


def _both_forms(name: str) -> list[str]:
    """The query as the file has it, and as the dashboard sends it (every host chosen)."""
    gen = generator()
    query = gen.read_queries()[name]
    forms = [query]
    for spec in gen.panels():
        if spec.query == name:
            forms.append(gen.expand(gen.to_grafana(query, spec.filters)))
    assert len(forms) == 2, name
    return forms


def test_cluster_queries_count_each_machine_once(site: Site, written: InfluxDB) -> None:
    capacity = site.memory + site.esxi_memory
    for query in _both_forms("cluster_reclaimed_bytes"):
        [row] = written.rows(DB, query)
        assert row["reclaimed_bytes"] == site.reclaimed, query
    for query in _both_forms("cluster_reclaimed_ratio"):
        [row] = written.rows(DB, query)
        assert row["reclaimed_ratio"] == pytest.approx(site.reclaimed / capacity), query
    for query in _both_forms("cluster_reclaimed_bytes_over_time"):
        values = [r["reclaimed_bytes"] for r in written.rows(DB, query)]
        assert values and max(values) == site.reclaimed, query


def test_host_queries_are_per_machine(site: Site, written: InfluxDB) -> None:
    here_vms = site.vms_here
    here_reclaimed = sum(int(ln["fields"]["balloon_actual_bytes"]) for ln in here_vms)
    for query in _both_forms("overcommit_by_host"):
        rows = {(r["_tags"]["host"], r["_tags"]["vcenter"]): r for r in written.rows(DB, query)}
        row = rows[(site.machine, "")]
        assert row["vms"] == len(here_vms)
        assert row["overcommit_ratio"] == pytest.approx(site.promised_here / site.memory)
        assert row["reclaimed_ratio"] == pytest.approx(here_reclaimed / site.memory)
        # the ESXi hosts of both vCenters, each once: the same names, apart by vcenter
        esxi = {
            (ln["tags"]["host"], ln["tags"]["vcenter"])
            for ln in site.of(catalog.HOST)
            if "vcenter" in ln["tags"]
        }
        assert {k for k in rows if k[1]} == esxi
    for query in _both_forms("host_ratios"):
        series = [r for r in written.rows(DB, query) if r["_tags"]["host"] == site.machine]
        assert series, query
        assert series[-1]["reclaimed_ratio"] == pytest.approx(here_reclaimed / site.memory)


# --- Prometheus ---------------------------------------------------------------------------------


def _prometheus_block() -> dict[str, Any]:
    text = (ROOT / "telegraf.d/outputs-prometheus.conf").read_text()
    [block] = tomllib.loads(text)["outputs"]["prometheus_client"]
    return dict(block)


def _series(site: Site) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    block = _prometheus_block()
    return prometheus_samples(
        site.last,
        metric_version=int(block.get("metric_version", 1)),
        string_as_label=bool(block.get("string_as_label", True)),
    )


def test_no_string_field_becomes_a_label(site: Site) -> None:
    strings = {
        name
        for ln in site.polls[0] + site.last
        for name, value in ln["fields"].items()
        if isinstance(value, str)
    }
    assert "thp_mode" in strings
    labels = {name for _, labels in _series(site) for name, _ in labels}
    assert labels.isdisjoint(strings), labels & strings
    assert "balloon_inflation_blocked" in {name for name, _ in _series(site)}  # booleans kept


def _promql_label_set(labels: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"


def test_prometheus_rules_count_each_machine_once(
    site: Site, promtool: str, tmp_path: Path
) -> None:
    series = []
    for (name, labels), value in sorted(_series(site).items()):
        stored = scraped(labels, job="telegraf", instance=f"{site.machine}:9273")
        series.append({"series": name + _promql_label_set(stored), "values": f"{value!r}x20"})
    capacity = site.memory + site.esxi_memory
    machine = f'machine:balloon_overcommit_ratio{{host="{site.machine}"}}'
    tests = {
        "rule_files": [str(ROOT / "examples/prometheus/balloon-rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": "cluster:balloon_reclaimed_bytes:sum",
                        "eval_time": "5m",
                        "exp_samples": [
                            {
                                "labels": "cluster:balloon_reclaimed_bytes:sum",
                                "value": float(site.reclaimed),
                            }
                        ],
                    },
                    {
                        "expr": "cluster:balloon_reclaimed_ratio",
                        "eval_time": "5m",
                        "exp_samples": [
                            {
                                "labels": "cluster:balloon_reclaimed_ratio",
                                "value": site.reclaimed / capacity,
                            }
                        ],
                    },
                    {
                        "expr": machine,
                        "eval_time": "5m",
                        "exp_samples": [
                            {
                                "labels": machine,
                                "value": site.promised_here / site.memory,
                            }
                        ],
                    },
                    {
                        # the collectors' own instance, kept apart from the scrape target's
                        "expr": "count by (exported_instance) (balloon_collector_up"
                        '{source="vsphere"})',
                        "eval_time": "5m",
                        "exp_samples": [
                            {
                                "labels": f'{{exported_instance="{ln["tags"]["instance"]}"}}',
                                "value": 1,
                            }
                            for ln in site.of(catalog.COLLECTOR)
                            if ln["tags"]["source"] == "vsphere"
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "real-lines.test.yml"
    path.write_text(json.dumps(tests, indent=1))  # JSON is YAML
    code, output = test_rules(path, promtool)
    assert code == 0, output


# --- Graphite -----------------------------------------------------------------------------------


def test_every_series_has_its_own_graphite_path(site: Site) -> None:
    [block] = tomllib.loads((ROOT / "telegraf.d/outputs-graphite.conf").read_text())["outputs"][
        "graphite"
    ]
    output = GraphiteOutput.from_block(block)
    for lines in site.polls:
        owners: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
        for line in lines:
            identity = (line["measurement"], tuple(sorted(line["tags"].items())))
            for path, _, _ in graphite_lines([line], output):
                owners.setdefault(path, set()).add(identity)
        shared = {path: ids for path, ids in owners.items() if len(ids) > 1}
        assert shared == {}
        assert len(owners) > 100
