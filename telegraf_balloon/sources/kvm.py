"""What the libvirt and QMP sources share: a virtio balloon seen from the host side."""

from __future__ import annotations

from typing import Optional

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
