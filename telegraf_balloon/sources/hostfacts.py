"""What a hypervisor host says of itself in its own /proc and /sys (local sources only).

The one module that reads the host's files: each reader takes the root they are under
(`host_root`, "/" unless the plugin runs with the host's tree mounted elsewhere). The
libvirt and qmp sources ask here and never open a host file themselves.

Three parts:
- the host itself: memory, EDAC, and its reclaim (swap, KSM, zswap, memory pressure), read
  every poll (`local_host`, `HostReclaim.host_figures`);
- what the host offers for the reclaim figures, probed once when a source starts
  (`HostReclaim`: its cgroup hierarchies, KSM, PSI, zswap; `missing()` names the figures it
  will not give and why);
- each VM's QEMU process, resolved once per QEMU start (`QemuProcess`: its pid, start time,
  cgroups and the files its figures come from), found by pid (the qmp source's peer
  credentials) or by the `-uuid` on QEMU command lines (`find_qemu`, for libvirt). Its group
  is read from /proc/<pid>/cgroup, never rebuilt from a name: libvirt and systemd escape
  and truncate scope names.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Iterable, Mapping
from typing import Optional

from ..model import Fields, HostInfo, Tags

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
KIB = 1024
_MEMINFO_KEYS = ("MemTotal", "MemFree", "SwapTotal", "SwapFree", "Zswapped")
_READ = 8192  # every file read here is smaller: /proc/<pid>/status, memory.stat, vmstat's head


def _read(path: str, size: int = _READ) -> Optional[bytes]:
    """A small kernel file's bytes, or None: os.open/os.read, no buffered file object (these
    reads run for every VM at every poll)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _number(word: bytes) -> Optional[int]:
    """A plain decimal, optionally negative (KSM's general_profit may be)."""
    digits = word[1:] if word.startswith(b"-") else word
    if not digits.isdigit() or len(digits) > 19:
        return None
    return int(word)


def _value(data: Optional[bytes], key: bytes) -> Optional[int]:
    """The number after `key` at the start of a line: `key` ends with its separator
    (b"pswpin ", b"zswapped ", b"SwapFree:"), so that b"swap " is not b"swappiness"."""
    if data is None:
        return None
    if data.startswith(key):
        at = len(key)
    else:
        at = data.find(b"\n" + key)
        if at < 0:
            return None
        at += len(key) + 1
    end = data.find(b"\n", at)
    words = data[at : end if end >= 0 else len(data)].split()
    return _number(words[0]) if words else None


# /proc/meminfo:
# MemTotal:       24596040 kB
# MemFree:        22041612 kB
def meminfo(root: str) -> dict[str, int]:
    """The lines of root/proc/meminfo the plugin uses (MemTotal, MemFree, swap, zswap), in
    bytes; a line that is missing or malformed is left out."""
    data = _read(os.path.join(root, "proc", "meminfo"), 65536)
    found: dict[str, int] = {}
    if data is None:
        return found
    for name in _MEMINFO_KEYS:
        key = name.encode() + b":"
        at = 0 if data.startswith(key) else data.find(b"\n" + key) + 1
        if at == 0 and not data.startswith(key):
            continue
        end = data.find(b"\n", at)
        words = data[at + len(key) : end if end >= 0 else len(data)].split()
        if words and words[0].isdigit():
            found[name] = int(words[0]) * (KIB if len(words) > 1 and words[1] == b"kB" else 1)
    return found


def host_memory(root: str) -> tuple[Optional[int], Optional[int]]:
    """(physical, free) bytes from root/proc/meminfo; None for what cannot be read."""
    found = meminfo(root)
    return found.get("MemTotal"), found.get("MemFree")


