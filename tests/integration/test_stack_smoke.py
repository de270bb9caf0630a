"""Smoke tests of the libvirt stack (tests/stack/libvirt_daemon.py, guest_image.py, node_xml.py):
the stack the integration tests stand on.

* node XML files with 50 mixed (and hostile) domains load in the test driver, directly and
  through the private libvirtd;
* a real TCG guest boots, reports balloon stats, inflates when told and shows it on its
  console;
* SIGKILLing libvirtd leaves the guest running, and a restarted daemon sees it again.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.stack.common import unavailable
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.node_xml import DomainSpec, DomainState, write_node_xml

pytestmark = pytest.mark.integration

GUEST_MIB = 512
PAGE_KIB = 4

HOSTILE = [
    "plain",
    "with space",
    "com,ma",
    "quo'te",
    'dq"uote',
    "back\\slash",
    "eq=ual",
    "#leading-hash",
    "ünïcødé-日本-🎈",
    "<lt>&amp;",
    "a;b|c$HOME",
    " lead and trail ",
    "tab\there",
    "name=x,tag=y z",
]


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as e:
        unavailable(f"the libvirt Python binding is missing (pip install libvirt-python): {e}")
    return libvirt


def mixed_domains(n: int = 50) -> List[DomainSpec]:
    """n domains: hostile names first, all three states, some without a balloon."""
    specs = []
    states: Tuple[DomainState, ...] = ("running", "paused", "shutoff")
    for i in range(n):
        name = HOSTILE[i] if i < len(HOSTILE) else f"vm{i:04d}"
        memory = 1048576 + (i % 4) * 262144
        specs.append(
            DomainSpec(
                name=name,
                uuid=str(uuid.UUID(int=0x5EED0000 + i)),
                memory_kib=memory,
                current_kib=memory - (i % 5) * 65536,
                state=states[i % 3],
                memballoon="none" if i % 7 == 3 else "virtio",
                stats_period=(i % 3) * 5,
            )
        )
    return specs


STATE_CODES = {"running": 1, "paused": 3, "shutoff": 5}


def check_node(conn: Any, specs: List[DomainSpec]) -> None:
    doms = {d.name(): d for d in conn.listAllDomains(0)}
    assert sorted(doms) == sorted(s.name for s in specs)
    for s in specs:
        dom = doms[s.name]
        state, max_kib, mem_kib = dom.info()[:3]
        assert state == STATE_CODES[s.state], s.name
        assert dom.UUIDString() == s.uuid
        assert max_kib == s.memory_kib
        assert mem_kib == s.current
        if s.state == "shutoff":
            assert not dom.isActive()
            continue
        stats = dom.memoryStats()
        if s.memballoon == "virtio":
            assert stats.get("actual") == s.current, (s.name, stats)
        else:
            assert stats == {}, (s.name, stats)


def test_node_xml_loads_in_test_driver(tmp_path: Path) -> None:
    libvirt = _libvirt()
    specs = mixed_domains(50)
    assert {s.state for s in specs} == {"running", "paused", "shutoff"}
    assert {s.memballoon for s in specs} == {"virtio", "none"}
    node = tmp_path / "node.xml"
    write_node_xml(node, specs, host_memory_kib=32 * 1024 * 1024)
    conn = libvirt.open(f"test://{node}")
    try:
        check_node(conn, specs)
        assert conn.getInfo()[1] == 32 * 1024  # MiB
    finally:
        conn.close()


def test_node_xml_with_no_domains(tmp_path: Path) -> None:
    libvirt = _libvirt()
    node = tmp_path / "empty.xml"
    write_node_xml(node, [])
    conn = libvirt.open(f"test://{node}")
    try:
        assert conn.listAllDomains(0) == []
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# the private libvirtd and a real guest
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def stack(libvirt_stack: LibvirtStack) -> LibvirtStack:
    """The session's one daemon (tests/stack/fixtures.py)."""
    return libvirt_stack


@pytest.fixture()
def guest(qemu_guest: str) -> str:
    """The session's one QEMU guest (512 MiB, virtio balloon)."""
    return qemu_guest


def wait_actual(stack: LibvirtStack, name: str, kib: int, timeout: float = 60) -> Dict[str, int]:
    deadline = time.monotonic() + timeout
    with stack.connection(readonly=True) as conn:
        dom = conn.lookupByName(name)
        while True:
            stats: Dict[str, int] = dom.memoryStats()
            if stats.get("actual") == kib:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"balloon actual {stats.get('actual')} != {kib} after {timeout} s\n"
                    + stack.diagnostics(name)
                )
            time.sleep(0.2)


def test_node_xml_through_daemon(stack: LibvirtStack, tmp_path: Path) -> None:
    libvirt = _libvirt()
    specs = mixed_domains(50)
    node = tmp_path / "node.xml"
    write_node_xml(node, specs)
    uri = stack.test_uri(node)
    assert uri.startswith("test+unix:///")
    conn = libvirt.openReadOnly(uri)
    try:
        check_node(conn, specs)
    finally:
        conn.close()


