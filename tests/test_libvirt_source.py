"""The libvirt source without libvirtd: through its connect seam, a fake connection.

The fake (tests/fakes/libvirt_conn.py) answers with what a real libvirtd answered
(tests/fixtures/libvirt/SOURCE.md) and raises libvirt's own errors with the codes libvirtd
uses, for the faults a real daemon cannot be made to produce on demand: a daemon older
than the NOWAIT flag, a domain gone at one exact moment of a poll. The same paths against
the real daemon are in tests/integration/test_libvirt_*.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Optional

import libvirt  # the binding is a test dependency: make setup installs it
import pytest

from telegraf_balloon.config import LibvirtConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from telegraf_balloon.sources.libvirt.source import LibvirtSource
from telegraf_balloon.sources.libvirt.stats import NOWAIT
from tests.fakes.libvirt_conn import DomainCalls, FakeConnection, Recording

SESSION = json.loads(
    (Path(__file__).parent / "fixtures/libvirt/qemu-tcg-virtio-balloon-session.json").read_text()
)
KIB = 1024
T0 = 1_700_000_000.0
ACTIVE = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
UUIDS = {
    "web-01": "9b80c8bf-8be2-4fe2-889f-f8d3e0c0b06d",
    "db-01": "2f1d6c3e-6a43-4b1e-a6c1-0c7a3c2b9f10",
    "cache-01": "6e0b7a52-1d7e-4c8f-9a3b-5f2e8d1c4a77",
}
VIRTIO_P2 = "<memballoon model='virtio'><stats period='2'/></memballoon>"
# The test driver's bulk record: no balloon keys (libvirt 9.0), so memoryStats() per domain.
STATE_ONLY = {"state.state": 1, "state.reason": 1}


def domain_xml(name: str, memballoon: str = VIRTIO_P2, memory: Optional[int] = 524288) -> str:
    size = "" if memory is None else f"<memory unit='KiB'>{memory}</memory>"
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{UUIDS[name]}</uuid>{size}"
        f"<devices>{memballoon}</devices></domain>"
    )


def domain(name: str, domain_id: int = 1, xml: Optional[str] = None) -> DomainCalls:
    """The real guest's answers (its memoryStats and info), under this name."""
    return {
        "name": name,
        "UUIDString": UUIDS[name],
        "ID": domain_id,
        "XMLDesc": domain_xml(name) if xml is None else xml,
        "memoryStats": dict(SESSION["guest_stats"]),
        "info": list(SESSION["info"]),
    }


def fake(*domains: tuple[DomainCalls, dict[str, Any]]) -> FakeConnection:
    host = {
        "getHostname": "kvm1",
        "getInfo": ["x86_64", 65536, 16, 2400, 1, 2, 8, 1],  # memory in MiB
        "getType": "QEMU",
        "getFreeMemory": 40 * 1024**3,
    }
    return FakeConnection(Recording(host=host, domains=list(domains)))


def real_bulk() -> dict[str, Any]:
    return dict(SESSION["getAll_balloon"]["balloon-tcg"])


class Opened:
    """The connect seam, counting what it was asked for."""

    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.asked: list[tuple[str, bool]] = []

    def __call__(self, uri: str, read_only: bool) -> FakeConnection:
        self.asked.append((uri, read_only))
        return self.conn


def remote_source(
    connect: Callable[[str, bool], FakeConnection], **overrides: Any
) -> tuple[LibvirtSource, io.StringIO]:
    """A source on a remote host (its host line from libvirt), one bulk call a poll; its log."""
    settings: dict[str, Any] = {
        "uri": "qemu+ssh://kvm1/system",
        "keepalive_interval": 0,
        "concurrency": 1,
    }
    settings.update(overrides)
    stream = io.StringIO()
    return LibvirtSource(LibvirtConfig(**settings), Log(stream), connect=connect), stream


