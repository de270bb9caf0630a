"""The README, the sample config and the telegraf.d block say what the code does."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from telegraf_balloon import catalog, config
from telegraf_balloon.cli import sample_config

ROOT = Path(__file__).resolve().parent.parent


def test_readme_generated_sections_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/update_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_readme_shows_the_two_commands_and_every_catalog_field() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    for measurement, (_, fields) in catalog.MEASUREMENTS.items():
        assert f"### `{measurement}`" in readme
        for entry in fields:
            assert f"| `{entry.name}` |" in readme


@pytest.mark.parametrize(
    "section",
    [
        config.AgentConfig,
        config.GuestConfig,
        config.LibvirtConfig,
        config.VsphereConfig,
        config.LogsConfig,
        config.HealthConfig,
    ],
)
def test_sample_config_documents_every_key(section: type) -> None:
    """Every key the config reader accepts appears in the sample, set or commented."""
    text = sample_config()
    for item in dataclasses.fields(section):
        name = item.name
        assert f"{name} =" in text or f"[sources.logs.{name}]" in text, name


def test_sample_config_is_valid_and_has_the_default_rules() -> None:
    loaded = config.load_text(sample_config(), "sample.toml")
    rules = {(r.measurement, r.field): r for r in loaded.thresholds}
    ratio = rules[("balloon", "balloon_ratio")]
    assert (ratio.warn, ratio.crit, ratio.for_seconds) == (0.20, 0.40, 600.0)
    assert ("balloon", "stuck") in rules and ("balloon", "stale") in rules
    assert ("balloon", "swap_out_bytes_per_second") in rules
    host = rules[("balloon_host", "reclaimed_ratio")]
    assert (host.warn, host.for_seconds) == (0.20, 600.0)


def test_telegraf_d_block() -> None:
    """The execd block Telegraf reads: STDIN signal, influx format, our command."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    data = tomllib.loads((ROOT / "telegraf.d/telegraf-balloon.conf").read_text())
    [block] = data["inputs"]["execd"]
    assert block["signal"] == "STDIN"
    assert block["data_format"] == "influx"
    assert block["command"][0] == "telegraf-balloon"
    assert block["command"][1:] == ["--config", config.DEFAULT_PATH]


def test_sample_config_documents_every_qmp_key() -> None:
    text = sample_config()
    for item in dataclasses.fields(config.QmpConfig):
        assert f"# {item.name} =" in text, item.name
