"""GuestSource against fixture trees, one test per case directory (Telegraf's testcase style).

Each `tests/fixtures/guest/<case>/` holds `root/` (a tree laid out as under `/`), `SOURCE.md`
(where it comes from) and `expected.json`:

- `tags`: the exact tags, without `host` and `guest` (both are the hostname passed in);
- `fields`: the exact field values (types included: JSON true/false are bools);
- `absent`: fields that must not be present;
- `warnings`: substrings of the expected `W! ` lines (`{root}` stands for the fixture root);
  each must match exactly one line over two polls (a repeated fault is logged once), and
  every `W! ` line must match one of them; an empty list means no `W! ` line at all;
- `error` (optional): the poll fails as a whole and `PollResult.error` contains this;
- `page_size` (optional, default 4096): the guest's page size;
- `modes` (required when `root/sys/kernel/debug` exists): octal modes by path under `root/`.
  Git keeps no modes, so such a case is polled on a copy of `root/` with these applied.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any, cast

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import GuestConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from telegraf_balloon.sources.guest.source import GuestSource

FIXTURES = Path(__file__).parent / "fixtures" / "guest"
CASES = sorted(p.parent.name for p in FIXTURES.glob("*/expected.json"))
HOSTNAME = "guest-under-test"

GUEST_FIELDS = {f.name for f in catalog.BALLOON_FIELDS if catalog.GUEST in f.sources}


def load(case: str) -> dict[str, Any]:
    with open(FIXTURES / case / "expected.json", encoding="utf-8") as handle:
        return cast(dict[str, Any], json.load(handle))


def poll_twice(
    case: str, expected: dict[str, Any], scratch: Path
) -> tuple[list[PollResult], list[str], str]:
    root = str(FIXTURES / case / "root")
    if "modes" in expected:
        root = str(scratch / "root")
        shutil.copytree(FIXTURES / case / "root", root, symlinks=True)
        for rel, mode in expected["modes"].items():
            (Path(root) / rel).chmod(int(mode, 8))
    stream = io.StringIO()
    source = GuestSource(
        GuestConfig(root=root),
        HOSTNAME,
        Log(stream=stream),
        page_size=int(expected.get("page_size", 4096)),
    )
    results = [source.poll(1_700_000_000.0), source.poll(1_700_000_010.0)]
    source.close()
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("W! ")]
    return results, warnings, root


def test_cases_found() -> None:
    assert len(CASES) >= 20, CASES


@pytest.mark.parametrize("case", CASES)
def test_fixture_is_well_formed(case: str) -> None:
    """Every case states every guest field, either with its value or as absent."""
    expected = load(case)
    assert (FIXTURES / case / "root").is_dir()
    assert (FIXTURES / case / "SOURCE.md").is_file()
    assert isinstance(expected["warnings"], list)
    if "error" in expected:
        return
    fields = set(expected["fields"])
    absent = set(expected["absent"])
    assert not fields & absent
    assert fields | absent == GUEST_FIELDS, sorted(GUEST_FIELDS ^ (fields | absent))
    assert "host" not in expected["tags"] and "guest" not in expected["tags"]
    if (FIXTURES / case / "root" / "sys/kernel/debug").is_dir():
        assert "sys/kernel/debug" in expected.get("modes", {}), "git keeps no modes: state them"


@pytest.mark.parametrize("case", CASES)
def test_guest_fixture(case: str, tmp_path: Path) -> None:
    expected = load(case)
    results, warnings, root = poll_twice(case, expected, tmp_path)

    for number, result in enumerate(results, 1):
        where = f"{case}, poll {number}"
        if "error" in expected:
            assert result.error is not None, where
            assert expected["error"] in result.error, where
            assert result.samples == [], where
            continue
        assert result.error is None, f"{where}: {result.error}"
        assert len(result.samples) == 1, where
        sample = result.samples[0]
        assert sample.tags == {"host": HOSTNAME, "guest": HOSTNAME, **expected["tags"]}, where
        # exact values and exact types (True must not pass for 1, nor 1 for 1.0)
        assert sample.fields == expected["fields"], where
        for name, value in expected["fields"].items():
            assert type(sample.fields[name]) is type(value), f"{where}: {name}"
        for name in expected["absent"]:
            assert name not in sample.fields, f"{where}: {name} should be absent"
        emitted: dict[str, object] = dict(sample.fields)
        assert catalog.check_point(catalog.BALLOON, sample.tags, emitted) == [], where

    wanted = [w.replace("{root}", root) for w in expected["warnings"]]
    if not wanted:
        assert warnings == [], f"{case}: unexpected W! lines {warnings}"
    for text in wanted:
        hits = [line for line in warnings if text in line]
        assert len(hits) == 1, f"{case}: {text!r} should be logged once over two polls: {warnings}"
    for line in warnings:
        assert any(text in line for text in wanted), f"{case}: unexpected {line!r}"


def test_every_guest_field_is_covered_by_a_fixture() -> None:
    """Every field of the schema that the guest source fills has a value asserted somewhere."""
    asserted: set[str] = set()
    for case in CASES:
        asserted.update(load(case).get("fields", {}))
    assert GUEST_FIELDS, "the catalog lists no guest field"
    assert sorted(GUEST_FIELDS - asserted) == []
    assert sorted(asserted - GUEST_FIELDS) == []


def test_every_driver_and_hypervisor_is_covered() -> None:
    drivers = {load(case).get("tags", {}).get("driver") for case in CASES}
    hypervisors = {load(case).get("tags", {}).get("hypervisor") for case in CASES}
    assert {"virtio_balloon", "vmw_balloon", "xen_balloon", "hv_balloon", "none"} <= drivers
    assert {"kvm", "qemu", "xen", "vmware", "hyperv", "none"} <= hypervisors
