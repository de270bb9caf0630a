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


def test_prometheus_output_drops_string_fields() -> None:
    """Telegraf's default string_as_label = true makes thp_mode and error labels."""
    [block] = _load("outputs-prometheus.conf")["outputs"]["prometheus_client"]
    assert block.get("string_as_label", True) is False
    text = (TELEGRAF_D / "outputs-prometheus.conf").read_text()
    assert "thp_mode" in text and "error" in text  # the comment says which fields and why


def _commented_toml(text: str, start: str) -> dict[str, Any]:
    """The commented-out TOML lines of the paragraph starting at `start`, parsed."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    body = []
    started = False
    for line in lines[first + 1 :]:
        content = line.lstrip("#").strip()
        if not line.startswith("##   ") or not content:
            if started:
                break
            continue
        started = True
        if "=" in content.split("#", 1)[0]:
            body.append(content)
    data: dict[str, Any] = tomllib.loads("\n".join(body))
    return data


def test_prometheus_output_says_how_to_reuse_an_existing_listener() -> None:
    """A second prometheus_client on :9273 stops Telegraf; reusing one at metric_version = 1
    drops the booleans the Stuck, stale and cannot-inflate alerts read."""
    text = (TELEGRAF_D / "outputs-prometheus.conf").read_text()
    [block] = _load("outputs-prometheus.conf")["outputs"]["prometheus_client"]
    assert block["listen"] == ":9273" and ":9273" in text.split("\n[[outputs")[0]
    assert "address already in use" in text and "stops" in text
    lines = _commented_toml(text, "Add these two lines to the existing block")
    assert lines == {"metric_version": 2, "string_as_label": False}
    for field in ("stuck", "stale", "inflation_blocked", "up"):
        assert field in text.split("\n[[outputs")[0], field
    readme = (ROOT / "README.md").read_text()
    assert "address already in use" in readme and "metric_version = 2" in readme
    assert "string_as_label = false" in readme


def _rule_metric_names(text: str) -> set[str]:
    """Every scraped balloon* name in the expressions and input series of a rules file."""
    names: set[str] = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("expr:", "- expr:", "- series:")):
            # recording rules (machine:balloon_...:sum) are names of our own, not scraped ones
            names.update(re.findall(r"(?<![:\w])(balloon_[a-z_]+)\b", stripped))
    return names


def test_prometheus_rules_name_only_catalog_metrics() -> None:
    """Every balloon* metric in the rules is <measurement>_<field> of a catalog field."""
    known: set[str] = set()
    for measurement, (_, fields) in catalog.MEASUREMENTS.items():
        known.update(f"{measurement}_{f.name}" for f in fields)
    for rule_file in ("balloon-rules.yml", "balloon-rules.test.yml"):
        names = _rule_metric_names((ROOT / "examples/prometheus" / rule_file).read_text())
        assert len(names) >= 10, rule_file
        for name in names:
            base = name[: -len("_level")] if name.endswith("_level") else name
            assert name in known or base in known, (rule_file, name)
    rules = (ROOT / "examples/prometheus/balloon-rules.yml").read_text()
    assert "balloon_collector_up == 0" in rules
    assert "balloon_alert_level == 1" in rules  # warning-level judgement has a route too
