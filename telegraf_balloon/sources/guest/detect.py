"""What a guest tree says the machine is: its balloon driver (bound or not, blacklisted or
not) and its hypervisor, or bare metal.

Each finding reads its files through GuestFiles (missing is silent, a fault is said once)
and judges their text with the pure parsers.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass
from typing import Optional

from .files import GuestFiles, read_regular
from .parsers import blacklisted_modules, parse_cpu_hypervisor

BALLOON_MODULES = ("virtio_balloon", "vmw_balloon", "xen_balloon", "hv_balloon")
# The virtio serial ports (the guest agent's channel): the module behind the "virtio serial
# driver" (there is no `virtio_serial` module).
VIRTIO_CONSOLE = "virtio_console"
# The balloon drivers' debugfs files (created 0444; debugfs itself is mounted 0700 by default).
DEBUGFS = "sys/kernel/debug"
DEBUGFS_FILES = {"vmw_balloon": "vmmemctl", "hv_balloon": "hv-balloon"}
MODPROBE_DIRS = ("etc/modprobe.d", "lib/modprobe.d", "usr/lib/modprobe.d", "run/modprobe.d")


@dataclass
class Driver:
    name: str  # tag value
    bound: bool
    device: Optional[str] = None  # virtio device dir


# Lower-case fragments of DMI strings (vendor, product, BIOS, board) that only virtual
# hardware carries. "Virtual Machine" is Hyper-V's product name (Microsoft also makes laptops).
HYPERVISOR_DMI = (
    "qemu",
    "kvm",
    "bochs",
    "seabios",
    "ovmf",
    "vmware",
    "virtualbox",
    "innotek",
    "xen",
    "parallels",
    "bhyve",
    "virtual machine",
    "red hat",
    "ovirt",
    "openstack",
    "google",
    "amazon ec2",
    "nutanix",
    "cloud hypervisor",
    "firecracker",
    "digitalocean",
    "hetzner",
    "scaleway",
    "apple virtualization",
)
DMI_FILES = ("sys_vendor", "product_name", "bios_vendor", "board_vendor")


def _virtio_balloon_device(files: GuestFiles) -> Optional[Driver]:
    for device_file in sorted(glob.glob(files.path("sys/bus/virtio/devices/virtio*/device"))):
        try:
            device_id = read_regular(device_file).strip()
        except OSError:
            continue
        if device_id.lower() not in ("0x0005", "0x5"):
            continue
        device_dir = os.path.dirname(device_file)
        name = os.path.basename(device_dir)
        driver_link = os.path.join(device_dir, "driver")
        try:
            linked = os.path.basename(os.readlink(driver_link)) == "virtio_balloon"
        except OSError:  # no driver bound (or a copied tree without the link)
            linked = False
        bound = linked or files.exists(f"sys/bus/virtio/drivers/virtio_balloon/{name}")
        return Driver("virtio_balloon", bound, device_dir)
    return None


VIRTIO_MEM_ID = ("0x0018", "0x18")  # include/uapi/linux/virtio_ids.h: VIRTIO_ID_MEM 24


def virtio_mem_devices(files: GuestFiles) -> list[tuple[str, bool]]:
    """The guest's virtio-mem devices: (virtioN, whether virtio_mem is bound to it)."""
    found = []
    for device_file in sorted(glob.glob(files.path("sys/bus/virtio/devices/virtio*/device"))):
        try:
            device_id = read_regular(device_file).strip().lower()
        except OSError:
            continue
        if device_id not in VIRTIO_MEM_ID:
            continue
        device_dir = os.path.dirname(device_file)
        name = os.path.basename(device_dir)
        try:
            bound = (
                os.path.basename(os.readlink(os.path.join(device_dir, "driver"))) == "virtio_mem"
            )
        except OSError:  # no driver bound (or a copied tree without the link)
            bound = files.exists(f"sys/bus/virtio/drivers/virtio_mem/{name}")
        found.append((name, bound))
    return found


def _module_loaded(files: GuestFiles, name: str, modules: Optional[str]) -> bool:
    if files.exists(f"sys/module/{name}"):
        return True
    return modules is not None and any(
        line.split(" ", 1)[0] == name for line in modules.splitlines()
    )


def detect_driver(files: GuestFiles, modules: Optional[str]) -> Optional[Driver]:
    """The balloon driver the guest has (bound or not), by its device or its files."""
    virtio = _virtio_balloon_device(files)
    if virtio is not None:
        return virtio
    if files.exists("sys/kernel/debug/vmmemctl") or _module_loaded(files, "vmw_balloon", modules):
        return Driver("vmw_balloon", True)
    if files.exists("sys/devices/system/xen_memory/xen_memory0"):
        return Driver("xen_balloon", True)
    if files.exists("sys/kernel/debug/hv-balloon") or _module_loaded(files, "hv_balloon", modules):
        return Driver("hv_balloon", True)
    return None


class CpuFlag:
    """The x86 `hypervisor` CPU flag of a tree, read once (it cannot change while the machine
    runs); None where the CPU does not say (no x86 flags)."""

    def __init__(self, files: GuestFiles) -> None:
        self.files = files
        self._read = False
        self._flag: Optional[bool] = None

    def __call__(self) -> Optional[bool]:
        if not self._read:
            try:
                text = read_regular(self.files.path("proc/cpuinfo"), head=65536)
            except OSError:
                return None  # absent (not Linux's /proc, a partial tree): no answer
            self._flag = parse_cpu_hypervisor(text)
            self._read = True
        return self._flag