def test_guest_reports_stats(stack: LibvirtStack, guest: str) -> None:
    libvirt = _libvirt()
    stats = stack.wait_guest_stats(guest, timeout=60)
    assert stats["actual"] == GUEST_MIB * 1024
    assert 0 < stats["usable"] <= stats["available"] <= stats["actual"]
    assert stats["last_update"] > 0
    with stack.connection(readonly=True) as conn:
        bulk = dict(conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_BALLOON))
        (dom,) = [d for d in bulk if d.name() == guest]
        assert bulk[dom]["balloon.current"] == GUEST_MIB * 1024
        assert bulk[dom]["balloon.maximum"] == GUEST_MIB * 1024
    # The guest's stats (every stats period) and its console (every second) settle on the
    # same MemTotal; right after an earlier test moved the shared balloon they may lag apart.
    deadline = time.monotonic() + 30
    while True:
        snap = stack.wait_console(guest, lambda s: "balloon_inflate" in s, timeout=30)
        stats = stack.wait_guest_stats(guest, timeout=60)
        if snap["MemTotal"] == stats["available"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert snap["MemTotal"] == stats["available"]
    for key in ("MemFree", "MemAvailable", "balloon_deflate", "pswpin", "nr_free_pages"):
        assert key in snap


def test_balloon_inflate_shows_in_libvirt_and_guest(stack: LibvirtStack, guest: str) -> None:
    libvirt = _libvirt()
    before = stack.console_snapshot(guest)
    held = before["balloon_inflate"] - before["balloon_deflate"]
    target = 256 * 1024
    pages = (GUEST_MIB * 1024 - target) // PAGE_KIB  # 65536 pages of 4 KiB
    try:
        with stack.connection() as conn:
            conn.lookupByName(guest).setMemory(target)
        wait_actual(stack, guest, target)
        with stack.connection(readonly=True) as conn:
            dom = conn.lookupByName(guest)
            # balloon.current and info()[2] follow QEMU's BALLOON_CHANGE events (rate-limited
            # to one a second), memoryStats()["actual"] asks QEMU: they agree a moment later
            deadline = time.monotonic() + 15
            while True:
                ((_, bulk),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_BALLOON)
                if bulk["balloon.current"] == target and dom.info()[2] == target:
                    break
                assert time.monotonic() < deadline, (bulk, dom.info())
                time.sleep(0.2)
        after = stack.wait_console(
            guest,
            lambda s: s["balloon_inflate"] - s["balloon_deflate"] - held >= pages * 0.95,
            timeout=60,
        )
        grown = after["balloon_inflate"] - after["balloon_deflate"] - held
        assert pages * 0.95 <= grown <= pages * 1.05, grown
        assert before["MemTotal"] - after["MemTotal"] == pytest.approx(target, rel=0.05)
        stats = stack.wait_guest_stats(guest)
        deadline = time.monotonic() + 30
        while stats["available"] != after["MemTotal"] and time.monotonic() < deadline:
            time.sleep(0.5)
            stats = stack.wait_guest_stats(guest)
        assert stats["available"] == after["MemTotal"]
    finally:
        with stack.connection() as conn:
            conn.lookupByName(guest).setMemory(GUEST_MIB * 1024)
        wait_actual(stack, guest, GUEST_MIB * 1024)
    back = stack.wait_console(
        guest, lambda s: s["balloon_inflate"] - s["balloon_deflate"] == held, timeout=60
    )
    assert back["MemTotal"] == before["MemTotal"]


def test_daemon_restart_keeps_guest(stack: LibvirtStack, guest: str) -> None:
    libvirt = _libvirt()
    qemu = stack.guest_pid(guest)
    with stack.connection(readonly=True) as conn:
        dom_id = conn.lookupByName(guest).ID()
    stack.kill_daemon()
    assert stack.daemon_pid is None
    assert os.path.exists(f"/proc/{qemu}"), "QEMU died with libvirtd"
    with pytest.raises(libvirt.libvirtError):
        libvirt.openReadOnly(stack.uri)
    console_before = stack.console_snapshot(guest)
    stack.wait_console(guest, lambda s: True, timeout=30)  # still printing
    stack.start_daemon()
    assert stack.guest_pid(guest) == qemu
    with stack.connection() as conn:
        dom = conn.lookupByName(guest)
        assert dom.isActive() and dom.ID() == dom_id
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        first = dom.memoryStats()
        deadline = time.monotonic() + 30
        while dom.memoryStats()["last_update"] <= first["last_update"]:
            assert time.monotonic() < deadline, "guest stats stopped after the restart"
            time.sleep(0.3)
        # the new daemon drives the balloon: the monitor connection is really back
        dom.setMemory(384 * 1024)
    try:
        wait_actual(stack, guest, 384 * 1024)
    finally:
        with stack.connection() as conn:
            conn.lookupByName(guest).setMemory(GUEST_MIB * 1024)
        wait_actual(stack, guest, GUEST_MIB * 1024)
    stack.wait_console(guest, lambda s: s["MemTotal"] == console_before["MemTotal"], timeout=60)