# /sys/devices/system/edac/mc/mc0/ce_count: "0\n"   (one mcN per memory controller)
def edac_counts(root: str) -> Optional[tuple[int, int]]:
    """(corrected, uncorrected) ECC errors summed over EDAC memory controllers; None: no EDAC."""
    controllers = glob.glob(os.path.join(root, "sys", "devices", "system", "edac", "mc", "mc*"))
    corrected = uncorrected = 0
    seen = False
    for directory in controllers:
        counts = [_read_count(os.path.join(directory, name)) for name in ("ce_count", "ue_count")]
        if counts[0] is None and counts[1] is None:
            continue
        seen = True
        corrected += counts[0] or 0
        uncorrected += counts[1] or 0
    return (corrected, uncorrected) if seen else None


def _read_count(path: str) -> Optional[int]:
    data = _read(path, 64)
    if data is None:
        return None
    text = data.strip()
    return int(text) if text.isdigit() else None


def _stat_fields(pid: int, root: str) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1])."""
    data = _read(os.path.join(root, "proc", str(pid), "stat"), 4096)
    if data is None:
        return []
    return data[data.rfind(b")") + 2 :].split()


# /proc/<pid>/stat: "1234 (qemu-system-x86) S 1 ... <starttime, field 22> ..."
def process_start(pid: int, root: str) -> int:
    """A process's start time in clock ticks since boot (0 if unreadable): with its pid,
    what tells a restarted QEMU from the one seen before."""
    fields = _stat_fields(pid, root)
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


def _parent(pid: int, root: str) -> int:
    fields = _stat_fields(pid, root)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


# /proc/<pid>/status: "VmRSS:\t  123456 kB"
def process_rss(pid: int, root: str) -> Optional[int]:
    """Resident memory of a process in bytes (None if unreadable)."""
    return _kib(_read(os.path.join(root, "proc", str(pid), "status")), b"VmRSS:")


def _kib(data: Optional[bytes], key: bytes) -> Optional[int]:
    value = _value(data, key)
    return None if value is None or value < 0 else value * KIB


# /proc/pressure/memory (and a cgroup's memory.pressure):
# some avg10=0.00 avg60=0.00 avg300=0.00 total=4511963
# full avg10=0.00 avg60=0.00 avg300=0.00 total=3982741
def psi_totals(data: Optional[bytes]) -> Optional[tuple[float, Optional[float]]]:
    """(some, full) stall totals in seconds from a PSI file (µs there); None: unreadable."""
    if data is None:
        return None
    totals: dict[bytes, float] = {}
    for line in data.splitlines():
        kind, _, rest = line.partition(b" ")
        at = rest.rfind(b"total=")
        words = rest[at + 6 :].split() if at >= 0 else []
        value = _number(words[0]) if words else None
        if value is not None and value >= 0:
            totals[kind] = value / 1e6
    some = totals.get(b"some")
    return None if some is None else (some, totals.get(b"full"))


def local_host(tags: Tags, root: str, figures: Optional[Fields] = None) -> HostInfo:
    """A HostInfo from this machine's own files: physical and free memory, ECC counters, and
    the host's reclaim figures when the caller read them this poll (HostReclaim.host_figures).
    """
    found = meminfo(root)
    info = HostInfo(tags, found.get("MemTotal"), found.get("MemFree"))
    ecc = edac_counts(root)
    if ecc is not None:
        info.ecc_corrected_total, info.ecc_uncorrected_total = ecc
    if figures:
        info.figures.update(figures)
    return info


# -- cgroups -----------------------------------------------------------------------------------

V2 = ""  # the cgroup v2 hierarchy's name in /proc/<pid>/cgroup ("0::/path")


def _unescape(path: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


class CgroupMounts:
    """Where the host's cgroup v2 hierarchy and v1 memory hierarchy are mounted (under root).

    Read from the mount table (/proc/1/mountinfo, else /proc/self/mountinfo under root),
    never assumed: a hybrid host mounts v2 at /sys/fs/cgroup/unified, beside v1 controllers.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        # hierarchy (V2, or a v1 controller) -> (directory under root, the cgroup it shows)
        self.mounts: dict[str, tuple[str, str]] = {}
        data = _read(os.path.join(root, "proc", "1", "mountinfo"), 1 << 20)
        if data is None:
            data = _read(os.path.join(root, "proc", "self", "mountinfo"), 1 << 20)
        for raw in (data or b"").decode("utf-8", "replace").splitlines():
            head, sep, tail = raw.partition(" - ")
            fields, after = head.split(), tail.split()
            if not sep or len(fields) < 5 or len(after) < 3:
                continue
            shown, where, fstype = _unescape(fields[3]), _unescape(fields[4]), after[0]
            directory = os.path.join(root, where.lstrip("/"))
            if fstype == "cgroup2":
                names = [V2]
            elif fstype == "cgroup":
                names = [o for o in after[2].split(",") if o == "memory"]
            else:
                continue
            for name in names:
                known = self.mounts.get(name)
                if known is None or (known[1] != "/" and shown == "/"):
                    self.mounts[name] = (directory, shown)
        v2 = self.mounts.get(V2)
        controllers = _read(os.path.join(v2[0], "cgroup.controllers"), 4096) if v2 else None
        self.v2_memory = controllers is not None and b"memory" in controllers.split()
        v1 = self.mounts.get("memory")
        self.v1_swap = v1 is not None and os.path.exists(
            os.path.join(v1[0], "memory.memsw.usage_in_bytes")
        )

    def directory(self, hierarchy: str, group: Optional[str]) -> Optional[str]:
        """The directory of a group (a path of /proc/<pid>/cgroup) of one hierarchy, or None:
        not mounted, outside what the mount shows, or above the reader's cgroup namespace."""
        mount = self.mounts.get(hierarchy)
        if mount is None or group is None or not group.startswith("/") or "/.." in group:
            return None
        directory, shown = mount
        if shown != "/":
            if group != shown and not group.startswith(shown + "/"):
                return None
            group = group[len(shown) :] or "/"
        return os.path.join(directory, group.lstrip("/")).rstrip("/")

    def is_root(self, hierarchy: str, directory: str) -> bool:
        mount = self.mounts.get(hierarchy)
        return mount is not None and os.path.normpath(mount[0]) == os.path.normpath(directory)


