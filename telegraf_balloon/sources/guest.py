"""Inside a Linux guest: balloon state from /proc, /sys and debugfs under a configurable root."""

from __future__ import annotations

import glob
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from ..config import GuestConfig
from ..log import Log
from ..model import Detail, Fields, PollResult, Sample

T = TypeVar("T")

KIB = 1024
VMW_PAGE = 4096  # vmw_balloon counts in 4 KiB pages whatever the guest's page size

BALLOON_MODULES = ("virtio_balloon", "vmw_balloon", "xen_balloon", "hv_balloon")
# The virtio serial ports (the guest agent's channel): SOURCE's "virtio_serial driver".
VIRTIO_CONSOLE = "virtio_console"
# The balloon drivers' debugfs files (created 0444; debugfs itself is mounted 0700 by default).
DEBUGFS = "sys/kernel/debug"
DEBUGFS_FILES = {"vmw_balloon": "vmmemctl", "hv_balloon": "hv-balloon"}

# virtio balloon feature bits (include/uapi/linux/virtio_balloon.h)
F_STATS_VQ, F_DEFLATE_ON_OOM, F_FREE_PAGE_HINT, F_REPORTING = 1, 2, 3, 5


class Malformed(ValueError):
    """A file whose content does not follow the kernel's format."""


READ_LIMIT = 1 << 20  # the kernel's files here are a few KiB; a bigger one is not theirs
_CHUNK = 16384
INT64_MAX = 2**63 - 1


class NotRegular(OSError):
    """A FIFO, socket or device where a kernel file should be: opening it could block."""


def _number(text: str) -> int:
    """A plain ASCII decimal (str.isdigit() also accepts '²', which int() refuses)."""
    if not text.isascii() or not text.isdigit():
        raise Malformed(f"not a number: {text[:40]!r}")
    # Beyond int64 no consumer can store it (and int() refuses over 4300 digits).
    if len(text) > 19 or int(text) > INT64_MAX:
        raise Malformed(f"number out of range: {text[:40]!r}")
    return int(text)


def read_regular(path: str, head: Optional[int] = None) -> str:
    """A regular file's text, at most READ_LIMIT bytes of it (or its first `head` characters,
    where only the start matters: /proc/cpuinfo grows with the CPUs).

    /proc, /sys and debugfs files are all regular files. Anything else is refused before it
    is opened: opening a FIFO without a writer blocks forever, and a device can do anything.
    (A path swapped for a FIFO between the stat and the open can still block: the tree is the
    operator's, and the runner's deadline covers that case.)
    """
    info = os.stat(path)
    mode = info.st_mode
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # open() fails at once on a directory
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        )
        raise NotRegular(f"{kind}, not a regular file")
    if info.st_size > READ_LIMIT and head is None:
        raise NotRegular(f"larger than {READ_LIMIT} bytes")
    # Read in small chunks: /proc and /sys files say size 0 whatever they hold, and one
    # read(READ_LIMIT) asks the allocator for a MiB each time, which fragments the heap.
    chunks: list[str] = []
    size = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if head is not None and size >= head:
                chunks.append(chunk)
                break
            if size > READ_LIMIT:
                raise NotRegular(f"larger than {READ_LIMIT} bytes")
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else "".join(chunks)


# --- pure parsers: text in, plain data out -------------------------------------------------


