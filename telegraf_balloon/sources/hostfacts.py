"""What a hypervisor host says of itself in its own /proc and /sys (local sources only).

The one module that reads the host's files: each reader takes the root they are under
(`host_root`, "/" unless the plugin runs with the host's tree mounted elsewhere). The
libvirt and qmp sources ask here and never open a host file themselves.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

from ..model import HostInfo, Tags

# /proc/meminfo:
# MemTotal:       24596040 kB
# MemFree:        22041612 kB
_MEMINFO_KEYS = {"MemTotal": "total", "MemFree": "free"}


def host_memory(root: str) -> tuple[Optional[int], Optional[int]]:
    """(physical, free) bytes from root/proc/meminfo; None for what cannot be read."""
    found: dict[str, int] = {}
    try:
        with open(os.path.join(root, "proc", "meminfo"), "rb") as handle:
            text = handle.read(65536).decode("ascii", "replace")
    except OSError:
        return None, None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        key = _MEMINFO_KEYS.get(name)
        if key is None:
            continue
        parts = rest.split()
        if parts and parts[0].isascii() and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            found[key] = int(parts[0]) * scale
    return found.get("total"), found.get("free")


# /sys/devices/system/edac/mc/mc0/ce_count: "0\n"   (one mcN per memory controller)
def edac_counts(root: str) -> Optional[tuple[int, int]]:
    """(corrected, uncorrected) ECC errors summed over EDAC memory controllers; None: no EDAC."""
    controllers = glob.glob(os.path.join(root, "sys", "devices", "system", "edac", "mc", "mc*"))
    corrected = uncorrected = 0
    seen = False
    for directory in controllers:
        counts = [_read_count(os.path.join(directory, name)) for name in ("ce_count", "ue_count")]
        if counts[0] is None and counts[1] is None:
            continue
        seen = True
        corrected += counts[0] or 0
        uncorrected += counts[1] or 0
    return (corrected, uncorrected) if seen else None


def _read_count(path: str) -> Optional[int]:
    try:
        with open(path, "rb") as handle:
            text = handle.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# /proc/<pid>/stat: "1234 (qemu-system-x86) S 1 ... <starttime, field 22> ..."
def process_start(pid: int, root: str) -> int:
    """A process's start time in clock ticks since boot (0 if unreadable): with its pid,
    what tells a restarted QEMU from the one seen before."""
    try:
        with open(os.path.join(root, "proc", str(pid), "stat"), "rb") as handle:
            text = handle.read(4096)
    except OSError:
        return 0
    fields = text[text.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


# /proc/<pid>/status: "VmRSS:\t  123456 kB"
def process_rss(pid: int, root: str) -> Optional[int]:
    """Resident memory of a process in bytes (None if unreadable)."""
    try:
        with open(os.path.join(root, "proc", str(pid), "status"), "rb") as handle:
            text = handle.read(8192)
    except OSError:
        return None
    at = text.find(b"\nVmRSS:")
    if at < 0:
        return None
    parts = text[at + 7 : text.find(b"\n", at + 1)].split()
    return int(parts[0]) * 1024 if parts and parts[0].isdigit() else None


def local_host(tags: Tags, root: str) -> HostInfo:
    """A HostInfo from this machine's own files: physical and free memory, ECC counters."""
    total, free = host_memory(root)
    info = HostInfo(tags, total, free)
    ecc = edac_counts(root)
    if ecc is not None:
        info.ecc_corrected_total, info.ecc_uncorrected_total = ecc
    return info
