"""EDAC ECC counters on balloon_host through the real libvirtd, with a local URI.

The daemon's `qemu+unix:///system?socket=...` URI has no host part, so the source reads host
facts from `host_root`: here an EDAC tree written as drivers/edac/edac_mc_sysfs.c lays it out
(one mcN per memory controller, `ce_count` and `ue_count` as "%u\\n"), whose counters the test
moves between polls. The machine's own /sys has no EDAC controllers to move.

A host line is written only for a host where the source saw a VM (`balloon_host`: one line per
host per source poll that saw a VM there), so these tests run with the session's QEMU guest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.stack.inprocess import Plugin
from tests.stack.libvirt_stack import LibvirtStack

pytestmark = pytest.mark.integration

# The shipped rule (telegraf_balloon/sample.toml; tests/test_config.py checks it is there).
ECC_RULE = """
[[thresholds]]
measurement = "balloon_host"
field = "ecc_uncorrected_new"
crit = 1
"""


def _edac(root: Path, controller: int, corrected: int, uncorrected: int) -> None:
    folder = root / "sys/devices/system/edac/mc" / f"mc{controller}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ce_count").write_text(f"{corrected}\n")
    (folder / "ue_count").write_text(f"{uncorrected}\n")


def _plugin(stack: LibvirtStack, host_root: Path, domains: str) -> Plugin:
    return Plugin(
        f"""
[agent]
timeout = "10s"
[[sources.libvirt]]
uri = "{stack.uri}"
host_root = "{host_root}"
domains = ["{domains}"]
{ECC_RULE}
"""
    )


def _host(plugin: Plugin) -> dict[str, Any]:
    lines = plugin.poll()
    hosts = [x for x in lines if x["measurement"] == "balloon_host"]
    assert len(hosts) == 1, (lines, plugin.log_stream.getvalue())
    return dict(hosts[0]["fields"])


def test_ecc_counters_and_the_new_uncorrected_rule(
    libvirt_stack: LibvirtStack, qemu_guest: str, tmp_path: Path
) -> None:
    _edac(tmp_path, 0, 3, 0)
    _edac(tmp_path, 1, 1, 0)
    plugin = _plugin(libvirt_stack, tmp_path, qemu_guest)
    try:
        first = _host(plugin)
        assert (first["ecc_corrected_total"], first["ecc_uncorrected_total"]) == (4, 0)
        assert "ecc_uncorrected_new" not in first  # no baseline on the first poll
        assert first["alert_level"] == 0
        steady = _host(plugin)
        assert (steady["ecc_corrected_new"], steady["ecc_uncorrected_new"]) == (0, 0)
        assert steady["ecc_uncorrected_new_level"] == 0
        _edac(tmp_path, 1, 2, 1)  # one corrected and one uncorrected error on controller 1
        moved = _host(plugin)
        assert (moved["ecc_corrected_total"], moved["ecc_uncorrected_total"]) == (5, 1)
        assert (moved["ecc_corrected_new"], moved["ecc_uncorrected_new"]) == (1, 1)
        assert moved["ecc_uncorrected_new_level"] == 2 and moved["alert_level"] == 2
        after = _host(plugin)
        assert after["ecc_uncorrected_total"] == 1 and after["ecc_uncorrected_new"] == 0
        assert after["alert_level"] == 0
    finally:
        plugin.close()


def test_no_edac_no_ecc_fields(
    libvirt_stack: LibvirtStack, qemu_guest: str, tmp_path: Path
) -> None:
    (tmp_path / "sys/devices/system").mkdir(parents=True)  # a host without EDAC drivers
    plugin = _plugin(libvirt_stack, tmp_path, qemu_guest)
    try:
        for _ in range(2):
            fields = _host(plugin)
            assert not [name for name in fields if name.startswith("ecc_")], fields
            assert fields["host_memory_bytes"] > 0  # libvirt's figure: no meminfo there
            assert fields["alert_level"] == 0
    finally:
        plugin.close()


def test_no_domain_no_host_line(libvirt_stack: LibvirtStack, tmp_path: Path) -> None:
    """No running domain the source reports: no balloon_host line, EDAC or not; the source is
    up with vms=0. (Another source on this machine that sees VMs writes the host's line.)"""
    _edac(tmp_path, 0, 1, 1)
    plugin = _plugin(libvirt_stack, tmp_path, "no-such-domain-*")
    try:
        for _ in range(2):
            lines = plugin.poll()
            assert [x["measurement"] for x in lines] == ["balloon_collector"], lines
            assert lines[0]["fields"]["up"] is True and lines[0]["fields"]["vms"] == 0
    finally:
        plugin.close()