# MemTotal:       24684092 kB
# HugePages_Total:       0
def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: value} (kB values stay in kB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or not words or len(words) > 2:
            raise Malformed(f"unexpected line {line[:60]!r}")
        out[name.strip()] = _number(words[0])
    if "MemTotal" not in out:
        raise Malformed("no MemTotal line")
    return out


# nr_balloon_pages 0
# balloon_inflate 65536
def parse_vmstat(text: str) -> dict[str, int]:
    """/proc/vmstat -> {key: count}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise Malformed(f"unexpected line {line[:60]!r}")
        value = words[1]
        # counters are unsigned, but a few gauges (nr_*) can read negative on some kernels
        out[words[0]] = -_number(value[1:]) if value.startswith("-") else _number(value)
    if not out:
        raise Malformed("empty")
    return out


# 01100101000000000000000000000000100000000000...   (character i = feature bit i)
def parse_features(text: str) -> list[bool]:
    """virtio device `features` file -> bit list."""
    bits = text.strip()
    if not bits or any(c not in "01" for c in bits):
        raise Malformed(f"not a bit string: {bits[:40]!r}")
    return [c == "1" for c in bits]


# always [madvise] never
def parse_thp(text: str) -> str:
    """transparent_hugepage/enabled -> the bracketed mode."""
    match = re.search(r"\[(\w+)\]", text)
    if match is None:
        raise Malformed(f"no [mode] in {text.strip()[:40]!r}")
    return match.group(1)


# Kernel 4.20+ (drivers/misc/vmw_balloon.c, "%-22s: %16llu"):
#   balloon capabilities  :             0x3e
#   is resetting          :                n
#   target                :             4096
#   current               :             1024
#   start                 :                1 (               0 failed)
# Kernel 4.19 and older:
#   target:                 4096 pages
#   current:                1024 pages
#   start:                     1 (   0 failed)
_VMW_LINE = re.compile(
    r"^\s*([A-Za-z][\w \-()]*?)\s*:\s*(\S+)(?:\s+pages)?(?:\s*\(\s*(\d+) failed\))?"
)


def parse_vmmemctl(text: str) -> dict[str, int]:
    """debugfs vmmemctl (both formats) -> {'target': pages, 'current': pages, ...}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        match = _VMW_LINE.match(line)
        if match is None:
            continue
        name, value, failed = match.group(1).strip(), match.group(2), match.group(3)
        if failed is not None:
            # A command counter ("target: 20 (0 failed)" counts GET_TARGET calls): kept apart
            # from the balloon's own "target" and "current" lines of the same name.
            name += " calls"
            out[name[:-6] + " failed"] = _number(failed)
        if name in out:
            continue
        try:
            number = int(value, 16) if value.startswith("0x") else _number(value)
        except ValueError:  # Malformed included: a line we cannot read is skipped
            continue
        if number <= INT64_MAX:
            out[name] = number
    if "target" not in out or "current" not in out:
        raise Malformed("no numeric target/current lines")
    return out


# host_version          : 10.0
# state                 : 2 (Balloon Up)
# page_size             : 4096
# pages_ballooned       : 1024
def parse_hv_balloon(text: str) -> dict[str, str]:
    """debugfs hv-balloon -> {key: raw value}; vendor kernels differ, so keys are generic."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    if "pages_ballooned" not in out:
        raise Malformed("no pages_ballooned line")
    _number(out["pages_ballooned"])
    if "page_size" in out:
        _number(out["page_size"])
    return out


# 123456\n  (each xen_memory0 attribute is one "%lu\n")
def parse_ulong(text: str) -> int:
    return _number(text.strip())


# processor	: 0
# flags		: fpu vme de pse tsc msr pae mce cx8 ... hypervisor lahf_lm ...
def parse_cpu_hypervisor(text: str) -> Optional[bool]:
    """/proc/cpuinfo -> whether the CPU runs under a hypervisor: x86's `hypervisor` flag
    (CPUID leaf 1, ECX bit 31, which every x86 hypervisor sets). None without a complete
    `flags` line (other architectures have none): no answer, which is not a "no"."""
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a line cut by a partial read could lack the flag only because it is cut
    seen = False
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip() == "flags":
            if "hypervisor" in value.split():
                return True
            seen = True
    return False if seen else None


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


# 4c4c4544-0051-3510-8051-b4c04f564433
def parse_uuid(text: str) -> str:
    """DMI product_uuid -> its canonical lower-case form."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise Malformed(f"not a UUID: {text.strip()[:40]!r}") from None


# blacklist virtio_balloon
# install vmw_balloon /bin/false
def blacklisted_modules(conf_texts: list[str], cmdline: str) -> set[str]:
    """Module names that modprobe.d files or the kernel command line refuse to load."""
    out: set[str] = set()
    for text in conf_texts:
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if (len(words) >= 2 and words[0] == "blacklist") or (
                len(words) >= 3
                and words[0] == "install"
                and os.path.basename(words[2]) in ("false", "true")
            ):
                out.add(words[1].replace("-", "_"))
    for word in cmdline.split():
        name, _, value = word.partition("=")
        if name == "modprobe.blacklist":  # read by kmod, which takes - and _ alike
            out.update(v.replace("-", "_") for v in value.split(",") if v)
        elif name == "module_blacklist":  # matched by the kernel as written
            out.update(v for v in value.split(",") if v)
    return out


MODPROBE_DIRS = ("etc/modprobe.d", "lib/modprobe.d", "usr/lib/modprobe.d", "run/modprobe.d")


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


# --- the source -------------------------------------------------------------------------------


@dataclass
class _Driver:
    name: str  # tag value
    bound: bool
    device: Optional[str] = None  # virtio device dir


class GuestSource:
    """Reads one guest's balloon state; every file is optional, every parser may fail alone."""

    kind = "guest"

    def __init__(
        self,
        config: GuestConfig,
        hostname: str,
        log: Log,
        page_size: Optional[int] = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.root = config.root
        self.instance = config.root
        self.hostname = hostname
        self.log = log
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self._clock = clock
        # The CPU's hypervisor flag, read once (it cannot change while the machine runs).
        self._cpu_read = False
        self._cpu_hypervisor: Optional[bool] = None

    def close(self) -> None:
        pass

    # -- file access: missing is normal and silent; unreadable or malformed warns once --

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _read(self, rel: str) -> Optional[str]:
        path = self._path(rel)
        try:
            text = read_regular(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except NotRegular as exc:
            self.log.fault(f"guest:{path}", f"guest source: skipped {path}: {exc}")
            return None
        except OSError as exc:
            self.log.fault(f"guest:{path}", f"guest source: cannot read {path}: {exc.strerror}")
            return None
        self.log.clear(f"guest:{path}", f"guest source: {path} is readable again")
        return text

    def _parse(self, rel: str, parser: Callable[[str], T]) -> Optional[T]:
        text = self._read(rel)
        return None if text is None else self._parse_text(rel, text, parser)

    def _parse_text(self, rel: str, text: str, parser: Callable[[str], T]) -> Optional[T]:
        """Parse a file's text; a malformed file warns once and gives None."""
        path = self._path(rel)
        try:
            value = parser(text)
        except Malformed as exc:
            self.log.fault(f"guest-parse:{path}", f"guest source: malformed {path}: {exc}")
            return None
        self.log.clear(f"guest-parse:{path}")
        return value

    def _exists(self, rel: str) -> bool:
        return os.path.lexists(self._path(rel))

    # -- detection --

    def _virtio_balloon_device(self) -> Optional[_Driver]:
        for device_file in sorted(glob.glob(self._path("sys/bus/virtio/devices/virtio*/device"))):
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
            bound = linked or self._exists(f"sys/bus/virtio/drivers/virtio_balloon/{name}")
            return _Driver("virtio_balloon", bound, device_dir)
        return None

    def _module_loaded(self, name: str, modules: Optional[str]) -> bool:
        if self._exists(f"sys/module/{name}"):
            return True
        return modules is not None and any(
            line.split(" ", 1)[0] == name for line in modules.splitlines()
        )

    def _detect_driver(self, modules: Optional[str]) -> Optional[_Driver]:
        virtio = self._virtio_balloon_device()
        if virtio is not None:
            return virtio
        if self._exists("sys/kernel/debug/vmmemctl") or self._module_loaded("vmw_balloon", modules):
            return _Driver("vmw_balloon", True)
        if self._exists("sys/devices/system/xen_memory/xen_memory0"):
            return _Driver("xen_balloon", True)
        if self._exists("sys/kernel/debug/hv-balloon") or self._module_loaded(
            "hv_balloon", modules
        ):
            return _Driver("hv_balloon", True)
        return None

    def _hypervisor(self, driver: Optional[_Driver]) -> str:
        if driver is None and self._cpu_says_hypervisor() is False and not self._vm_hints():
            return "none"
        xen_type = self._read("sys/hypervisor/type")
        if xen_type is not None and xen_type.strip() == "xen":
            return "xen"
        vendor = (self._read("sys/class/dmi/id/sys_vendor") or "").strip()
        clocks = self._read("sys/devices/system/clocksource/clocksource0/available_clocksource")
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

    def _cpu_says_hypervisor(self) -> Optional[bool]:
        """The x86 `hypervisor` CPU flag; None where the CPU does not say (no x86 flags)."""
        if not self._cpu_read:
            try:
                text = read_regular(self._path("proc/cpuinfo"), head=65536)
            except OSError:
                return None  # absent (not Linux's /proc, a partial tree): no answer
            self._cpu_hypervisor = parse_cpu_hypervisor(text)
            self._cpu_read = True
        return self._cpu_hypervisor

    def _vm_hints(self) -> list[str]:
        """What says this is a VM although the CPU flag does not (a hypervisor can hide the
        flag): virtual hardware in DMI, /sys/hypervisor entries, Xen, Hyper-V's VMBus, any
        virtio device. One of them keeps the machine from being called bare metal."""
        hints: list[str] = []
        dmi = {n: (self._read(f"sys/class/dmi/id/{n}") or "").strip().lower() for n in DMI_FILES}
        # An EC2 bare-metal instance: Amazon's hardware and strings, no hypervisor.
        metal = dmi["product_name"].endswith(".metal")
        for name, text in dmi.items():
            found = [f for f in HYPERVISOR_DMI if f in text]
            if metal and "amazon ec2" in found:
                found.remove("amazon ec2")
            if found:
                hints.append(f"DMI {name} {text!r}")
        clocks = self._read("sys/devices/system/clocksource/clocksource0/available_clocksource")
        for clock in (clocks or "").split():
            if clock in ("kvm-clock", "xen", "hyperv_clocksource_tsc_page", "hyperv_clocksource"):
                hints.append(f"clocksource {clock}")
        for folder in ("sys/hypervisor", "sys/bus/vmbus/devices", "sys/bus/virtio/devices"):
            try:
                if os.listdir(self._path(folder)):
                    hints.append(folder)
            except OSError:
                pass
        if self._exists("proc/xen"):
            hints.append("proc/xen")
        return hints

    def _debugfs_world_readable(self, driver: Optional[_Driver]) -> Optional[bool]:
        """The driver's debugfs file readable by every user (mode bits); None: no such file.

        Both must allow it: the file (the kernel creates it 0444) and the debugfs mount
        point (0700 unless mounted with a wider mode=).
        """
        name = DEBUGFS_FILES.get(driver.name) if driver is not None else None
        if name is None:
            return None
        try:
            file_mode = os.stat(self._path(f"{DEBUGFS}/{name}")).st_mode
            mount_mode = os.stat(self._path(DEBUGFS)).st_mode
        except OSError:
            return None
        return bool(file_mode & stat.S_IROTH) and bool(mount_mode & stat.S_IXOTH)

    def _blacklist(self) -> set[str]:
        texts = []
        for folder in MODPROBE_DIRS:
            for path in sorted(glob.glob(os.path.join(self._path(folder), "*.conf"))):
                text = self._read(os.path.relpath(path, self.root))
                if text is not None:
                    texts.append(text)
        return blacklisted_modules(texts, self._read("proc/cmdline") or "")

    # -- the poll --

    def poll(self, now: float) -> PollResult:
        started = self._clock()
        meminfo_text = self._read("proc/meminfo")
        if meminfo_text is None:
            return PollResult(error=f"no readable proc/meminfo under {self.root!r}")
        meminfo = self._parse_text("proc/meminfo", meminfo_text, parse_meminfo) or {}
        vmstat = self._parse("proc/vmstat", parse_vmstat) or {}
        modules = self._read("proc/modules")
        driver = self._detect_driver(modules)
        fields: Fields = {}
        page = self.page_size

        balloon_bytes: Optional[int] = None
        target_bytes: Optional[int] = None
        current_override: Optional[int] = None
        shrinks_memtotal = False
        if driver is not None and driver.name == "virtio_balloon":
            features = None
            if driver.device is not None:
                features = self._parse(
                    os.path.relpath(os.path.join(driver.device, "features"), self.root),
                    parse_features,
                )
            if features is not None:

                def bit(n: int) -> bool:
                    return n < len(features) and bool(features[n])

                fields["feature_stats_vq"] = bit(F_STATS_VQ)
                fields["feature_deflate_on_oom"] = bit(F_DEFLATE_ON_OOM)
                fields["feature_free_page_hint"] = bit(F_FREE_PAGE_HINT)
                fields["feature_free_page_reporting"] = bit(F_REPORTING)
                # Without DEFLATE_ON_OOM the driver takes ballooned pages out of MemTotal.
                shrinks_memtotal = not bit(F_DEFLATE_ON_OOM)
            if "nr_balloon_pages" in vmstat:
                balloon_bytes = vmstat["nr_balloon_pages"] * page
            elif "Balloon" in meminfo:
                balloon_bytes = meminfo["Balloon"] * KIB
            elif "balloon_inflate" in vmstat and "balloon_deflate" in vmstat:
                balloon_bytes = max(0, vmstat["balloon_inflate"] - vmstat["balloon_deflate"]) * page
        elif driver is not None and driver.name == "vmw_balloon":
            stats = self._parse("sys/kernel/debug/vmmemctl", parse_vmmemctl)
            if stats is not None:
                balloon_bytes = stats["current"] * VMW_PAGE
                target_bytes = stats["target"] * VMW_PAGE
        elif driver is not None and driver.name == "xen_balloon":
            shrinks_memtotal = True  # balloon.c takes ballooned pages out of managed memory
            base = "sys/devices/system/xen_memory/xen_memory0/"
            values = {
                name: self._parse(base + name, parse_ulong)
                for name in ("target_kb", "info/current_kb", "info/low_kb", "info/high_kb")
            }
            current_kb, target_kb = values["info/current_kb"], values["target_kb"]
            low_kb, high_kb = values["info/low_kb"], values["info/high_kb"]
            if low_kb is not None and high_kb is not None:
                balloon_bytes = (low_kb + high_kb) * KIB
            if current_kb is not None:
                current_override = current_kb * KIB
                if balloon_bytes is not None and target_kb is not None:
                    # xen's target is the domain's memory; the balloon's target is the rest.
                    target_bytes = max(0, current_override + balloon_bytes - target_kb * KIB)
        elif driver is not None and driver.name == "hv_balloon":
            hv_stats = self._parse("sys/kernel/debug/hv-balloon", parse_hv_balloon)
            if hv_stats is not None:
                hv_page = _number(hv_stats["page_size"]) if "page_size" in hv_stats else page
                balloon_bytes = _number(hv_stats["pages_ballooned"]) * hv_page
            shrinks_memtotal = True

        if "MemTotal" in meminfo:
            total = meminfo["MemTotal"] * KIB
            fields["guest_total_bytes"] = total
            if current_override is not None:
                fields["memory_current_bytes"] = current_override
                if balloon_bytes is not None:
                    fields["memory_max_bytes"] = current_override + balloon_bytes
            elif balloon_bytes is not None:
                maximum = total + balloon_bytes if shrinks_memtotal else total
                fields["memory_max_bytes"] = maximum
                fields["memory_current_bytes"] = maximum - balloon_bytes
            elif shrinks_memtotal:
                # The balloon's size is unknown and MemTotal lacks it: the VM's configured
                # memory cannot be known, only what the guest has now.
                fields["memory_current_bytes"] = total
            else:
                fields["memory_max_bytes"] = total
        if balloon_bytes is not None:
            fields["balloon_actual_bytes"] = balloon_bytes
        if target_bytes is not None:
            fields["balloon_target_bytes"] = target_bytes
        for name, key in (
            ("guest_free_bytes", "MemFree"),
            ("guest_available_bytes", "MemAvailable"),
            ("swap_total_bytes", "SwapTotal"),
        ):
            if key in meminfo:
                fields[name] = meminfo[key] * KIB
        if "Cached" in meminfo and "Buffers" in meminfo:
            fields["guest_disk_caches_bytes"] = (meminfo["Cached"] + meminfo["Buffers"]) * KIB

        for name, key, scale in (
            ("swap_in_bytes_total", "pswpin", page),
            ("swap_out_bytes_total", "pswpout", page),
            ("major_faults_total", "pgmajfault", 1),
            # the virtio driver reports pgfault as "minor faults"; so do we, to agree with it
            ("minor_faults_total", "pgfault", 1),
            ("inflate_pages_total", "balloon_inflate", 1),
            ("deflate_pages_total", "balloon_deflate", 1),
            ("migrate_pages_total", "balloon_migrate", 1),
            ("oom_kills_total", "oom_kill", 1),
        ):
            if key in vmstat:
                fields[name] = vmstat[key] * scale

        thp = self._parse("sys/kernel/mm/transparent_hugepage/enabled", parse_thp)
        if thp is not None:
            fields["thp_mode"] = thp

        hypervisor = self._hypervisor(driver)
        if hypervisor != "none":
            # On a machine that is not a VM, there is no balloon to judge: its memory and
            # swap figures stay (they are true), no driver or inflation judgement is made.
            blacklist = self._blacklist()
            if driver is not None:
                fields["driver_loaded"] = driver.bound
                fields["driver_blacklisted"] = driver.name in blacklist
            else:
                fields["driver_loaded"] = False
                fields["driver_blacklisted"] = any(m in blacklist for m in BALLOON_MODULES)
            fields["inflation_blocked"] = driver is None or not driver.bound
            fields["virtio_console_blacklisted"] = VIRTIO_CONSOLE in blacklist
        readable = self._debugfs_world_readable(driver)
        if readable is not None:
            fields["debugfs_world_readable"] = readable

        tags = {
            "host": self.hostname,
            "guest": self.hostname,
            "hypervisor": hypervisor,
            "source": "guest",
            "driver": driver.name if driver is not None else "none",
        }
        uuid_text = self._read("sys/class/dmi/id/product_uuid")
        if uuid_text and uuid_text.strip():
            product_uuid = self._parse_text("sys/class/dmi/id/product_uuid", uuid_text, parse_uuid)
            if product_uuid is not None:
                tags["uuid"] = product_uuid
        for name, value in list(fields.items()):
            # Each input fits int64; a product of two (pages x page size) may not.
            if type(value) is int and not -INT64_MAX - 1 <= value <= INT64_MAX:
                del fields[name]
                self.log.fault(
                    f"guest-range:{self.root}:{name}",
                    f"guest source: {name} under {self.root} is out of range, skipped",
                )
        sample = Sample(tags.get("uuid", self.hostname), tags, fields)
        if fields.get("driver_blacklisted") is True:
            # Where it is blacklisted, for --explain to name the file (not a field).
            origins = blacklist_origins(self.root)
            sample.detail = Detail({m: origins[m] for m in BALLOON_MODULES if m in origins})
        return PollResult(samples=[sample], api_latency_seconds=self._clock() - started)
