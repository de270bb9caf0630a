"""virtio-mem without a hypervisor: what each source reads of it, the health stage's
vmem_stuck, the host count, and the guest kernel's messages.

The libvirt answers are a real libvirtd's (tests/fixtures/libvirt/qemu-tcg-virtio-mem.json),
replayed through the fake connection; the guest trees are real captures (the
tests/fixtures/guest/virtio-mem-6.1-* cases, run by tests/test_guest_fixtures.py). The QMP
peer here is a stand-in: it sends what a real QEMU never does (a virtio-mem device with
members missing or of the wrong type). The same paths against real QEMU and libvirtd are in
tests/integration/test_vmem.py.
"""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from telegraf_balloon.aggregate import host_lines
from telegraf_balloon.config import HealthConfig, QmpConfig
from telegraf_balloon.health import GRACE_POLLS, Health
from telegraf_balloon.log import Log
from telegraf_balloon.model import Fields, HostInfo, Sample
from telegraf_balloon.sources.guest.parsers import Malformed, parse_hex, parse_vmem_iomem
from telegraf_balloon.sources.libvirt.domainxml import DomainFacts, parse_domain_xml, update_vmem
from telegraf_balloon.sources.libvirt.fields import domain_fields
from telegraf_balloon.sources.libvirt.reread import needs_xml
from telegraf_balloon.sources.logs.events import compile_events, count_events
from telegraf_balloon.sources.logs.kmsg import KMSG_TAG
from telegraf_balloon.sources.qmp.protocol import VMEM_RECHECK_POLLS
from telegraf_balloon.sources.qmp.replies import ProtocolError, memory_devices
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.fakes.qmp_peer import QmpPeer
from tests.test_logs_kmsg import _counts as kmsg_counts
from tests.test_logs_kmsg import _source as kmsg_source
from tests.test_logs_kmsg import kernel_log  # noqa: F401  (the fixture: /dev/kmsg or a stand-in)

MIB = 1024 * 1024
KIB = 1024
T0 = 1_700_000_000.0
FIXTURES = Path(__file__).parent / "fixtures"
LIBVIRT = json.loads((FIXTURES / "libvirt" / "qemu-tcg-virtio-mem.json").read_text())


def vmem_device(**data: Any) -> dict[str, Any]:
    """One entry of query-memory-devices, as QEMU 7.2 answered it (bytes)."""
    full = {
        "memdev": "/objects/vmem0-mem",
        "memaddr": 4294967296,
        "block-size": 2 * MIB,
        "size": 256 * MIB,
        "node": 0,
        "max-size": 512 * MIB,
        "requested-size": 256 * MIB,
        "id": "vmem0",
    }
    full.update(data)
    return {"type": "virtio-mem", "data": {k: v for k, v in full.items() if v is not None}}


# --- QMP: query-memory-devices ---------------------------------------------------------------


def test_memory_devices_sums_the_virtio_mem_devices_and_ignores_the_others() -> None:
    dimm = {"type": "dimm", "data": {"size": 1024 * MIB, "id": "dimm0"}}
    vmem, problems = memory_devices(
        [
            vmem_device(),
            dimm,
            vmem_device(id="vmem1", size=0, **{"requested-size": 64 * MIB, "block-size": 4 * MIB}),
        ]
    )
    assert problems == [] and vmem is not None
    assert (vmem.plugged, vmem.requested, vmem.maximum, vmem.block) == (
        256 * MIB,
        320 * MIB,
        1024 * MIB,
        4 * MIB,
    )
    assert vmem.worst.name == "vmem1" and vmem.worst.plugged == 0  # the one off its request
    assert memory_devices([dimm]) == (None, [])
    assert memory_devices([]) == (None, [])


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        (vmem_device(size=None), "no size"),
        (vmem_device(**{"requested-size": "256M"}), "requested-size is '256M', not an integer"),
        (vmem_device(**{"max-size": True}), "max-size is true"),
        (vmem_device(**{"block-size": -2}), "block-size is -2, out of range"),
        (vmem_device(size=2**60), "out of range"),
        (vmem_device(id=7), "id is 7, not a string"),
        ({"type": "virtio-mem", "data": [1]}, "not an object"),
        ({"type": "virtio-mem"}, "null, not an object"),
    ],
)
def test_a_malformed_virtio_mem_device_is_skipped_and_named(
    device: dict[str, Any], fragment: str
) -> None:
    vmem, problems = memory_devices([device, vmem_device(id="good")])
    assert vmem is not None and vmem.devices == 1 and vmem.worst.name == "good"
    [problem] = problems
    assert problem.startswith("virtio-mem device 0") and fragment in problem, problem


