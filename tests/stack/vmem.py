"""virtio-mem in the test stack: the device for a plain QEMU or a libvirt domain, and what the
test guest prints of it.

A guest booted with ``tb.vmem=1`` on its kernel command line (the ``/init`` block of
:mod:`tests.stack.guest_image`) loads the ``virtio_mem`` driver and prints, every second,
what it shows of the device: its virtio devices (with their features and drivers), the DMI
vendor, the memory block size and each block's state, ``/proc/iomem`` and ``MemTotal``.
``tb.vmem=nodriver`` prints the same without loading the driver. :func:`parse_vmem_console`
reads the last complete block back, :func:`guest_tree` lays it out as the files it came
from, for the guest source to read. With ``memhp_default_state=online_movable`` the guest
onlines what it plugs (as movable, so it can be unplugged again); without it, this guest (no
udev) leaves the blocks offline.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

MIB = 1024 * 1024
ONLINE_MOVABLE = "memhp_default_state=online_movable"
VMEM_ID = "vmem0"  # the device's id (plain QEMU); libvirt names it virtiomem0


def qemu_args(
    size_mib: int, requested_mib: int, block_mib: int = 2, ident: str = VMEM_ID
) -> list[str]:
    """A virtio-mem-pci device of ``size_mib`` with ``requested_mib`` asked at start (the
    machine needs ``maxmem`` above its memory by at least ``size_mib``)."""
    return [
        "-object", f"memory-backend-ram,id={ident}-mem,size={size_mib}M",
        "-device",
        f"virtio-mem-pci,id={ident},memdev={ident}-mem,requested-size={requested_mib}M,"
        f"block-size={block_mib}M",
    ]  # fmt: skip


def libvirt_vmem(
    size_mib: int, requested_mib: int, block_mib: int = 2, append: str = ""
) -> Callable[[str], str]:
    """A rewrite of a one-vCPU domain XML (``LibvirtStack.define_guest``'s ``customize``):
    room for memory devices, one NUMA node (libvirt wants one for virtio-mem), the device,
    and ``append`` on the kernel command line."""

    def rewrite(xml: str) -> str:
        dom = ET.fromstring(xml)
        memory = dom.find("memory")
        assert memory is not None and memory.get("unit") == "MiB", xml[:200]
        memory_mib = int(memory.text or "0")
        maxmem = ET.Element("maxMemory", slots="2", unit="MiB")
        maxmem.text = str(memory_mib + size_mib + 256)
        dom.insert(list(dom).index(memory), maxmem)
        cpu = ET.SubElement(dom, "cpu")
        numa = ET.SubElement(cpu, "numa")
        ET.SubElement(numa, "cell", id="0", cpus="0", memory=str(memory_mib), unit="MiB")
        cmdline = dom.find("os/cmdline")
        if cmdline is not None and append:
            cmdline.text = f"{cmdline.text} {append}"
        devices = dom.find("devices")
        assert devices is not None
        device = ET.SubElement(devices, "memory", model="virtio-mem")
        target = ET.SubElement(device, "target")
        ET.SubElement(target, "size", unit="MiB").text = str(size_mib)
        ET.SubElement(target, "node").text = "0"
        ET.SubElement(target, "block", unit="MiB").text = str(block_mib)
        ET.SubElement(target, "requested", unit="MiB").text = str(requested_mib)
        return ET.tostring(dom, encoding="unicode")

    return rewrite


@dataclass
class VmemDump:
    """One block the guest printed."""

    number: int
    devices: list[tuple[str, str, str]] = field(default_factory=list)  # virtioN, id, driver
    features: dict[str, str] = field(default_factory=dict)  # virtioN -> its feature bits
    vendor: str = ""  # DMI sys_vendor
    block_size: str = ""
    states: dict[str, str] = field(default_factory=dict)  # memoryN -> online/offline
    iomem: list[str] = field(default_factory=list)
    memtotal_kib: Optional[int] = None

    def iomem_bytes(self, name: str) -> int:
        """What /proc/iomem shows the virtio_mem driver added under device ``name``."""
        total, inside = 0, False
        for line in self.iomem:
            if not line.startswith(" "):
                inside = line.endswith(f" : {name}")
            elif inside and line.strip().endswith(": System RAM (virtio_mem)"):
                first, last = line.split(" : ")[0].strip().split("-")
                total += int(last, 16) - int(first, 16) + 1
        return total


_BEGIN = re.compile(r"^=== VMEM (\d+) ===$", re.M)


def parse_vmem_console(text: str) -> Optional[VmemDump]:
    """The last complete VMEM block of a console text (lines of other output mixed in are
    left out: the guest's two printing loops may interleave)."""
    text = text.replace("\r", "")
    for begin in reversed(list(_BEGIN.finditer(text))):
        number = int(begin.group(1))
        end = text.find(f"=== VMEM END {number} ===", begin.end())
        if end < 0:
            continue
        dump = VmemDump(number)
        for line in text[begin.end() : end].split("\n"):
            kind, _, rest = line.partition(" ")
            if kind == "VMEM-DEVICE":  # virtioN id features [driver]
                words = rest.split()
                if len(words) >= 3:
                    dump.devices.append((words[0], words[1], words[3] if len(words) > 3 else ""))
                    dump.features[words[0]] = words[2]
            elif kind == "VMEM-DMI":
                dump.vendor = rest.strip()
            elif kind == "VMEM-BLOCK-SIZE":
                dump.block_size = rest.strip()
            elif kind == "VMEM-STATE":
                words = rest.split()
                if len(words) == 2:
                    dump.states[words[0]] = words[1]
            elif kind == "VMEM-IOMEM":
                dump.iomem.append(rest)
            elif kind == "VMEM-MEMTOTAL":
                dump.memtotal_kib = int(rest.split()[0])
        if dump.block_size and dump.memtotal_kib is not None:
            return dump
    return None


def guest_tree(dump: VmemDump, root: Path) -> Path:
    """The files the dump was printed from, laid out under ``root`` as the guest has them."""
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "meminfo").write_text(f"MemTotal:       {dump.memtotal_kib} kB\n")
    (root / "proc" / "iomem").write_text("".join(line + "\n" for line in dump.iomem))
    bus = root / "sys" / "bus" / "virtio"
    for name, ident, driver in dump.devices:
        device = bus / "devices" / name
        device.mkdir(parents=True, exist_ok=True)
        (device / "device").write_text(ident + "\n")
        (device / "features").write_text(dump.features.get(name, "") + "\n")
        if driver:
            (bus / "drivers" / driver / name).mkdir(parents=True, exist_ok=True)
            (device / "driver").symlink_to(f"../../drivers/{driver}")
    if dump.vendor:
        dmi = root / "sys" / "class" / "dmi" / "id"
        dmi.mkdir(parents=True, exist_ok=True)
        (dmi / "sys_vendor").write_text(dump.vendor + "\n")
    memory = root / "sys" / "devices" / "system" / "memory"
    memory.mkdir(parents=True, exist_ok=True)
    (memory / "block_size_bytes").write_text(dump.block_size + "\n")
    for block, state in dump.states.items():
        (memory / block).mkdir(exist_ok=True)
        (memory / block / "state").write_text(state + "\n")
    return root
