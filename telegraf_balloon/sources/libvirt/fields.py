"""libvirt's balloon stats of one domain -> the plugin's fields, in bytes.

The keys are those of the bulk stats call (`balloon.*`, KiB or counts); a domain the bulk
call gave none is filled from memoryStats() under the same names first (MEMORY_STATS_KEYS).
A key libvirt did not give leaves its field out: nothing is invented (libvirt has no balloon
target, so there is no target field). Needs no libvirt binding.
"""

from __future__ import annotations

from typing import Any

from ...model import Fields
from ..kvm import driver_silent, vmem_fields
from .domainxml import KIB, DomainFacts

# balloon.* keys (KiB or counts) -> (field, scale)
GUEST_KEYS: tuple[tuple[str, str, int], ...] = (
    ("balloon.available", "guest_total_bytes", KIB),
    ("balloon.unused", "guest_free_bytes", KIB),
    ("balloon.usable", "guest_available_bytes", KIB),
    ("balloon.disk_caches", "guest_disk_caches_bytes", KIB),
    ("balloon.swap_in", "swap_in_bytes_total", KIB),
    ("balloon.swap_out", "swap_out_bytes_total", KIB),
    ("balloon.major_fault", "major_faults_total", 1),
    ("balloon.minor_fault", "minor_faults_total", 1),
    ("balloon.rss", "rss_bytes", KIB),
)
# memoryStats() keys -> bulk keys, for the per-domain fallback
MEMORY_STATS_KEYS = {
    "actual": "balloon.current",
    "available": "balloon.available",
    "unused": "balloon.unused",
    "usable": "balloon.usable",
    "disk_caches": "balloon.disk_caches",
    "swap_in": "balloon.swap_in",
    "swap_out": "balloon.swap_out",
    "major_fault": "balloon.major_fault",
    "minor_fault": "balloon.minor_fault",
    "rss": "balloon.rss",
    "last_update": "balloon.last-update",
}


def domain_fields(stats: dict[str, Any], facts: DomainFacts, now: float) -> Fields:
    """The balloon line's fields of one domain, from its stats and its cached XML facts.

    Keeps in `facts` the newest guest report seen (balloon.last-update) of this domain start.
    """
    fields: Fields = {}
    maximum = stats.get("balloon.maximum")
    current = stats.get("balloon.current")
    vmem = facts.vmem
    if vmem is not None:
        # libvirt's maximum counts each virtio-mem device at its full <size>, its current at
        # what is plugged (<current>, live XML, libvirt 7.10+): memory_max_bytes is what the
        # VM has with the balloon empty, virtio-mem at what it has plugged now, so that the
        # balloon figures are the balloon's alone.
        vmem_fields(vmem, fields)
        if maximum is not None:
            maximum = int(maximum) - (vmem.maximum - (vmem.plugged or 0)) // KIB
        if current is not None and facts.blocked_model and maximum is not None:
            current = maximum  # no balloon: libvirt's current is its total memory
    if maximum is not None:
        fields["memory_max_bytes"] = int(maximum) * KIB
    if current is not None:
        fields["memory_current_bytes"] = int(current) * KIB
        if maximum is not None:
            fields["balloon_actual_bytes"] = max(0, int(maximum) - int(current)) * KIB
    for key, name, scale in GUEST_KEYS:
        value = stats.get(key)
        if value is not None:
            fields[name] = int(value) * scale
    # A poll without last-update (another client holds the domain's job: NOWAIT then
    # gives only current and maximum) is no news of the driver: the age runs on from
    # the last report this plugin saw of this domain start.
    facts.last_update = max(facts.last_update, int(stats.get("balloon.last-update", 0)))
    if facts.last_update > 0:
        fields["stats_age_seconds"] = max(0.0, now - facts.last_update)
    if facts.reservation_bytes is not None:
        fields["reservation_bytes"] = facts.reservation_bytes
    if facts.limit_bytes is not None:
        fields["limit_bytes"] = facts.limit_bytes
    period = facts.period
    if period is not None:
        fields["stats_period_seconds"] = period
        fields["stats_disabled"] = period == 0
    fields["inflation_blocked"] = facts.blocked_model or driver_silent(
        period, facts.last_update > 0, current, maximum, now - facts.first_seen
    )
    if facts.agent_connected is not None:  # as of the last XML read (agent_ping: this poll)
        fields["guest_agent_connected"] = facts.agent_connected
    return fields
