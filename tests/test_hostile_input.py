"""Generated hostile input: guest trees and domain XML that no kernel or libvirt would write.

Every case must give: no exception, every output line accepted by line_protocol_parser and
the field catalog, every stderr line one short `W! `/`E! ` line, and a `W! ` line naming each
file (or XML element) that was skipped.

QMP replies (the qmp source's reply handling) are any JSON at all, QMP-shaped or not.

Guest trees start from captured fixtures (tests/fixtures/guest) and have files replaced by
binary junk, huge and negative numbers, truncated text, NUL bytes, 1 MB lines, files over
the read limit, FIFOs, directories (root reads any file, so a directory stands in for an
unreadable one) or nothing at all.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

import line_protocol_parser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telegraf_balloon import catalog, lineprotocol
from telegraf_balloon.config import GuestConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import Fields, PollResult
from telegraf_balloon.sources.guest import parsers
from telegraf_balloon.sources.guest.files import READ_LIMIT, read_regular
from telegraf_balloon.sources.guest.source import GuestSource
from telegraf_balloon.sources.qmp import protocol as qmp
from telegraf_balloon.sources.qmp.replies import ProtocolError
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.stack.execd import copy_guest_root

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "guest"
BASES = {  # fixture -> (its driver, the driver's own file)
    "firecracker-6.18-virtio-balloon": (
        "virtio_balloon",
        "sys/bus/virtio/devices/virtio0/features",
    ),
    "vmware-4.20-current-below-target": ("vmw_balloon", "sys/kernel/debug/vmmemctl"),
    "hyperv-valid": ("hv_balloon", "sys/kernel/debug/hv-balloon"),
    "xen-valid": ("xen_balloon", "sys/devices/system/xen_memory/xen_memory0/target_kb"),
}
# Files every poll reads, with the parser that judges them (None: read, not parsed).
ALWAYS_READ: dict[str, Optional[Callable[[str], Any]]] = {
    "proc/meminfo": parsers.parse_meminfo,
    "proc/vmstat": parsers.parse_vmstat,
    "sys/kernel/mm/transparent_hugepage/enabled": parsers.parse_thp,
    "sys/class/dmi/id/product_uuid": parsers.parse_uuid,
}
DRIVER_PARSERS: dict[str, Callable[[str], Any]] = {
    "sys/bus/virtio/devices/virtio0/features": parsers.parse_features,
    "sys/kernel/debug/vmmemctl": parsers.parse_vmmemctl,
    "sys/kernel/debug/hv-balloon": parsers.parse_hv_balloon,
    "sys/devices/system/xen_memory/xen_memory0/target_kb": parsers.parse_ulong,
}
OTHER_FILES = [
    "proc/modules",
    "proc/cmdline",
    "sys/class/dmi/id/sys_vendor",
    "sys/hypervisor/type",
    "etc/modprobe.d/hostile.conf",
    "sys/devices/system/xen_memory/xen_memory0/info/current_kb",
]
ALL_FILES = sorted({*ALWAYS_READ, *DRIVER_PARSERS, *OTHER_FILES})


def _numbers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(min_value=2**63 - 2, max_value=10**40).map(str),  # beyond int64
        st.integers(max_value=-1).map(str),
        st.just("9" * 5000),  # more digits than int() takes by default
    )


def _lines_with(number: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """Kernel-shaped lines holding hostile numbers."""
    return st.builds(
        lambda n, key: (
            f"{key}: {n} kB\nnr_balloon_pages {n}\ntarget: {n}\n"
            f"current: {n}\npages_ballooned : {n}\npage_size : {n}\n{n}\n".encode()
        ),
        number,
        st.sampled_from(["MemTotal", "MemFree", "Balloon", "SwapTotal"]),
    )


CONTENT = st.one_of(
    st.binary(max_size=400),
    _lines_with(_numbers()),
    st.builds(lambda n: b"\x00" * n + b"MemTotal: 1 kB\n\x00", st.integers(0, 8)),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"\n", b"[", b"[]", b"\xff\xfe", b"0x", b"- 1", b"always [x y] never"]),
)
# What becomes of one file: new bytes, truncated to a prefix, or a special kind of file.
MUTATION = st.one_of(
    CONTENT.map(lambda b: ("bytes", b)),
    st.integers(0, 200).map(lambda n: ("truncate", n)),
    st.sampled_from(
        [("fifo", 0), ("directory", 0), ("missing", 0), ("1 MB line", 0), ("over the limit", 0)]
    ),
)


def _apply(root: Path, rel: str, mutation: tuple[str, Any]) -> None:
    path = root / rel
    kind, value = mutation
    if path.is_symlink() or path.is_file():
        original = path.read_bytes()
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
        original = b""
    else:
        original = b""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "bytes":
        path.write_bytes(value)
    elif kind == "truncate":
        path.write_bytes(original[:value])
    elif kind == "1 MB line":
        path.write_bytes(b"MemTotal:" + b" " * 10 + b"1" * 1_000_000 + b" kB\n")
    elif kind == "over the limit":
        path.write_bytes(b"7" * (READ_LIMIT + 10))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()


def _judged_bad(path: Path, parser: Optional[Callable[[str], Any]]) -> bool:
    """Would the source skip this file? (Read exactly as the source reads it.)"""
    if not os.path.lexists(path):
        return False  # missing is normal and silent
    try:
        text = read_regular(str(path))
    except OSError:
        return True
    if parser is None or (parser is parsers.parse_uuid and not text.strip()):
        return False
    try:
        parser(text)
    except parsers.Malformed:
        return True
    return False


def _check_output(result: PollResult, log: str) -> None:
    points = [
        (catalog.BALLOON, s.tags, s.fields, 1_700_000_000_000_000_000) for s in result.samples
    ]
    text = lineprotocol.format_lines(points)
    for line in text.split("\n")[:-1]:  # Telegraf splits on \n only (splitlines() on more)
        parsed = line_protocol_parser.parse_line(line)
        assert catalog.check_point(parsed["measurement"], parsed["tags"], parsed["fields"]) == []
    for line in log.split("\n")[:-1]:
        assert line.startswith(("W! ", "E! ", "I! ")), line
        assert len(line) < 1000 and "\x00" not in line, line[:300]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    base=st.sampled_from(sorted(BASES)),
    mutations=st.dictionaries(st.sampled_from(ALL_FILES), MUTATION, min_size=1, max_size=4),
)
def test_hostile_guest_tree(base: str, mutations: dict[str, tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        root = copy_guest_root(Path(tmp) / "root", FIXTURES / base / "root")
        for rel, mutation in mutations.items():
            _apply(root, rel, mutation)
        stream = io.StringIO()
        source = GuestSource(GuestConfig(root=str(root)), "vm", Log(stream), 4096)
        result = source.poll(1_700_000_000.0)
        log = stream.getvalue()
        _check_output(result, log)
        judged = dict(ALWAYS_READ)
        driver, own_file = BASES[base]
        if result.samples and result.samples[0].tags["driver"] == driver:
            # (a mutation can make another driver's file appear, and win the detection)
            judged[own_file] = DRIVER_PARSERS[own_file]
        for rel in mutations:
            if rel in judged and _judged_bad(root / rel, judged[rel]):
                if rel != "proc/meminfo" and result.error is not None:
                    continue  # no meminfo: the poll stops before reading the rest
                assert str(root / rel) in log, f"no W! naming {rel}: {log}"
        if result.error is not None:
            assert "meminfo" in result.error


# --- domain XML -------------------------------------------------------------------------------

SIZE_TEXT = st.one_of(
    st.integers(min_value=0, max_value=2**40).map(str),
    _numbers(),
    st.text(max_size=30),
    st.sampled_from(["", " 1 ", "1_000", "0x10", "1e6", "١٢٣", "9007199254740991"]),
)
UNIT = st.one_of(
    st.sampled_from(["KiB", "k", "b", "bytes", "MiB", "GiB", "TiB", "KB", "GB", "kib"]),
    st.text(max_size=8),
)


@st.composite
def domain_xml(draw: st.DrawFn) -> str:
    """A domain description with missing, odd or hostile elements; sometimes not XML at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.text(max_size=200))
    dom = ET.Element("domain")
    if draw(st.booleans()):
        dom.set("type", draw(st.text(max_size=20)))
    sizes = ("memory", "memtune/hard_limit", "memtune/min_guarantee")
    for where in sizes:
        if draw(st.booleans()):
            parent = dom
            for tag in where.split("/")[:-1]:
                parent = parent.find(tag) or ET.SubElement(parent, tag)
            element = ET.SubElement(parent, where.split("/")[-1])
            element.text = draw(SIZE_TEXT)
            if draw(st.booleans()):
                element.set("unit", draw(UNIT))
    if draw(st.booleans()):
        devices = ET.SubElement(dom, "devices")
        if draw(st.booleans()):
            balloon = ET.SubElement(devices, "memballoon")
            model = draw(st.one_of(st.none(), st.sampled_from(["virtio", "none", "xen"])))
            if model is not None:
                balloon.set("model", model)
            if draw(st.booleans()):
                stats = ET.SubElement(balloon, "stats")
                if draw(st.booleans()):
                    stats.set("period", draw(SIZE_TEXT))
    try:
        return ET.tostring(dom, encoding="unicode")
    except ValueError:  # a character XML cannot carry
        return "<domain/>"