def source(conn: FakeConnection, **overrides: Any) -> tuple[LibvirtSource, io.StringIO, Opened]:
    """A remote source (:func:`remote_source`) through a counting seam."""
    opened = Opened(conn)
    made, stream = remote_source(opened, **overrides)
    # A remote URI says once, at start, that the host's reclaim figures are not readable from
    # here: that line is checked once here, and the tests below see what comes after it.
    start = stream.getvalue().splitlines()
    assert len(start) == 1 and start[0].startswith(f"I! libvirt {made.config.uri}: a remote URI")
    stream.seek(0)
    stream.truncate()
    return made, stream, opened


def fields_by_guest(result: PollResult) -> dict[str, dict[str, Any]]:
    assert result.error is None, result.error
    return {s.tags["guest"]: dict(s.fields) for s in result.samples}


def stats_calls(conn: FakeConnection) -> list[int]:
    """The flags of every stats call made so far."""
    return [
        flags
        for method, flags in conn.calls
        if method in ("getAllDomainStats", "domainListGetStats")
    ]


# -- the seam --


def test_every_connection_goes_through_the_seam() -> None:
    """The source's own connection and each stats worker's, with the configured mode."""
    conn = fake((domain("web-01"), real_bulk()), (domain("db-01", 2), real_bulk()))
    made, _, opened = source(conn, concurrency=2, read_only=False)
    try:
        assert set(fields_by_guest(made.poll(T0))) == {"web-01", "db-01"}
    finally:
        made.close()
    assert opened.asked == [("qemu+ssh://kvm1/system", False)] * 3  # the source + 2 workers
    assert len(made.stats.workers) == 0  # closed


def test_a_poll_from_recorded_answers() -> None:
    conn = fake((domain("web-01"), real_bulk()))
    made, log, _ = source(conn)
    result = made.poll(SESSION["guest_stats"]["last_update"] + 3.0)
    fields = fields_by_guest(result)["web-01"]
    assert fields["memory_max_bytes"] == 524288 * KIB
    assert fields["guest_free_bytes"] == 452332 * KIB
    assert fields["rss_bytes"] == 232732 * KIB
    assert fields["stats_age_seconds"] == 3.0
    assert fields["stats_period_seconds"] == 2
    assert result.samples[0].tags == {
        "host": "kvm1",
        "source": "libvirt",
        "guest": "web-01",
        "uuid": UUIDS["web-01"],
        "hypervisor": "kvm",
    }
    [host] = result.hosts
    assert (host.memory_bytes, host.free_bytes) == (65536 * 1024**2, 40 * 1024**3)
    assert log.getvalue() == ""


# -- NOWAIT --


@pytest.mark.parametrize("code", ["VIR_ERR_INVALID_ARG", "VIR_ERR_NO_SUPPORT"])
def test_a_daemon_refusing_nowait_is_asked_again_without_and_remembered(code: str) -> None:
    conn = fake((domain("web-01"), real_bulk()))
    conn.fail("getAllDomainStats", getattr(libvirt, code), flags=NOWAIT)
    made, log, _ = source(conn)
    assert set(fields_by_guest(made.poll(T0))) == {"web-01"}
    assert stats_calls(conn) == [ACTIVE | NOWAIT, ACTIVE]
    assert set(fields_by_guest(made.poll(T0 + 10))) == {"web-01"}
    assert stats_calls(conn) == [ACTIVE | NOWAIT, ACTIVE, ACTIVE]  # not asked again
    assert log.getvalue() == ""


def test_another_error_with_nowait_fails_the_poll_and_nowait_stays() -> None:
    conn = fake((domain("web-01"), real_bulk()))
    conn.fail("getAllDomainStats", libvirt.VIR_ERR_INTERNAL_ERROR, flags=NOWAIT)
    made, _, _ = source(conn)
    result = made.poll(T0)
    assert result.error is not None and "refused with code" in result.error
    assert result.samples == []
    assert stats_calls(conn) == [ACTIVE | NOWAIT]  # no retry without the flag
    assert made.stats.nowait == NOWAIT
    assert conn.closed  # dropped: the next poll reconnects


