"""The libvirt source's stats -> fields mapping, on what a real libvirtd answered.

The records are real (tests/fixtures/libvirt/SOURCE.md): a QEMU guest's bulk stats before
and after its balloon was inflated, and its memoryStats() answer. The mapping needs no
libvirt binding: these tests run without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon.sources.kvm import DRIVER_GRACE
from telegraf_balloon.sources.libvirt.domainxml import DomainFacts
from telegraf_balloon.sources.libvirt.fields import GUEST_KEYS, MEMORY_STATS_KEYS, domain_fields

SESSION = json.loads(
    (Path(__file__).parent / "fixtures/libvirt/qemu-tcg-virtio-balloon-session.json").read_text()
)
KIB = 1024


def _facts(period: int = 2) -> DomainFacts:
    facts = DomainFacts(1, 1_700_000_000.0)
    facts.period = period
    return facts


def test_every_bulk_key_to_its_field_in_bytes() -> None:
    """The inflated guest's real bulk record: each balloon.* key once, KiB -> bytes."""
    stats: dict[str, Any] = dict(SESSION["inflate_to_256MiB"]["bulk_after"])
    last_update = stats["balloon.last-update"]
    fields = domain_fields(stats, _facts(), last_update + 1.5)
    assert fields == {
        "memory_max_bytes": 524288 * KIB,
        "memory_current_bytes": 262144 * KIB,
        "balloon_actual_bytes": (524288 - 262144) * KIB,
        "guest_total_bytes": 219152 * KIB,
        "guest_free_bytes": 191684 * KIB,
        "guest_available_bytes": 191420 * KIB,
        "guest_disk_caches_bytes": 2216 * KIB,
        "swap_in_bytes_total": 0,
        "swap_out_bytes_total": 0,
        "major_faults_total": 0,
        "minor_faults_total": 2078,  # a count: not scaled
        "rss_bytes": 196032 * KIB,
        "stats_age_seconds": 1.5,
        "stats_period_seconds": 2,
        "stats_disabled": False,
        "inflation_blocked": False,
    }


def test_every_guest_key_of_a_real_record_is_mapped() -> None:
    """No balloon.* key libvirt gives is left unread, but the two hugetlb counters."""
    mapped = {key for key, _, _ in GUEST_KEYS} | {
        "balloon.current",
        "balloon.maximum",
        "balloon.last-update",
    }
    given = set(SESSION["bulk_balloon"])
    assert given - mapped == {"balloon.hugetlb_pgalloc", "balloon.hugetlb_pgfail"}


def test_memory_stats_keys_name_the_bulk_keys() -> None:
    """The per-domain fallback renames memoryStats() keys to the bulk call's, value for value:
    on the same guest at the same moment the two calls agree (rss moves on its own)."""
    memory_stats = SESSION["guest_stats"]
    bulk = SESSION["bulk_balloon"]
    renamed = {MEMORY_STATS_KEYS[k]: v for k, v in memory_stats.items() if k in MEMORY_STATS_KEYS}
    assert set(memory_stats) - set(MEMORY_STATS_KEYS) == {"hugetlb_pgalloc", "hugetlb_pgfail"}
    assert set(renamed) <= set(bulk)
    for key, value in renamed.items():
        if key != "balloon.rss":
            assert bulk[key] == value, key


def test_absent_keys_leave_their_fields_out() -> None:
    """Before the guest driver reports: only current, maximum, last-update 0 and rss."""
    first = SESSION["first_memoryStats"]
    stats = {
        "balloon.current": first["actual"],
        "balloon.maximum": SESSION["info"][1],
        "balloon.last-update": first["last_update"],
        "balloon.rss": first["rss"],
    }
    fields = domain_fields(stats, _facts(), 1_700_000_010.0)
    assert fields == {
        "memory_max_bytes": 524288 * KIB,
        "memory_current_bytes": 524288 * KIB,
        "balloon_actual_bytes": 0,
        "rss_bytes": first["rss"] * KIB,
        "stats_period_seconds": 2,
        "stats_disabled": False,
        "inflation_blocked": False,  # not yet watched past the grace
    }
    assert "balloon_target_bytes" not in fields  # libvirt has no target: never invented


def test_nothing_at_all() -> None:
    """A record without balloon keys and facts without a period: only the verdict."""
    assert domain_fields({}, DomainFacts(1, 0.0), 10.0) == {"inflation_blocked": False}


def test_a_balloon_above_maximum_holds_nothing() -> None:
    stats = {"balloon.current": 600, "balloon.maximum": 512}
    assert domain_fields(stats, _facts(), 0.0)["balloon_actual_bytes"] == 0


def test_a_poll_without_last_update_keeps_the_age_running() -> None:
    """NOWAIT on a domain whose job another client holds gives only current and maximum."""
    facts = _facts()
    full = dict(SESSION["bulk_balloon"])
    seen = full["balloon.last-update"]
    domain_fields(full, facts, seen + 1.0)
    held = {"balloon.current": 524288, "balloon.maximum": 524288}
    fields = domain_fields(held, facts, seen + 9.0)
    assert fields["stats_age_seconds"] == 9.0
    assert "guest_free_bytes" not in fields
    assert fields["inflation_blocked"] is False  # the driver reported once: it is there


@pytest.mark.parametrize(
    ("attribute", "value", "field", "expected"),
    [
        ("reservation_bytes", 256 * 1024**2, "reservation_bytes", 256 * 1024**2),
        ("limit_bytes", 2 * 1024**3, "limit_bytes", 2 * 1024**3),
        ("period", 0, "stats_disabled", True),
        ("blocked_model", True, "inflation_blocked", True),
    ],
)
def test_facts_of_the_xml_become_fields(
    attribute: str, value: object, field: str, expected: object
) -> None:
    facts = _facts()
    setattr(facts, attribute, value)
    assert domain_fields({}, facts, 0.0)[field] == expected


def test_a_driver_that_never_reports_blocks_inflation_after_the_grace() -> None:
    facts = _facts(period=2)
    stats = {"balloon.current": 524288, "balloon.maximum": 524288, "balloon.last-update": 0}
    start = facts.first_seen
    assert domain_fields(dict(stats), facts, start + DRIVER_GRACE)["inflation_blocked"] is False
    assert domain_fields(dict(stats), facts, start + DRIVER_GRACE + 1)["inflation_blocked"] is True