class _StandInDomain:
    """libvirt only hands out XML it wrote itself: hostile XML needs a stand-in domain."""

    def __init__(self, xml: str) -> None:
        self.xml = xml

    def XMLDesc(self, flags: int) -> str:
        return self.xml


STATS = st.dictionaries(
    st.sampled_from(
        ["balloon.current", "balloon.maximum", "balloon.available", "balloon.unused",
         "balloon.last-update", "balloon.rss", "balloon.swap_in"]
    ),
    st.integers(min_value=0, max_value=2**53),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(xml=domain_xml(), stats=STATS)
def test_hostile_domain_xml(xml: str, stats: dict[str, int]) -> None:
    try:
        from telegraf_balloon.config import LibvirtConfig
        from telegraf_balloon.sources.libvirt.domainxml import DomainFacts, parse_domain_xml
        from telegraf_balloon.sources.libvirt.fields import domain_fields
        from telegraf_balloon.sources.libvirt.source import LibvirtSource
    except ImportError:  # pragma: no cover - the test extra installs libvirt-python
        from tests.stack.common import unavailable

        unavailable("libvirt-python is not installed")
    stream = io.StringIO()
    source = LibvirtSource(LibvirtConfig(uri="test:///default"), Log(stream))
    facts = source._read_facts(_StandInDomain(xml), "vm", "uuid-1", 1, None, 1_700_000_000.0)
    log = stream.getvalue()
    for value in (facts.max_kib, facts.limit_bytes, facts.reservation_bytes, facts.period):
        assert value is None or 0 <= value <= 2**63 - 1, facts
    try:
        skipped = parse_domain_xml(xml, DomainFacts(1, 0.0))
    except ET.ParseError:
        assert log.startswith("W! ") and "bad XML" in log, log
    else:
        assert bool(skipped) == bool(log), (skipped, log)
        for item in skipped:
            assert item in log
    fields: Fields = domain_fields(dict(stats), facts, 1_700_000_000.0)
    _check_output(
        PollResult(samples=[guest_sample(facts.tags, fields)]), log if log.strip() else ""
    )


def guest_sample(tags: dict[str, str], fields: Fields) -> Any:
    from telegraf_balloon.model import Sample

    return Sample("k", {"host": "h", "guest": "vm", "source": "libvirt", **tags}, fields)


# --- QMP replies ------------------------------------------------------------------------------

# Every member name the qmp source reads, so that generated objects hit its checks.
QMP_KEYS = [
    "QMP", "return", "error", "id", "event", "class", "desc",
    "name", "UUID", "enabled", "present", "base-memory", "plugged-memory",
    "actual", "max_mem", "last_update", "total_mem", "free_mem", "mem_swapped_in",
    "mem_swapped_out", "major_page_faults", "minor_page_faults",
    "stats", "last-update", "stat-total-memory", "stat-free-memory", "stat-available-memory",
    "stat-disk-caches", "stat-swap-in", "stat-swap-out", "stat-major-faults",
    "stat-minor-faults", "type",
    "data", "size", "requested-size", "max-size", "block-size", "memaddr", "node", "memdev",
]  # fmt: skip
QMP_INTS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2**30, 2**52, 2**52 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64]),
)
QMP_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    QMP_INTS,
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["child<virtio-balloon-pci>", "DeviceNotFound", "DeviceNotActive", "virtio-mem", "dimm"]
    ),
)
JSON_VALUES = st.recursive(
    QMP_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(QMP_KEYS), st.text(max_size=6)), inner, max_size=6
        ),
    ),
    max_leaves=16,
)


