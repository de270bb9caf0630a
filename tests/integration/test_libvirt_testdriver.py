"""The libvirt source against libvirt's own test driver: in-process and served by libvirtd."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import LibvirtConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from tests.stack.common import unavailable
from tests.stack.libvirt_stack import DomainSpec, write_node_xml

pytestmark = pytest.mark.integration

try:
    import libvirt
except ImportError:  # pragma: no cover - the suite installs it
    libvirt = None

HOSTILE = [
    "web 01",
    "db,primary",
    'quote"d',
    "back\\slash",
    "trailing\\",
    "key=value",
    "ünïcødé-虚拟机",
    "#not-a-comment",
    " leading space",
]


def _source(uri: str, **overrides: Any) -> tuple[Any, io.StringIO]:
    if libvirt is None:
        unavailable("libvirt-python is not installed")
    from telegraf_balloon.sources.libvirt.source import LibvirtSource

    stream = io.StringIO()
    return LibvirtSource(LibvirtConfig(uri=uri, **overrides), Log(stream)), stream


def _by_guest(result: PollResult) -> dict[str, Any]:
    assert result.error is None, result.error
    out = {}
    for sample in result.samples:
        assert catalog.check_point(catalog.BALLOON, sample.tags, dict(sample.fields)) == []
        out[sample.tags["guest"]] = sample
    return out


@pytest.fixture(scope="module")
def node_xml(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DomainSpec]]:
    """A node with running, paused and shut-off domains, no balloon, periods 0 and N."""
    domains = [
        DomainSpec("run-virtio-p10", memory_kib=1048576, current_kib=786432, stats_period=10),
        DomainSpec("run-virtio-p0", memory_kib=2097152, current_kib=2097152, stats_period=0),
        DomainSpec("run-none", memory_kib=524288, memballoon="none"),
        DomainSpec("paused-vm", memory_kib=1048576, current_kib=524288, state="paused"),
        DomainSpec("off-vm", memory_kib=1048576, state="shutoff"),
    ]
    domains += [DomainSpec(name, memory_kib=262144, current_kib=131072) for name in HOSTILE]
    path = tmp_path_factory.mktemp("node") / "node.xml"
    write_node_xml(path, domains, host_memory_kib=8 * 1024 * 1024)
    return path, domains


def test_default_test_driver_matches_the_api() -> None:
    """test:///default: every value equals what libvirt's own calls say, in bytes."""
    source, _ = _source("test:///default")
    result = source.poll(1_700_000_000.0)
    vms = _by_guest(result)
    assert set(vms) == {"test"}
    fields = vms["test"].fields
    conn = libvirt.openReadOnly("test:///default")
    dom = conn.lookupByName("test")
    stats = dom.memoryStats()
    _state, max_kib, cur_kib = dom.info()[:3]
    assert fields["memory_max_bytes"] == max_kib * 1024
    assert fields["memory_current_bytes"] == cur_kib * 1024
    assert fields["balloon_actual_bytes"] == (max_kib - cur_kib) * 1024
    assert fields["guest_total_bytes"] == stats["available"] * 1024
    assert fields["guest_free_bytes"] == stats["unused"] * 1024
    assert fields["rss_bytes"] == stats["rss"] * 1024
    assert vms["test"].tags["uuid"] == dom.UUIDString()
    assert vms["test"].tags["hypervisor"] == "test"
    assert "balloon_target_bytes" not in fields  # libvirt has no target: never invented
    host = result.hosts[0]
    assert host.memory_bytes == conn.getInfo()[1] * 1024 * 1024
    assert host.tags["host"] == conn.getHostname()


def _check_node(result: PollResult, domains: list[DomainSpec]) -> None:
    vms = _by_guest(result)
    active = {d.name for d in domains if d.state != "shutoff"}
    assert set(vms) == active  # shut-off domains have no balloon: no line
    specs = {d.name: d for d in domains}
    for name, sample in vms.items():
        spec = specs[name]
        fields = sample.fields
        assert sample.tags["uuid"] == spec.uuid
        assert fields["memory_max_bytes"] == spec.memory_kib * 1024
        if spec.memballoon == "none":
            assert fields["inflation_blocked"] is True
            assert "stats_period_seconds" not in fields
            assert "stats_disabled" not in fields
        else:
            assert fields["memory_current_bytes"] == spec.current * 1024
            assert fields["balloon_actual_bytes"] == (spec.memory_kib - spec.current) * 1024
            assert fields["stats_period_seconds"] == spec.stats_period
            assert fields["stats_disabled"] is (spec.stats_period == 0)


def test_node_file_many_kinds_of_domain(node_xml: tuple[Path, list[DomainSpec]]) -> None:
    path, domains = node_xml
    source, log = _source(f"test://{path}")
    _check_node(source.poll(1_700_000_000.0), domains)
    assert "E! " not in log.getvalue()


def test_node_file_served_by_libvirtd(
    node_xml: tuple[Path, list[DomainSpec]], libvirt_stack: Any
) -> None:
    """The same node file through the daemon's RPC: same answers."""
    path, domains = node_xml
    source, _ = _source(libvirt_stack.test_uri(path))
    _check_node(source.poll(1_700_000_000.0), domains)


