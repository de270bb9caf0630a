"""Every TICKscript in examples/kapacitor names only what the plugin writes.

Kapacitor cannot be installed here (not in Debian, not on PyPI), so the scripts are checked,
not run: each script's measurement, its groupBy and template tags, and every field it reads
(lambda "references", |mean('field') and friends, index .Fields) must be in the catalog.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from telegraf_balloon import catalog

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "examples/kapacitor").glob("*.tick"))
VSPHERE_TAGS = {"vcenter", "datacenter", "cluster"}
_FUNCTIONS = "mean|median|last|first|max|min|sum|count|spread|stddev|derivative|difference"


def problems(script: str) -> list[str]:
    """What in a TICKscript the catalog does not have (empty: every name is known)."""
    code = "\n".join(line.split("//", 1)[0] for line in script.splitlines())
    found: list[str] = []
    measurements = re.findall(r"\.measurement\('([^']*)'\)", code)
    if len(measurements) != 1:
        return [f"expected one .measurement(), found {measurements}"]
    [measurement] = measurements
    if measurement not in catalog.MEASUREMENTS:
        return [f"unknown measurement {measurement!r}"]
    tag_docs, fields = catalog.MEASUREMENTS[measurement]
    tags = set(tag_docs) | (
        VSPHERE_TAGS if measurement in (catalog.BALLOON, catalog.HOST) else set()
    )
    known_fields = {f.name for f in fields}
    known_fields |= {f"{n}_level" for n in known_fields if catalog.thresholdable(measurement, n)}
    aliases = set(re.findall(r"\.as\('([^']*)'\)", code))

    def field_ok(name: str) -> bool:
        return name in known_fields or name in aliases

    for group in re.findall(r"\.groupBy\(([^)]*)\)", code):
        for tag in re.findall(r"'([^']*)'", group):
            if tag not in tags:
                found.append(f"groupBy: unknown tag {tag!r}")
    for name in re.findall(r'index \.Tags "([^"]*)"', code):
        if name not in tags:
            found.append(f"template: unknown tag {name!r}")
    for name in re.findall(r'index \.Fields "([^"]*)"', code):
        if not field_ok(name):
            found.append(f"template: unknown field {name!r}")
    for name in re.findall(rf"\|(?:{_FUNCTIONS})\('([^']*)'\)", code):
        if not field_ok(name):
            found.append(f"function: unknown field {name!r}")
    for name in re.findall(r"\.field\('([^']*)'\)", code):
        if not field_ok(name):
            found.append(f".field: unknown field {name!r}")
    for line in code.splitlines():
        if "lambda:" not in line:
            continue
        for name in re.findall(r'"([^"]*)"', line.split("lambda:", 1)[1]):
            if not (field_ok(name) or name in tags):
                found.append(f"lambda: unknown field or tag {name!r}")
    return found


def test_there_are_scripts() -> None:
    assert {p.name for p in SCRIPTS} >= {
        "balloon_alert.tick",
        "host_reclaimed.tick",
        "host_alert.tick",
    }


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_names_only_catalog_fields(path: Path) -> None:
    text = path.read_text()
    assert problems(text) == []
    prose = text.replace("\n// ", " ").lower()
    assert "checked" in prose and "not run" in prose  # the script says what was done with it


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("'balloon'", "'ballon'"), "unknown measurement 'ballon'"),
        (('"alert_level" == 1', '"alert_lvl" == 1'), "lambda: unknown field or tag 'alert_lvl'"),
        (("'host', 'guest'", "'host', 'vm_name'"), "groupBy: unknown tag 'vm_name'"),
        (('.Fields "stuck"', '.Fields "stuck_bool"'), "template: unknown field 'stuck_bool'"),
    ],
)
def test_checker_catches_a_wrong_name(change: tuple[str, str], complaint: str) -> None:
    text = (ROOT / "examples/kapacitor/balloon_alert.tick").read_text()
    assert change[0] in text
    assert complaint in problems(text.replace(change[0], change[1], 1))


def _code(script: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in script.splitlines())


def _group_tags(code: str) -> set[str]:
    [group] = re.findall(r"\.groupBy\(([^)]*)\)", code)
    return set(re.findall(r"'([^']*)'", group))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_alert_id_names_every_group_tag(path: Path) -> None:
    """Two groups with one id share one alert state: their alerts overwrite each other."""
    code = _code(path.read_text())
    [alert_id] = re.findall(r"\.id\('([^']*)'\)", code)
    named = set(re.findall(r'index \.Tags "([^"]*)"', alert_id))
    assert _group_tags(code) <= named, alert_id


def _duration(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smh])", text)
    assert match, text
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_sliding_windows_wait_for_their_period(path: Path) -> None:
    """Without fillPeriod a 10-minute window emits after one minute of data."""
    code = _code(path.read_text())
    for window in re.findall(r"\|window\(\)((?:\s*\.\w+\([^)]*\))*)", code):
        period = _duration(re.findall(r"\.period\((\w+)\)", window)[0])
        every = _duration(re.findall(r"\.every\((\w+)\)", window)[0])
        if period > every:
            assert ".fillPeriod()" in window, window


def test_the_plugins_host_level_is_routed_once_per_machine() -> None:
    """balloon_host's alert_level (ECC, overcommit) reaches an alert, per machine: libvirt
    and QMP on one machine write one host line each, with the same ECC counters."""
    routed = []
    for path in SCRIPTS:
        code = _code(path.read_text())
        if "'balloon_host'" not in code or not re.search(r'lambda: "alert_level"', code):
            continue
        routed.append(path.name)
        assert _group_tags(code) & {"source", "hypervisor"} == set(), path.name
        assert re.search(r"\|max\('alert_level'\)", code), path.name
    assert routed