def test_a_reply_that_is_not_an_array_is_not_qemu() -> None:
    with pytest.raises(ProtocolError, match="query-memory-devices: returned an object"):
        memory_devices({"size": 1})


class StandInQmp(QmpPeer):
    """A QMP peer answering as QEMU 7.2 does, with the memory devices it is given (a stand-in:
    real QEMU never sends a virtio-mem device with members missing or of the wrong type)."""

    capabilities = ("oob",)

    def __init__(self, path: Path, devices: list[Any]) -> None:
        self.devices = devices
        self.balloon_actual = 384 * MIB
        super().__init__(str(path))

    def answer(self, message: dict[str, Any]) -> Any:
        prop = message.get("arguments", {}).get("property")
        if prop == "guest-stats":
            return {"stats": {}, "last-update": 0}
        if prop == "guest-stats-polling-interval":
            return 0
        plugged = sum(
            d["data"]["size"]
            for d in self.devices
            if isinstance(d.get("data"), dict) and isinstance(d["data"].get("size"), int)
        )
        return {
            "query-name": {"name": "web"},
            "query-uuid": {"UUID": "5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10"},
            "query-kvm": {"enabled": True, "present": True},
            # QEMU counts virtio-mem's plugged memory here, and not in query-balloon
            "query-memory-size-summary": {"base-memory": 384 * MIB, "plugged-memory": plugged},
            "query-memory-devices": self.devices,
            "query-balloon": {"actual": self.balloon_actual},
        }.get(message["execute"], {})


@pytest.fixture()
def stand_in(tmp_path: Path) -> Iterator[tuple[StandInQmp, QmpSource, io.StringIO]]:
    peer = StandInQmp(tmp_path / "101.qmp", [vmem_device()])
    stream = io.StringIO()
    config = QmpConfig(sockets=(f"{tmp_path}/*.qmp",), proxmox_config="")
    try:
        yield peer, QmpSource(config, "kvm-1", Log(stream)), stream
    finally:
        peer.close()


def one_vm(source: QmpSource, now: float = T0) -> Fields:
    result = source.poll(now)
    assert result.error is None, result.error
    [sample] = result.samples
    return sample.fields


def test_qmp_virtio_mem_memory_is_not_the_balloons(
    stand_in: tuple[StandInQmp, QmpSource, io.StringIO],
) -> None:
    """384 MiB boot memory, 256 MiB plugged, no balloon inflated: query-memory-size-summary
    says 640 MiB and query-balloon 384 MiB, yet the balloon holds nothing."""
    peer, source, _ = stand_in
    fields = one_vm(source)
    assert fields["memory_max_bytes"] == fields["memory_current_bytes"] == 640 * MIB
    assert fields["balloon_actual_bytes"] == 0
    assert fields["vmem_plugged_bytes"] == fields["vmem_requested_bytes"] == 256 * MIB
    assert fields["vmem_max_bytes"] == 512 * MIB and fields["vmem_block_bytes"] == 2 * MIB
    assert fields["vmem_gap_bytes"] == 0
    # the balloon inflates by 100 MiB, virtio-mem unplugs 128 MiB: each its own figure
    peer.balloon_actual = 284 * MIB
    peer.devices = [vmem_device(size=128 * MIB, **{"requested-size": 128 * MIB})]
    fields = one_vm(source, T0 + 10)
    assert fields["balloon_actual_bytes"] == 100 * MIB
    assert fields["memory_max_bytes"] == 512 * MIB
    assert fields["memory_current_bytes"] == 412 * MIB


