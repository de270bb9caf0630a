"""Every plugin config in examples/ passes --check-config, with and without its variables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
FIXTURE_ROOT = ROOT / "tests/fixtures/guest/virtio-6.18-inflated-deflate-on-oom/root"

# A value for every variable an example names; a new variable must be added here.
VALUES = {
    "LIBVIRT_URI": "test:///default",
    "BALLOON_HOSTNAME": "guest-01",
    "BALLOON_ROOT": str(FIXTURE_ROOT),
    "BALLOON_LOGS": "/var/log/*.log",
    "VCENTER_HOST": "vc.example.com",
    "VSPHERE_USER": "monitor@vsphere.local",
    "VSPHERE_PASSWORD": "s3cret",
    # --check-config only checks that ca_file can be read; the simulator tests use a real
    # certificate (tests/integration/test_vsphere.py runs examples/vcenter.toml against it)
    "VSPHERE_CA_FILE": str(ROOT / "tests/fixtures/vsphere/SOURCE.md"),
    "QMP_SOCKETS": "/run/qemu-test/*.qmp",
}
_REFERENCE = re.compile(r"\$\{(\w+)(:-[^}]*)?\}")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in VALUES}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "telegraf_balloon", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=60,
    )


def _variables(path: Path) -> dict[str, bool]:
    """Variable name -> whether every reference to it has a default (comments skipped)."""
    found: dict[str, bool] = {}
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        for name, default in _REFERENCE.findall(line):
            found[name] = found.get(name, True) and bool(default)
    return found


def test_there_are_examples_for_each_role() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"kvm-host.toml", "guest.toml", "all.toml", "demo.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_check_config(path: Path) -> None:
    variables = _variables(path)
    assert set(variables) <= set(VALUES), f"add a test value for {set(variables) - set(VALUES)}"
    # unset: every variable has a default (an unset one without it is a config error)
    required = {name for name, has_default in variables.items() if not has_default}
    result = _run(["--check-config", "--config", str(path)], {})
    if required:
        assert result.returncode == 2 and "E! " in result.stderr, result
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{path}: ok: sources:"), result.stdout
    # set: what the header comment says a site may set
    result = _run(["--check-config", "--config", str(path)], {n: VALUES[n] for n in variables})
    assert result.returncode == 0, result.stderr
    assert ": ok: sources:" in result.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_documents_its_variables(path: Path) -> None:
    """The header names every variable the example reads, so an operator knows what to set."""
    header = "\n".join(
        line for line in path.read_text().splitlines() if line.lstrip().startswith("#")
    )
    for name in _variables(path):
        assert name in header, f"{path.name}: {name} is used but not documented"


def test_guest_example_polls_a_captured_guest() -> None:
    """guest.toml with BALLOON_ROOT at a captured virtio guest tree: one real poll."""
    result = _run(
        ["--once", "--config", str(ROOT / "examples/guest.toml")],
        {"BALLOON_ROOT": str(FIXTURE_ROOT), "BALLOON_HOSTNAME": "guest-01"},
    )
    lines = result.stdout.splitlines()
    balloon = [line for line in lines if line.startswith("balloon,")]
    assert len(balloon) == 1, result
    assert "guest=guest-01" in balloon[0] and "driver=virtio_balloon" in balloon[0]
    assert "balloon_actual_bytes=1073741824i" in balloon[0]
    assert "balloon_ratio_level=0i" in balloon[0]


def test_all_example_has_every_source_kind() -> None:
    env = {n: VALUES[n] for n in _variables(ROOT / "examples/all.toml")}
    result = _run(["--check-config", "--config", str(ROOT / "examples/all.toml")], env)
    assert result.returncode == 0, result.stderr
    for kind in ("guest", "libvirt", "vsphere", "qmp", "logs"):
        assert f"1 {kind}" in result.stdout, result.stdout
