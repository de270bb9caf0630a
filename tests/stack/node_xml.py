"""Node files for libvirt's test driver: domains described in Python, written as its XML.

:class:`DomainSpec` is one domain (name, UUID, memory, balloon state, stats period, run
state); :func:`write_node_xml` writes a node file holding such domains, opened as
``test:///ABS/node.xml`` in-process or through a daemon (``LibvirtStack.test_uri``). The test
driver reads the file again on every ``open()``, so a test changes the node by rewriting it.
Standard library only.
"""

from __future__ import annotations

import os
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal

__all__ = ["DomainSpec", "DomainState", "Memballoon", "write_node_xml"]

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
DomainState = Literal["running", "paused", "shutoff"]
Memballoon = Literal["virtio", "none"]
_RUNSTATE = {"running": 1, "paused": 3, "shutoff": 5}


@dataclass
class DomainSpec:
    """One domain of a libvirt test-driver node file (``metadata``: the XML of what its
    ``<metadata>`` holds, each element in its own namespace, as libvirt requires)."""

    name: str
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    memory_kib: int = 1048576
    current_kib: int | None = None  # None: same as memory_kib
    state: DomainState = "running"
    memballoon: Memballoon = "virtio"
    stats_period: int = 10  # 0: no <stats> element
    metadata: str = ""  # the XML of the elements of its <metadata> (Nova's, KubeVirt's, ...)

    def __post_init__(self) -> None:
        if self.state not in _RUNSTATE:
            raise ValueError(f"state must be one of {sorted(_RUNSTATE)}, not {self.state!r}")
        if self.memballoon not in ("virtio", "none"):
            raise ValueError(f"memballoon must be 'virtio' or 'none', not {self.memballoon!r}")
        if not self.name or "\n" in self.name or "/" in self.name:
            raise ValueError(f"libvirt refuses the domain name {self.name!r}")
        if any(ord(c) < 0x20 and c != "\t" for c in self.name):
            raise ValueError(f"XML 1.0 cannot carry the domain name {self.name!r}")
        if self.current_kib is not None and self.current_kib > self.memory_kib:
            raise ValueError(f"{self.name!r}: current_kib > memory_kib")
        self.uuid = str(uuidlib.UUID(self.uuid))

    @property
    def current(self) -> int:
        return self.memory_kib if self.current_kib is None else self.current_kib


def write_node_xml(path: Path, domains: List[DomainSpec], host_memory_kib: int = 67108864) -> None:
    """Write a node file for libvirt's test driver holding ``domains``.

    Names are escaped by ElementTree, so any name libvirt accepts round-trips.  The file is
    read again by the test driver on every ``open()``.
    """
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ValueError("domain names must be unique")
    if len({d.uuid for d in domains}) != len(domains):
        raise ValueError("domain UUIDs must be unique")
    ET.register_namespace("test", TEST_NS)
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("mhz", 2000), ("model", "x86_64"), ("active", 16), ("nodes", 1),
                       ("sockets", 1), ("cores", 8), ("threads", 2)):  # fmt: skip
        ET.SubElement(cpu, tag).text = str(value)
    ET.SubElement(node, "memory").text = str(host_memory_kib)
    for d in domains:
        dom = ET.SubElement(node, "domain", type="test")
        ET.SubElement(dom, "name").text = d.name
        ET.SubElement(dom, "uuid").text = d.uuid
        if d.metadata:
            dom.append(ET.fromstring(f"<metadata>{d.metadata}</metadata>"))
        ET.SubElement(dom, "memory", unit="KiB").text = str(d.memory_kib)
        ET.SubElement(dom, "currentMemory", unit="KiB").text = str(d.current)
        ET.SubElement(dom, "vcpu").text = "1"
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type").text = "hvm"
        devices = ET.SubElement(dom, "devices")
        balloon = ET.SubElement(devices, "memballoon", model=d.memballoon)
        if d.memballoon == "virtio" and d.stats_period > 0:
            ET.SubElement(balloon, "stats", period=str(d.stats_period))
        ET.SubElement(dom, f"{{{TEST_NS}}}runstate").text = str(_RUNSTATE[d.state])
    ET.indent(node)
    data = ET.tostring(node, encoding="unicode")
    if "xmlns:test=" not in data:  # no domains: declare the namespace anyway
        data = data.replace("<node", f"<node xmlns:test='{TEST_NS}'", 1)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("<?xml version='1.0' encoding='UTF-8'?>\n" + data + "\n", encoding="utf-8")
    os.replace(tmp, path)
