"""What the libvirt source reads in a domain's XML: the balloon model, the stats period,
memory and memtune sizes in any of libvirt's units, and what it skips (and says why).

Needs no libvirt binding: these tests run without it. Malformed XML as the source reports
it (one W!, the domain still reported) is in tests/test_libvirt_source.py.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Optional

import pytest

from telegraf_balloon.sources.libvirt.domainxml import DomainFacts, parse_domain_xml

VIRTIO = "<memballoon model='virtio'><stats period='10'/></memballoon>"


def _xml(
    devices: str = VIRTIO,
    memory: str = "<memory unit='KiB'>1048576</memory>",
    memtune: str = "",
    kind: str = "kvm",
) -> str:
    return (
        f"<domain type='{kind}'><name>vm</name>{memory}"
        f"<memtune>{memtune}</memtune><devices>{devices}</devices></domain>"
    )


def _parse(text: str) -> tuple[DomainFacts, list[str]]:
    facts = DomainFacts(1, 0.0)
    return facts, parse_domain_xml(text, facts)


def test_virtio_balloon_with_a_period() -> None:
    facts, skipped = _parse(_xml())
    assert skipped == []
    assert (facts.hypervisor, facts.blocked_model, facts.period) == ("kvm", False, 10)
    assert facts.max_kib == 1048576
    assert facts.limit_bytes is None and facts.reservation_bytes is None


@pytest.mark.parametrize(
    ("devices", "blocked", "period"),
    [
        ("<memballoon model='virtio'/>", False, 0),  # no <stats>: no period set
        ("<memballoon model='virtio'><stats period='0'/></memballoon>", False, 0),
        ("<memballoon model='virtio-non-transitional'><stats period='5'/></memballoon>", False, 5),
        ("<memballoon model='xen'/>", False, 0),
        ("<memballoon model='none'/>", True, None),
        ("<memballoon/>", True, None),  # no model: libvirt's none
        ("", True, None),  # no memballoon at all
    ],
)
def test_memballoon_models(devices: str, blocked: bool, period: Optional[int]) -> None:
    facts, skipped = _parse(_xml(devices))
    assert skipped == []
    assert facts.blocked_model is blocked
    assert facts.period == period


# "\uff11\uff10" is a fullwidth 10 and "1_0" a literal with a separator: int() takes both
@pytest.mark.parametrize("raw", ["-1", "ten", "\uff11\uff10", "1_0", "99999999999999999999"])
def test_a_period_that_is_not_one_is_skipped(raw: str) -> None:
    facts, skipped = _parse(
        _xml(f"<memballoon model='virtio'><stats period='{raw}'/></memballoon>")
    )
    assert facts.period is None
    assert len(skipped) == 1 and "is not a period" in skipped[0], skipped


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ("<hard_limit unit='KiB'>2097152</hard_limit>", 2 * 1024**3),
        ("<hard_limit>2097152</hard_limit>", 2 * 1024**3),  # KiB when no unit is given
        ("<hard_limit unit='M'>2048</hard_limit>", 2 * 1024**3),
        ("<hard_limit unit='MiB'>2048</hard_limit>", 2 * 1024**3),
        ("<hard_limit unit='G'>2</hard_limit>", 2 * 1024**3),
        ("<hard_limit unit='GB'>2</hard_limit>", 2 * 1000**3),
        ("<hard_limit unit='bytes'>12345</hard_limit>", 12345),
        ("<hard_limit unit='b'>12345</hard_limit>", 12345),
        ("<hard_limit unit='TiB'>1</hard_limit>", 1024**4),
        ("<hard_limit unit='KiB'> 1024 </hard_limit>", 1024**2),
        ("<hard_limit unit='KiB'>9007199254740991</hard_limit>", None),  # libvirt's unlimited
    ],
)
def test_memtune_sizes_and_units(element: str, expected: Optional[int]) -> None:
    facts, skipped = _parse(_xml(memtune=element))
    assert skipped == []
    assert facts.limit_bytes == expected


def test_reservation_and_maximum_in_other_units() -> None:
    facts, skipped = _parse(
        _xml(
            memory="<memory unit='GiB'>4</memory>",
            memtune="<min_guarantee unit='MiB'>512</min_guarantee>",
        )
    )
    assert skipped == []
    assert facts.max_kib == 4 * 1024**2
    assert facts.reservation_bytes == 512 * 1024**2


@pytest.mark.parametrize(
    ("element", "why"),
    [
        ("<hard_limit unit='KiB'>lots</hard_limit>", "'lots' is not a size"),
        ("<hard_limit unit='KiB'>-5</hard_limit>", "'-5' is not a size"),
        ("<hard_limit unit='KiB'></hard_limit>", "'' is not a size"),
        ("<hard_limit unit='furlongs'>5</hard_limit>", "has an unknown unit 'furlongs'"),
        ("<hard_limit unit='TiB'>9999999999</hard_limit>", "'9999999999' TiB is out of range"),
    ],
)
def test_a_size_that_cannot_be_read_is_skipped_and_said(element: str, why: str) -> None:
    facts, skipped = _parse(_xml(memtune=element))
    assert facts.limit_bytes is None
    assert skipped == [f"<memtune/hard_limit> {why}"]
    assert facts.period == 10  # the rest of the XML still counts


def test_no_memory_element_leaves_the_maximum_unknown() -> None:
    facts, skipped = _parse(_xml(memory=""))
    assert skipped == [] and facts.max_kib is None


def test_no_type_is_an_unknown_hypervisor() -> None:
    facts, _ = _parse("<domain><devices/></domain>")
    assert facts.hypervisor == "unknown" and facts.blocked_model is True


def test_malformed_xml_raises_parse_error() -> None:
    with pytest.raises(ET.ParseError):
        _parse("<domain type='kvm'><devices>")


def test_a_reread_sets_every_xml_fact_again() -> None:
    """The same domain start read again: a period removed is gone, not left from before."""
    facts = DomainFacts(1, 0.0)
    parse_domain_xml(_xml(memtune="<hard_limit>1024</hard_limit>"), facts)
    assert facts.period == 10 and facts.limit_bytes == 1024**2
    parse_domain_xml(_xml("<memballoon model='none'/>"), facts)
    assert facts.period is None and facts.blocked_model and facts.limit_bytes is None
