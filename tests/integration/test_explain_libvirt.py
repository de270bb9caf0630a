"""--explain against libvirt: the real QEMU guest under a real libvirtd, and the test driver.

The QEMU guest is shared by the session (tests/stack/fixtures.py): each test here leaves it
as found (512 MiB, stats period 2 s, running).
"""

from __future__ import annotations

import io
import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from telegraf_balloon.config import load_text
from telegraf_balloon.explain.poll import run
from telegraf_balloon.explain.render import to_json, to_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources import build_sources
from tests.stack.common import unavailable
from tests.stack.execd import run_cli
from tests.stack.inprocess import wait_for
from tests.stack.libvirt_stack import DomainSpec, LibvirtStack, write_node_xml
from tests.test_explain import assert_found, codes

pytestmark = pytest.mark.integration

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
FULL_KIB = 512 * 1024


def explain_once(toml: str) -> dict[str, Any]:
    config = load_text(toml, "test.toml")
    log = Log(io.StringIO())
    report = run(config, build_sources(config, log), log, "plugin-host")
    document: dict[str, Any] = json.loads(to_json(report))
    document["_text"] = to_text(report)
    document["_exit"] = report.exit_code
    return document


@pytest.fixture()
def domain(libvirt_stack: LibvirtStack, qemu_guest: str) -> Iterator[Any]:
    import libvirt

    conn = libvirt.open(libvirt_stack.uri)
    dom = conn.lookupByName(qemu_guest)

    def restore() -> None:
        if dom.info()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        dom.setMemoryStatsPeriod(2, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        dom.setMemory(FULL_KIB)
        wait_for(lambda: dom.info()[2] == FULL_KIB, 60, "the guest at 512 MiB")

    restore()
    yield dom
    restore()
    conn.close()


def host_root(tmp_path: Path, total_kib: int, free_kib: int) -> Path:
    """A host_root whose proc/meminfo says how much memory the host has and has free."""
    root = tmp_path / "host"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text(
        f"MemTotal:       {total_kib} kB\nMemFree:        {free_kib} kB\n"
    )
    return root


def test_qemu_period_zero_and_inflated_past_40_percent(
    libvirt_stack: LibvirtStack, qemu_guest: str, domain: Any, tmp_path: Path
) -> None:
    """The real guest: stats period 0 (stats_disabled, with the virsh remedy naming it) and a
    balloon of 280 MiB of 512 MiB with the balloon_ratio rule's `for` at 0 (critical)."""
    import libvirt

    domain.setMemory(232 * 1024)  # balloon 280 MiB of 512: ratio 0.547
    wait_for(lambda: domain.info()[2] == 232 * 1024, 60, "inflation to 232 MiB")
    domain.setMemoryStatsPeriod(0, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    root = host_root(tmp_path, 64 * 1024 * 1024, 60 * 1024 * 1024)  # a host with plenty free
    toml = f"""
[[sources.libvirt]]
uri = "{libvirt_stack.uri}"
host_root = "{root}"
[health]
stale_after = "1s"
[[thresholds]]
field = "balloon_ratio"
warn = 0.20
crit = 0.40
for = "0s"
[[thresholds]]
field = "stale"
warn = 1
"""
    time.sleep(2.5)  # the frozen stats are now older than stale_after

    def judged() -> Optional[dict[str, Any]]:
        doc = explain_once(toml)
        [vm] = [v for v in doc["vms"] if v["guest"] == qemu_guest]
        return doc if vm["fields"].get("stale") is True else None

    doc = wait_for(judged, 30, "stale stats on the frozen guest")
    [vm] = [v for v in doc["vms"] if v["guest"] == qemu_guest]
    assert vm["fields"]["stats_disabled"] is True and vm["fields"]["stale"] is True
    # stale is the same cause as the disabled period: one finding, one remedy.
    assert codes(doc) == {"stats_disabled", "balloon_high", "balloon_without_pressure"}
    uuid = domain.UUIDString()
    virsh = f"virsh -c {shlex.quote(libvirt_stack.uri)} "  # its `?` quoted: a shell glob
    period = assert_found(doc, "stats_disabled", "warning", "period is 0")
    assert f"{virsh}dommemstat {uuid} --period 10 --live --config" in period["remedy"]
    high = assert_found(doc, "balloon_high", "critical", "54.7%", "280 MiB of 512 MiB")
    assert "counts at once" in high["message"]
    assert f"{virsh}setmem {uuid} 524288K --live" in high["remedy"]
    idle = assert_found(doc, "balloon_without_pressure", "warning", "60.0 GiB of 64.0 GiB free")
    assert "lost contact" in idle["message"]
    assert vm["verdict"] == "critical" and vm["source"] == "libvirt"
    assert vm["instance"] == libvirt_stack.uri
    assert doc["_exit"] == 1
    text = doc["_text"]
    for fragment in (qemu_guest, "critical", f"dommemstat {uuid}", "stats_disabled", "Hosts"):
        assert fragment in text
    assert "\x1b" not in text
    # The driver reported (before its period was set to 0): nothing left to judge about it.
    assert "driver_not_loaded" not in doc["sources"][0]["not_judged"]


def test_qemu_paused_guest_goes_stale(
    libvirt_stack: LibvirtStack, qemu_guest: str, domain: Any
) -> None:
    """A paused guest stops sending stats: stale, at the level of the config's stale rule."""
    toml = f"""
[[sources.libvirt]]
uri = "{libvirt_stack.uri}"
[health]
stale_after = "3s"
[[thresholds]]
field = "stale"
crit = 1
"""
    assert "stale" not in codes(explain_once(toml))
    domain.suspend()

    def stale() -> Optional[dict[str, Any]]:
        doc = explain_once(toml)
        return doc if "stale" in codes(doc) else None

    doc = wait_for(stale, 30, "the paused guest's stats to go stale")
    finding = assert_found(doc, "stale", "critical", "beyond stale_after (3s)")
    uri = shlex.quote(libvirt_stack.uri)
    assert f"virsh -c {uri} domstate {domain.UUIDString()}" in finding["remedy"]
    assert "stats_disabled" not in codes(doc)


def test_qemu_cli_text_piped(
    libvirt_stack: LibvirtStack, qemu_guest: str, domain: Any, tmp_path: Path
) -> None:
    """The command an operator types, piped: the VM, its finding and its remedy, no colour."""
    import libvirt

    domain.setMemoryStatsPeriod(0, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    config = tmp_path / "explain.toml"
    config.write_text(f'[[sources.libvirt]]\nuri = "{libvirt_stack.uri}"\n')
    done = run_cli("--explain", "--config", str(config), env={"NO_COLOR": ""})
    assert done.returncode == 1, done.stderr
    assert "\x1b" not in done.stdout
    assert qemu_guest in done.stdout
    assert "stats_disabled" in done.stdout
    uuid = domain.UUIDString()
    assert f"dommemstat {uuid} --period 10 --live --config" in done.stdout


# --- the test driver --------------------------------------------------------------------------


def test_test_driver_node(tmp_path: Path) -> None:
    """memballoon none, period 0, a host promised more than it has and reclaiming 75%."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt-python is not installed")
    path = tmp_path / "node.xml"
    write_node_xml(
        path,
        [
            DomainSpec("no-balloon", memory_kib=GIB // KIB, memballoon="none"),
            DomainSpec("frozen", memory_kib=2 * GIB // KIB, stats_period=0),
            DomainSpec("squeezed", memory_kib=4 * GIB // KIB, current_kib=GIB // KIB),
        ],
        host_memory_kib=4 * GIB // KIB,
    )
    toml = f"""
[[sources.libvirt]]
uri = "test://{path}"
[[thresholds]]
measurement = "balloon_host"
field = "reclaimed_ratio"
warn = 0.20
crit = 0.50
for = "10m"
"""
    doc = explain_once(toml)
    by_guest = {vm["guest"]: {f["code"] for f in vm["findings"]} for vm in doc["vms"]}
    uuids = {vm["guest"]: vm["tags"]["uuid"] for vm in doc["vms"]}
    device = assert_found(doc, "no_balloon_device", "warning", "<memballoon model='none'/>")
    assert f"$ virsh -c test://{path} edit {uuids['no-balloon']}" in device["remedy"]
    assert "<memballoon model='virtio'><stats period='10'/></memballoon>" in device["remedy"]
    assert by_guest["no-balloon"] == {"no_balloon_device"}
    assert "stats_disabled" in by_guest["frozen"]
    assert f"dommemstat {uuids['frozen']} --period 10" in doc["_text"]
    over = assert_found(doc, "host_overcommitted", "warning", "7.0 GiB on 4.0 GiB", "1.75x")
    assert over["remedy"]
    # 3 GiB of 4 GiB reclaimed: critical by the rule's crit, one poll short of its `for`.
    reclaiming = assert_found(doc, "host_reclaiming", "critical", "3.0 GiB", "75.0%")
    assert "not yet been seen to hold for the rule's for (10m)" in reclaiming["message"]
    [host] = doc["hosts"]
    assert host["verdict"] == "critical" and host["fields"]["vms_total"] == 3
    assert "Hosts (capacity rule" in doc["_text"]


def test_libvirt_down_is_a_source_finding(tmp_path: Path) -> None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt-python is not installed")
    uri = f"test+unix://{tmp_path}/node.xml?socket={tmp_path}/no-such-socket"
    doc = explain_once(f'[agent]\ntimeout = "5s"\n[[sources.libvirt]]\nuri = "{uri}"\n')
    finding = assert_found(doc, "source_down", "warning", "did not answer")
    assert "virsh -c" in finding["remedy"] and "no-such-socket" in finding["remedy"]
    assert doc["vms"] == [] and doc["hosts"] == []
    assert doc["_exit"] == 1