def test_chunked_fetch_refused_nowait_fails_one_poll_then_does_without() -> None:
    conn = fake((domain("web-01"), real_bulk()), (domain("db-01", 2), real_bulk()))
    conn.fail("domainListGetStats", libvirt.VIR_ERR_NO_SUPPORT, flags=NOWAIT)
    made, _, _ = source(conn, concurrency=2)
    try:
        assert made.poll(T0).error is not None
        assert made.stats.nowait == 0
        assert set(fields_by_guest(made.poll(T0 + 10))) == {"web-01", "db-01"}
    finally:
        made.close()
    # poll 1 asked for its two slices with NOWAIT (the second one's answer may come after
    # poll 1 gave up on it); poll 2 without
    calls = stats_calls(conn)
    assert ACTIVE in calls and calls.count(ACTIVE | NOWAIT) <= 2, calls


# -- the per-domain fallback --


def test_no_balloon_keys_in_the_bulk_record_asks_the_domain() -> None:
    """memoryStats() fills the record; the maximum comes from the XML's <memory>, not info()."""
    conn = fake((domain("web-01"), dict(STATE_ONLY)))
    conn.domain("web-01").fail("info", libvirt.VIR_ERR_INTERNAL_ERROR)  # must not be asked
    made, _, _ = source(conn)
    stats = SESSION["guest_stats"]
    fields = fields_by_guest(made.poll(stats["last_update"] + 1.0))["web-01"]
    assert fields["memory_max_bytes"] == 524288 * KIB
    assert fields["memory_current_bytes"] == stats["actual"] * KIB
    assert fields["guest_total_bytes"] == stats["available"] * KIB
    assert fields["guest_free_bytes"] == stats["unused"] * KIB
    assert fields["guest_available_bytes"] == stats["usable"] * KIB
    assert fields["minor_faults_total"] == stats["minor_fault"]
    assert fields["rss_bytes"] == stats["rss"] * KIB
    assert fields["stats_age_seconds"] == 1.0


def test_fallback_without_memory_in_the_xml_asks_info() -> None:
    calls = domain("web-01", xml=domain_xml("web-01", memory=None))
    calls["info"] = SESSION["inflate_to_256MiB"]["info_after"]
    made, _, _ = source(fake((calls, dict(STATE_ONLY))))
    fields = fields_by_guest(made.poll(T0))["web-01"]
    assert fields["memory_max_bytes"] == 524288 * KIB  # info()[1]


def test_fallback_without_a_balloon_device_takes_current_from_info() -> None:
    calls = domain("web-01", xml=domain_xml("web-01", "<memballoon model='none'/>"))
    calls["memoryStats"] = {}
    calls["info"] = SESSION["inflate_to_256MiB"]["info_after"]  # memory 262144 KiB
    made, _, _ = source(fake((calls, dict(STATE_ONLY))))
    fields = fields_by_guest(made.poll(T0))["web-01"]
    assert fields["memory_current_bytes"] == 262144 * KIB
    assert fields["balloon_actual_bytes"] == (524288 - 262144) * KIB
    assert fields["inflation_blocked"] is True
    assert "stats_period_seconds" not in fields


# -- domain XML --


def test_malformed_xml_is_one_warning_and_the_domain_is_still_reported() -> None:
    bad = domain("web-01", xml="<domain type='kvm'><devices>")
    made, log, _ = source(fake((bad, real_bulk()), (domain("db-01", 2), real_bulk())))
    for poll in range(3):
        fields = fields_by_guest(made.poll(T0 + 10 * poll))
        assert set(fields) == {"web-01", "db-01"}
        assert fields["web-01"]["memory_max_bytes"] == 524288 * KIB  # from the stats
        assert "stats_period_seconds" not in fields["web-01"]  # the XML said nothing
    lines = log.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("W! libvirt: domain 'web-01': bad XML: ")
    assert fields["web-01"]["inflation_blocked"] is False


