"""Build examples/grafana/balloon.json from examples/influxdb/queries.influxql.

Every panel's InfluxQL is a query of that file (one source of truth), with only Grafana's
macros put in: ``time > now() - <d>`` becomes ``$timeFilter``, ``time(<d>)`` becomes
``time($__interval)``, and the dashboard's variables (host, guest, and the context tags
project, namespace and owner) are added as filters.
:func:`expand` undoes that for tests, which run every panel's query against a real InfluxDB.

The dashboard is built with grafana-foundation-sdk (Grafana's own typed builders; a test and
dev dependency, never a runtime one). The SDK has no InfluxDB query type, so
:class:`InfluxQLTarget` implements its ``Dataquery`` variant for InfluxQL raw queries.

    python scripts/build_dashboard.py            # write the JSON
    python scripts/build_dashboard.py --check    # exit 1 when the committed JSON is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

ROOT = Path(__file__).resolve().parent.parent
QUERIES = ROOT / "examples/influxdb/queries.influxql"
OUTPUT = ROOT / "examples/grafana/balloon.json"

DATASOURCE_VARIABLE = "datasource"
_TIME_RANGE = re.compile(r"time > now\(\) - \d+[smhd]")
_TIME_GROUP = re.compile(r"time\(\d+[smhd]\)")
HOST_FILTER = '"host" =~ /^$host$/'
GUEST_FILTER = '"guest" =~ /^$guest$/'
# The opt-in context tags operators filter by: OpenStack's project, KubeVirt's namespace, a
# vSphere custom attribute "Owner" (custom_attributes = ["Owner"]). "All" (.*) also matches
# the VMs without the tag.
CONTEXT_VARIABLES = ("project", "namespace", "owner")
CONTEXT_FILTERS = tuple(f'"{name}" =~ /^${name}$/' for name in CONTEXT_VARIABLES)


def read_queries(path: Path = QUERIES) -> dict[str, str]:
    """Query name -> InfluxQL (its lines joined), in file order."""
    out: dict[str, str] = {}
    for block in re.split(r"\n(?=-- name: )", path.read_text(encoding="utf-8")):
        match = re.match(r"-- name: (\w+)\n", block)
        if match:
            body = [line for line in block.splitlines() if line and not line.startswith("--")]
            out[match.group(1)] = " ".join(body)
    return out


def to_grafana(query: str, filters: tuple[str, ...] = ()) -> str:
    """The file's query with Grafana's macros and the variable filters put in."""
    if query.startswith("SHOW "):
        return query + (" WHERE " + " AND ".join(filters) if filters else "")
    where = " AND ".join(("$timeFilter", *filters))
    return _TIME_GROUP.sub("time($__interval)", _TIME_RANGE.sub(where, query))


def expand(query: str, window: str = "1h", interval: str = "1m") -> str:
    """A dashboard query as Grafana would send it with every host and guest selected."""
    for variable in ("$host", "$guest", *(f"${name}" for name in CONTEXT_VARIABLES)):
        query = query.replace(f"/^{variable}$/", "/^.*$/")
    query = query.replace("$timeFilter", f"time > now() - {window}")
    return query.replace("$__interval", interval)


# --- the panels -------------------------------------------------------------------------------

Kind = Literal["stat", "timeseries", "table"]
VM = (HOST_FILTER, GUEST_FILTER, *CONTEXT_FILTERS)
HOST = (HOST_FILTER,)


@dataclass(frozen=True)
class PanelSpec:
    """One panel: its query's name in the queries file and how to show it."""

    query: str
    title: str
    kind: Kind
    unit: str = "short"
    filters: tuple[str, ...] = ()
    width: int = 12
    description: str = ""
    legend: str = "$tag_host/$tag_guest $col"
    warn: Optional[float] = None
    crit: Optional[float] = None
    # Grafana's "Min interval": a panel that sums over machines per time bucket needs buckets
    # at least as long as the poll interval, or a bucket holds only the machines that polled
    # in it and the sum dips.
    min_interval: str = ""
    percent_columns: tuple[str, ...] = ()  # table columns that are ratios: shown in percent