def test_qmp_a_malformed_device_is_skipped_with_one_warning(
    stand_in: tuple[StandInQmp, QmpSource, io.StringIO],
) -> None:
    peer, source, stream = stand_in
    peer.devices = [
        vmem_device(size="lots", id="bad"),
        vmem_device(id="good", size=0, **{"requested-size": 64 * MIB}),
    ]
    for n in range(3):
        fields = one_vm(source, T0 + n)
        # the good device's figures; what depends on the bad one's plugged size is left out
        assert fields["vmem_plugged_bytes"] == 0 and fields["vmem_requested_bytes"] == 64 * MIB
        assert "memory_max_bytes" not in fields and "memory_current_bytes" not in fields
        assert "balloon_actual_bytes" not in fields  # the summary's base is not known either
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("W! ")]
    assert warnings == [
        f"W! qmp: {source.config.sockets[0][:-5]}101.qmp: skipped virtio-mem device 0 size "
        "is 'lots', not an integer"
    ]
    peer.devices = [vmem_device()]
    fields = one_vm(source, T0 + 10)
    assert fields["balloon_actual_bytes"] == 0 and fields["memory_max_bytes"] == 640 * MIB
    assert stream.getvalue().count("W! ") == 1


def test_qmp_a_vm_without_virtio_mem_is_asked_again_every_tenth_poll(
    stand_in: tuple[StandInQmp, QmpSource, io.StringIO],
) -> None:
    """Most VMs have no virtio-mem device: the command is not repeated every poll for them,
    but often enough to see one hot-plugged."""
    peer, source, _ = stand_in
    peer.devices = [{"type": "dimm", "data": {"size": 128 * MIB, "id": "dimm0"}}]
    peer.balloon_actual = 512 * MIB  # query-balloon counts a DIMM (and not virtio-mem)
    asked = []
    for n in range(VMEM_RECHECK_POLLS + 1):
        fields = one_vm(source, T0 + n)
        asked.append("query-memory-devices" in peer.commands[-1])
        assert "vmem_plugged_bytes" not in fields
        assert fields["memory_max_bytes"] == 512 * MIB and fields["balloon_actual_bytes"] == 0
    assert asked == [True] + [False] * (VMEM_RECHECK_POLLS - 1) + [True]
    peer.devices.append(vmem_device(size=0, **{"requested-size": 0}))  # hot-plugged
    for n in range(VMEM_RECHECK_POLLS):
        fields = one_vm(source, T0 + 20 + n)
    assert fields["vmem_max_bytes"] == 512 * MIB
    assert "query-memory-devices" in peer.commands[-1]  # every poll from now on


# --- libvirt: the live XML ---------------------------------------------------------------------


def test_libvirt_live_xml_of_a_real_domain() -> None:
    facts = DomainFacts(1, T0)
    assert parse_domain_xml(LIBVIRT["plugged"]["xml"], facts) == []
    vmem = facts.vmem
    assert vmem is not None
    assert (vmem.plugged, vmem.requested, vmem.maximum, vmem.block, vmem.devices) == (
        256 * MIB,
        256 * MIB,
        512 * MIB,
        2 * MIB,
        1,
    )
    assert vmem.worst.name == "virtiomem0"
    assert facts.vmem_text.startswith("<memory model='virtio-mem'>")
    assert facts.vmem_text.endswith("</memory>") and "<memballoon" not in facts.vmem_text


