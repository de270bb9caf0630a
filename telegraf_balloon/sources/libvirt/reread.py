"""When the libvirt source reads a domain's XML again: rarely, but soon after its stats freeze.

The per-poll cost stays flat: a domain whose stats flow is not read again before
refresh_interval, and a frozen one (paused, disarmed, dead driver) once per freeze. A domain
whose guest agent channel was disconnected is read again every RECHECK_SECONDS: an agent
starts after the guest boots, and its state shows only in the XML.
"""

from __future__ import annotations

from typing import Any

from .domainxml import DomainFacts

RECHECK_SECONDS = 30.0  # least time between two XML re-reads of a disarmed domain whose stats
# move, or of one whose guest agent was not connected


def frozen_after(period: int) -> float:
    """Seconds without a stats report after which a period-`period` domain looks disarmed.

    Two missed reports, plus a second for last-update's whole seconds.
    """
    return 2.0 * period + 2.0


def needs_xml(
    facts: DomainFacts, stats: dict[str, Any], now: float, refresh_interval: float
) -> bool:
    """Re-read the XML when it is old, or when the stats contradict the cached period.

    A period set to 0 while the domain runs shows only as stats that stop: checked
    (one XML read per freeze) once two reports are missing, so that stats_disabled
    shows within max(3 periods, 10 s) of the change at any poll interval below that.
    Marks a freeze as checked in `facts` when it says yes for one.
    """
    if now - facts.checked_at >= refresh_interval:
        return True
    if facts.agent_connected is False and now - facts.checked_at >= RECHECK_SECONDS:
        return True  # a guest agent not connected yet (the guest boots) or any more
    maximum = stats.get("balloon.maximum")
    if maximum is not None and facts.stats_max is not None and int(maximum) != facts.stats_max:
        return True  # memory was hot-plugged or unplugged (a DIMM, a virtio-mem device)
    if facts.blocked_model:
        return False
    last_update = int(stats.get("balloon.last-update", 0))
    if facts.period == 0:
        # Someone armed it: stats move again. Not more often than RECHECK_SECONDS: a
        # period set behind libvirt's back leaves the XML at 0 while the stats move.
        return last_update > facts.last_update and now - facts.checked_at >= RECHECK_SECONDS
    if not facts.period or not last_update:
        return False
    overdue = frozen_after(facts.period)
    if now - last_update <= overdue:
        return False
    # Once per freeze, not on every poll (a paused guest or a dead driver stays frozen
    # for long); and not when the last read came after this freeze was already evident.
    if last_update == facts.frozen_checked or facts.checked_at - last_update > overdue:
        return False
    facts.frozen_checked = last_update
    return True