def process_groups(pid: object, root: str) -> dict[str, str]:
    """A process's groups from /proc/<pid>/cgroup (pid: a number or "self"): hierarchy (""
    for v2, else each v1 controller of the line) -> the group's path ("0::/g", "4:memory:/g").
    """
    data = _read(os.path.join(root, "proc", str(pid), "cgroup"), 16384)
    groups: dict[str, str] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        names = [V2] if parts[0] == "0" and not parts[1] else parts[1].split(",")
        for name in names:
            groups[name] = parts[2]
    return groups


# -- what the host offers ----------------------------------------------------------------------

# Processes whose group is not a VM's own: the daemons that start QEMUs.
_MANAGERS = (b"libvirtd", b"virtqemud")
_MAX_MEMBERS = 64  # a group with more processes than this is no VM's own


class HostReclaim:
    """What this host offers for the reclaim figures, probed once when a source starts, and
    the host's side of each poll (its swap, KSM, zswap and pressure).

    `missing()` says which figures the host will not give, and why, for the source's one
    `I! ` line at start; the per-poll reads skip what the probe found absent.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.cgroups = CgroupMounts(root)
        ksm = os.path.join(root, "sys", "kernel", "mm", "ksm")
        self._ksm = ksm
        self.ksm = os.path.exists(os.path.join(ksm, "pages_sharing"))
        self.ksm_profit = os.path.exists(os.path.join(ksm, "general_profit"))
        self.ksm_process = os.path.exists(os.path.join(root, "proc", "self", "ksm_merging_pages"))
        # Reading another user's /proc/<pid>/ksm_merging_pages needs ptrace rights: root.
        self.ksm_readable = os.geteuid() == 0
        pressure = os.path.join(root, "proc", "pressure", "memory")
        self._pressure = pressure
        self.psi_error = 0  # errno of the probe read: ENOENT no PSI, EOPNOTSUPP PSI off
        try:
            with open(pressure, "rb") as handle:
                handle.read(256)
        except OSError as exc:
            self.psi_error = exc.errno or errno.EIO
        self.psi = self.psi_error == 0
        self.zswap = "Zswapped" in meminfo(root)
        # The plugin's own groups: a QEMU sharing one of them has no group of its own.
        self.own = {
            directory
            for name, group in process_groups("self", root).items()
            for directory in [self.cgroups.directory(name, group)]
            if directory is not None
        }
        self._vmstat = os.path.join(root, "proc", "vmstat")
        # The host's state at the last host_figures(): nothing in swap (zswap, merged by KSM)
        # on the host means nothing of any VM there, without reading each VM's files.
        self.swap_in_use = True
        self.zswap_in_use = True
        self.ksm_in_use = True  # no page merged on the host: no VM has one

    def missing(self) -> list[str]:
        """The figures this host will not give, each with why (for one `I! ` line)."""
        out: list[str] = []
        if not self.ksm:
            out.append(
                "shared_bytes, ksm_saved_bytes, ksm_profit_bytes (no KSM in this kernel: no "
                "sys/kernel/mm/ksm)"
            )
        else:
            if not self.ksm_process:
                out.append("shared_bytes (this kernel has no /proc/<pid>/ksm_merging_pages)")
            elif not self.ksm_readable:
                out.append("shared_bytes (another user's ksm_merging_pages is readable by root)")
            if not self.ksm_profit:
                out.append("ksm_profit_bytes (this kernel's KSM has no general_profit)")
        if not self.psi:
            why = (
                "PSI is off: boot with psi=1"
                if self.psi_error == errno.EOPNOTSUPP
                else "this kernel has no PSI: no proc/pressure/memory"
            )
            out.append(
                "host_memory_stall_* on balloon and balloon_host, host_memory_stall_ratio, "
                f"host_memory_stall_full_ratio ({why})"
            )
        elif V2 not in self.cgroups.mounts:
            out.append(
                "host_memory_stall_* per VM (no cgroup v2 hierarchy mounted: a VM's stall "
                "comes from its group's memory.pressure)"
            )
        if not self.zswap:
            out.append("compressed_bytes, host_zswap_bytes (no zswap in this kernel)")
        elif not self.cgroups.v2_memory:
            out.append("compressed_bytes (no cgroup v2 memory controller: no zswapped per VM)")
        if not self.cgroups.v2_memory and not self.cgroups.v1_swap:
            out.append(
                "host_swapped_bytes from cgroups (no memory controller with swap accounting): "
                "it comes from each QEMU's VmSwap, which misses guest RAM in shared memory"
            )
        return out

    def host_figures(self) -> Fields:
        """The host's reclaim figures now, named as balloon_host fields: swap, swap traffic
        (counters), KSM, zswap and memory stall totals. What the host lacks is left out."""
        out: Fields = {}
        found = meminfo(self.root)
        total, free = found.get("SwapTotal"), found.get("SwapFree")
        if total is not None and free is not None:
            out["host_swap_total_bytes"] = total
            out["host_swap_used_bytes"] = max(0, total - free)
            self.swap_in_use = total != free
        else:
            self.swap_in_use = True
        zswapped = found.get("Zswapped")
        if zswapped is not None:
            out["host_zswap_bytes"] = zswapped
        self.zswap_in_use = zswapped != 0
        vmstat = _read(self._vmstat, 32768)
        for key, name in (
            (b"pswpin ", "host_swap_in_bytes_total"),
            (b"pswpout ", "host_swap_out_bytes_total"),
        ):
            pages = _value(vmstat, key)
            if pages is not None and pages >= 0:
                out[name] = pages * PAGE_SIZE
        self.ksm_in_use = self.ksm
        if self.ksm:
            sharing = _value(_read(os.path.join(self._ksm, "pages_sharing"), 64), b"")
            if sharing is not None:
                zero = _value(_read(os.path.join(self._ksm, "ksm_zero_pages"), 64), b"") or 0
                out["ksm_saved_bytes"] = (sharing + zero) * PAGE_SIZE
                shared = _value(_read(os.path.join(self._ksm, "pages_shared"), 64), b"")
                self.ksm_in_use = bool(sharing or zero or shared or shared is None)
            if self.ksm_profit:
                profit = _value(_read(os.path.join(self._ksm, "general_profit"), 64), b"")
                if profit is not None:
                    out["ksm_profit_bytes"] = profit
        if self.psi:
            totals = psi_totals(_read(self._pressure, 512))
            if totals is not None:
                out["host_memory_stall_seconds_total"] = totals[0]
                if totals[1] is not None:
                    out["host_memory_stall_full_seconds_total"] = totals[1]
        return out

    def shared_note(self, proc: QemuProcess) -> str:
        """For a QEMU with no cgroup of its own somewhere: what its figures then lack."""
        lost: list[str] = []
        if proc.swap_kind == SWAP_STATUS and (self.cgroups.v2_memory or self.cgroups.v1_swap):
            lost.append("host_swapped_bytes comes from the process's VmSwap")
        if proc.pressure_path is None and self.psi and V2 in self.cgroups.mounts:
            lost.append("host_memory_stall_* are left out")
        if proc.zswap_path is None and self.zswap and self.cgroups.v2_memory:
            lost.append("compressed_bytes is left out")
        return f"it shares cgroup {proc.shared} with other processes" + (
            ": for such VMs " + ", and ".join(lost) if lost else ""
        )

    # -- one QEMU --

    def process(self, pid: int) -> Optional[QemuProcess]:
        """The QEMU process `pid` and where its figures are, or None when it is gone.

        Called once per QEMU start: the groups a process is in do not change while it runs
        (a QEMU that a manager moves afterwards is read where it was first seen).
        """
        if pid <= 0:
            return None
        start = process_start(pid, self.root)
        if not start:
            return None
        proc = QemuProcess(pid, start)
        base = os.path.join(self.root, "proc", str(pid))
        proc.status_path = os.path.join(base, "status")
        if self.ksm and self.ksm_process and self.ksm_readable:
            proc.ksm_path = os.path.join(base, "ksm_merging_pages")
        groups = process_groups(pid, self.root)
        v2 = self._vm_group(V2, groups.get(V2), pid, proc)
        if v2 is not None:
            proc.groups[V2] = v2
            if self.cgroups.v2_memory and os.path.exists(os.path.join(v2, "memory.swap.current")):
                proc.swap_path = os.path.join(v2, "memory.swap.current")
                proc.swap_kind = SWAP_V2
                stat = os.path.join(v2, "memory.stat")
                if self.zswap and _value(_read(stat), b"zswapped ") is not None:
                    proc.zswap_path = stat
            pressure = os.path.join(v2, "memory.pressure")
            if self.psi and psi_totals(_read(pressure, 512)) is not None:
                proc.pressure_path = pressure
        if proc.swap_kind == SWAP_STATUS:
            v1 = self._vm_group("memory", groups.get("memory"), pid, proc)
            if v1 is not None:
                proc.groups["memory"] = v1
                stat = os.path.join(v1, "memory.stat")
                data = _read(stat)
                if _value(data, b"total_swap ") is not None:
                    proc.swap_path, proc.swap_kind = stat, SWAP_V1_TOTAL
                elif _value(data, b"swap ") is not None:
                    proc.swap_path, proc.swap_kind = stat, SWAP_V1
        if proc.swap_kind == SWAP_STATUS:
            proc.swap_path = proc.status_path
        return proc

    def _vm_group(
        self, hierarchy: str, group: Optional[str], pid: int, proc: QemuProcess
    ) -> Optional[str]:
        """The directory of the VM's own group in one hierarchy, or None (noted in
        proc.shared) when the QEMU has none there.

        v2: from the process's group up over threaded groups (libvirt puts QEMU's threads in
        threaded children of `<scope>/libvirt`; memory is accounted at their domain). A group
        is the VM's own unless it is the hierarchy's root, holds the plugin itself (or is
        above it), or holds a libvirt daemon, another QEMU or one of this QEMU's ancestors:
        a QEMU that was given no group of its own sits in its starter's.
        """
        directory = self.cgroups.directory(hierarchy, group)
        if directory is None:
            return None
        if hierarchy == V2:
            for _ in range(8):
                kind = _read(os.path.join(directory, "cgroup.type"), 64)
                if kind is None or kind.strip() != b"threaded":
                    break
                directory = os.path.dirname(directory)
        if self.cgroups.is_root(hierarchy, directory) or not os.path.isdir(directory):
            proc.shared = proc.shared or (group or "/")
            return None
        for own in self.own:
            if own == directory or own.startswith(directory + "/"):
                proc.shared = proc.shared or (group or "/")
                return None
        if not self._holds_only(directory, pid):
            proc.shared = proc.shared or (group or "/")
            return None
        return directory

    def _holds_only(self, directory: str, pid: int) -> bool:
        """The group's processes are this QEMU and helpers of its own (swtpm, virtiofsd)."""
        data = _read(os.path.join(directory, "cgroup.procs"), 1 << 16)
        if data is None:
            return True  # a threaded domain's list may be unreadable: nothing says otherwise
        members = [int(w) for w in data.split() if w.isdigit()]
        if len(members) > _MAX_MEMBERS:
            return False
        ancestors: set[int] = set()
        parent = _parent(pid, self.root)
        while parent > 1 and parent not in ancestors and len(ancestors) < 64:
            ancestors.add(parent)
            parent = _parent(parent, self.root)
        for member in members:
            if member == pid:
                continue
            if member in ancestors:
                return False
            comm = (_read(os.path.join(self.root, "proc", str(member), "comm"), 64) or b"").strip()
            if comm in _MANAGERS or comm.startswith(b"qemu-") or comm == b"kvm":
                return False
        return True