def test_a_size_the_xml_gets_wrong_is_skipped_with_a_warning() -> None:
    xml = domain_xml("web-01").replace(
        "<devices>", "<memtune><hard_limit unit='parsecs'>4</hard_limit></memtune><devices>"
    )
    made, log, _ = source(fake((domain("web-01", xml=xml), real_bulk())))
    fields = fields_by_guest(made.poll(T0))["web-01"]
    assert "limit_bytes" not in fields and fields["stats_period_seconds"] == 2
    assert log.getvalue() == (
        "W! libvirt: domain 'web-01': skipped <memtune/hard_limit> has an unknown unit 'parsecs'\n"
    )


def test_the_xml_fault_of_a_domain_that_left_is_cleared_quietly() -> None:
    """A bad-XML warning is for a domain that runs: when it stops, the fault goes with it,
    without a line; if it comes back still bad, it is said again."""
    bad = domain("web-01", xml="<domain type='kvm'><devices>")
    conn = fake((bad, real_bulk()), (domain("db-01", 2), real_bulk()))
    made, log, _ = source(conn)
    made.poll(T0)
    assert made.log.faults() == 1
    left = conn.records.pop(0)
    assert set(fields_by_guest(made.poll(T0 + 10))) == {"db-01"}
    assert made.log.faults() == 0
    assert len(log.getvalue().splitlines()) == 1  # the warning only: cleared quietly
    conn.records.append(left)
    made.poll(T0 + 20)
    assert log.getvalue().count("W! libvirt: domain 'web-01': bad XML") == 2


# -- the re-read policy, as the source applies it --


def test_the_xml_is_read_once_per_domain_start_and_refresh() -> None:
    conn = fake((domain("web-01"), real_bulk()))
    made, _, _ = source(conn, refresh_interval=300.0)
    dom = conn.domain("web-01")
    last = SESSION["guest_stats"]["last_update"]
    for t in range(0, 60, 10):
        made.poll(last + t * 0.01)  # stats flowing: never frozen
    assert dom.xml_reads == 1
    dom.answers["ID"] = 7  # the domain restarted
    made.poll(last + 1.0)
    assert dom.xml_reads == 2
    made.poll(last + 1.0 + 300.0)  # refresh_interval later (stats then look frozen too)
    assert dom.xml_reads == 3


def test_a_restart_forgets_what_was_learnt_of_the_last_start() -> None:
    conn = fake((domain("web-01"), real_bulk()))
    made, _, _ = source(conn)
    last = SESSION["guest_stats"]["last_update"]
    assert "stats_age_seconds" in fields_by_guest(made.poll(last + 1.0))["web-01"]
    conn.domain("web-01").answers["ID"] = 2
    conn.records[0] = (conn.records[0][0], {"balloon.current": 1, "balloon.maximum": 1})
    assert "stats_age_seconds" not in fields_by_guest(made.poll(last + 2.0))["web-01"]


# -- a domain gone between the bulk call and the next --


@pytest.mark.parametrize(
    ("method", "bulk"),
    [("XMLDesc", "real"), ("memoryStats", "state only")],
)
@pytest.mark.parametrize("code", ["VIR_ERR_NO_DOMAIN", "VIR_ERR_OPERATION_INVALID"])
def test_a_domain_gone_after_the_bulk_call_is_left_out_quietly(
    method: str, bulk: str, code: str
) -> None:
    record = real_bulk() if bulk == "real" else dict(STATE_ONLY)
    conn = fake((domain("web-01"), dict(record)), (domain("db-01", 2), dict(record)))
    conn.domain("web-01").fail(method, getattr(libvirt, code))
    made, log, _ = source(conn)
    assert set(fields_by_guest(made.poll(T0))) == {"db-01"}
    assert log.getvalue() == ""


def test_another_error_of_a_domain_call_fails_the_poll() -> None:
    conn = fake((domain("web-01"), real_bulk()), (domain("db-01", 2), real_bulk()))
    conn.domain("db-01").fail("XMLDesc", libvirt.VIR_ERR_INTERNAL_ERROR)
    made, _, _ = source(conn)
    result = made.poll(T0)
    assert result.error is not None and "XMLDesc" in result.error
    assert result.samples == []