def _member(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A member's value: mostly what QEMU sends, else anything."""
    return st.one_of(good, good, good, QMP_SCALARS, JSON_VALUES)


def _members(**members: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k.replace("_", "-"): v for k, v in members.items()})


SIZES = st.integers(min_value=0, max_value=2**40)
PVE_MEMBERS = {
    key: _member(st.one_of(SIZES, st.just(2**64 - 1)))
    for key in ("max_mem", "last_update", "total_mem", "free_mem", "mem_swapped_in")
}
# What each command returns (by its name in log lines), QMP-shaped, with hostile members now
# and then.
QMP_SHAPED: dict[str, st.SearchStrategy[Any]] = {
    "qmp_capabilities": st.just({}),
    "query-name": _members(name=_member(st.text(max_size=12))),
    "query-uuid": st.fixed_dictionaries({"UUID": _member(st.uuids().map(str))}),
    "query-kvm": st.fixed_dictionaries({"enabled": _member(st.booleans())}),
    "query-memory-size-summary": _members(
        base_memory=_member(SIZES), plugged_memory=_member(SIZES)
    ),
    "query-balloon": st.fixed_dictionaries({"actual": _member(SIZES)}, optional=PVE_MEMBERS),
    "query-memory-devices": _member(
        st.lists(
            _members(
                type=_member(st.sampled_from(["virtio-mem", "dimm", "virtio-pmem"])),
                data=_member(
                    _members(
                        size=_member(SIZES),
                        requested_size=_member(SIZES),
                        max_size=_member(SIZES),
                        block_size=_member(SIZES),
                        id=_member(st.text(max_size=8)),
                    )
                ),
            ),
            max_size=3,
        )
    ),
    "qom-get guest-stats": _members(
        stats=_member(
            _members(
                stat_total_memory=_member(SIZES),
                stat_free_memory=_member(st.one_of(SIZES, st.just(2**64 - 1))),
                stat_swap_in=_member(st.integers(min_value=0, max_value=2**64 - 1)),
            )
        ),
        last_update=_member(st.integers(min_value=0, max_value=2**31)),
    ),
    "qom-get guest-stats-polling-interval": _member(st.integers(min_value=0, max_value=10)),
    "qom-set guest-stats-polling-interval": st.just({}),
    "qom-list": _member(
        st.lists(
            _members(
                name=_member(st.text(max_size=8)),
                type=_member(st.sampled_from(["child<virtio-balloon-pci>", "child<e1000>"])),
            ),
            max_size=3,
        )
    ),
}

