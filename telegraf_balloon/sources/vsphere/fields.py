"""What a VM's and a host's properties, and a VM's realtime counters, say in balloon fields.

The property paths the source asks for, and how their values (the text of the reply, in MB,
compressed memory in KB, counters in KB) become the fields in bytes that the catalog names.
The tests' oracle (tests/stack/vsphere_oracle.py) writes the same mapping again from
pyVmomi's typed values, on purpose: the two must agree for every VM of the simulator.
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import Any, Optional

from ...model import Fields
from .soap import Props

KIB = 1024
MIB = 1024 * 1024

# Leaf property paths only: each builds a small reply element, where `summary` would build all.
VM_PATHS: tuple[str, ...] = (
    "name",
    "config.template",
    "config.instanceUuid",
    "config.hardware.memoryMB",
    "config.memoryAllocation.reservation",
    "config.memoryAllocation.limit",
    "runtime.powerState",
    "runtime.host",
    "summary.quickStats.balloonedMemory",
    "summary.quickStats.swappedMemory",
    "summary.quickStats.compressedMemory",
    "summary.quickStats.grantedMemory",
    "summary.quickStats.hostMemoryUsage",
    "summary.quickStats.guestMemoryUsage",
    "summary.quickStats.sharedMemory",
    "summary.quickStats.consumedOverheadMemory",
    # VMware Tools, the guest's integration service (the balloon driver's host side)
    "guest.toolsRunningStatus",
    "guest.toolsVersionStatus2",
)
VM_PATH_PATHS = ("parent", "parentVApp")  # asked only when vm_include needs inventory paths
HOST_PATHS = ("summary.hardware.memorySize", "summary.quickStats.overallMemoryUsage")

# quickStats (MB, compressed in KB) -> field, scale
QUICKSTATS: tuple[tuple[str, str, int], ...] = (
    ("summary.quickStats.swappedMemory", "host_swapped_bytes", MIB),
    ("summary.quickStats.compressedMemory", "compressed_bytes", KIB),
    ("summary.quickStats.grantedMemory", "granted_bytes", MIB),
    ("summary.quickStats.hostMemoryUsage", "consumed_bytes", MIB),
    ("summary.quickStats.guestMemoryUsage", "active_bytes", MIB),
    ("summary.quickStats.sharedMemory", "shared_bytes", MIB),
    ("summary.quickStats.consumedOverheadMemory", "overhead_bytes", MIB),
)
# vCenter leaves out an optional int it has nothing for; a powered-on VM's reclaim figures are
# then 0 (the simulator leaves out every zero). The others stay absent when left out.
ZERO_WHEN_MISSING = frozenset(
    (
        "summary.quickStats.balloonedMemory",
        "summary.quickStats.swappedMemory",
        "summary.quickStats.compressedMemory",
    )
)

# VMware Tools: guest.toolsRunningStatus -> tools_running (an unknown value: absent) and
# guest.toolsVersionStatus2 (vim.vm.GuestInfo.ToolsVersionStatus) -> tools_status.
TOOLS_RUNNING: dict[str, bool] = {
    "guestToolsRunning": True,
    "guestToolsExecutingScripts": True,  # running its power-operation scripts
    "guestToolsNotRunning": False,
}
TOOLS_STATUS: dict[str, str] = {
    "guestToolsCurrent": "current",
    "guestToolsNeedUpgrade": "need_upgrade",
    "guestToolsNotInstalled": "not_installed",
    "guestToolsUnmanaged": "unmanaged",  # open-vm-tools, updated by the guest's own packages
    "guestToolsTooOld": "too_old",
    "guestToolsSupportedOld": "supported_old",
    "guestToolsSupportedNew": "supported_new",
    "guestToolsTooNew": "too_new",
    "guestToolsBlacklisted": "blacklisted",
}

# Realtime counters, all in KB.
VMMEMCTL = "mem.vmmemctl.average"
VMMEMCTLTARGET = "mem.vmmemctltarget.average"
SWAPPED = "mem.swapped.average"
COMPRESSED = "mem.compressed.average"
COUNTERS = (VMMEMCTL, VMMEMCTLTARGET, SWAPPED, COMPRESSED)

SWAPPED_QS = "summary.quickStats.swappedMemory"
COMPRESSED_QS = "summary.quickStats.compressedMemory"
# Which of the two quickStats a VM's reply carried (the counters fill in the others): one
# shared set per combination, so nothing is kept per VM but a reference.
QUICK_PRESENT: dict[tuple[bool, bool], frozenset[str]] = {
    (swapped, compressed): frozenset(
        path for path, there in ((SWAPPED_QS, swapped), (COMPRESSED_QS, compressed)) if there
    )
    for swapped in (False, True)
    for compressed in (False, True)
}


def _int(value: Any) -> Optional[int]:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def vm_fields(props: Props) -> Fields:
    """The balloon fields of one powered-on VM from its properties (sizes to bytes)."""
    fields: Fields = {}
    memory_mb = _int(props.get("config.hardware.memoryMB"))
    if memory_mb is not None:
        fields["memory_max_bytes"] = memory_mb * MIB
    ballooned = _int(props.get("summary.quickStats.balloonedMemory", "0"))
    if ballooned is not None:
        fields["balloon_actual_bytes"] = ballooned * MIB
        if memory_mb is not None:
            fields["memory_current_bytes"] = max(0, memory_mb - ballooned) * MIB
    for path, name, scale in QUICKSTATS:
        raw = props.get(path, "0" if path in ZERO_WHEN_MISSING else None)
        value = _int(raw)
        if value is not None and value >= 0:
            fields[name] = value * scale
    reservation = _int(props.get("config.memoryAllocation.reservation"))
    if reservation is not None and reservation >= 0:
        fields["reservation_bytes"] = reservation * MIB
    limit = _int(props.get("config.memoryAllocation.limit"))
    if limit is not None and limit >= 0:  # -1: unlimited
        fields["limit_bytes"] = limit * MIB
    fields["inflation_blocked"] = (
        reservation is not None and memory_mb is not None and reservation >= memory_mb > 0
    )
    running = TOOLS_RUNNING.get(props.get("guest.toolsRunningStatus", ""))
    if running is not None:
        fields["tools_running"] = running
    version = props.get("guest.toolsVersionStatus2")
    if version is not None:
        status = TOOLS_STATUS.get(version) or tools_status(version)
        if status:
            fields["tools_status"] = status
    return fields


_TOOLS_NEW = re.compile(r"guestTools([A-Z][A-Za-z]{0,40})")
_WORD = re.compile(r"(?<!^)(?=[A-Z])")


def tools_status(value: object) -> str:
    """A ToolsVersionStatus value newer than TOOLS_STATUS, snake-cased as the known ones are
    (guestToolsSomethingNew -> something_new); "" for anything else."""
    match = _TOOLS_NEW.fullmatch(value) if isinstance(value, str) else None
    return _WORD.sub("_", match.group(1)).lower() if match else ""


def counters_for(present: Container[str]) -> list[str]:
    """The realtime counters a VM is asked for: the balloon's, and swapped and compressed
    where its quickStats (`present`: the paths its reply carried) lacked them."""
    names = [VMMEMCTL, VMMEMCTLTARGET]
    if SWAPPED_QS not in present:
        names.append(SWAPPED)
    if COMPRESSED_QS not in present:
        names.append(COMPRESSED)
    return names


def counter_fields(values: dict[str, int], present: Container[str], fields: Fields) -> None:
    """Balloon actual and target from one realtime sample (same instant, KB precision)."""
    actual = values.get(VMMEMCTL)
    target = values.get(VMMEMCTLTARGET)
    if actual is not None:
        fields["balloon_actual_bytes"] = actual * KIB
        maximum = fields.get("memory_max_bytes")
        if isinstance(maximum, int):
            fields["memory_current_bytes"] = max(0, maximum - actual * KIB)
    if target is not None and (actual is not None or "balloon_actual_bytes" in fields):
        fields["balloon_target_bytes"] = target * KIB
    swapped = values.get(SWAPPED)
    if swapped is not None and SWAPPED_QS not in present:
        fields["host_swapped_bytes"] = swapped * KIB
    compressed = values.get(COMPRESSED)
    if compressed is not None and COMPRESSED_QS not in present:
        fields["compressed_bytes"] = compressed * KIB


def host_memory(props: Props) -> tuple[Optional[int], Optional[int]]:
    """A host's memory and what of it is free, in bytes (None where its properties lack them)."""
    memory = _int(props.get("summary.hardware.memorySize"))
    if memory is None or memory <= 0:
        return None, None
    used = _int(props.get("summary.quickStats.overallMemoryUsage"))
    if used is None or used < 0:
        return memory, None
    return memory, max(0, memory - used * MIB)
