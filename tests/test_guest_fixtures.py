"""GuestSource against fixture trees, one test per case directory (Telegraf's testcase style).

Each `tests/fixtures/guest/<case>/` holds `root/` (a tree laid out as under `/`), `SOURCE.md`
(where it comes from and what it shows) and `expected.json`:

- `tags`: the exact tags, without `host` and `guest` (both are the hostname passed in);
- `fields`: the exact field values (types included: JSON true/false are bools);
- `absent`: fields that must not be present;
- `warnings`: substrings of the expected `W! ` lines (`{root}` stands for the fixture root);
  each must match exactly one line over two polls (a repeated fault is logged once), and
  every `W! ` line must match one of them; an empty list means no `W! ` line at all;
- `error` (optional): the poll fails as a whole and `PollResult.error` contains this
  (`{root}` as in `warnings`);
- `page_size` (optional, default 4096): the guest's page size;
- `modes` (required when `root/sys/kernel/debug` exists): octal modes by path under `root/`.
  Git keeps no modes, so such a case is polled on a copy of `root/` with these applied.

`UPDATE_FIXTURES=1 .venv/bin/pytest tests/test_guest_fixtures.py` writes every
`expected.json` from what the source reports now (keys sorted, two-space indent), keeping
`page_size`, `modes` and each `warnings` or `error` text that still matches; a new case needs
only `root/` and `SOURCE.md`. Review the diff: the written values become the expectation.
"""

from __future__ import annotations

import io
import json
import os
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
CASES = sorted(
    {p.parent.name for p in [*FIXTURES.glob("*/expected.json"), *FIXTURES.glob("*/root")]}
)
HOSTNAME = "guest-under-test"
UPDATE = os.environ.get("UPDATE_FIXTURES", "") not in ("", "0")

GUEST_FIELDS = {f.name for f in catalog.BALLOON_FIELDS if catalog.GUEST in f.sources}


def load(case: str) -> dict[str, Any]:
    with open(FIXTURES / case / "expected.json", encoding="utf-8") as handle:
        return cast(dict[str, Any], json.load(handle))


def dump(expected: dict[str, Any]) -> str:
    """The one formatting of expected.json: sorted keys, two-space indent, a final newline
    (the lists `absent` and `warnings` are sorted too)."""
    return json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def poll_twice(
    case: str, expected: dict[str, Any], scratch: Path, fixtures: Path = FIXTURES
) -> tuple[list[PollResult], list[str], str]:
    root = str(fixtures / case / "root")
    if "modes" in expected:
        root = str(scratch / "root")
        shutil.copytree(fixtures / case / "root", root, symlinks=True)
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


def observed(case: str, scratch: Path, fixtures: Path = FIXTURES) -> dict[str, Any]:
    """The case's expected.json as the source's two polls say it now (see the module doc)."""
    path = fixtures / case / "expected.json"
    before: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results, warnings, root = poll_twice(case, before, scratch, fixtures)
    first, second = results

    def seen(result: PollResult) -> object:
        return result.error, [(x.tags, x.fields) for x in result.samples]

    assert seen(first) == seen(second), f"{case}: the polls differ; expected.json holds one"
    out: dict[str, Any] = {"page_size": int(before.get("page_size", 4096))}
    if "modes" in before:
        out["modes"] = before["modes"]
    if first.error is not None:
        kept = before.get("error", "")
        error = first.error.replace(root, "{root}")
        out["error"] = kept if kept and kept.replace("{root}", root) in first.error else error
    else:
        sample = first.samples[0]
        out["tags"] = {k: v for k, v in sample.tags.items() if k not in ("host", "guest")}
        out["fields"] = dict(sample.fields)
        out["absent"] = sorted(GUEST_FIELDS - set(sample.fields))
    out["warnings"] = []
    for line in warnings:
        kept = [
            text
            for text in before.get("warnings", [])
            if text.replace("{root}", root) in line
            and sum(text.replace("{root}", root) in other for other in warnings) == 1
        ]
        text = kept[0] if kept else line[len("W! ") :].replace(root, "{root}")
        if text not in out["warnings"]:
            out["warnings"].append(text)
    out["warnings"].sort()
    return out


@pytest.fixture(scope="module", autouse=True)
def update_fixtures(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With UPDATE_FIXTURES=1, rewrite every case's expected.json before the tests compare."""
    if not UPDATE:
        return
    for case in CASES:
        text = dump(observed(case, tmp_path_factory.mktemp(case)))
        (FIXTURES / case / "expected.json").write_text(text, encoding="utf-8")


def test_cases_found() -> None:
    assert len(CASES) >= 20, CASES


@pytest.mark.parametrize("case", CASES)
def test_fixture_is_well_formed(case: str) -> None:
    """Every case states every guest field, either with its value or as absent."""
    text = (FIXTURES / case / "expected.json").read_text(encoding="utf-8")
    expected = json.loads(text)
    assert text == dump(expected), "not in the one formatting: UPDATE_FIXTURES=1 rewrites it"
    for name in ("absent", "warnings"):
        assert expected.get(name, []) == sorted(expected.get(name, [])), f"{name} not sorted"
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
            assert expected["error"].replace("{root}", root) in result.error, where
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


def test_update_mode_rewrites_nothing_in_a_clean_tree(tmp_path: Path) -> None:
    """What UPDATE_FIXTURES=1 would write is, byte for byte, what every case holds now."""
    for case in CASES:
        written = dump(observed(case, tmp_path / case))
        assert written == (FIXTURES / case / "expected.json").read_text(encoding="utf-8"), case


def test_update_mode_writes_a_new_case(tmp_path: Path) -> None:
    """A case with only root/ and SOURCE.md gets its expected.json: here a copy of xen-valid,
    whose reviewed expectation it must reproduce."""
    shutil.copytree(FIXTURES / "xen-valid", tmp_path / "cases" / "new", symlinks=True)
    (tmp_path / "cases" / "new" / "expected.json").unlink()
    written = dump(observed("new", tmp_path / "scratch", tmp_path / "cases"))
    assert written == (FIXTURES / "xen-valid" / "expected.json").read_text(encoding="utf-8")


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
