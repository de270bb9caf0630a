"""When the libvirt source re-reads a domain's XML: rarely, but soon after stats freeze.

The per-poll cost stays flat: a domain whose stats flow is never re-read before
refresh_interval, and a frozen one (paused, disarmed, dead driver) once per freeze.
The real period change on a real guest is tests/integration/test_libvirt_qemu.py. The policy
needs no libvirt binding: these tests run without it.
"""

from __future__ import annotations

import pytest

from telegraf_balloon.config import LibvirtConfig
from telegraf_balloon.sources.libvirt.domainxml import DomainFacts
from telegraf_balloon.sources.libvirt.reread import RECHECK_SECONDS, frozen_after, needs_xml

T0 = 1_700_000_000.0
REFRESH = LibvirtConfig().refresh_interval  # the default: 300 s


def _facts(period: int, read_at: float) -> DomainFacts:
    facts = DomainFacts(1, read_at)
    facts.period = period
    return facts


def _reads(facts: DomainFacts, updates: list[tuple[float, int]]) -> list[float]:
    """Poll times at which the XML would be re-read, for (now, last-update) pairs."""
    out = []
    for now, last_update in updates:
        if needs_xml(facts, {"balloon.last-update": last_update}, now, REFRESH):
            out.append(now)
            facts.checked_at = now
        facts.last_update = max(facts.last_update, last_update)
    return out


def test_flowing_stats_never_reread_before_refresh_interval() -> None:
    facts = _facts(2, T0)
    # a poll every second for 299 s, the guest reporting every 2 s (up to 3 s late once)
    updates = [(T0 + t, int(T0 + t - (t % 2) - (1 if t % 37 == 0 else 0))) for t in range(1, 300)]
    assert _reads(facts, updates) == []
    assert _reads(facts, [(T0 + 300, int(T0 + 300))]) == [T0 + 300]


@pytest.mark.parametrize("period", [1, 2, 5, 10, 60])
def test_a_freeze_is_checked_once_within_three_periods_or_10s(period: int) -> None:
    facts = _facts(period, T0)
    changed = T0 + 100.0  # the last report arrived as the period was set to 0
    updates = [(T0 + t, int(T0 + t - (t % period))) for t in range(1, 100)]
    updates += [(changed + t * 0.5, int(changed)) for t in range(1, 400)]  # 200 s frozen
    reads = _reads(facts, updates)
    assert len(reads) == 1, reads  # once per freeze, however long it lasts
    assert reads[0] - changed <= max(3 * period, 10) - 0.5  # one poll interval to spare
    assert reads[0] - changed > frozen_after(period)


def test_a_domain_first_seen_frozen_is_not_reread() -> None:
    """A paused domain: the XML read when it was first seen already came after the freeze."""
    facts = _facts(2, T0)
    assert _reads(facts, [(T0 + t, int(T0 - 3600)) for t in range(1, 200)]) == []


def test_each_freeze_is_checked_again() -> None:
    facts = _facts(2, T0)
    frozen = [(T0 + t, int(T0)) for t in range(1, 20)]
    flowing = [(T0 + t, int(T0 + t)) for t in range(20, 40)]
    again = [(T0 + t, int(T0 + 40)) for t in range(41, 60)]
    assert len(_reads(facts, frozen + flowing + again)) == 2


def test_rearming_seen_through_moving_stats_at_most_every_recheck() -> None:
    facts = _facts(0, T0)
    facts.last_update = int(T0 - 50)
    updates = [(T0 + t, int(T0 + t)) for t in range(1, 100)]
    reads = _reads(facts, updates)  # the XML keeps saying 0 (set behind libvirt)
    assert reads and all(b - a >= RECHECK_SECONDS for a, b in zip([T0, *reads], reads))