SWAP_V2 = "memory.swap.current"
SWAP_V1_TOTAL = "memory.stat total_swap"
SWAP_V1 = "memory.stat swap"
SWAP_STATUS = "VmSwap"


class QemuProcess:
    """One VM's QEMU process as resolved at its start: the files its figures come from.

    `read()` fills, each poll, host_swapped_bytes (the VM group's v2 memory.swap.current, v1
    memory.stat swap, else the process's VmSwap), compressed_bytes (v2 memory.stat zswapped),
    shared_bytes (ksm_merging_pages x page size) and host_memory_stall_*_seconds_total (the
    v2 group's memory.pressure). `shared` names the group the QEMU shares with other
    processes, when it has no group of its own in some hierarchy (its cgroup figures are then
    absent, and its swap comes from VmSwap).
    """

    __slots__ = (
        "groups",
        "ksm_path",
        "pid",
        "pressure_path",
        "shared",
        "start",
        "status_path",
        "swap_kind",
        "swap_path",
        "zswap_path",
    )

    def __init__(self, pid: int, start: int) -> None:
        self.pid = pid
        self.start = start  # clock ticks since boot: with the pid, this start of the QEMU
        self.groups: dict[str, str] = {}  # hierarchy -> the VM's own group's directory
        self.shared: Optional[str] = None
        self.status_path = ""
        self.swap_kind = SWAP_STATUS
        self.swap_path = ""
        self.zswap_path: Optional[str] = None
        self.pressure_path: Optional[str] = None
        self.ksm_path: Optional[str] = None

    def __repr__(self) -> str:
        return f"QemuProcess(pid={self.pid}, start={self.start}, swap={self.swap_kind!r})"

    def read(self, fields: Fields, host: HostReclaim, rss: bool = False) -> None:
        """This poll's figures into `fields` (rss: also rss_bytes from /proc/<pid>/status).

        Nothing in the host's swap (zswap, KSM) means nothing of this VM there: 0 without a
        read. A file that cannot be read leaves its field out.
        """
        vmswap = self.swap_kind == SWAP_STATUS and host.swap_in_use
        status = _read(self.status_path) if rss or vmswap else None
        if rss:
            value = _kib(status, b"VmRSS:")
            if value is not None:
                fields["rss_bytes"] = value
        swapped: Optional[int]
        if not host.swap_in_use:
            swapped = 0
        elif self.swap_kind == SWAP_V2:
            swapped = _value(_read(self.swap_path, 64), b"")
        elif self.swap_kind == SWAP_V1_TOTAL:
            swapped = _value(_read(self.swap_path), b"total_swap ")
        elif self.swap_kind == SWAP_V1:
            swapped = _value(_read(self.swap_path), b"swap ")
        else:
            swapped = _kib(status, b"VmSwap:")
        if swapped is not None and swapped >= 0:
            fields["host_swapped_bytes"] = swapped
        if self.zswap_path is not None:
            zswapped = _value(_read(self.zswap_path), b"zswapped ") if host.zswap_in_use else 0
            if zswapped is not None and zswapped >= 0:
                fields["compressed_bytes"] = zswapped
        if self.ksm_path is not None:
            pages = _value(_read(self.ksm_path, 64), b"") if host.ksm_in_use else 0
            if pages is not None and pages >= 0:
                fields["shared_bytes"] = pages * PAGE_SIZE
        if self.pressure_path is not None:
            totals = psi_totals(_read(self.pressure_path, 512))
            if totals is not None:
                fields["host_memory_stall_seconds_total"] = totals[0]
                if totals[1] is not None:
                    fields["host_memory_stall_full_seconds_total"] = totals[1]