# Telegraf's default interval is 10s; raise this if your [agent] or execd interval is longer.
SUM_MIN_INTERVAL = "1m"


ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    (
        "Cluster",
        (
            PanelSpec(
                "cluster_reclaimed_bytes",
                "Reclaimable memory (sum over hosts)",
                "stat",
                "bytes",
                width=6,
                description="Memory the balloons hold now: every host's last total, summed.",
            ),
            PanelSpec(
                "cluster_reclaimed_ratio",
                "Reclaimable share of capacity",
                "stat",
                "percentunit",
                width=6,
                description="Above 20% for long: room for more guests without new DIMMs.",
                warn=0.20,
            ),
            PanelSpec(
                "cluster_reclaimed_bytes_over_time",
                "Reclaimable memory over time",
                "timeseries",
                "bytes",
                legend="reclaimed",
                min_interval=SUM_MIN_INTERVAL,
            ),
        ),
    ),
    (
        "Hosts",
        (
            PanelSpec(
                "host_ratios",
                "Reclaimed and overcommit ratios",
                "timeseries",
                "percentunit",
                HOST,
                legend="$tag_host $col",
                description="Per machine: its sources' VMs summed, its physical memory once.",
                min_interval=SUM_MIN_INTERVAL,
            ),
            PanelSpec(
                "overcommit_by_host",
                "Hosts now",
                "table",
                "short",
                HOST,
                percent_columns=("overcommit_ratio", "reclaimed_ratio"),
            ),
        ),
    ),
    (
        "VMs needing attention",
        (
            PanelSpec("vms_at_warning_or_worse", "At warning or worse", "table", "short", VM, 6),
            PanelSpec("stuck_vms", "Stuck balloons", "table", "bytes", VM, 6),
            PanelSpec("stale_vms", "Stale guest stats", "table", "s", VM, 6),
            PanelSpec("blocked_vms", "Balloon cannot inflate", "table", "short", VM, 6),
        ),
    ),
    (
        "Per VM",
        (
            PanelSpec("vm_balloon_bytes", "Balloon, target and gap", "timeseries", "bytes", VM),
            PanelSpec(
                "vm_balloon_ratio",
                "Balloon ratio",
                "timeseries",
                "percentunit",
                VM,
                warn=0.20,
                crit=0.40,
            ),
            PanelSpec("vm_swap_rates", "Guest swap rates", "timeseries", "Bps", VM),
            PanelSpec(
                "vm_levels",
                "Alert levels (0 ok, 1 warning, 2 critical)",
                "timeseries",
                "short",
                VM,
                warn=1,
                crit=2,
            ),
        ),
    ),
    (
        "Host reclaim (KVM and vSphere)",
        (
            PanelSpec(
                "vm_host_reclaim",
                "Taken by the host: swapped, compressed, shared",
                "timeseries",
                "bytes",
                VM,
                8,
                description="Hypervisor-level swap is the expensive one: the host_swapping "
                "finding and the sample rule (critical) fire while it grows.",
            ),
            PanelSpec(
                "vm_memory_stall",
                "Waiting for memory (PSI): on the host, in the guest",
                "timeseries",
                "percentunit",
                VM,
                8,
                warn=0.10,
                crit=0.40,
            ),
            PanelSpec(
                "host_reclaim",
                "Host swap in use, KSM saved and profit, zswap",
                "timeseries",
                "bytes",
                HOST,
                8,
                legend="$tag_host $col",
                description="Local KVM hosts only (libvirt with a local URI, qmp).",
            ),
        ),
    ),
    (
        "Logs",
        (
            PanelSpec(
                "log_events",
                "Balloon events in log files",
                "table",
                "short",
                HOST,
                24,
                description="Counts since the plugin started, from [[sources.logs]].",
            ),
        ),
    ),
    (
        "vSphere",
        (
            PanelSpec(
                "vm_vsphere_memory",
                "ESXi memory per VM",
                "timeseries",
                "bytes",
                VM,
                24,
                description="Filled by the vSphere source; empty until its lines arrive.",
            ),
        ),
    ),
)

