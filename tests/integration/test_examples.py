"""The shipped examples work against the real consumers: promtool and InfluxDB 1.6."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.model import HostInfo, PollResult, Sample
from telegraf_balloon.runner import Runner
from tests.stack.promtool import check_rules, test_rules

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GIB = 1024**3


def test_prometheus_rules_pass_promtool(promtool: str) -> None:
    rules = EXAMPLES / "prometheus/balloon-rules.yml"
    code, output = check_rules(rules, promtool)
    assert code == 0, output
    assert "SUCCESS" in output
    code, output = test_rules(EXAMPLES / "prometheus/balloon-rules.test.yml", promtool)
    assert code == 0, output


def _queries() -> dict[str, str]:
    text = (EXAMPLES / "influxdb/queries.influxql").read_text()
    out = {}
    for block in re.split(r"\n(?=-- name: )", text):
        match = re.match(r"-- name: (\w+)\n", block)
        if match:
            body = [line for line in block.splitlines() if line and not line.startswith("--")]
            out[match.group(1)] = " ".join(body)
    return out


class TwoHosts:
    """Two hypervisor hosts' worth of VMs, as a source hands them over (a stand-in: the
    libvirt test driver always names the machine it runs on, so it cannot be two hosts)."""

    kind = "libvirt"
    instance = "two-hosts"

    def poll(self, now: float) -> PollResult:
        result = PollResult()
        vms = [("kvm1", "a", 4, 1), ("kvm1", "b", 4, 2), ("kvm2", "c", 8, 3), ("kvm2", "d", 2, 0)]
        for host, name, max_gib, balloon_gib in vms:
            tags = {"host": host, "guest": name, "hypervisor": "kvm", "source": "libvirt"}
            fields: dict[str, Any] = {
                "memory_max_bytes": max_gib * GIB,
                "memory_current_bytes": (max_gib - balloon_gib) * GIB,
                "balloon_actual_bytes": balloon_gib * GIB,
            }
            result.samples.append(Sample(name, tags, fields))
        for host in ("kvm1", "kvm2"):
            tags = {"host": host, "hypervisor": "kvm", "source": "libvirt"}
            result.hosts.append(HostInfo(tags, 8 * GIB, 1 * GIB))
        return result

    def close(self) -> None:
        pass


def test_influxql_queries_on_plugin_output(influxdb: Any) -> None:
    config = load_text(
        '[[sources.guest]]\nroot = "/"\n'
        '[[thresholds]]\nfield = "balloon_ratio"\nwarn = 0.2\ncrit = 0.4\n',
        "t.toml",
    )
    out = io.BytesIO()
    runner = Runner(config, [TwoHosts()], out, Log(io.StringIO()), "plugin-host")
    runner.poll()
    runner.close()
    influxdb.create_db("ex")
    status, text = influxdb.write("ex", out.getvalue().decode())
    assert status == 204, text
    queries = _queries()
    assert set(queries) >= {"cluster_reclaimed_bytes", "cluster_reclaimed_ratio", "stuck_vms"}

    [row] = influxdb.rows("ex", queries["cluster_reclaimed_bytes"])
    assert row["reclaimed_bytes"] == 6 * GIB  # 1+2 on kvm1, 3+0 on kvm2
    [row] = influxdb.rows("ex", queries["cluster_reclaimed_ratio"])
    assert row["reclaimed_ratio"] == pytest.approx(6 / 16)
    rows = influxdb.rows("ex", queries["overcommit_by_host"])
    by_host = {r["_tags"]["host"]: r for r in rows}
    assert by_host["kvm1"]["overcommit_ratio"] == pytest.approx(1.0)
    assert by_host["kvm2"]["reclaimed_ratio"] == pytest.approx(3 / 8)
    rows = influxdb.rows("ex", queries["vms_at_warning_or_worse"])
    # a: 1/4 warn, b: 2/4 crit, c: 3/8 warn, d: no balloon
    assert sorted(r["guest"] for r in rows) == ["a", "b", "c"]