QMP_ERRORS = st.fixed_dictionaries(
    {"class": st.sampled_from(["DeviceNotFound", "DeviceNotActive", "GenericError"])},
    optional={"desc": st.text(max_size=10)},
)


@st.composite
def qmp_reply(draw: st.DrawFn, ident: int, name: str) -> bytes:
    """One line in answer to command `ident` (`name`, as in QMP_SHAPED): mostly QMP-shaped,
    hostile members."""
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    if kind == 1:
        depth = draw(st.integers(1, 5000))
        return b'{"return": ' + b"[" * depth + b"]" * depth + b', "id": %d}' % ident
    if kind == 2:
        message: Any = draw(JSON_VALUES)
    elif kind <= 4:
        message = {"error": draw(st.one_of(QMP_ERRORS, JSON_VALUES))}
    elif kind == 5:
        message = {"return": draw(JSON_VALUES)}
    else:
        message = {"return": draw(QMP_SHAPED[name])}
    if isinstance(message, dict) and draw(st.integers(0, 9)):
        message["id"] = ident if draw(st.integers(0, 9)) else draw(JSON_VALUES)
    return json.dumps(message).encode()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_qmp_replies(data: st.DataObject) -> None:
    """Whatever a QMP peer answers, the qmp source's reply handling raises its ProtocolError
    (that VM is skipped) or takes it; nothing else escapes, and a VM it takes makes a valid line."""
    from telegraf_balloon.config import QmpConfig

    facts = qmp.VmFacts((1, 1), 1_700_000_000.0)
    facts.identity_read = data.draw(st.booleans())
    facts.memory_stale = data.draw(st.booleans())
    facts.no_device = data.draw(st.booleans())
    facts.pve_stats = data.draw(st.booleans())
    poll = qmp.VmPoll("/run/qemu-server/150.qmp", data.draw(st.sampled_from([0, 2])))
    dialogue = qmp.Dialogue(poll, lambda p, pid: facts)
    try:
        dialogue.feed(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
        for _ in range(40):  # a device search, stats and arming are follow-ups
            if not dialogue.pending:
                break
            ident = data.draw(st.sampled_from(sorted(dialogue.pending)))
            line = data.draw(qmp_reply(ident, str(dialogue.pending[ident])))
            if data.draw(st.integers(0, 9)) == 0:  # an event in between
                dialogue.feed(b'{"event": "BALLOON_CHANGE", "data": {"actual": 1}}\r\n')
            dialogue.feed(line + b"\r\n")
    except ProtocolError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300, str(exc)
        return
    stream = io.StringIO()
    source = QmpSource(QmpConfig(sockets=()), "node", Log(stream))
    sample = source._sample(poll, {"host": "node", "source": "qmp"}, None, 1_700_000_100.0)
    _check_output(PollResult(samples=[sample]), stream.getvalue())


QMP_REQUESTS = [
    qmp.CAPABILITIES, qmp.QUERY_NAME, qmp.QUERY_UUID, qmp.QUERY_KVM, qmp.QUERY_MEMORY,
    qmp.QUERY_BALLOON, qmp.QUERY_MEMORY_DEVICES, qmp.qom_get_stats(qmp.BALLOON_PATH),
    qmp.qom_get_period(qmp.BALLOON_PATH), qmp.qom_set_period(qmp.BALLOON_PATH, 2),
    qmp.qom_list(qmp.PERIPHERAL), qmp.qom_list(qmp.PERIPHERAL_ANON),
]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), request=st.sampled_from(QMP_REQUESTS))
def test_hostile_qmp_reply_values(data: st.DataObject, request: qmp.Request) -> None:
    """VmPoll.reply on any JSON object: its ProtocolError or follow-up commands, nothing else."""
    message = data.draw(
        st.one_of(
            st.fixed_dictionaries({"return": QMP_SHAPED[str(request)]}),
            st.fixed_dictionaries({"return": JSON_VALUES}),
            st.fixed_dictionaries({"error": st.one_of(QMP_ERRORS, JSON_VALUES)}),
            st.dictionaries(st.sampled_from(["return", "error", "id"]), JSON_VALUES),
        )
    )

    poll = qmp.VmPoll("/run/qemu-server/150.qmp", 2)
    poll.first(qmp.VmFacts((1, 1), 0.0))
    try:
        follow = poll.reply(request, message)
    except ProtocolError:
        return
    for command in follow:
        assert str(command) in QMP_SHAPED and isinstance(command.arguments(), dict)
