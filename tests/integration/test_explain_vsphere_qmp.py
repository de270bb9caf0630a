"""--explain on the two sources built after it: a real vCenter simulator and real QEMU monitors.

The findings come from the same table and judgement as for libvirt and guests; here they are
produced by the real components, with the remedy of each source kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_explain_libvirt import explain_once
from tests.stack.common import need_program, unavailable
from tests.stack.execd import run_cli
from tests.stack.fixtures import QMP_BOOTED, QMP_NO_BALLOON
from tests.stack.qemu_stack import QemuError, QemuHost
from tests.stack.vcsim import Vcsim
from tests.stack.vsphere_setup import all_vms, configure_vm, connect, disconnect, vm_by_name

pytestmark = pytest.mark.integration


def codes(vm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in vm["findings"]}


def test_vsphere_reservation_and_short_balloon(vcsim_factory: Callable[..., Vcsim]) -> None:
    sim = vcsim_factory(dc=1, cluster=1, host=2, standalone_host=0, vm=3)
    si = connect(sim)
    try:
        names = sorted(vm.name for vm in all_vms(si))
        pinned, short, healthy = names[0], names[1], names[2]
        configure_vm(vm_by_name(si, pinned), memory_mb=4096, reservation_mb=4096, limit_mb=-1)
        configure_vm(
            vm_by_name(si, short), memory_mb=2048, ballooned_mb=100, vmmemctltarget_kb=900 * 1024
        )
    finally:
        disconnect(si)
    doc = explain_once(
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "{sim.username}"\n'
        f'password = "{sim.password}"\nca_file = "{sim.cert_file}"\n'
    )
    assert doc["_exit"] == 1
    vms = {vm["guest"]: vm for vm in doc["vms"]}
    assert set(vms) == set(names)  # every powered-on VM of the inventory
    found = codes(vms[pinned])
    assert "inflation_blocked" in found
    remedy = found["inflation_blocked"]["remedy"]
    # by its instance UUID: a name can be shared by VMs of two folders
    assert f"$ govc vm.change -vm.uuid={vms[pinned]['tags']['uuid']} -mem.reservation" in remedy
    assert pinned not in remedy
    found = codes(vms[short])
    assert "short_of_target" in found  # one poll: what holds now, not yet stuck
    assert "stuck" not in found
    assert vms[healthy]["findings"] == [] and vms[healthy]["verdict"] == "ok"
    assert all(vm["source"] == "vsphere" for vm in doc["vms"])
    assert doc["sources"][0]["up"] is True
    assert sim.password not in json.dumps(doc) + doc["_text"]
    assert pinned in doc["_text"] and "govc" in doc["_text"]


def test_vsphere_down(vcsim_factory: Callable[..., Vcsim]) -> None:
    sim = vcsim_factory(dc=1, cluster=1, host=1, standalone_host=0, vm=1)
    sim.kill()
    doc = explain_once(
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "u"\npassword = "p"\n'
        f'ca_file = "{sim.cert_file}"\n'
    )
    assert doc["_exit"] == 1 and doc["vms"] == []
    (source,) = doc["sources"]
    assert source["up"] is False
    assert [f["code"] for f in source["findings"]] == ["source_down"]


def test_qmp_no_balloon_device_names_the_proxmox_command(qmp_host: QemuHost) -> None:
    doc = explain_once(
        f'[[sources.qmp]]\nsockets = ["{qmp_host.glob}"]\nproxmox_config = "{qmp_host.conf_dir}"\n'
    )
    vms = {vm["tags"].get("vmid"): vm for vm in doc["vms"]}
    fixed = codes(vms[str(QMP_NO_BALLOON)])
    assert "no_balloon_device" in fixed
    assert "qm set" in fixed["no_balloon_device"]["remedy"]
    assert str(QMP_NO_BALLOON) in fixed["no_balloon_device"]["remedy"]
    booted = vms[str(QMP_BOOTED)]
    assert "no_balloon_device" not in codes(booted)
    assert doc["_exit"] == 1
    assert doc["sources"][0]["source"] == "qmp" and doc["sources"][0]["up"] is True


# --- driver_not_loaded under --watch: judged against the VM's own stats period -------------

NO_DRIVER = 301
PERIOD = 11  # 3 periods = 33 s: more than the 30 s floor of the grace


@pytest.fixture()
def no_driver_vm() -> Iterator[QemuHost]:
    """A plain QEMU with a virtio balloon and no guest OS (-S: it never boots, so no balloon
    driver ever reports), its stats period set to PERIOD seconds."""
    if os.geteuid() != 0:
        unavailable("QMP sockets are root-only: the qmp tests run as root")
    host = QemuHost(need_program("qemu-system-x86_64"))
    try:
        host.start(NO_DRIVER, memory_mib=128, boot=False, name="no-driver")
        host.monitor(NO_DRIVER).set_interval(PERIOD)
    except (QemuError, OSError) as exc:
        host.close()
        unavailable(f"QEMU did not start: {exc}")
    try:
        yield host
    finally:
        host.close()


def test_qmp_watch_shorter_than_the_grace_is_not_an_all_clear(
    no_driver_vm: QemuHost, tmp_path: Path
) -> None:
    """`--explain --watch 31s` on a VM whose driver never loaded, with a 11 s stats period:
    past 30 s but not past 3 periods (33 s), so the source has not judged it. The run lists
    driver_not_loaded as not judged for that VM, names the watch that judges it, and does
    not exit 0. That watch then finds it."""
    config = tmp_path / "explain.toml"
    config.write_text(f'[[sources.qmp]]\nsockets = ["{no_driver_vm.glob}"]\nproxmox_config = ""\n')
    short = run_cli(
        "--explain", "--config", str(config), "--watch", "31s", env={"NO_COLOR": "1"}, timeout=120
    )
    text = short.stdout
    assert "driver_not_loaded (qmp: no-driver: needs --watch 35s or longer)" in text, text
    assert "1 VM(s) not judged yet" in text
    assert "Nothing to act on" not in text
    assert text.rstrip().endswith("Exit 1."), text
    assert short.returncode == 1, short.stderr

    long = run_cli(
        "--explain", "--config", str(config), "--watch", "35s", "--format", "json", timeout=120
    )
    assert long.returncode == 1, long.stderr
    doc = json.loads(long.stdout)
    [vm] = doc["vms"]
    assert [f["code"] for f in vm["findings"]] == ["driver_not_loaded"]
    assert "never reported" in vm["findings"][0]["message"]
    assert vm["not_judged"] == [] and vm["fields"]["inflation_blocked"] is True
    assert "driver_not_loaded" not in doc["sources"][0]["not_judged"]
