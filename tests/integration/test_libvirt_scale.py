"""The libvirt source at fleet scale: 50 real QEMU domains started paused, plus the booted guest,
on the session's real libvirtd.

Paused domains (QEMU's ``-S``) never boot but answer libvirt's stats calls over QMP like any
domain, so the chunked stats fetch meets libvirtd's real one-QEMU-after-another behaviour. A
``SIGSTOP`` on one QEMU is a real hung domain: libvirtd's call waits on its monitor for good.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import LibvirtConfig
from telegraf_balloon.log import Log
from tests.stack.inprocess import Plugin
from tests.stack.libvirt_stack import LibvirtStack, StackError

try:
    import libvirt
except ImportError:  # pragma: no cover - the suite installs it; libvirt_stack reports it
    libvirt = None

pytestmark = pytest.mark.integration

PAUSED = 50


def _source(uri: str, concurrency: int = 0) -> Any:
    from telegraf_balloon.sources.libvirt.source import LibvirtSource

    return LibvirtSource(LibvirtConfig(uri=uri, concurrency=concurrency), Log(io.StringIO()))


def _single_call(conn: Any) -> Any:
    stats = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_STATE
    flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
    return conn.getAllDomainStats(stats, flags | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)


@pytest.fixture(scope="module")
def paused(libvirt_stack: LibvirtStack, qemu_guest: str) -> Iterator[list[str]]:
    """PAUSED real QEMU domains next to the booted guest, removed after this module."""
    names = [f"scale-{i:03d}" for i in range(PAUSED)]
    try:
        libvirt_stack.start_paused(names)
    except StackError as exc:
        libvirt_stack.remove_domains(names)
        pytest.fail(f"paused domains did not start: {exc}")
    try:
        yield names
    finally:
        libvirt_stack.remove_domains(names)


def _toml(stack: LibvirtStack, timeout: str = "10s", source_extra: str = "") -> str:
    return (
        f'[agent]\ntimeout = "{timeout}"\n'
        f'[[sources.libvirt]]\nuri = "{stack.uri}"\n{source_extra}\n'
    )


def _vms(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        line["tags"]["guest"]: line["fields"] for line in lines if line["measurement"] == "balloon"
    }


def _collector(lines: list[dict[str, Any]]) -> dict[str, Any]:
    found = [line["fields"] for line in lines if line["measurement"] == catalog.COLLECTOR]
    assert len(found) == 1, lines
    return dict(found[0])


def _workers(source: Any) -> int:
    """How many stats worker threads the source has made (and not closed)."""
    return len(source._workers)


def _by_uuid(records: Any) -> dict[str, dict[str, Any]]:
    return {dom.UUIDString(): dict(stats) for dom, stats in records}


@pytest.mark.parametrize("concurrency", [0, 3])
def test_chunked_fetch_equals_the_single_call(
    libvirt_stack: LibvirtStack, qemu_guest: str, paused: list[str], concurrency: int
) -> None:
    """Same domains, same keys, same static values as one getAllDomainStats call."""
    source = _source(libvirt_stack.uri, concurrency)
    conn = libvirt.openReadOnly(libvirt_stack.uri)
    try:
        single = _by_uuid(_single_call(conn))
        chunked = _by_uuid(source._chunked(conn))
        threads = _workers(source)
        alive = [t for t in threading.enumerate() if t.name.startswith("libvirt-stats-")]
    finally:
        source.close()
        conn.close()
    assert len(single) == PAUSED + 1
    assert set(chunked) == set(single)
    for key, stats in single.items():
        assert set(chunked[key]) == set(stats), key
        for static in ("balloon.maximum", "balloon.current", "state.state"):
            assert chunked[key][static] == stats[static], (key, static)
    guest = [s for s in chunked.values() if "balloon.available" in s]
    assert len(guest) == 1  # the booted guest's full stats came through its chunk
    # the stats were fetched from concurrent calls: auto gives 4 chunks for 51 domains
    assert threads == (4 if concurrency == 0 else 3)
    assert len(alive) >= threads


def test_chunking_disabled_makes_one_bulk_call(
    libvirt_stack: LibvirtStack, qemu_guest: str, paused: list[str]
) -> None:
    one = Plugin(_toml(libvirt_stack, source_extra="concurrency = 1"))
    auto = Plugin(_toml(libvirt_stack))
    try:
        single = _vms(one.poll())
        assert _workers(one.sources[0]) == 0  # no worker: the poll thread makes the call
        chunked = _vms(auto.poll())
        assert _workers(auto.sources[0]) == 4
    finally:
        one.close()
        auto.close()
    assert set(single) == set(chunked) == {qemu_guest, *paused}
    for name, fields in single.items():
        assert set(fields) == set(chunked[name]), name
        assert fields["memory_max_bytes"] == chunked[name]["memory_max_bytes"]


class RacingConn:
    """The real connection, with domains destroyed between the list and the stats calls.

    The race is real (libvirt's own calls on a real daemon); only its timing is forced here,
    by running the destroys right after listAllDomains answered.
    """

    def __init__(self, conn: Any, race: Any) -> None:
        self._conn = conn
        self._race = race
        self.armed = False

    def listAllDomains(self, flags: int) -> Any:
        doms = self._conn.listAllDomains(flags)
        if self.armed:
            self.armed = False
            self._race()
        return doms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_domain_destroyed_mid_poll(
    libvirt_stack: LibvirtStack, qemu_guest: str, paused: list[str]
) -> None:
    victims = ["scale-victim-stopped", "scale-victim-gone"]
    libvirt_stack.start_paused(victims)
    rw = libvirt.open(libvirt_stack.uri)
    conn = libvirt.openReadOnly(libvirt_stack.uri)
    source = _source(libvirt_stack.uri)
    try:

        def race() -> None:
            rw.lookupByName(victims[0]).destroy()  # persistent: shut off, still defined
            gone = rw.lookupByName(victims[1])
            gone.undefine()
            gone.destroy()  # transient by then: no such domain any more

        racing = RacingConn(conn, race)
        source._conn = racing
        source._host_tags = {"host": "h", "source": "libvirt"}
        # first poll: the stats workers' connections know every domain, victims included
        warm = {s.tags["guest"] for s in source.poll(time.time()).samples}
        assert warm == {qemu_guest, *paused, *victims}
        racing.armed = True
        result = source.poll(time.time())
        assert not racing.armed
    finally:
        source.close()  # closes conn too
        rw.close()
        libvirt_stack.remove_domains(victims)
    assert result.error is None, result.error
    names = {s.tags["guest"] for s in result.samples}
    assert names == {qemu_guest, *paused}


def test_sigstopped_qemu_hides_no_other_domain(
    libvirt_stack: LibvirtStack, qemu_guest: str, paused: list[str]
) -> None:
    """A hung QEMU: the poll keeps its deadline and reports every other domain."""
    timeout = 4.0
    plugin = Plugin(_toml(libvirt_stack, timeout=f"{timeout:g}s"))
    victim = paused[len(paused) // 2]
    pid = libvirt_stack.guest_pid(victim)
    everyone = {qemu_guest, *paused}
    try:
        first = _vms(plugin.poll())  # connect, read every domain's XML
        assert set(first) == everyone and "rss_bytes" in first[victim]
        source = plugin.sources[0]
        threads = _workers(source)
        assert threads == 4
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(6):
                started = time.monotonic()
                lines = plugin.poll()
                took = time.monotonic() - started
                assert took < timeout, took
                assert _collector(lines)["up"] is True, plugin.log_stream.getvalue()
                vms = _vms(lines)
                # every other domain with its full stats; the stopped one with what libvirt
                # knows without asking its QEMU (no rss: that needs the domain's job)
                assert set(vms) == everyone, (len(vms), plugin.log_stream.getvalue())
                for name in everyone - {victim}:
                    assert "rss_bytes" in vms[name], name
                assert "rss_bytes" not in vms[victim]
                assert vms[victim]["memory_max_bytes"] == 128 * 1024 * 1024
                # the worker stuck on the hung call gets no new chunk: no thread piles up
                assert _workers(source) == threads
        finally:
            os.kill(pid, signal.SIGCONT)

        def back() -> bool:
            return "rss_bytes" in _vms(plugin.poll()).get(victim, {})

        deadline = time.monotonic() + 30
        while not back():
            assert time.monotonic() < deadline, plugin.log_stream.getvalue()
            time.sleep(0.5)
        assert _workers(source) == threads
    finally:
        plugin.close()


def test_host_memory_is_this_machines_memtotal(
    libvirt_stack: LibvirtStack, qemu_guest: str
) -> None:
    """A local URI reports /proc/meminfo's MemTotal, not libvirt's sum of NUMA nodes."""
    plugin = Plugin(_toml(libvirt_stack))
    try:
        lines = plugin.poll()
    finally:
        plugin.close()
    with open("/proc/meminfo") as f:
        memtotal = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    hosts = [line["fields"] for line in lines if line["measurement"] == catalog.HOST]
    assert len(hosts) == 1, lines
    assert hosts[0]["host_memory_bytes"] == memtotal * 1024


def test_every_worker_stuck_fails_the_poll_until_one_returns(
    libvirt_stack: LibvirtStack, qemu_guest: str, paused: list[str]
) -> None:
    """Two stopped QEMUs, one in each of two pinned slices: no worker is left to fetch again.

    The poll still keeps its deadline (the slices' domains are left out, with a W! line);
    the next poll fails saying why, without making threads; after SIGCONT all is back.
    """
    timeout = 4.0
    plugin = Plugin(_toml(libvirt_stack, timeout=f"{timeout:g}s", source_extra="concurrency = 2"))
    with libvirt_stack.connection(readonly=True) as conn:
        order = [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    ours = [name for name in order if name in paused]
    victims = [ours[0], ours[-1]]  # the first slice's, the last slice's
    assert order.index(victims[0]) < len(order) // 2 <= order.index(victims[1])
    pids = [libvirt_stack.guest_pid(name) for name in victims]
    everyone = {qemu_guest, *paused}
    try:
        assert set(_vms(plugin.poll())) == everyone
        source = plugin.sources[0]
        assert _workers(source) == 2
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            lines = plugin.poll()
            assert time.monotonic() - started < timeout
            assert _collector(lines)["up"] is True
            assert "left out of this poll" in plugin.log_stream.getvalue()
            lines = plugin.poll()
            collector = _collector(lines)
            assert collector["up"] is False, collector
            assert "still waits on a call" in plugin.log_stream.getvalue()
            assert _workers(source) == 2
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

        def back() -> bool:
            vms = _vms(plugin.poll())
            return set(vms) == everyone and all("rss_bytes" in vms[v] for v in victims)

        deadline = time.monotonic() + 30
        while not back():
            assert time.monotonic() < deadline, plugin.log_stream.getvalue()
            time.sleep(0.5)
        assert _workers(source) == 2
    finally:
        plugin.close()
