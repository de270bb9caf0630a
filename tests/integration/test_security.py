"""Secrets stay secret, and libvirt is opened read-only unless the config says otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon.config import LibvirtConfig, load
from telegraf_balloon.log import Log
from tests.stack.common import unavailable
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.node_xml import DomainSpec, write_node_xml

pytestmark = pytest.mark.integration

PASSWORD = "vc-Pa55word-never-shown"


def vsphere_config(tmp_path: Path, mode: int) -> Path:
    secret = tmp_path / "vcenter.pass"
    secret.write_text(PASSWORD + "\n")
    os.chmod(secret, mode)
    path = tmp_path / "plugin.toml"
    path.write_text(
        "[[sources.vsphere]]\n"
        'url = "https://127.0.0.1:1/sdk"\n'
        'username = "monitor"\n'
        f'password_file = "{secret}"\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_password_file_open_to_others_warns(tmp_path: Path, mode: int) -> None:
    config = load(str(vsphere_config(tmp_path, mode)))
    assert config.vsphere[0].password == PASSWORD  # still loads: a warning, not an exit
    (warning,) = config.warnings
    assert "sources.vsphere[0].password_file" in warning
    assert f"{mode:03o}" in warning and "vcenter.pass" in warning
    assert PASSWORD not in warning


def test_password_file_600_is_quiet(tmp_path: Path) -> None:
    config = load(str(vsphere_config(tmp_path, 0o600)))
    assert config.warnings == ()
    assert PASSWORD not in repr(config)


def test_open_password_file_warned_by_the_process(tmp_path: Path) -> None:
    """The warning reaches stderr as a `W! ` line at load; the password reaches nothing."""
    from tests.stack.execd import run_cli

    done = run_cli("--check-config", "--config", str(vsphere_config(tmp_path, 0o644)))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("W! ") and "password_file" in lines[0], lines
    assert ": ok: sources: 1 vsphere" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


# --- libvirt: read-only by default ----------------------------------------------------------


def _source(uri: str, **overrides: Any) -> Any:
    try:
        from telegraf_balloon.sources.libvirt import LibvirtSource
    except ImportError:
        unavailable("libvirt-python is not installed")
    return LibvirtSource(LibvirtConfig(uri=uri, **overrides), Log())


def test_libvirt_connection_is_read_only_by_default(
    libvirt_stack: LibvirtStack, tmp_path: Path
) -> None:
    """On the plugin's own connection to a real libvirtd, a write call is refused."""
    import libvirt

    node = tmp_path / "node.xml"
    write_node_xml(node, [DomainSpec("ro-vm", memory_kib=1048576, current_kib=786432)])
    uri = libvirt_stack.test_uri(node)
    for read_only in (True, False):
        source = _source(uri, read_only=read_only)
        try:
            result = source.poll(1_700_000_000.0)
            assert result.error is None, result.error
            dom = source._conn.lookupByName("ro-vm")
            if read_only:
                with pytest.raises(libvirt.libvirtError) as caught:
                    dom.setMemoryStatsPeriod(5, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                assert caught.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
                assert "read only" in str(caught.value)
            else:  # the control: the same call works where the config allows writes
                dom.setMemoryStatsPeriod(5, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        finally:
            source.close()


def test_libvirt_read_only_is_the_default() -> None:
    assert LibvirtConfig().read_only is True