@pytest.mark.parametrize("moment", ["before", "plugged"])
def test_libvirt_fields_take_virtio_mem_out_of_the_balloon(moment: str) -> None:
    """libvirt's maximum counts the device at its full size and its current at what is
    plugged: 512 MiB (then 256 MiB) of 'balloon' that is virtio-mem not plugged."""
    record = LIBVIRT[moment]
    facts = DomainFacts(1, T0)
    parse_domain_xml(record["xml"], facts)
    facts.period = 2
    fields = domain_fields(dict(record["bulk"]), facts, T0)
    plugged = 0 if moment == "before" else 256 * MIB
    assert fields["memory_max_bytes"] == fields["memory_current_bytes"] == 384 * MIB + plugged
    assert fields["balloon_actual_bytes"] == 0
    assert fields["vmem_plugged_bytes"] == plugged and fields["vmem_gap_bytes"] == 0
    assert fields["vmem_max_bytes"] == 512 * MIB and fields["vmem_block_bytes"] == 2 * MIB


def test_libvirt_fields_a_balloon_beside_virtio_mem() -> None:
    """The balloon inflated by 100 MiB on top: that much, and no more."""
    record = LIBVIRT["plugged"]
    facts = DomainFacts(1, T0)
    parse_domain_xml(record["xml"], facts)
    stats = dict(record["bulk"])
    stats["balloon.current"] -= 100 * KIB
    fields = domain_fields(stats, facts, T0)
    assert fields["balloon_actual_bytes"] == 100 * MIB
    assert fields["memory_max_bytes"] == 640 * MIB


def test_libvirt_virtio_mem_without_a_balloon() -> None:
    """<memballoon model='none'>: libvirt's current is its total; the VM has what it has."""
    xml = LIBVIRT["plugged"]["xml"]
    start, end = xml.index("<memballoon"), xml.index("</memballoon>") + len("</memballoon>")
    facts = DomainFacts(1, T0)
    parse_domain_xml(xml[:start] + "<memballoon model='none'/>" + xml[end:], facts)
    stats = {"balloon.current": 917504, "balloon.maximum": 917504}
    fields = domain_fields(stats, facts, T0)
    assert fields["memory_max_bytes"] == fields["memory_current_bytes"] == 640 * MIB
    assert fields["balloon_actual_bytes"] == 0 and fields["inflation_blocked"] is True


def _with_device(requested: str, current: str = "", extra: str = "") -> str:
    current_el = f"<current unit='KiB'>{current}</current>" if current else ""
    return (
        "<domain type='kvm'><name>vm</name><memory unit='KiB'>1441792</memory><devices>"
        "<memballoon model='virtio'><stats period='2'/></memballoon>"
        "<memory model='virtio-mem'><target><size unit='GiB'>1</size><node>0</node>"
        f"<block unit='MiB'>2</block><requested unit='KiB'>{requested}</requested>"
        f"{current_el}</target><alias name='virtiomem0'/></memory>{extra}</devices></domain>"
    )


def test_libvirt_a_device_without_what_it_needs_is_skipped() -> None:
    facts = DomainFacts(1, T0)
    skipped = parse_domain_xml(_with_device("lots", "0"), facts)
    assert facts.vmem is None
    assert skipped == ["<memory model='virtio-mem' 0>: <requested> 'lots' is not a size"]
    # no <current> (libvirt 7.9: not in the live XML yet): requested known, plugged not
    facts = DomainFacts(1, T0)
    assert parse_domain_xml(_with_device("262144"), facts) == []
    assert facts.vmem is not None and facts.vmem.plugged is None
    fields = domain_fields({"balloon.current": 393216, "balloon.maximum": 1441792}, facts, T0)
    assert "vmem_plugged_bytes" not in fields and "vmem_gap_bytes" not in fields
    assert fields["vmem_requested_bytes"] == 256 * MIB
    assert fields["memory_max_bytes"] == 384 * MIB  # the device taken out whole


