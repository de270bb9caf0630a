"""Every series the plugin writes gets a Graphite path of its own through the shipped output.

Telegraf cannot run here, so its graphite serializer's rules are written out in
tests/stack/telegraf_outputs.py, checked first against cases from Telegraf's own tests, then
run over real lines: the libvirt test driver, a guest tree, a QMP source and two log sources
(one watching two files), polled by the real runner. Two series on one path overwrite each
other in carbon at the same timestamp.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon import catalog
from tests.stack.inprocess import rootless_plugin
from tests.stack.node_xml import DomainSpec
from tests.stack.telegraf_outputs import GraphiteOutput, graphite_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "telegraf.d/outputs-graphite.conf"
GUEST_ROOT = ROOT / "tests/fixtures/guest/vmware-4.20-current-below-target/root"
T = 1_234_567_890 * 1_000_000_000


def shipped_output() -> GraphiteOutput:
    [block] = tomllib.loads(CONF.read_text())["outputs"]["graphite"]
    return GraphiteOutput.from_block(block)


def _line(measurement: str, tags: dict[str, str], fields: dict[str, Any]) -> dict[str, Any]:
    return {"measurement": measurement, "tags": tags, "fields": fields, "time": T}


@pytest.mark.parametrize(
    ("output", "line", "expected"),
    [
        # cases of Telegraf's graphite serializer tests, same input, same expected path
        (
            GraphiteOutput(templates=("cp* tags.measurement.host.field", "new_cpu x.host")),
            _line(
                "cpu",
                {"cpu": "cpu0", "datacenter": "us-west-2", "host": "localhost"},
                {"usage_idle": 91.5},
            ),
            ["cpu0.us-west-2.cpu.localhost.usage_idle 91.5 1234567890"],
        ),
        (
            GraphiteOutput(template="host.datacenter.cpu.tags.measurement.field"),
            _line(
                "cpu",
                {"cpu": "cpu0", "datacenter": "us-west-2", "host": "localhost"},
                {"value": 91.5},
            ),
            ["localhost.us-west-2.cpu0.cpu 91.5 1234567890"],
        ),
        (
            GraphiteOutput(),
            _line(
                "cpu",
                {"host": "localhost", "label.dot and space": "value with.dot"},
                {"usage_busy": 8.5},
            ),
            ["localhost.value_with_dot.cpu.usage_busy 8.5 1234567890"],
        ),
        (
            GraphiteOutput(),
            _line("cpu", {"host": "localhost", "tag": "/@*"}, {"usage_busy": 10.0}),
            ["localhost.---.cpu.usage_busy 10 1234567890"],
        ),
        (
            GraphiteOutput(),
            _line("cpu", {"host": "localhost", "tag": "\\no slash"}, {"usage_busy": 10.0}),
            ["localhost.no_slash.cpu.usage_busy 10 1234567890"],
        ),
        (
            GraphiteOutput(),
            _line("system", {"host": "localhost"}, {"uptime_format": "20 days, 23:26"}),
            [],
        ),
        (
            GraphiteOutput(prefix="p"),
            _line("m", {"host": "h"}, {"ok": True, "n": 3, "tiny": 1e-05}),
            ["p.h.m.ok 1 1234567890", "p.h.m.n 3 1234567890", "p.h.m.tiny 0.00001 1234567890"],
        ),
    ],
)
def test_the_serializer_port_agrees_with_telegrafs_own_cases(
    output: GraphiteOutput, line: dict[str, Any], expected: list[str]
) -> None:
    assert [" ".join(map(str, w)) for w in graphite_lines([line], output)] == expected


@pytest.fixture(scope="module")
def real_lines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Three polls of the real runner over every kind of source that runs without root."""
    tmp = tmp_path_factory.mktemp("graphite")
    qemu_logs, guest_logs = tmp / "qemu", tmp / "guest"
    for folder, names in ((qemu_logs, ("web.log", "db.log")), (guest_logs, ("web.log",))):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("started\n")
    plugin = rootless_plugin(
        tmp,
        [
            DomainSpec("web.example", memory_kib=1048576, current_kib=786432),
            DomainSpec("db", memory_kib=2097152, stats_period=0),
        ],
        f'[[sources.guest]]\nroot = "{GUEST_ROOT}"\n'
        f'[[sources.logs]]\nfiles = ["{qemu_logs}/*.log"]\n'
        f'[[sources.logs]]\nfiles = ["{guest_logs}/*.log"]\n'
        '[[thresholds]]\nfield = "balloon_ratio"\nwarn = 0.2\n',
    )
    try:
        lines = plugin.poll()
        for folder in (qemu_logs, guest_logs):
            for log in folder.glob("*.log"):
                with open(log, "a") as handle:
                    handle.write("error: Failed to extend balloon: guest refused\n")
        lines += plugin.poll() + plugin.poll()
        yield lines
    finally:
        plugin.close()


def _series(lines: list[dict[str, Any]]) -> dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]]:
    """Graphite path -> every (measurement, tags) written to it."""
    output = shipped_output()
    paths: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    for line in lines:
        identity = (line["measurement"], tuple(sorted(line["tags"].items())))
        for path, _, _ in graphite_lines([line], output):
            paths.setdefault(path, set()).add(identity)
    return paths


def _of(lines: list[dict[str, Any]], measurement: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["measurement"] == measurement]


def test_real_lines_cover_every_measurement(real_lines: list[dict[str, Any]]) -> None:
    measurements = {line["measurement"] for line in real_lines}
    assert measurements == set(catalog.MEASUREMENTS)
    logs = {(ln["tags"]["file"], ln["tags"]["event"]) for ln in _of(real_lines, catalog.LOG)}
    assert len(logs) == 3  # two web.log files in two folders, one db.log; one event
    collectors = {ln["tags"]["instance"] for ln in _of(real_lines, catalog.COLLECTOR)}
    assert len(collectors) == 5


def test_every_series_has_its_own_graphite_path(real_lines: list[dict[str, Any]]) -> None:
    shared = {path: ids for path, ids in _series(real_lines).items() if len(ids) > 1}
    assert shared == {}


def test_paths_keep_hypervisor_host_and_guest(real_lines: list[dict[str, Any]]) -> None:
    output = shipped_output()
    for line in real_lines:
        if line["measurement"] not in (catalog.BALLOON, catalog.HOST):
            continue
        [(path, _, _)] = graphite_lines([{**line, "fields": {"x": 1}}], output)
        parts = path.split(".")
        for tag in ("hypervisor", "host", "guest", "source"):
            if tag in line["tags"]:
                assert line["tags"][tag].replace(".", "_") in parts, (tag, path)
        assert parts[0] == "balloon" and parts[-1] == "x"


def test_filters_name_only_catalog_measurements_and_tags() -> None:
    [block] = tomllib.loads(CONF.read_text())["outputs"]["graphite"]
    keywords = {"measurement", "field", "tags"}
    vsphere = {"vcenter", "datacenter", "cluster"}
    filters = {}
    for template in block["templates"]:
        measurement, pattern = template.split()
        assert measurement in catalog.MEASUREMENTS, template
        tags, _ = catalog.MEASUREMENTS[measurement]
        parts = pattern.split(".")
        assert parts[-1] == "field" and "measurement" in parts, template
        for part in parts:
            assert part in keywords or part in tags or part in vsphere, (template, part)
        # every tag the template does not name still reaches the path
        assert "tags" in parts, template
        filters[measurement] = parts
    assert set(filters) == set(catalog.MEASUREMENTS)
