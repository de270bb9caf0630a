"""The catalog's "who fills it" columns say what real lines of each source carry.

The README's Metrics tables and its per-source field lists are generated from those columns,
so a source listed for a field it never writes (or missing for one it does) is a wrong
sentence in the README. Real lines: the libvirt test driver, a captured guest tree with every
guest-side field, and a QMP source (no VM here: its host line), polled by the real runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon import catalog
from tests.stack.inprocess import rootless_plugin
from tests.stack.node_xml import DomainSpec

ROOT = Path(__file__).resolve().parent.parent
GUEST_ROOTS = sorted((ROOT / "tests/fixtures/guest").glob("*/root"))


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    guests = "".join(f'[[sources.guest]]\nroot = "{root}"\n' for root in GUEST_ROOTS)
    plugin = rootless_plugin(
        tmp_path_factory.mktemp("catalog"),
        [DomainSpec("web", memory_kib=1048576, current_kib=786432)],
        guests,
    )
    try:
        yield plugin.poll() + plugin.poll()
    finally:
        plugin.close()


def test_the_guest_source_writes_no_host_line(lines: list[dict[str, Any]]) -> None:
    sources = {ln["tags"]["source"] for ln in lines if ln["measurement"] == catalog.HOST}
    assert sources == {"libvirt"}  # the qmp source matched no socket: no VM, no host line
    assert catalog.GUEST not in catalog.WRITTEN_BY[catalog.HOST]


def test_no_field_of_a_measurement_names_a_source_that_never_writes_it() -> None:
    for measurement, writers in catalog.WRITTEN_BY.items():
        _, fields = catalog.MEASUREMENTS[measurement]
        for entry in fields:
            extra = set(entry.sources) - set(writers) - {catalog.HEALTH}
            assert not extra, (measurement, entry.name, extra)


def test_every_field_a_source_writes_names_that_source(lines: list[dict[str, Any]]) -> None:
    seen = 0
    for line in lines:
        measurement, source = line["measurement"], line["tags"].get("source")
        if measurement not in (catalog.BALLOON, catalog.HOST):
            continue
        for name in line["fields"]:
            entry = catalog.field(measurement, name)
            if entry is None:  # <field>_level: computed for every source
                continue
            seen += 1
            assert source in entry.sources or catalog.HEALTH in entry.sources, (
                measurement,
                name,
                source,
            )
    assert seen > 100
