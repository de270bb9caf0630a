"""What a QMP reply may hold, checked: a peer that says otherwise is not QEMU (or not a sane
one), and its VM is skipped for the poll with one W! line; the other VMs are not affected.

Every reader here takes the parsed JSON of one reply and returns plain values, or raises
ProtocolError with a short message naming the command and the member at fault.
"""

from __future__ import annotations

from typing import Any, Optional

from ..kvm import Vmem, VmemDevice, vmem_sum

NOT_REPORTED = 2**64 - 1  # a guest stat the guest did not send
MAX_MEMORY = 2**52  # bytes: no machine addresses more (52-bit physical addresses at most)
MAX_INT64 = 2**63 - 1  # QAPI's `int`; also the largest integer a line-protocol field holds
MAX_PERIOD = 2**32 - 1  # QEMU refuses a guest-stats-polling-interval above UINT32_MAX

# qom-get guest-stats: {"stats": {"stat-total-memory": 492847104, ...}, "last-update": 1795848260}
# Memory and swap in bytes, faults in counts; 2^64-1 = not reported. Each member -> its field.
GUEST_STATS: tuple[tuple[str, str], ...] = (
    ("stat-total-memory", "guest_total_bytes"),
    ("stat-free-memory", "guest_free_bytes"),
    ("stat-available-memory", "guest_available_bytes"),
    ("stat-disk-caches", "guest_disk_caches_bytes"),
    ("stat-swap-in", "swap_in_bytes_total"),
    ("stat-swap-out", "swap_out_bytes_total"),
    ("stat-major-faults", "major_faults_total"),
    ("stat-minor-faults", "minor_faults_total"),
)
# Proxmox's QEMU (patch "virtio-balloon: improve query-balloon") adds to query-balloon:
# {"actual": ..., "max_mem": ..., "last_update": ..., "total_mem": ..., "free_mem": ...,
#  "mem_swapped_in": ..., "mem_swapped_out": ..., "major_page_faults": ...,
#  "minor_page_faults": ...}; the guest figures only while the stats period is above 0 and
# the guest has reported, each only where the guest sent it. Each member -> its field.
PVE_BALLOON: tuple[tuple[str, str], ...] = (
    ("total_mem", "guest_total_bytes"),
    ("free_mem", "guest_free_bytes"),
    ("mem_swapped_in", "swap_in_bytes_total"),
    ("mem_swapped_out", "swap_out_bytes_total"),
    ("major_page_faults", "major_faults_total"),
    ("minor_page_faults", "minor_faults_total"),
)


class ProtocolError(Exception):
    """The peer said something that is not QMP, or not what QEMU answers."""


def shown(value: object) -> str:
    """A short description of a JSON value for a log line (never the whole of it)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -(10**30) < value < 10**30 else f"a {value.bit_length()}-bit number"
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:37]) + "..."
    return repr(value)


def as_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: returned {shown(value)}, not an object")
    return value


def string_member(info: dict[str, Any], key: str, what: str) -> Optional[str]:
    """The string member `key`; None when absent."""
    if key not in info:
        return None
    value = info[key]
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: {key} is {shown(value)}, not a string")
    return value


def integer_member(
    info: dict[str, Any],
    key: str,
    what: str,
    maximum: int,
    required: bool = False,
    minimum: int = 0,
) -> Optional[int]:
    """The integer member `key` in [minimum, maximum]; None when absent and not required."""
    if key not in info:
        if required:
            raise ProtocolError(f"{what}: no {key}")
        return None
    return bounded(info[key], f"{what} {key}", maximum, minimum)


def bounded(value: object, what: str, maximum: int, minimum: int = 0) -> int:
    """`value` as an integer in [minimum, maximum] (a JSON true is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} is {shown(value)}, not an integer")
    if not minimum <= value <= maximum:
        raise ProtocolError(f"{what} is {shown(value)}, out of range")
    return value


def guest_stats(info: dict[str, Any]) -> dict[str, Any]:
    """qom-get guest-stats: {"stats": {name: uint64}, "last-update": int}."""
    what = "qom-get guest-stats"
    stats = info.get("stats", {})
    if not isinstance(stats, dict):
        raise ProtocolError(f"{what}: stats is {shown(stats)}, not an object")
    for key, _ in GUEST_STATS:
        integer_member(stats, key, what, NOT_REPORTED)  # QEMU's uint64; junk is left out later
    integer_member(info, "last-update", what, MAX_INT64)
    return info


def devices(value: object) -> list[tuple[str, str]]:
    """qom-list: [{"name": str, "type": str, ...}] as (name, type) pairs."""
    if not isinstance(value, list):
        raise ProtocolError(f"qom-list: returned {shown(value)}, not an array")
    out = []
    for item in value:
        info = as_object(item, "qom-list")
        name = string_member(info, "name", "qom-list")
        kind = string_member(info, "type", "qom-list")
        if name is None or kind is None:
            raise ProtocolError("qom-list: a property without name or type")
        out.append((name, kind))
    return out


# query-memory-devices: [{"type": "virtio-mem", "data": {"size": 0, "requested-size": 0,
#   "max-size": 536870912, "block-size": 2097152, "memaddr": ..., "node": 0, "memdev":
#   "/objects/vmem0", "id": "vm0"}}, {"type": "dimm", "data": {...}}, ...]
VMEM_SIZES = ("size", "requested-size", "max-size", "block-size")


def memory_devices(value: object) -> tuple[Optional[Vmem], list[str]]:
    """The virtio-mem devices of a query-memory-devices reply, summed; None when there are
    none. A virtio-mem device with a member missing or of the wrong type is skipped and
    named in the returned problems; other device types are not ours to read.

    ProtocolError when the reply is not an array: that is not QEMU."""
    if not isinstance(value, list):
        raise ProtocolError(f"query-memory-devices: returned {shown(value)}, not an array")
    found: list[VmemDevice] = []
    problems: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type") != "virtio-mem":
            continue
        data = item.get("data")
        what = f"virtio-mem device {index}"
        try:
            info = as_object(data, what)
            size, asked, most, step = (
                int(integer_member(info, key, what, MAX_MEMORY, required=True) or 0)
                for key in VMEM_SIZES
            )
            ident = string_member(info, "id", what) or ""
        except ProtocolError as exc:
            problems.append(str(exc))
            continue
        found.append(VmemDevice(ident, size, asked, most, step))
    return vmem_sum(found), problems


def error_of(message: dict[str, Any], command: str) -> Optional[dict[str, Any]]:
    """The reply's `error` member (None if it succeeded); ProtocolError if it is neither."""
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict) or not isinstance(error.get("class"), str):
            raise ProtocolError(f"{command}: error is {shown(error)}, not a QMP error")
        if not isinstance(error.get("desc", ""), str):
            raise ProtocolError(f"{command}: error desc is {shown(error['desc'])}")
        return error
    if "return" not in message:
        raise ProtocolError(f"{command}: a reply with neither return nor error")
    return None


def error_class(error: Optional[dict[str, Any]]) -> str:
    """A QMP error's class ("DeviceNotFound", ...); "" for no error."""
    return str(error.get("class", "")) if error is not None else ""


def described(error: dict[str, Any]) -> str:
    """A QMP error as a log line shows it: its class and description, at most 200 characters."""
    text = f"{error.get('class', 'error')}: {error.get('desc', '')}"
    return text if len(text) <= 200 else text[:197] + "..."