def test_update_vmem_parses_only_the_devices_and_only_when_they_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    facts = DomainFacts(1, T0)
    parse_domain_xml(LIBVIRT["before"]["xml"], facts)
    parsed: list[str] = []
    real = ET.fromstring

    def counting(text: str, *args: Any) -> ET.Element:
        parsed.append(text)
        return real(text, *args)

    monkeypatch.setattr(ET, "fromstring", counting)  # the module domainxml parses with
    assert update_vmem(LIBVIRT["before"]["xml"], facts) == []
    assert parsed == []  # the same devices: nothing parsed
    assert update_vmem(LIBVIRT["plugged"]["xml"], facts) == []
    [text] = parsed  # the devices' own text, not the domain's
    assert text.startswith("<devices><memory model='virtio-mem'>") and "<name>" not in text
    assert facts.vmem is not None and facts.vmem.plugged == 256 * MIB


def test_reread_when_libvirts_maximum_moves() -> None:
    """A memory device hot-plugged (or unplugged) changes libvirt's maximum: read the XML."""
    facts = DomainFacts(1, T0)
    facts.period = 2
    facts.stats_max = 917504
    stats = {"balloon.maximum": 917504, "balloon.last-update": int(T0)}
    assert not needs_xml(facts, stats, T0 + 1, 300.0)
    stats["balloon.maximum"] = 917504 + 524288
    assert needs_xml(facts, stats, T0 + 1, 300.0)


WEB_UUID = "88c66609-e55e-4b16-8bc3-67ffdf0b64a7"
PLAIN_UUID = "2f1d6c3e-6a43-4b1e-a6c1-0c7a3c2b9f10"


@pytest.fixture()
def libvirt_conn() -> Any:
    pytest.importorskip("libvirt")
    from tests.fakes.libvirt_conn import FakeConnection, Recording

    def answers(name: str, uuid: str, xml: str) -> dict[str, Any]:
        return {"name": name, "UUIDString": uuid, "ID": 1, "XMLDesc": xml}

    plain = LIBVIRT["before"]["xml"]
    start = plain.index("<memory model='virtio-mem'>")
    end = plain.index("</memory>", start) + len("</memory>")
    without = plain[:start] + plain[end:]
    domains = [
        (answers("vmem-web", WEB_UUID, plain), LIBVIRT["before"]["bulk"]),
        (answers("plain", PLAIN_UUID, without), {
            **LIBVIRT["before"]["bulk"], "balloon.maximum": 393216
        }),
    ]  # fmt: skip
    host = {
        "getHostname": "kvm1",
        "getInfo": ["x86_64", 65536, 16, 2400, 1, 2, 8, 1],
        "getType": "QEMU",
        "getFreeMemory": 40 * 1024**3,
    }
    return FakeConnection(Recording(host=host, domains=copy.deepcopy(domains)))


