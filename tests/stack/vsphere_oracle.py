"""What the vSphere source must report for a VM, computed from pyVmomi's own values (test code).

The source parses vCenter's SOAP replies itself (``telegraf_balloon/sources/vsphere/``). The
integration tests and ``bench/bench_vsphere.py`` read the same properties and counters through
pyVmomi, whose typed objects are the oracle, and compute here what the source's fields must
be. The mapping is written again here on purpose, from vSphere's documented units rather than
from the source's code, so that a slip in either shows as a difference.

The quickStats table is also what :func:`tests.stack.vsphere_setup.configure_vm` sets: its
keywords are the second column.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = [
    "KIB",
    "MIB",
    "QUICKSTATS",
    "TOOLS_RUNNING",
    "TOOLS_VERSION",
    "VMMEMCTL",
    "VMMEMCTLTARGET",
    "apply_sample",
    "expected_fields",
    "reported",
    "tools_status",
]

KIB = 1024
MIB = 1024 * 1024
QUICK = "summary.quickStats."

# quickStats attribute, configure_vm's keyword, the source's field (None: not reported), and
# bytes per unit: vSphere gives every quickStats memory figure in MB but compressedMemory (KB).
QUICKSTATS: Tuple[Tuple[str, str, Optional[str], int], ...] = (
    ("balloonedMemory", "ballooned_mb", "balloon_actual_bytes", MIB),
    ("swappedMemory", "swapped_mb", "host_swapped_bytes", MIB),
    ("compressedMemory", "compressed_kb", "compressed_bytes", KIB),
    ("hostMemoryUsage", "consumed_mb", "consumed_bytes", MIB),
    ("guestMemoryUsage", "active_mb", "active_bytes", MIB),
    ("grantedMemory", "granted_mb", "granted_bytes", MIB),
    ("sharedMemory", "shared_mb", "shared_bytes", MIB),
    ("privateMemory", "private_mb", None, MIB),
    ("consumedOverheadMemory", "overhead_mb", "overhead_bytes", MIB),
)
# vCenter leaves an int out when it has nothing for it: for these, a powered-on VM's 0.
ZERO_WHEN_MISSING = frozenset(("balloonedMemory", "swappedMemory", "compressedMemory"))

# VMware Tools (vim.vm.GuestInfo): toolsRunningStatus -> tools_running, and
# toolsVersionStatus2 -> tools_status, the enum value's words after "guestTools" in snake case.
TOOLS_RUNNING = {"guestToolsRunning": True, "guestToolsExecutingScripts": True,
                 "guestToolsNotRunning": False}  # fmt: skip
TOOLS_VERSION = (
    "guestToolsNotInstalled", "guestToolsNeedUpgrade", "guestToolsCurrent",
    "guestToolsUnmanaged", "guestToolsTooOld", "guestToolsSupportedOld",
    "guestToolsSupportedNew", "guestToolsTooNew", "guestToolsBlacklisted",
)  # fmt: skip


def tools_status(value: str) -> str:
    """guestToolsNeedUpgrade -> need_upgrade."""
    words = re.findall(r"[A-Z][a-z]*", value[len("guestTools") :])
    return "_".join(w.lower() for w in words)


# Realtime counters (group.name.rollup), all in KB.
VMMEMCTL = "mem.vmmemctl.average"
VMMEMCTLTARGET = "mem.vmmemctltarget.average"
SWAPPED = "mem.swapped.average"
COMPRESSED = "mem.compressed.average"


def reported(props: Mapping[str, Any]) -> bool:
    """Whether the source reports the VM at all: powered on, and not a template."""
    return props.get("runtime.powerState") == "poweredOn" and not props.get("config.template")


def expected_fields(props: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields of one reported VM from its quickStats and config alone (no realtime sample).

    ``props``: pyVmomi's values by property path, for the source's own leaf paths
    (``summary.quickStats.balloonedMemory``, ``config.memoryAllocation.reservation``, ...).
    """
    fields: Dict[str, Any] = {}
    for attr, _, field, scale in QUICKSTATS:
        value = props.get(QUICK + attr)
        if value is None and attr in ZERO_WHEN_MISSING:
            value = 0
        if field is not None and value is not None and value >= 0:
            fields[field] = value * scale
    memory = props.get("config.hardware.memoryMB")
    if memory is not None:
        fields["memory_max_bytes"] = memory * MIB
        fields["memory_current_bytes"] = max(
            0, memory * MIB - fields.get("balloon_actual_bytes", 0)
        )
    reservation = props.get("config.memoryAllocation.reservation")
    if reservation is not None and reservation >= 0:
        fields["reservation_bytes"] = reservation * MIB
    limit = props.get("config.memoryAllocation.limit")
    if limit is not None and limit >= 0:  # -1: unlimited
        fields["limit_bytes"] = limit * MIB
    fields["inflation_blocked"] = (
        reservation is not None and memory is not None and reservation >= memory > 0
    )
    running = props.get("guest.toolsRunningStatus")
    if running in TOOLS_RUNNING:
        fields["tools_running"] = TOOLS_RUNNING[running]
    version = props.get("guest.toolsVersionStatus2")
    if version in TOOLS_VERSION:
        fields["tools_status"] = tools_status(version)
    return fields


def apply_sample(
    values: Mapping[str, int], props: Mapping[str, Any], fields: Dict[str, Any]
) -> None:
    """``fields`` once a fresh realtime sample (``{counter: latest value}``) is known: the
    balloon's size and target from the counters, swapped and compressed too where the
    quickStats lacked them."""
    actual = values.get(VMMEMCTL)
    if actual is not None:
        fields["balloon_actual_bytes"] = actual * KIB
        if "memory_max_bytes" in fields:
            fields["memory_current_bytes"] = max(0, fields["memory_max_bytes"] - actual * KIB)
    target = values.get(VMMEMCTLTARGET)
    if target is not None:
        fields["balloon_target_bytes"] = target * KIB
    if SWAPPED in values and QUICK + "swappedMemory" not in props:
        fields["host_swapped_bytes"] = values[SWAPPED] * KIB
    if COMPRESSED in values and QUICK + "compressedMemory" not in props:
        fields["compressed_bytes"] = values[COMPRESSED] * KIB
