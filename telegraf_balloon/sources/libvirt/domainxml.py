"""What a domain's XML says about its balloon and memory, and what the source keeps of it.

Read when a domain (re)starts and when reread.py says so, never on every poll. Needs no
libvirt binding: the XML is text.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Optional

from ...model import Tags
from ..kvm import Vmem, VmemDevice, vmem_sum

KIB = 1024  # libvirt gives memory in KiB
_UNIT_BYTES = {
    "b": 1,
    "bytes": 1,
    "k": KIB,
    "kib": KIB,
    "kb": 1000,
    "m": KIB**2,
    "mib": KIB**2,
    "mb": 1000**2,
    "g": KIB**3,
    "gib": KIB**3,
    "gb": 1000**3,
    "t": KIB**4,
    "tib": KIB**4,
}
_UNLIMITED_KIB = 9007199254740991  # VIR_DOMAIN_MEMORY_PARAM_UNLIMITED
_INT64_MAX = 2**63 - 1


class DomainFacts:
    """What the domain XML says, and what the source learnt of this start of the domain."""

    __slots__ = (
        "agent_channel",
        "agent_connected",
        "arm_failed",
        "blocked_model",
        "checked_at",
        "domain_id",
        "first_seen",
        "frozen_checked",
        "hypervisor",
        "last_update",
        "limit_bytes",
        "max_kib",
        "period",
        "reservation_bytes",
        "stats_max",
        "tags",
        "vmem",
        "vmem_text",
    )

    def __init__(self, domain_id: int, now: float) -> None:
        self.domain_id = domain_id
        self.checked_at = now
        self.first_seen = now
        self.hypervisor = "unknown"
        self.blocked_model = False  # <memballoon model='none'/> or no memballoon at all
        self.period: Optional[int] = None
        self.reservation_bytes: Optional[int] = None
        self.limit_bytes: Optional[int] = None
        self.max_kib: Optional[int] = None
        self.last_update = 0
        self.arm_failed = False
        self.frozen_checked = 0  # the last_update of a freeze already checked in the XML
        self.tags: Tags = {}
        self.agent_channel = False  # a virtio channel for the QEMU guest agent
        self.agent_connected: Optional[bool] = None  # its state in the live XML, when given
        self.vmem: Optional[Vmem] = None  # <memory model='virtio-mem'> devices, summed
        self.vmem_text = ""  # their XML as last read: re-parsed only when it differs
        self.stats_max: Optional[int] = None  # balloon.maximum (KiB) when the XML was read


def _integer(text: str) -> Optional[int]:
    """A plain ASCII decimal, optionally negative (int() also takes '1_0' and other digits)."""
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        return None
    return int(text)


def _size_bytes(element: Optional[ET.Element], where: str, skipped: list[str]) -> Optional[int]:
    """<memory unit='KiB'>1048576</memory> -> bytes; what cannot be read goes to `skipped`."""
    if element is None:
        return None
    text = (element.text or "").strip()
    value = _integer(text)
    unit = element.get("unit", "KiB")
    scale = _UNIT_BYTES.get(unit.lower())
    if value is None or value < 0:
        skipped.append(f"<{where}> {text[:40]!r} is not a size")
        return None
    if scale is None:
        skipped.append(f"<{where}> has an unknown unit {unit[:20]!r}")
        return None
    if scale == KIB and value >= _UNLIMITED_KIB:
        return None  # libvirt's "unlimited"
    if value * scale > _INT64_MAX:
        skipped.append(f"<{where}> {text[:40]!r} {unit[:20]} is out of range")
        return None
    return value * scale


# <domain type='kvm'>
#   <devices><memballoon model='virtio'><stats period='10'/></memballoon></devices>
#   <memtune><hard_limit unit='KiB'>1048576</hard_limit><min_guarantee ...>
def parse_domain_xml(text: str, facts: DomainFacts) -> list[str]:
    """Fill facts from a domain's XML description; return what was skipped, and why.

    Raises ET.ParseError on text that is not XML.
    """
    skipped: list[str] = []
    root = ET.fromstring(text)
    facts.hypervisor = root.get("type", "unknown")
    maximum = _size_bytes(root.find("memory"), "memory", skipped)
    facts.max_kib = None if maximum is None else maximum // KIB
    balloon = root.find("./devices/memballoon")
    model = balloon.get("model", "none") if balloon is not None else "none"
    facts.blocked_model = model == "none"
    if facts.blocked_model:
        facts.period = None
    else:
        stats = balloon.find("stats") if balloon is not None else None
        if stats is None:
            facts.period = 0
        else:
            raw = stats.get("period", "0")
            facts.period = _integer(raw.strip())
            if facts.period is None or facts.period < 0:
                skipped.append(f"<memballoon><stats period={raw[:20]!r}> is not a period")
                facts.period = None
    facts.limit_bytes = _size_bytes(
        root.find("./memtune/hard_limit"), "memtune/hard_limit", skipped
    )
    facts.reservation_bytes = _size_bytes(
        root.find("./memtune/min_guarantee"), "memtune/min_guarantee", skipped
    )
    agent_channel(root, facts)
    devices = root.find("devices")
    facts.vmem = _vmem(devices, skipped) if devices is not None else None
    facts.vmem_text = vmem_spans(text) if facts.vmem is not None else ""
    return skipped


# virtio-mem (libvirt 7.9+), in <devices>; <current> only in the live XML (libvirt 7.10+):
#   <memory model='virtio-mem'>
#     <target><size unit='KiB'>524288</size><node>0</node><block unit='KiB'>2048</block>
#       <requested unit='KiB'>262144</requested><current unit='KiB'>262144</current></target>
#     <alias name='virtiomem0'/>
#   </memory>
_VMEM_OPEN = "<memory model='virtio-mem'"
_VMEM_CLOSE = "</memory>"


def vmem_spans(text: str) -> str:
    """The text of every virtio-mem device in a domain XML, found without parsing it (libvirt
    writes its XML one way: single quotes, the model first); "" when there is none."""
    spans = []
    start = text.find(_VMEM_OPEN)
    while start >= 0:
        end = text.find(_VMEM_CLOSE, start)
        if end < 0:
            break
        end += len(_VMEM_CLOSE)
        spans.append(text[start:end])
        start = text.find(_VMEM_OPEN, end)
    return "".join(spans)


def _vmem(devices: ET.Element, skipped: list[str]) -> Optional[Vmem]:
    """The <memory model='virtio-mem'> devices under `devices`, summed; a device without a
    readable size, requested size or block is skipped (and named in `skipped`)."""
    found: list[VmemDevice] = []
    for index, device in enumerate(devices.findall("memory[@model='virtio-mem']")):
        where = f"memory model='virtio-mem' {index}"
        alias = device.find("alias")
        name = alias.get("name", "") if alias is not None else ""
        problems: list[str] = []
        sizes = {
            key: _size_bytes(device.find(f"target/{key}"), f"{key}", problems)
            for key in ("size", "requested", "block", "current")
        }
        missing = [k for k in ("size", "requested", "block") if sizes[k] is None]
        if problems or missing:
            why = "; ".join(problems) or "no <" + ">, <".join(missing) + ">"
            skipped.append(f"<{where}>: {why}")
            continue
        found.append(
            VmemDevice(
                name,
                sizes["current"],
                int(sizes["requested"] or 0),
                int(sizes["size"] or 0),
                int(sizes["block"] or 0),
            )
        )
    return vmem_sum(found)


def update_vmem(text: str, facts: DomainFacts) -> list[str]:
    """Read the virtio-mem devices again from a fresh domain XML, parsing only their own
    text, and only when it differs from the last read; return what was skipped.

    Raises ET.ParseError when that text is not XML.
    """
    spans = vmem_spans(text)
    if spans == facts.vmem_text:
        return []
    skipped: list[str] = []
    facts.vmem = _vmem(ET.fromstring(f"<devices>{spans}</devices>"), skipped)
    facts.vmem_text = spans
    return skipped


AGENT_CHANNEL = "org.qemu.guest_agent.0"  # the virtio-serial port name qemu-ga opens
_AGENT_STATES = {"connected": True, "disconnected": False}


# <channel type='unix'><source mode='bind' path='...'/>
#   <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>
def agent_channel(root: ET.Element, facts: DomainFacts) -> None:
    """The guest agent's channel, and its state where the XML gives one: libvirt writes
    `state` in a running domain's XML, connected while the agent in the guest has the port
    open (QEMU's VSERPORT_CHANGE)."""
    facts.agent_channel = False
    facts.agent_connected = None
    for target in root.iterfind("./devices/channel/target"):
        if target.get("type") == "virtio" and target.get("name") == AGENT_CHANNEL:
            facts.agent_channel = True
            facts.agent_connected = _AGENT_STATES.get(target.get("state", ""))
            return