def test_libvirt_source_reads_the_live_xml_of_virtio_mem_domains_only(
    libvirt_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each poll: one XMLDesc of a domain with virtio-mem (a new requested size shows at the
    next poll: no event says so), none of a domain without; never the whole XML parsed."""
    from telegraf_balloon.config import LibvirtConfig
    from telegraf_balloon.sources.libvirt.source import LibvirtSource

    config = LibvirtConfig(uri="qemu+ssh://kvm1/system", keepalive_interval=0, concurrency=1)
    made = LibvirtSource(config, Log(io.StringIO()), connect=lambda uri, ro: libvirt_conn)
    full: list[str] = []

    def counting(text: str, facts: DomainFacts) -> list[str]:
        full.append(text)
        return parse_domain_xml(text, facts)

    monkeypatch.setattr(f"{LibvirtSource.__module__}.parse_domain_xml", counting)

    def poll(now: float) -> dict[str, Fields]:
        result = made.poll(now)
        assert result.error is None, result.error
        return {s.tags["guest"]: s.fields for s in result.samples}

    first = poll(T0)
    assert len(full) == 2  # each domain's XML once, at its start
    assert first["vmem-web"]["vmem_requested_bytes"] == 0
    assert "vmem_requested_bytes" not in first["plain"]
    web, plain = libvirt_conn.domain("vmem-web"), libvirt_conn.domain("plain")
    # virsh update-memory-device --requested-size 256M, then the guest plugs it
    web.answers["XMLDesc"] = LIBVIRT["plugged"]["xml"]
    for dom, stats in libvirt_conn.records:
        if dom is web:
            stats.update(LIBVIRT["plugged"]["bulk"])
    for n in range(1, 4):
        fields = poll(T0 + n)
        assert fields["vmem-web"]["vmem_requested_bytes"] == 256 * MIB
        assert fields["vmem-web"]["vmem_plugged_bytes"] == 256 * MIB
        assert fields["vmem-web"]["balloon_actual_bytes"] == 0
    assert len(full) == 2  # no whole-XML parse since
    assert web.xml_reads == 4 and plain.xml_reads == 1


# --- health: vmem_stuck, and the host count ------------------------------------------------------


def vmem(plugged: int, requested: int, block: int = 2 * MIB) -> Fields:
    return {
        "vmem_plugged_bytes": plugged,
        "vmem_requested_bytes": requested,
        "vmem_gap_bytes": plugged - requested,
        "vmem_block_bytes": block,
    }


def judge(health: Health, now: float, **vms: Fields) -> dict[str, Fields]:
    items = [(key, dict(fields)) for key, fields in vms.items()]
    health.vms("qmp", items, now)
    return dict(items)


def test_vmem_stuck_after_stuck_for_beyond_a_block() -> None:
    health = Health(HealthConfig(stuck_for=60.0))
    off, within, unplug = vmem(0, 128 * MIB), vmem(254 * MIB, 256 * MIB), vmem(256 * MIB, 0)
    lines = judge(health, T0, off=off, within=within, unplug=unplug, none={"memory_max_bytes": 1})
    assert lines["off"]["vmem_stuck"] is False and lines["unplug"]["vmem_stuck"] is False
    assert lines["within"]["vmem_stuck"] is False and "vmem_stuck" not in lines["none"]
    lines = judge(health, T0 + 59, off=off, within=within, unplug=unplug)
    assert lines["off"]["vmem_stuck"] is False
    assert health.vmem_stuck_held("qmp", "off", T0 + 59) == 59.0
    lines = judge(health, T0 + 60, off=off, within=within, unplug=unplug)
    assert lines["off"]["vmem_stuck"] is True and lines["unplug"]["vmem_stuck"] is True
    assert lines["within"]["vmem_stuck"] is False  # one block off: a request moving, not stuck
    # the guest catches up: the clock restarts
    lines = judge(health, T0 + 61, off=vmem(128 * MIB, 128 * MIB))
    assert lines["off"]["vmem_stuck"] is False
    lines = judge(health, T0 + 62, off=off)
    assert lines["off"]["vmem_stuck"] is False
    assert health.vmem_stuck_held("qmp", "off", T0 + 62) == 0.0


def test_vmem_stuck_clock_runs_on_across_skipped_polls_within_the_grace() -> None:
    """As for stuck: a VM missing from a poll (a busy monitor) keeps its clock."""
    health = Health(HealthConfig(stuck_for=60.0))
    judge(health, T0, a=vmem(0, 128 * MIB))
    for n in range(GRACE_POLLS):
        judge(health, T0 + 10 * (n + 1), other=vmem(0, 0))
    lines = judge(health, T0 + 60, a=vmem(0, 128 * MIB))
    assert lines["a"]["vmem_stuck"] is True
    # beyond the grace, it starts over
    for n in range(GRACE_POLLS + 1):
        judge(health, T0 + 70 + n, other=vmem(0, 0))
    lines = judge(health, T0 + 200, a=vmem(0, 128 * MIB))
    assert lines["a"]["vmem_stuck"] is False


def test_host_counts_vms_with_vmem_stuck() -> None:
    tags = {"host": "kvm1", "source": "qmp", "hypervisor": "kvm"}
    samples = [
        Sample("a", tags, {"memory_max_bytes": GIB_, "vmem_stuck": True}),
        Sample("b", tags, {"memory_max_bytes": GIB_, "vmem_stuck": False}),
        Sample("c", tags, {"memory_max_bytes": GIB_}),
    ]
    [(_, fields)] = host_lines(samples, [HostInfo(dict(tags))])
    assert fields["vms_vmem_stuck"] == 1 and fields["vms_stuck"] == 0


GIB_ = 1024 * MIB


# --- the guest: /proc/iomem ----------------------------------------------------------------------

IOMEM = """00000000-00000fff : Reserved
00100000-17fdffff : System RAM
  14800000-15601ef1 : Kernel code
100000000-11fffffff : virtio1
  100000000-107ffffff : System RAM (virtio_mem)
  110000000-117ffffff : System RAM (virtio_mem)
1c0000000-23fffffff : PCI Bus 0000:00
"""


def test_iomem_regions_and_added_blocks() -> None:
    regions = parse_vmem_iomem(IOMEM, {"virtio1", "virtio7"})
    assert regions == {
        "virtio1": (512 * MIB, [(0x100000000, 0x107FFFFFF), (0x110000000, 0x117FFFFFF)])
    }
    assert parse_vmem_iomem(IOMEM, {"virtio0"}) == {}


def test_iomem_as_a_reader_other_than_root_sees_it() -> None:
    hidden = "".join(
        line.split("-")[0][:0]
        + " " * (len(line) - len(line.lstrip()))
        + "00000000-00000000 :"
        + line.split(" :", 1)[1]
        + "\n"
        for line in IOMEM.splitlines()
    )
    assert parse_vmem_iomem(hidden, {"virtio1"}) is None


@pytest.mark.parametrize("text", ["virtio1\n", "zz-10 : virtio1\n", "100000000 : virtio1\n"])
def test_iomem_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_vmem_iomem(text, {"virtio1"})


@pytest.mark.parametrize(("text", "value"), [("8000000\n", 128 * MIB), ("80000000", 2048 * MIB)])
def test_block_size(text: str, value: int) -> None:
    assert parse_hex(text) == value


@pytest.mark.parametrize("text", ["", "0", "0x8000000", "-1", "12g", "1" * 16])
def test_block_size_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_hex(text)


# --- the guest kernel's messages -----------------------------------------------------------------

# As the 6.1 guest's virtio_mem driver logged them (dmesg of the tests' guest, QEMU 7.2):
# at probe, then on a request of 256 MiB.
KERNEL_LINES = b"""virtio_mem virtio0: start address: 0x100000000
virtio_mem virtio0: region size: 0x20000000
virtio_mem virtio0: device block size: 0x200000
virtio_mem virtio0: nid: 0
virtio_mem virtio0: memory block size: 0x8000000
virtio_mem virtio0: subblock size: 0x200000
virtio_mem virtio0: plugged size: 0x0
virtio_mem virtio0: requested size: 0x0
virtio_mem virtio0: plugged size: 0x0
virtio_mem virtio0: requested size: 0x10000000
virtio_mem virtio1: unknown error, marking device broken: -22
"""


def test_virtio_mem_kernel_messages_are_built_in_events() -> None:
    counts = dict(count_events(compile_events([]), KERNEL_LINES))
    assert counts == {"virtio_mem_requested": 2, "virtio_mem_broken": 1}


def test_virtio_mem_kernel_messages_through_the_kernel_log_reader(
    kernel_log: tuple[str, Callable[[str], None], bool],  # noqa: F811  (the fixture imported)
) -> None:
    """The same lines as the kmsg reader gets them (records of /dev/kmsg, or its stand-in)."""
    path, write, _real = kernel_log
    source = kmsg_source(path)
    try:
        assert kmsg_counts(source) == {}
        for line in KERNEL_LINES.decode().splitlines():
            write(line)
        assert kmsg_counts(source) == {
            (KMSG_TAG, "virtio_mem_requested"): (2, 2),
            (KMSG_TAG, "virtio_mem_broken"): (1, 1),
        }
    finally:
        source.close()
