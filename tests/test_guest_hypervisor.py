"""Is this machine a VM? The guest source says `hypervisor=none` only on bare metal.

A false "none" hides a VM's real balloon problems, so "none" needs the x86 CPU's own word
(no `hypervisor` flag) and no other sign of virtual hardware. Trees are copies of the
constructed `bare-metal-kvm-host` fixture (see its SOURCE.md), each with one sign of a VM
added; the last test runs on this machine, which is a VM.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Callable

import pytest

from telegraf_balloon.config import GuestConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import Sample
from telegraf_balloon.sources.guest.detect import vm_hints
from telegraf_balloon.sources.guest.files import GuestFiles, read_regular
from telegraf_balloon.sources.guest.parsers import parse_cpu_hypervisor
from telegraf_balloon.sources.guest.source import GuestSource

FIXTURES = Path(__file__).parent / "fixtures" / "guest"
BARE = FIXTURES / "bare-metal-kvm-host" / "root"
JUDGEMENT = ("inflation_blocked", "driver_loaded", "driver_blacklisted")


def poll(root: Path | str) -> Sample:
    source = GuestSource(GuestConfig(root=str(root)), "h", Log(stream=io.StringIO()), 4096)
    result = source.poll(1_700_000_000.0)
    assert result.error is None, result.error
    [sample] = result.samples
    return sample


def bare_copy(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(BARE, root, symlinks=True)
    return root


# --- the CPU flag -----------------------------------------------------------------------------


def test_cpu_flag_present_absent_and_unknown() -> None:
    vm = "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n\n"
    metal = "processor\t: 0\nflags\t\t: fpu vme vmx lahf_lm\n\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\n"
    assert parse_cpu_hypervisor(vm) is True
    assert parse_cpu_hypervisor(metal) is False
    assert parse_cpu_hypervisor(arm) is None  # no x86 flags: no answer, never "no"
    assert parse_cpu_hypervisor("") is None
    # a read cut inside a flags line: that line could lack the flag only because it is cut
    assert parse_cpu_hypervisor("flags\t\t: fpu vme de") is None
    assert parse_cpu_hypervisor(metal + "processor\t: 1\nflags\t\t: fpu vme") is False
    assert parse_cpu_hypervisor(metal + "processor\t: 1\n" + vm.split("\n", 1)[1]) is True


def test_cpuinfo_is_read_by_its_head(tmp_path: Path) -> None:
    """/proc/cpuinfo grows with the CPUs (over 1 MiB on big hosts): its start is enough."""
    big = tmp_path / "cpuinfo"
    block = "processor\t: {}\nflags\t\t: fpu vme vmx " + "x" * 1500 + "\n\n"
    big.write_text("".join(block.format(i) for i in range(1000)))  # about 1.5 MB
    assert big.stat().st_size > 1 << 20
    text = read_regular(str(big), head=65536)
    assert len(text) < 65536 + 16384
    assert parse_cpu_hypervisor(text) is False


# --- bare metal and the signs of a VM ---------------------------------------------------------


def test_bare_metal_with_an_empty_sys_hypervisor_is_none(tmp_path: Path) -> None:
    """A kernel with CONFIG_SYS_HYPERVISOR has an empty /sys/hypervisor on bare metal."""
    root = bare_copy(tmp_path)
    (root / "sys" / "hypervisor").mkdir()
    (root / "sys" / "bus" / "virtio" / "devices").mkdir(parents=True)  # bus loaded, no device
    sample = poll(root)
    assert sample.tags["hypervisor"] == "none"
    assert sample.tags["driver"] == "none"
    for name in JUDGEMENT:
        assert name not in sample.fields
    total = sample.fields["guest_total_bytes"]
    assert isinstance(total, int) and total > 0  # memory figures stay: they are true
    assert sample.fields["memory_max_bytes"] == total


def _flag(root: Path) -> None:
    cpuinfo = root / "proc" / "cpuinfo"
    cpuinfo.write_text(cpuinfo.read_text().replace("flags\t\t: fpu ", "flags\t\t: hypervisor fpu "))


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return change


def _arm(root: Path) -> None:
    (root / "proc" / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd\n\n")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_flag, "unknown"),  # the CPU flag is authoritative: a VM, whatever else says
        (_write("sys/class/dmi/id/sys_vendor", "QEMU\n"), "qemu"),
        (_write("sys/class/dmi/id/product_name", "Virtual Machine\n"), "unknown"),  # Hyper-V
        (_write("sys/class/dmi/id/bios_vendor", "SeaBIOS\n"), "unknown"),
        (_write("sys/class/dmi/id/board_vendor", "Amazon EC2\n"), "unknown"),
        (_write("sys/hypervisor/type", "xen\n"), "xen"),
        (_write("sys/hypervisor/uuid", "00000000-0000-0000-0000-000000000000\n"), "unknown"),
        (_write("sys/bus/vmbus/devices/vmbus_0/id", "1\n"), "unknown"),
        (_write("sys/bus/virtio/devices/virtio0/device", "0x0001\n"), "unknown"),
        (_write("proc/xen/capabilities", "\n"), "unknown"),
        (
            _write(
                "sys/devices/system/clocksource/clocksource0/available_clocksource",
                "kvm-clock tsc\n",
            ),
            "kvm",
        ),
        (_arm, "unknown"),  # no x86 flags: the CPU does not say, so never "none"
    ],
)
def test_any_sign_of_a_vm_keeps_it_a_guest(
    tmp_path: Path, change: Callable[[Path], None], expected: str
) -> None:
    root = bare_copy(tmp_path)
    change(root)
    sample = poll(root)
    assert sample.tags["hypervisor"] == expected
    assert sample.fields["inflation_blocked"] is True  # a VM without a balloon: judged as one


def test_an_ec2_bare_metal_instance_is_none(tmp_path: Path) -> None:
    """EC2's .metal instances carry Amazon's DMI strings but run no hypervisor."""
    root = bare_copy(tmp_path)
    _write("sys/class/dmi/id/sys_vendor", "Amazon EC2\n")(root)
    _write("sys/class/dmi/id/product_name", "m5.metal\n")(root)
    assert poll(root).tags["hypervisor"] == "none"


def test_this_machine_a_vm_stays_a_guest() -> None:
    """This machine is a VM: its CPU flag says so, and the source must not call it bare metal."""
    flag = parse_cpu_hypervisor(read_regular("/proc/cpuinfo", head=65536))
    sample = poll("/")
    if flag is not False:
        assert sample.tags["hypervisor"] != "none", sample.tags
        assert "inflation_blocked" in sample.fields and "driver_loaded" in sample.fields
    else:  # run on bare metal: "none" unless another sign of a VM is there
        hints = vm_hints(GuestFiles("/", Log(stream=io.StringIO())))
        assert (sample.tags["hypervisor"] == "none") != bool(hints)
