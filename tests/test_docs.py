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
        tables = (f"[sources.logs.{name}]", f"[sources.vsphere.{name}]")
        assert f"{name} =" in text or any(t in text for t in tables), name


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


def _section(readme: str, heading: str) -> str:
    start = readme.index(heading)
    following = [readme.find(h, start + len(heading)) for h in ("\n## ", "\n### ")]
    return readme[start : min(f for f in following if f != -1)]


def test_missing_field_table_names_catalog_fields() -> None:
    import fnmatch
    import re

    table = _section((ROOT / "README.md").read_text(), "### When a field is missing")
    names = {f.name for _, fields in catalog.MEASUREMENTS.values() for f in fields}
    checked = 0
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        for name in re.findall(r"`([a-z_*]+)`", row.split("|")[1]):
            assert fnmatch.filter(names, name), name
            checked += 1
    assert checked >= 8
    # "libvirt exposes no target": neither KVM source fills balloon_target_bytes
    target = catalog.field(catalog.BALLOON, "balloon_target_bytes")
    assert target is not None and {catalog.LIBVIRT, catalog.QMP}.isdisjoint(target.sources)
    # ECC is read on the host itself: local libvirt and qmp only
    for name in ("ecc_corrected_total", "ecc_uncorrected_total"):
        entry = catalog.field(catalog.HOST, name)
        assert entry is not None and set(entry.sources) == {catalog.LIBVIRT, catalog.QMP}


def test_readme_states_the_telegraf_release_of_each_feature() -> None:
    """execd 1.14, environment 1.23, stop_on_error 1.31, stderr levels 1.32 (Telegraf's
    changelog); environment adds to what the plugin inherits, it is not how secrets arrive."""
    import re

    section = _section((ROOT / "README.md").read_text(), "## Installing")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (1\.\d+) \| (.*) \|$", section, re.M)}
    assert "inputs.execd" in rows["1.14"]
    assert (
        "`environment`" in rows["1.23"] and "inherits Telegraf's whole environment" in rows["1.23"]
    )
    assert "stop_on_error" in rows["1.31"]
    assert "prefixes on stderr" in rows["1.32"]
    assert "metric_version = 2" in rows["1.13"]


def test_queries_quoted_in_the_readme_are_the_shipped_ones() -> None:
    import re

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from build_dashboard import read_queries
    finally:
        sys.path.pop(0)
    shipped = set(read_queries().values())
    quoted = re.findall(r"-execute '(SELECT [^']*)'", (ROOT / "README.md").read_text())
    assert quoted
    for query in quoted:
        assert query in shipped, query
