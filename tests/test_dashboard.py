"""The Grafana dashboard: fresh from its generator, and every panel a query of the queries file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.stack.common import unavailable
from tests.stack.dashboard import generator

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples/grafana/balloon.json"
QUERIES = ROOT / "examples/influxdb/queries.influxql"


def file_queries() -> dict[str, str]:
    """The queries file read independently of the generator: name -> one-line InfluxQL."""
    out: dict[str, str] = {}
    name = None
    for line in QUERIES.read_text().splitlines():
        match = re.match(r"-- name: (\w+)$", line)
        if match:
            name = match.group(1)
            out[name] = ""
        elif line and not line.startswith("--") and name is not None:
            out[name] = (out[name] + " " + line).strip()
    return out


def _as_grafana(query: str) -> str:
    query = re.sub(r"time > now\(\) - \d+[smhd]", "$timeFilter", query)
    return re.sub(r"time\(\d+[smhd]\)", "time($__interval)", query)


VARIABLES = ("host", "guest", "project", "namespace", "owner")


def _without_variables(query: str) -> str:
    for variable in VARIABLES:
        query = query.replace(f' AND "{variable}" =~ /^${variable}$/', "")
        query = query.replace(f' WHERE "{variable}" =~ /^${variable}$/', "")
    return query


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_dashboard_json_is_fresh() -> None:
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        unavailable("grafana-foundation-sdk is not installed (the test extra, Python 3.11+)")
    gen = generator()
    assert DASHBOARD.read_text() == gen.render(), (
        "examples/grafana/balloon.json is stale: run python scripts/build_dashboard.py"
    )


def test_every_panel_queries_influxdb_with_a_query_of_the_file() -> None:
    by_grafana_text = {_as_grafana(q): name for name, q in file_queries().items()}
    used = set()
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    for panel in panels:
        assert panel["datasource"] == {"type": "influxdb", "uid": "${datasource}"}, panel["title"]
        [target] = panel["targets"]
        assert target["datasource"] == panel["datasource"]
        assert target["rawQuery"] is True
        assert target["resultFormat"] == ("table" if panel["type"] == "table" else "time_series")
        plain = _without_variables(target["query"])
        assert plain in by_grafana_text, (panel["title"], target["query"])
        used.add(by_grafana_text[plain])
        if "GROUP BY time(" in plain:
            assert "$__interval" in plain and "$timeFilter" in plain
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "influxdb"
    for name in VARIABLES:
        plain = _without_variables(variables[name]["query"])
        assert plain in by_grafana_text, name
        used.add(by_grafana_text[plain])
        assert variables[name]["allValue"] == ".*" and variables[name]["multi"] is True
    assert used == set(file_queries()), f"queries no panel shows: {set(file_queries()) - used}"


def test_vm_panels_filter_by_the_context_variables() -> None:
    """Project (OpenStack), namespace (KubeVirt) and owner (vSphere's Owner attribute):
    every per-VM panel and the guest variable follow them; the context variables come before
    the guest variable, which Grafana narrows by them."""
    board = dashboard()
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables.index("guest") > max(variables.index(n) for n in VARIABLES[2:])
    vm_panels = [
        p for p in board["panels"] if p["type"] != "row" and "$guest" in p["targets"][0]["query"]
    ]
    assert len(vm_panels) >= 8
    guest_variable = next(v for v in board["templating"]["list"] if v["name"] == "guest")
    for query in [p["targets"][0]["query"] for p in vm_panels] + [guest_variable["query"]]:
        for name in VARIABLES[2:]:
            assert f'"{name}" =~ /^${name}$/' in query, query


def test_panels_cover_the_issue_list() -> None:
    text = " ".join(p["targets"][0]["query"] for p in dashboard()["panels"] if p["type"] != "row")
    for field in (
        "balloon_actual_bytes",
        "balloon_target_bytes",
        "balloon_gap_bytes",
        "balloon_ratio",
        "swap_in_bytes_per_second",
        "swap_out_bytes_per_second",
        "alert_level",
        "reclaimed_ratio",
        "overcommit_ratio",
        "host_memory_bytes",
        "stuck",
        "stale",
        "inflation_blocked",
        "host_swapped_bytes",
    ):
        assert f'"{field}"' in text, field


def test_layout_has_unique_ids_and_no_overlaps() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            'SELECT last("x") FROM "balloon" WHERE time > now() - 10m GROUP BY "host"',
            'SELECT last("x") FROM "balloon" WHERE time > now() - 1h GROUP BY "host"',
        ),
        (
            'SELECT mean("x") FROM "balloon" WHERE time > now() - 1h GROUP BY time(1m), "guest"',
            'SELECT mean("x") FROM "balloon" WHERE time > now() - 1h GROUP BY time(1m), "guest"',
        ),
    ],
)
def test_generator_macros_round_trip(query: str, expected: str) -> None:
    """to_grafana then expand gives the query back (over the dashboard's default hour)."""
    gen = generator()
    grafana = gen.to_grafana(query, (gen.HOST_FILTER, gen.GUEST_FILTER))
    assert "$timeFilter" in grafana and "/^$guest$/" in grafana
    back = gen.expand(grafana).replace(' AND "host" =~ /^.*$/ AND "guest" =~ /^.*$/', "")
    assert back == expected


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, duration
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_time_series_that_sum_over_machines_have_a_minimum_interval() -> None:
    """A bucket shorter than the poll interval holds only the machines that polled in it."""
    summing = 0
    for panel in dashboard()["panels"]:
        query = panel.get("targets", [{}])[0].get("query", "")
        if panel["type"] != "timeseries" or "sum(" not in query:
            continue
        summing += 1
        assert _seconds(panel.get("interval", "0s")) >= 60, panel["title"]
    assert summing >= 2  # cluster over time, and the per-machine ratios


def test_ratio_columns_of_tables_are_percent() -> None:
    tables = [p for p in dashboard()["panels"] if p["type"] == "table"]
    checked = 0
    for panel in tables:
        columns = re.findall(r'AS "(\w+_ratio)"', panel["targets"][0]["query"])
        overrides = {
            o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
            for o in panel["fieldConfig"].get("overrides", [])
            if o["matcher"]["id"] == "byName"
        }
        for column in columns:
            unit = overrides.get(column, {}).get("unit", panel["fieldConfig"]["defaults"]["unit"])
            assert unit == "percentunit", (panel["title"], column)
            checked += 1
    assert checked >= 2


def test_host_queries_take_one_value_per_machine_and_source() -> None:
    """GROUP BY * keeps a series per tag set: a tag that flips counts a host twice."""
    for name, query in file_queries().items():
        if '"balloon_host"' in query:
            assert "GROUP BY *" not in query and "GROUP BY time(1m), *" not in query, name
            assert '"host", "vcenter", "source"' in query, name