VARIABLE_QUERIES = {
    "host": ("var_host", ()),
    **{name: (f"var_{name}", HOST) for name in CONTEXT_VARIABLES},
    "guest": ("var_guest", (HOST_FILTER, *CONTEXT_FILTERS)),
}


def panels() -> list[PanelSpec]:
    return [spec for _, specs in ROWS for spec in specs]


# --- building, with the SDK -------------------------------------------------------------------


def build(queries: dict[str, str]) -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    from grafana_foundation_sdk.builders import common as common_b
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import stat, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as dm

    datasource = dm.DataSourceRef(type_val="influxdb", uid="${" + DATASOURCE_VARIABLE + "}")

    class InfluxQLTarget(cogvariants.Dataquery):
        """An InfluxQL raw query (Grafana's InfluxDB data source, InfluxQL mode)."""

        def __init__(self, query: str, result_format: str, alias: str) -> None:
            self.query = query
            self.result_format = result_format
            self.alias = alias

        def to_json(self) -> dict[str, object]:
            out: dict[str, object] = {
                "refId": "A",
                "datasource": datasource.to_json(),
                "query": self.query,
                "rawQuery": True,
                "resultFormat": self.result_format,
            }
            if self.alias:
                out["alias"] = self.alias
            return out

    class Target(cogbuilder.Builder[cogvariants.Dataquery]):
        def __init__(self, query: str, result_format: str, alias: str = "") -> None:
            self._target = InfluxQLTarget(query, result_format, alias)

        def build(self) -> cogvariants.Dataquery:
            return self._target

    def thresholds(spec: PanelSpec) -> dash.ThresholdsConfig:
        steps = [dm.Threshold(value=None, color="green")]
        if spec.warn is not None:
            steps.append(dm.Threshold(value=spec.warn, color="orange"))
        if spec.crit is not None:
            steps.append(dm.Threshold(value=spec.crit, color="red"))
        config = dash.ThresholdsConfig()
        mode: Any = dm.ThresholdsMode.ABSOLUTE  # a StrEnum: Python 3.11+, the SDK's minimum
        config.mode(mode).steps(steps)
        return config

    def panel(spec: PanelSpec, panel_id: int) -> Any:
        query = to_grafana(queries[spec.query], spec.filters)
        builder: Any
        if spec.kind == "stat":
            builder = stat.Panel().reduce_options(
                common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
            )
            builder.with_target(Target(query, "time_series"))
        elif spec.kind == "table":
            builder = table.Panel().with_target(Target(query, "table"))
        else:
            builder = timeseries.Panel().with_target(Target(query, "time_series", spec.legend))
        builder.id(panel_id).title(spec.title).datasource(datasource).unit(spec.unit).span(
            spec.width
        )
        builder.height(4 if spec.kind == "stat" else 8).thresholds(thresholds(spec))
        if spec.min_interval:
            builder.interval(spec.min_interval)
        for column in spec.percent_columns:
            builder.override_by_name(
                column, [dm.DynamicConfigValue(id_val="unit", value="percentunit")]
            )
        if spec.description:
            builder.description(spec.description)
        return builder

    board = (
        dash.Dashboard("telegraf-balloon: VM memory ballooning")
        .uid("telegraf-balloon")
        .tags(["telegraf-balloon", "influxdb", "memory"])
        .time("now-1h", "now")
        .refresh("1m")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable(DATASOURCE_VARIABLE).label("InfluxDB").type("influxdb")
        )
    )
    for name, (query_name, filters) in VARIABLE_QUERIES.items():
        board.with_variable(
            dash.QueryVariable(name)
            .label(name)
            .datasource(datasource)
            .query(to_grafana(queries[query_name], filters))
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    panel_id = 0
    for title, specs in ROWS:
        panel_id += 1
        board.with_row(dash.Row(title).id(panel_id))
        for spec in specs:
            panel_id += 1
            board.with_panel(panel(spec, panel_id))
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return data


def render(queries: Optional[dict[str, str]] = None) -> str:
    """The JSON text committed as examples/grafana/balloon.json."""
    data = build(read_queries() if queries is None else queries)
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(panels())} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
