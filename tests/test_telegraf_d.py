"""The Telegraf snippets in telegraf.d/ say what the plugin and the catalog do."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from telegraf_balloon import catalog, config
from tests.stack.execd import Execd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TELEGRAF_D = ROOT / "telegraf.d"
FIXTURE_ROOT = ROOT / "tests/fixtures/guest/virtio-6.18-inflated-deflate-on-oom/root"
VSPHERE_TAGS = {"vcenter", "datacenter", "cluster"}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((TELEGRAF_D / name).read_text())
    return data


def test_every_snippet_is_valid_toml() -> None:
    names = sorted(p.name for p in TELEGRAF_D.glob("*.conf"))
    assert names == [
        "outputs-graphite.conf",
        "outputs-prometheus.conf",
        "telegraf-balloon-interval.conf",
        "telegraf-balloon.conf",
    ]
    for name in names:
        assert _load(name), name


def test_execd_block_comments_cover_restart_secrets_and_permissions() -> None:
    text = (TELEGRAF_D / "telegraf-balloon.conf").read_text()
    for words in ("restart_delay", "environment", "debugfs", "read-only socket", "System.View"):
        assert words in text, words


def test_interval_variant_runs_as_telegraf_would_start_it(tmp_path: Path) -> None:
    """signal = "none": the command as written (config path swapped) polls on its own."""
    [block] = _load("telegraf-balloon-interval.conf")["inputs"]["execd"]
    assert block["signal"] == "none" and block["data_format"] == "influx"
    command = list(block["command"])
    assert command[:3] == ["telegraf-balloon", "--config", config.DEFAULT_PATH]
    interval = command[command.index("--interval") + 1]
    assert config.parse_duration(interval) >= 1.0
    plugin_config = tmp_path / "guest.toml"
    plugin_config.write_text(f'[[sources.guest]]\nroot = "{FIXTURE_ROOT}"\n')
    command[2] = str(plugin_config)
    # a shorter interval than the file's, so the test sees two self-timed polls quickly
    command[command.index("--interval") + 1] = "1s"
    with Execd(command[1:]) as plugin:
        batches = plugin.wait_batches(2, timeout=30)
        assert all(batch.of(catalog.BALLOON) for batch in batches[:2])
        code, _ = plugin.shutdown()
        assert code == 0
        plugin.assert_clean()


def test_prometheus_output_exports_the_plugin_measurements() -> None:
    [block] = _load("outputs-prometheus.conf")["outputs"]["prometheus_client"]
    assert block["metric_version"] == 2  # the <measurement>_<field> names the rules use
    assert set(block["namepass"]) == set(catalog.MEASUREMENTS)


def test_prometheus_rules_name_only_catalog_metrics() -> None:
    """Every balloon* metric in the rules is <measurement>_<field> of a catalog field."""
    known: set[str] = set()
    for measurement, (_, fields) in catalog.MEASUREMENTS.items():
        known.update(f"{measurement}_{f.name}" for f in fields)
    for rule_file in ("balloon-rules.yml", "balloon-rules.test.yml"):
        text = (ROOT / "examples/prometheus" / rule_file).read_text()
        # recording rules (cluster:balloon_...:sum) are names of our own, not scraped ones
        for name in set(re.findall(r"(?<![:\w])(balloon_[a-z_]+)\b", text)):
            base = name[: -len("_level")] if name.endswith("_level") else name
            assert name in known or base in known, (rule_file, name)


def test_graphite_templates_keep_host_guest_and_hypervisor() -> None:
    [block] = _load("outputs-graphite.conf")["outputs"]["graphite"]
    assert block["servers"] == ["localhost:2003"]
    keywords = {"measurement", "field", "tags"}
    filters = {}
    for template in block["templates"]:
        measurement, pattern = template.split()
        assert measurement in catalog.MEASUREMENTS, template
        tags, _ = catalog.MEASUREMENTS[measurement]
        parts = pattern.split(".")
        assert parts[-2:] == ["measurement", "field"], template
        for part in parts:
            assert part in keywords or part in tags or part in VSPHERE_TAGS, (template, part)
        filters[measurement] = parts
    assert {"hypervisor", "host", "guest"} <= set(filters[catalog.BALLOON])
    assert {"hypervisor", "host"} <= set(filters[catalog.HOST])
    assert set(filters) == set(catalog.MEASUREMENTS)