def test_domain_filter_globs(node_xml: tuple[Path, list[DomainSpec]]) -> None:
    path, _ = node_xml
    source, _ = _source(f"test://{path}", domains=("run-*", "paused-vm"))
    names = set(_by_guest(source.poll(1_700_000_000.0)))
    assert names == {"run-virtio-p10", "run-virtio-p0", "run-none", "paused-vm"}


def test_hostile_names_round_trip(node_xml: tuple[Path, list[DomainSpec]]) -> None:
    """Domain names are chosen by whoever creates the VM: every line stays valid."""
    import line_protocol_parser

    from telegraf_balloon import lineprotocol

    path, _ = node_xml
    source, _ = _source(f"test://{path}")
    result = source.poll(1_700_000_000.0)
    seen = set()
    for sample in result.samples:
        line = lineprotocol.format_line("balloon", sample.tags, sample.fields, 1)
        assert line is not None
        parsed = line_protocol_parser.parse_line(line)
        seen.add(parsed["tags"]["guest"])
    # Names line protocol can carry exactly come back exactly; the one with a lone trailing
    # backslash gets the documented '/' (a trailing backslash would escape the separator).
    expected = {n for n in HOSTILE if not n.endswith("\\")} | {"trailing/"}
    assert expected <= seen


def test_host_line_sums(node_xml: tuple[Path, list[DomainSpec]]) -> None:
    from telegraf_balloon.aggregate import host_lines

    path, domains = node_xml
    source, _ = _source(f"test://{path}")
    result = source.poll(1_700_000_000.0)
    [(tags, fields)] = host_lines(result.samples, result.hosts)
    active = [d for d in domains if d.state != "shutoff"]
    assert fields["vms_total"] == len(active)
    assert fields["memory_max_bytes"] == sum(d.memory_kib * 1024 for d in active)
    assert fields["host_memory_bytes"] == 8 * 1024**3
    assert fields["overcommit_ratio"] == fields["memory_max_bytes"] / (8 * 1024**3)
    assert fields["vms_blocked"] == 1
    assert tags["hypervisor"] == "test"


def test_connection_failure_is_a_down_poll_not_a_crash(tmp_path: Path) -> None:
    source, _ = _source(f"test+unix://{tmp_path}/node.xml?socket={tmp_path}/no-such-socket")
    result = source.poll(1_700_000_000.0)
    assert result.error is not None and result.samples == []
    assert "no-such-socket" in result.error or "connect" in result.error.lower()


def test_instance_never_shows_a_password() -> None:
    from telegraf_balloon.sources.libvirt.uri import redact_uri

    assert redact_uri("qemu+tcp://admin:s3cret@kvm1:16509/system") == (
        "qemu+tcp://admin@kvm1:16509/system"
    )
    assert redact_uri("qemu:///system") == "qemu:///system"


@pytest.mark.parametrize("undefine", [True, False], ids=["undefined", "shut-down"])
def test_domain_gone_between_bulk_call_and_its_stats(tmp_path: Path, undefine: bool) -> None:
    """The race is made real: right after the real bulk call returns, a domain is destroyed
    (and undefined) on the same connection, so libvirt's own error reaches the source."""
    path = tmp_path / "node.xml"
    write_node_xml(path, [DomainSpec("stays"), DomainSpec("goes")])
    source, log = _source(f"test://{path}", read_only=False)
    real_bulk = source._bulk

    def bulk_then_remove(conn: Any) -> Any:
        records = real_bulk(conn)
        dom = conn.lookupByName("goes")
        dom.destroy()
        if undefine:
            dom.undefine()
        return records

    source._bulk = bulk_then_remove  # type: ignore[method-assign]
    result = source.poll(1_700_000_000.0)
    assert result.error is None
    assert set(_by_guest(result)) == {"stays"}
    assert "E! " not in log.getvalue()


def test_keepalive_is_armed_on_daemon_connections(
    node_xml: tuple[Path, list[DomainSpec]], libvirt_stack: Any
) -> None:
    """Through the daemon, keepalive must really be set (a dead daemon is then noticed)."""
    from telegraf_balloon.sources.libvirt.source import LibvirtSource

    path, _ = node_xml
    stream = io.StringIO()
    config = LibvirtConfig(uri=libvirt_stack.test_uri(path), keepalive_interval=2)
    source = LibvirtSource(config, Log(stream, debug=True))
    assert source.poll(1_700_000_000.0).error is None
    assert "connected to" in stream.getvalue()
    assert "no keepalive" not in stream.getvalue(), stream.getvalue()
    source.close()


def test_password_never_reaches_errors_logs_or_tags() -> None:
    """A real failed connection with credentials in the URI: nothing shows the password."""
    from telegraf_balloon.sources.libvirt.uri import scrub

    uri = "qemu+tcp://monitor:s3cretPW@127.0.0.1:1/system"
    source, log = _source(uri)
    result = source.poll(1_700_000_000.0)
    assert result.error is not None
    for text in (result.error, source.instance, log.getvalue()):
        assert "s3cretPW" not in text
    assert scrub(f"cannot connect to '{uri}': refused", uri) == (
        "cannot connect to 'qemu+tcp://monitor:***@127.0.0.1:1/system': refused"
    )
    assert scrub("no secret here", "qemu:///system") == "no secret here"
