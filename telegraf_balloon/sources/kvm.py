"""What the libvirt and QMP sources share: a virtio balloon and virtio-mem devices seen from
the host side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

from ..model import Fields

DRIVER_GRACE = 30.0  # least time before a silent guest driver counts as missing
# How long a QEMU guest agent has to answer a guest-ping (libvirt and the .qga socket alike;
# libvirt counts an agent command's timeout in whole seconds): a live agent answers in
# milliseconds, so no answer by then is an agent (or a guest) that does not answer.
AGENT_TIMEOUT = 1.0


def driver_grace(period: int) -> float:
    """Seconds a VM must be watched before its never-reporting driver counts as missing.

    max(30 s, 3 stats periods): a driver reports once per period, so three missed reports
    (and at least 30 s for a guest still booting) say it is not there.
    """
    return max(DRIVER_GRACE, 3.0 * period)


def driver_verdict(
    period: Optional[int],
    reported: bool,
    current: Optional[float],
    maximum: Optional[float],
    seen_for: float,
) -> Optional[bool]:
    """Whether the guest driver behind a virtio balloon is missing: the one rule, for the
    sources (which raise `inflation_blocked`) and for --explain (which says "not judged").

    `reported`: the guest sent stats at least once since the VM (this start of it) was first
    seen, whether or not this poll carries them: a poll whose stats are missing (another
    client holds the domain's job, a monitor that did not answer in time) says nothing
    about the driver. `seen_for`: seconds since the VM was first seen.

    True: no stats ever, a stats period set, the balloon never moved, for longer than
    driver_grace(period). False: the driver is there (it reported, or the balloon moved) or
    this rule cannot apply (no stats period, memory unknown). None: not yet watched for
    long enough to tell.
    """
    if not period or reported or maximum is None or current != maximum:
        return False
    return True if seen_for > driver_grace(period) else None


def driver_silent(
    period: Optional[int],
    reported: bool,
    current: Optional[float],
    maximum: Optional[float],
    seen_for: float,
) -> bool:
    """A balloon device whose guest driver never reported, past the grace (see driver_verdict)."""
    return driver_verdict(period, reported, current, maximum, seen_for) is True


class VmemDevice(NamedTuple):
    """One virtio-mem device (bytes): its name (libvirt's alias, QEMU's id; "" if none),
    plugged now (None: not known), requested, maximum and block size."""

    name: str
    plugged: Optional[int]
    requested: int
    maximum: int
    block: int


class Vmem(NamedTuple):
    """A VM's virtio-mem devices, summed (bytes); `plugged` None when a device did not say.
    `worst` is the device furthest off its request (the one a remedy names)."""

    plugged: Optional[int]
    requested: int
    maximum: int
    block: int
    devices: int
    worst: VmemDevice


def vmem_sum(devices: Sequence[VmemDevice]) -> Optional[Vmem]:
    """The devices summed; None when there are none."""
    if not devices:
        return None
    known = [d.plugged for d in devices if d.plugged is not None]
    plugged = sum(known) if len(known) == len(devices) else None
    worst = max(
        devices, key=lambda d: abs(d.plugged - d.requested) if d.plugged is not None else -1
    )
    return Vmem(
        plugged,
        sum(d.requested for d in devices),
        sum(d.maximum for d in devices),
        max(d.block for d in devices),
        len(devices),
        worst,
    )


def vmem_fields(vmem: Vmem, fields: Fields) -> None:
    """The vmem_* fields of a VM's devices (gap and plugged only where plugged is known)."""
    if vmem.plugged is not None:
        fields["vmem_plugged_bytes"] = vmem.plugged
        fields["vmem_gap_bytes"] = vmem.plugged - vmem.requested
    fields["vmem_requested_bytes"] = vmem.requested
    fields["vmem_max_bytes"] = vmem.maximum
    fields["vmem_block_bytes"] = vmem.block
