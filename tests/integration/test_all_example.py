"""examples/all.toml as an operator runs it on a KVM host: every source kind in one plugin.

libvirt through its test driver (a made-up node of its own), the QMP glob matching no socket
(a libvirt host has none), a logs glob, the vCenter simulator, and the guest source on this
machine (a VM) or on a constructed bare-metal tree. What must hold: one `balloon_host` line
per machine (no second one from a source that saw no VM there), and no finding the machine
does not deserve: a bare-metal host is "not a VM", never a balloon that cannot inflate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.stack.execd import run_cli
from tests.stack.vcsim import Vcsim

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALL = REPO / "examples" / "all.toml"
BARE_METAL = REPO / "tests" / "fixtures" / "guest" / "bare-metal-kvm-host" / "root"


def _env(tmp_path: Path, vcsim: Vcsim, root: str) -> dict[str, str]:
    (tmp_path / "qmp").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "vm-a.log").write_text("started\n")
    return {
        "BALLOON_ROOT": root,
        "BALLOON_HOSTNAME": "kvm-host-01",
        "LIBVIRT_URI": "test:///default",
        "QMP_SOCKETS": str(tmp_path / "qmp" / "*.qmp"),
        "BALLOON_LOGS": str(tmp_path / "logs" / "*.log"),
        "VCENTER_HOST": vcsim.url.split("//", 1)[1].split("/", 1)[0],
        "VSPHERE_USER": vcsim.username,
        "VSPHERE_PASSWORD": vcsim.password,
        "VSPHERE_CA_FILE": vcsim.cert_file or "",
    }


def _lines(stdout: str) -> list[tuple[str, dict[str, str], str]]:
    """(measurement, tags, rest) of each line; tags here never hold escaped commas."""
    out = []
    for line in stdout.splitlines():
        head, _, rest = line.partition(" ")
        measurement, *pairs = head.split(",")
        tags = dict(pair.split("=", 1) for pair in pairs)
        out.append((measurement, tags, rest))
    return out


def _explain(env: dict[str, str]) -> dict[str, Any]:
    done = run_cli("--explain", "--format", "json", "--config", str(ALL), env=env, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("where", ["this-vm", "bare-metal"])
def test_one_host_line_per_machine(tmp_path: Path, vcsim: Vcsim, where: str) -> None:
    root = "/" if where == "this-vm" else str(BARE_METAL)
    env = _env(tmp_path, vcsim, root)
    done = run_cli("--once", "--config", str(ALL), env=env, timeout=120)
    assert done.returncode == 0, done.stderr  # every source answered
    lines = _lines(done.stdout)
    collectors = {t["source"] for m, t, _ in lines if m == "balloon_collector"}
    assert collectors == {"guest", "libvirt", "logs", "vsphere", "qmp"}
    hosts = [(t["host"], t["source"]) for m, t, _ in lines if m == "balloon_host"]
    machines = [host for host, _ in hosts]
    assert len(machines) == len(set(machines)), f"a machine counted twice: {hosts}"
    # the QMP source matched no socket and the guest source describes no host: no line
    assert {source for _, source in hosts} == {"libvirt", "vsphere"}, hosts
    assert "kvm-host-01" not in machines
    (guest,) = [(t, rest) for m, t, rest in lines if m == "balloon" and t["source"] == "guest"]
    tags, fields = guest
    if where == "bare-metal":
        assert tags["hypervisor"] == "none"
        assert "inflation_blocked" not in fields and "alert_level=0i" in fields
    else:
        assert tags["hypervisor"] not in ("none", "unknown")  # this machine is a VM


def test_bare_metal_host_has_no_finding_of_its_own(tmp_path: Path, vcsim: Vcsim) -> None:
    report = _explain(_env(tmp_path, vcsim, str(BARE_METAL)))
    (guest,) = [vm for vm in report["vms"] if vm["source"] == "guest"]
    assert guest["not_a_vm"] is True and guest["findings"] == [], guest
    assert guest["tags"]["hypervisor"] == "none"
    sources = {s["source"]: s for s in report["sources"]}
    assert all(s["up"] for s in sources.values()), sources
    # the host lines of the libvirt test node and the simulator's ESXi hosts, none from qmp
    assert {h["source"] for h in report["hosts"]} == {"libvirt", "vsphere"}


def test_this_vm_stays_a_guest(tmp_path: Path, vcsim: Vcsim) -> None:
    report = _explain(_env(tmp_path, vcsim, "/"))
    (guest,) = [vm for vm in report["vms"] if vm["source"] == "guest"]
    assert not guest.get("not_a_vm"), guest
    assert guest["tags"]["hypervisor"] not in ("none", "unknown")