# -- finding a VM's QEMU by its UUID -----------------------------------------------------------

_UUID_ARG = b"\x00-uuid\x00"


def _cmdline_uuid(data: Optional[bytes]) -> Optional[str]:
    """The value of `-uuid` on a command line (NUL-separated), lower-cased."""
    if not data:
        return None
    at = data.find(_UUID_ARG)
    if at < 0:
        return None
    start = at + len(_UUID_ARG)
    end = data.find(b"\x00", start)
    value = data[start : end if end >= 0 else len(data)]
    return value.decode("ascii", "replace").strip().lower() or None


def find_qemu(
    wanted: Mapping[str, str], root: str, pidfiles: Optional[Mapping[str, Iterable[str]]] = None
) -> dict[str, int]:
    """key -> pid of the running QEMU whose command line carries `-uuid <uuid>`, for the
    {key: uuid} `wanted` (libvirt gives every QEMU `-uuid`).

    A key's pid files (its manager's: libvirt's `<state dir>/qemu/<name>.pid`, relative to
    root) are tried first, their pid checked against the UUID (a pid file may be stale);
    the keys still missing cost one pass over root/proc for all of them.
    """
    found: dict[str, int] = {}
    proc = os.path.join(root, "proc")
    for key, paths in (pidfiles or {}).items():
        uuid = wanted.get(key, "").lower()
        for path in paths:
            pid = _read_count(os.path.join(root, path.lstrip("/")))
            if (
                pid
                and _cmdline_uuid(_read(os.path.join(proc, str(pid), "cmdline"), 1 << 17)) == uuid
            ):
                found[key] = pid
                break
    missing = {uuid.lower(): key for key, uuid in wanted.items() if key not in found}
    if not missing:
        return found
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        data = _read(os.path.join(proc, entry, "cmdline"), 1 << 17)
        if not data or _UUID_ARG not in data:
            continue
        uuid = _cmdline_uuid(data) or ""
        if uuid in missing:
            found[missing.pop(uuid)] = int(entry)
            if not missing:
                break
    return found