def detect_hypervisor(files: GuestFiles, driver: Optional[Driver], cpu_flag: CpuFlag) -> str:
    """The hypervisor tag: "none" only on bare metal (see vm_hints), "unknown" when unsure."""
    if driver is None and cpu_flag() is False and not vm_hints(files):
        return "none"
    xen_type = files.read("sys/hypervisor/type")
    if xen_type is not None and xen_type.strip() == "xen":
        return "xen"
    vendor = (files.read("sys/class/dmi/id/sys_vendor") or "").strip()
    clocks = files.read("sys/devices/system/clocksource/clocksource0/available_clocksource")
    kvm_clock = clocks is not None and "kvm-clock" in clocks.split()
    if vendor.startswith("VMware"):
        return "vmware"
    if vendor.startswith("Microsoft"):
        return "hyperv"
    if vendor.startswith("Xen"):
        return "xen"
    if vendor in ("QEMU", "Red Hat", "Google", "Amazon EC2", "OpenStack Foundation"):
        return "kvm" if kvm_clock or vendor != "QEMU" else "qemu"
    if kvm_clock:
        return "kvm"
    if driver is not None:
        # virtio without DMI (Firecracker, cloud-hypervisor, crosvm): all run on KVM.
        return {
            "vmw_balloon": "vmware",
            "xen_balloon": "xen",
            "hv_balloon": "hyperv",
            "virtio_balloon": "kvm",
        }[driver.name]
    return "unknown"


def vm_hints(files: GuestFiles) -> list[str]:
    """What says this is a VM although the CPU flag does not (a hypervisor can hide the
    flag): virtual hardware in DMI, /sys/hypervisor entries, Xen, Hyper-V's VMBus, any
    virtio device. One of them keeps the machine from being called bare metal."""
    hints: list[str] = []
    dmi = {n: (files.read(f"sys/class/dmi/id/{n}") or "").strip().lower() for n in DMI_FILES}
    # An EC2 bare-metal instance: Amazon's hardware and strings, no hypervisor.
    metal = dmi["product_name"].endswith(".metal")
    for name, text in dmi.items():
        found = [f for f in HYPERVISOR_DMI if f in text]
        if metal and "amazon ec2" in found:
            found.remove("amazon ec2")
        if found:
            hints.append(f"DMI {name} {text!r}")
    clocks = files.read("sys/devices/system/clocksource/clocksource0/available_clocksource")
    for clock in (clocks or "").split():
        if clock in ("kvm-clock", "xen", "hyperv_clocksource_tsc_page", "hyperv_clocksource"):
            hints.append(f"clocksource {clock}")
    for folder in ("sys/hypervisor", "sys/bus/vmbus/devices", "sys/bus/virtio/devices"):
        try:
            if os.listdir(files.path(folder)):
                hints.append(folder)
        except OSError:
            pass
    if files.exists("proc/xen"):
        hints.append("proc/xen")
    return hints


def debugfs_world_readable(files: GuestFiles, driver: Optional[Driver]) -> Optional[bool]:
    """The driver's debugfs file readable by every user (mode bits); None: no such file.

    Both must allow it: the file (the kernel creates it 0444) and the debugfs mount
    point (0700 unless mounted with a wider mode=).
    """
    name = DEBUGFS_FILES.get(driver.name) if driver is not None else None
    if name is None:
        return None
    try:
        file_mode = os.stat(files.path(f"{DEBUGFS}/{name}")).st_mode
        mount_mode = os.stat(files.path(DEBUGFS)).st_mode
    except OSError:
        return None
    return bool(file_mode & stat.S_IROTH) and bool(mount_mode & stat.S_IXOTH)


def detect_blacklist(files: GuestFiles) -> set[str]:
    """The modules modprobe.d files or the kernel command line refuse to load."""
    texts = []
    for folder in MODPROBE_DIRS:
        for path in sorted(glob.glob(os.path.join(files.path(folder), "*.conf"))):
            text = files.read(os.path.relpath(path, files.root))
            if text is not None:
                texts.append(text)
    return blacklisted_modules(texts, files.read("proc/cmdline") or "")


def blacklist_origins(root: str) -> dict[str, list[str]]:
    """Module -> where it is blacklisted ("/etc/modprobe.d/x.conf", "the kernel command line").

    For messages that name the file; the judgement itself is the `driver_blacklisted` field.
    """
    out: dict[str, list[str]] = {}
    texts: list[tuple[str, str, str]] = []
    for folder in MODPROBE_DIRS:
        for path in sorted(glob.glob(os.path.join(root, folder, "*.conf"))):
            try:  # read_regular: a FIFO here would block the poll
                texts.append(("/" + os.path.relpath(path, root), read_regular(path), ""))
            except OSError:
                continue
    try:
        cmdline = read_regular(os.path.join(root, "proc", "cmdline"))
    except OSError:
        cmdline = ""  # an empty one blacklists nothing
    texts.append(("the kernel command line", "", cmdline))
    for where, conf, cmdline in texts:
        for module in sorted(blacklisted_modules([conf] if conf else [], cmdline)):
            out.setdefault(module, []).append(where)
    return out
