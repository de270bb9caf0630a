"""virtio-mem against real QEMU (plain, in the Proxmox layout) and a real libvirtd, with the
test guest (Debian 6.1 cloud kernel, its virtio_mem driver) plugging and unplugging.

QMP, one QEMU each (384 MiB, a 512 MiB virtio-mem device of 2 MiB blocks), started together:
- MOVABLE boots with memhp_default_state=online_movable: it plugs and unplugs what is asked;
- PINNED onlines plugged memory as kernel memory and then fills it with pages that cannot
  move: it cannot unplug;
- NO_DRIVER boots without the virtio_mem driver: nothing it is asked for is plugged;
- OFFLINE boots without memhp_default_state (and this guest has no udev): its driver plugs
  what is asked, and the blocks stay offline;
- PAUSED never runs (-S): QEMU keeps the device's size at 0 whatever is requested.
libvirt: a booted domain (as MOVABLE) and a paused one asked for 128 MiB.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from telegraf_balloon.config import GuestConfig, LibvirtConfig, QmpConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import Fields
from telegraf_balloon.sources.guest.source import GuestSource
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.integration.test_explain_libvirt import explain_once
from tests.stack.common import StackError
from tests.stack.execd import run_cli
from tests.stack.fixtures import new_qemu_host, running
from tests.stack.inprocess import Plugin
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.qemu_stack import QemuError, QemuHost
from tests.stack.vmem import (
    MIB,
    ONLINE_MOVABLE,
    VMEM_ID,
    VmemDump,
    guest_tree,
    libvirt_vmem,
    parse_vmem_console,
    qemu_args,
)

pytestmark = pytest.mark.integration

MOVABLE, PINNED, NO_DRIVER, OFFLINE, PAUSED = 401, 402, 403, 404, 405
BASE_MIB, VMEM_MIB, BLOCK = 384, 512, 2 * MIB
PINNED_FILL_MIB = 200
STUCK_CONFIG = '[health]\nstuck_for = "1s"\n[[thresholds]]\nfield = "vmem_stuck"\ncrit = 1\n'


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def qemus() -> Iterator[QemuHost]:
    host = new_qemu_host()
    booted = {
        MOVABLE: (0, f"tb.vmem=1 {ONLINE_MOVABLE}"),
        PINNED: (
            256,
            f"tb.vmem=1 tb.vmem.fill={PINNED_FILL_MIB} memhp_default_state=online_kernel",
        ),
        NO_DRIVER: (128, "tb.vmem=nodriver"),
        OFFLINE: (256, "tb.vmem=1"),
    }

    def start() -> None:
        vms = [
            host.start(
                vmid,
                memory_mib=BASE_MIB,
                maxmem_mib=BASE_MIB + VMEM_MIB + 256,
                extra_args=qemu_args(VMEM_MIB, requested),
                cmdline_extra=append,
                wait=False,
            )
            for vmid, (requested, append) in booted.items()
        ]
        vms.append(
            host.start(
                PAUSED,
                memory_mib=256,
                maxmem_mib=256 + VMEM_MIB + 256,
                extra_args=qemu_args(VMEM_MIB, 128),
                boot=False,
                wait=False,
            )
        )
        for vm in vms:
            host.finish_start(vm)
        for vmid in booted:
            wait_until(partial(console, host, vmid), 240, f"VM {vmid}'s virtio-mem report")

    with running(start, host.close, (QemuError, OSError, AssertionError), "QEMU did not start"):
        yield host


def console(host: QemuHost, vmid: int) -> Optional[VmemDump]:
    return parse_vmem_console(host.vms[vmid].console.read_text(errors="replace"))


def qmp_source(host: QemuHost, stream: Optional[io.StringIO] = None) -> QmpSource:
    config = QmpConfig(sockets=(host.glob,), proxmox_config="")
    return QmpSource(config, "node-1", Log(stream or io.StringIO()))


def vm_fields(source: QmpSource, vmid: int) -> Fields:
    result = source.poll(time.time())
    assert result.error is None, result.error
    [sample] = [s for s in result.samples if Path(s.key).stem == str(vmid)]
    return sample.fields


def guest_fields(dump: VmemDump, root: Path) -> Fields:
    source = GuestSource(GuestConfig(root=str(guest_tree(dump, root))), "guest", Log(io.StringIO()))
    [sample] = source.poll(time.time()).samples
    return sample.fields


def set_requested(host: QemuHost, vmid: int, mib: int) -> None:
    host.monitor(vmid).call("qom-set", path=VMEM_ID, property="requested-size", value=mib * MIB)


# --- QMP --------------------------------------------------------------------------------------


def test_qmp_plug_and_unplug_follow_the_request(qemus: QemuHost, tmp_path: Path) -> None:
    """The guest plugs what is asked, the plugin reports plugged = requested, the guest's
    MemTotal grows by as much; the memory is virtio-mem's, not the balloon's. Then it unplugs."""
    source = qmp_source(qemus)
    fields = vm_fields(source, MOVABLE)
    assert fields["vmem_plugged_bytes"] == fields["vmem_requested_bytes"] == 0
    assert fields["vmem_max_bytes"] == VMEM_MIB * MIB and fields["vmem_block_bytes"] == BLOCK
    assert fields["memory_max_bytes"] == BASE_MIB * MIB
    before = console(qemus, MOVABLE)
    assert before is not None and before.memtotal_kib is not None
    boot_kib = before.memtotal_kib

    set_requested(qemus, MOVABLE, 256)
    fields = wait_until(
        lambda: (f := vm_fields(source, MOVABLE))["vmem_plugged_bytes"] == 256 * MIB and f,
        60,
        "256 MiB plugged",
    )
    assert fields["vmem_requested_bytes"] == 256 * MIB and fields["vmem_gap_bytes"] == 0
    # query-memory-size-summary counts the plugged memory, query-balloon does not: the
    # balloon holds nothing, the VM has its base and what is plugged.
    assert fields["memory_max_bytes"] == fields["memory_current_bytes"] == (BASE_MIB + 256) * MIB
    assert fields["balloon_actual_bytes"] == 0
    grown = wait_until(
        lambda: (
            (d := console(qemus, MOVABLE)) is not None
            and d.memtotal_kib == boot_kib + 256 * 1024
            and d
        ),
        30,
        "the guest's MemTotal up by 256 MiB",
    )
    seen = guest_fields(grown, tmp_path / "plugged")
    assert seen["vmem_driver_loaded"] is True
    assert seen["vmem_plugged_bytes"] == 256 * MIB  # two whole 128 MiB blocks
    assert seen["vmem_max_bytes"] == VMEM_MIB * MIB and seen["vmem_offline_bytes"] == 0

    set_requested(qemus, MOVABLE, 0)
    fields = wait_until(
        lambda: (f := vm_fields(source, MOVABLE))["vmem_plugged_bytes"] == 0 and f,
        60,
        "all of it unplugged",
    )
    assert fields["memory_max_bytes"] == BASE_MIB * MIB and fields["balloon_actual_bytes"] == 0
    wait_until(
        lambda: (
            (d := console(qemus, MOVABLE)) is not None and d.memtotal_kib == before.memtotal_kib
        ),
        30,
        "the guest's MemTotal back",
    )


def test_qmp_an_unplug_the_guest_cannot_do_is_stuck(qemus: QemuHost, tmp_path: Path) -> None:
    """Plugged memory onlined as kernel memory and filled: asked to unplug, the guest keeps
    it; --explain --watch says stuck, above the request, with the qom-set that stops the
    retries and the boot option that makes plugged memory movable."""
    wait_until(
        lambda: "VMEM-FILLED" in qemus.vms[PINNED].console.read_text(errors="replace"),
        120,
        "the guest filled its plugged memory",
    )
    set_requested(qemus, PINNED, 0)
    source = qmp_source(qemus)
    sizes = [-1]

    def settled() -> bool:  # what it can unplug, it unplugs within seconds; then it stays
        sizes.append(int(vm_fields(source, PINNED)["vmem_plugged_bytes"]))
        time.sleep(2.5)
        return sizes[-1] == sizes[-2]

    wait_until(settled, 90, "the unplug to stop moving")
    held = sizes[-1]
    assert held > 0, "the guest gave it all back"
    fields = vm_fields(source, PINNED)
    assert fields["vmem_requested_bytes"] == 0 and fields["vmem_gap_bytes"] == held

    config = tmp_path / "explain.toml"
    config.write_text(
        f'[[sources.qmp]]\nsockets = ["{qemus.glob}"]\nproxmox_config = ""\n' + STUCK_CONFIG
    )
    done = run_cli(
        "--explain", "--config", str(config), "--watch", "3s", "--format", "json", timeout=120
    )
    assert done.returncode == 1, done.stderr
    vms = {vm["guest"]: vm for vm in json.loads(done.stdout)["vms"]}
    found = {f["code"]: f for f in vms[f"vm{PINNED}"]["findings"]}
    stuck = found["vmem_stuck"]
    assert stuck["severity"] == "critical"  # the config's rule on vmem_stuck
    assert "above the request" in stuck["message"] and "cannot unplug" in stuck["message"]
    assert f'"path": "/machine/peripheral/{VMEM_ID}"' in stuck["remedy"]
    assert f'"property": "requested-size", "value": {held}' in stuck["remedy"]
    assert "memhp_default_state=online_movable" in stuck["remedy"]
    assert "vmem_short_of_target" not in found  # the same gap, judged


def test_qmp_a_guest_without_the_driver(qemus: QemuHost, tmp_path: Path) -> None:
    """No virtio_mem driver: nothing plugged of 128 MiB asked; the host sees the gap, the
    guest sees a device without its driver."""
    fields = vm_fields(qmp_source(qemus), NO_DRIVER)
    assert fields["vmem_plugged_bytes"] == 0 and fields["vmem_requested_bytes"] == 128 * MIB
    assert fields["vmem_gap_bytes"] == -128 * MIB
    dump = console(qemus, NO_DRIVER)
    assert dump is not None and any(
        ident == "0x0018" and not driver for _, ident, driver in dump.devices
    )
    root = guest_tree(dump, tmp_path / "guest")
    seen = guest_fields(dump, tmp_path / "again")
    assert seen["vmem_driver_loaded"] is False
    assert "vmem_plugged_bytes" not in seen  # no driver: nothing claimed in /proc/iomem
    doc = explain_once(f'[[sources.guest]]\nroot = "{root}"\n')
    [vm] = doc["vms"]
    [unused] = [f for f in vm["findings"] if f["code"] == "vmem_unused"]
    assert "no virtio_mem driver" in unused["message"]
    assert "modprobe virtio_mem" in unused["remedy"]


def test_qmp_plugged_memory_left_offline(qemus: QemuHost, tmp_path: Path) -> None:
    """Without memhp_default_state the guest's driver plugs what is asked and the blocks stay
    offline: the host sees its request met, only the guest shows the memory is not used."""
    source = qmp_source(qemus)
    fields = wait_until(
        lambda: (f := vm_fields(source, OFFLINE))["vmem_plugged_bytes"] == 256 * MIB and f,
        60,
        "256 MiB plugged",
    )
    assert fields["vmem_requested_bytes"] == 256 * MIB
    assert fields["vmem_gap_bytes"] == 0
    dump = wait_until(
        lambda: (d := console(qemus, OFFLINE)) is not None and d.iomem_bytes(_vmem_device(d)) and d,
        30,
        "the plugged blocks in /proc/iomem",
    )
    seen = guest_fields(dump, tmp_path / "guest")
    assert seen["vmem_driver_loaded"] is True
    assert seen["vmem_plugged_bytes"] == seen["vmem_offline_bytes"] == 256 * MIB
    doc = explain_once(f'[[sources.guest]]\nroot = "{tmp_path / "guest"}"\n')
    [unused] = [f for f in doc["vms"][0]["findings"] if f["code"] == "vmem_unused"]
    assert "256 MiB" in unused["message"] and "offline" in unused["message"]
    assert "memhp_default_state=online_movable" in unused["remedy"]


def _vmem_device(dump: VmemDump) -> str:
    return next(name for name, ident, _ in dump.devices if ident == "0x0018")


def test_qmp_judged_lines_and_host_count(qemus: QemuHost) -> None:
    """Through the real runner: vmem_stuck once the gap held stuck_for (a paused VM keeps
    size 0; the guest without the driver; the guest that cannot unplug), not where the request
    is met; the host line counts them."""
    plugin = Plugin(
        f'[[sources.qmp]]\nsockets = ["{qemus.glob}"]\nproxmox_config = ""\n' + STUCK_CONFIG
    )
    try:
        first = plugin.poll()
        time.sleep(1.5)
        lines = plugin.poll()
    finally:
        plugin.close()
    vms = {ln["tags"]["guest"]: ln["fields"] for ln in lines if ln["measurement"] == "balloon"}
    before = {ln["tags"]["guest"]: ln["fields"] for ln in first if ln["measurement"] == "balloon"}
    assert before[f"vm{PAUSED}"]["vmem_stuck"] is False  # not yet for stuck_for
    assert vms[f"vm{PAUSED}"]["vmem_plugged_bytes"] == 0
    for vmid in (PAUSED, NO_DRIVER):
        assert vms[f"vm{vmid}"]["vmem_stuck"] is True, vmid
        assert vms[f"vm{vmid}"]["vmem_stuck_level"] == 2
    assert vms[f"vm{OFFLINE}"]["vmem_stuck"] is False
    [host] = [ln["fields"] for ln in lines if ln["measurement"] == "balloon_host"]
    stuck = [g for g, f in vms.items() if f.get("vmem_stuck") is True]
    assert host["vms_vmem_stuck"] == len(stuck) >= 2


# --- libvirt ----------------------------------------------------------------------------------

LV_BOOTED, LV_PAUSED = "vmem-booted", "vmem-paused"


@pytest.fixture(scope="module")
def vmem_domains(libvirt_stack: LibvirtStack) -> Iterator[LibvirtStack]:
    def start() -> None:
        libvirt_stack.define_guest(
            LV_BOOTED,
            memory_mib=BASE_MIB,
            customize=libvirt_vmem(VMEM_MIB, 0, append=f"tb.vmem=1 {ONLINE_MOVABLE}"),
        )
        libvirt_stack.start_paused([LV_PAUSED], customize=libvirt_vmem(VMEM_MIB, 128))
        libvirt_stack.wait_guest_stats(LV_BOOTED, timeout=240)

    def remove() -> None:
        libvirt_stack.remove_domains([LV_BOOTED, LV_PAUSED])

    with running(start, remove, (StackError,), "the virtio-mem domains did not start"):
        yield libvirt_stack


def libvirt_fields(source: Any, name: str) -> Fields:
    result = source.poll(time.time())
    assert result.error is None, result.error
    [sample] = [s for s in result.samples if s.tags["guest"] == name]
    fields: Fields = sample.fields
    return fields


def virsh(stack: LibvirtStack, *args: str) -> str:
    done = subprocess.run(
        ["virsh", "-c", stack.uri, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_libvirt_plug_seen_from_the_live_xml(vmem_domains: LibvirtStack) -> None:
    """libvirt counts the device at its full size in its maximum and at what is plugged in
    its current: the plugin reports virtio-mem apart, and no balloon. A new requested size
    (no event says so) shows at the next poll."""
    from telegraf_balloon.sources.libvirt.source import LibvirtSource

    config = LibvirtConfig(uri=vmem_domains.uri, domains=(LV_BOOTED, LV_PAUSED))
    source = LibvirtSource(config, Log(io.StringIO()))
    try:
        fields = libvirt_fields(source, LV_BOOTED)
        assert fields["vmem_plugged_bytes"] == fields["vmem_requested_bytes"] == 0
        assert fields["vmem_max_bytes"] == VMEM_MIB * MIB and fields["vmem_block_bytes"] == BLOCK
        assert fields["memory_max_bytes"] == BASE_MIB * MIB  # libvirt says 896 MiB
        assert fields["balloon_actual_bytes"] == 0  # not the 512 MiB still unplugged
        uuid = _uuid(vmem_domains, LV_BOOTED)
        virsh(vmem_domains, "update-memory-device", uuid, "--requested-size", "256M", "--live")
        fields = libvirt_fields(source, LV_BOOTED)
        assert fields["vmem_requested_bytes"] == 256 * MIB  # the very next poll
        fields = wait_until(
            lambda: (
                (f := libvirt_fields(source, LV_BOOTED))["vmem_plugged_bytes"] == 256 * MIB and f
            ),
            60,
            "256 MiB plugged",
        )
        assert fields["vmem_gap_bytes"] == 0
        assert fields["memory_max_bytes"] == fields["memory_current_bytes"] == 640 * MIB
        assert fields["balloon_actual_bytes"] == 0
        virsh(vmem_domains, "update-memory-device", uuid, "--requested-size", "0", "--live")
        wait_until(
            lambda: libvirt_fields(source, LV_BOOTED)["vmem_plugged_bytes"] == 0,
            60,
            "unplugged again",
        )
    finally:
        source.close()


def _uuid(stack: LibvirtStack, name: str) -> str:
    return virsh(stack, "domuuid", name).strip()


def test_libvirt_paused_domain_is_stuck_and_the_remedy_clears_it(
    vmem_domains: LibvirtStack, tmp_path: Path
) -> None:
    """A paused domain asked for 128 MiB plugs nothing: vmem_stuck under --watch, and the
    remedy's command, run as printed, makes the request match (no finding after it)."""
    config = tmp_path / "explain.toml"
    config.write_text(
        f'[[sources.libvirt]]\nuri = "{vmem_domains.uri}"\ndomains = ["{LV_PAUSED}"]\n'
        + STUCK_CONFIG
    )
    done = run_cli(
        "--explain", "--config", str(config), "--watch", "3s", "--format", "json", timeout=120
    )
    assert done.returncode == 1, done.stderr
    [vm] = json.loads(done.stdout)["vms"]
    found = {f["code"]: f for f in vm["findings"]}
    stuck = found["vmem_stuck"]
    assert "128 MiB requested" in stuck["message"] and "short of it" in stuck["message"]
    [command] = [line[2:] for line in stuck["remedy"].split("\n") if line.startswith("$ ")]
    uuid = _uuid(vmem_domains, LV_PAUSED)
    assert shlex.split(command) == [
        "virsh", "-c", vmem_domains.uri, "update-memory-device", uuid, "--alias", "virtiomem0",
        "--requested-size", "0K", "--live",
    ]  # fmt: skip
    subprocess.run(shlex.split(command), check=True, capture_output=True, timeout=60)
    after = explain_once(
        f'[[sources.libvirt]]\nuri = "{vmem_domains.uri}"\ndomains = ["{LV_PAUSED}"]\n'
    )
    [vm] = after["vms"]
    assert vm["fields"]["vmem_requested_bytes"] == 0
    assert not {f["code"] for f in vm["findings"]} & {"vmem_stuck", "vmem_short_of_target"}
