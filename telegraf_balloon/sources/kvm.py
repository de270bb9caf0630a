"""What the libvirt and QMP sources share: a virtio balloon seen from the host side."""

from __future__ import annotations

from typing import Optional

DRIVER_GRACE = 30.0  # least time before a silent guest driver counts as missing


def driver_silent(
    period: Optional[int],
    last_update: int,
    current: Optional[int],
    maximum: Optional[int],
    seen_for: float,
) -> bool:
    """A balloon device whose guest driver never reported, past a grace period.

    The balloon never moved and the guest never sent stats although a stats period is set:
    after max(30 s, 3 periods) since the VM was first seen, its balloon cannot inflate.
    """
    return (
        bool(period)
        and last_update == 0
        and maximum is not None
        and current == maximum
        and seen_for > max(DRIVER_GRACE, 3.0 * (period or 0))
    )
