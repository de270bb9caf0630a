"""--explain: the troubleshooting procedure, judged from the same samples and health stage.

One poll (or a watch of several) through the same Runner the plugin uses; every finding
comes from the judged fields of that poll and the health stage's rule state, never from a
second set of rules. FINDINGS is the one table of codes, severities, messages and remedies:
it drives the text and JSON output, the README's findings table and the tests.
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import string
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import catalog
from .config import Config
from .health import RuleState
from .log import Log
from .model import Fields, Sample, Source, Tags
from .runner import Batch, Runner, SourceBatch
from .sources.kvm import driver_grace, driver_verdict

WATCH_INTERVAL = 2.0  # seconds between polls under --watch (the contract's figure)
DEFAULT_BALLOON_WARN = 0.20  # SOURCE's 20% rule, where the config has no balloon_ratio rule
DEFAULT_RECLAIMED_WARN = 0.20
HOST_FREE_RATIO = 0.5  # "host RAM usage is low": more than half of it free (SOURCE FAQ 1)

OK, WARNING, CRITICAL = "ok", "warning", "critical"
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}
_SEVERITY = {1: WARNING, 2: CRITICAL}

MIB = 1024 * 1024
GIB = 1024 * MIB
TIB = 1024 * GIB


@dataclass(frozen=True)
class Code:
    """One finding: when it is raised, how severe, what it says and what to do, per source."""

    code: str
    scope: str  # "vm", "host" or "source"
    when: str  # for the README
    rule: str = ""  # the [[thresholds]] field whose level sets the severity; "" = warning
    message: dict[str, str] = field(default_factory=dict)  # source kind (or "*") -> template
    remedy: dict[str, str] = field(default_factory=dict)  # "kind:variant", kind or "*"
    needs_watch: tuple[str, ...] = ()  # source kinds where one poll cannot judge it ("*": all)

    def severity_doc(self) -> str:
        return (
            f"the `{self.rule}` rule's level (warning at 0 or without a rule)"
            if self.rule
            else "warning"
        )


def _t(**by_kind: str) -> dict[str, str]:
    """Templates keyed by source kind; `any` is the fallback, `guest_vmware` -> guest:vmware,
    `qmp_proxmox` -> qmp:proxmox (see _keys).

    In a template, a line starting `$ ` is a command: every value put into it is shell-quoted
    (see _command); a line starting `| ` is text to paste (XML, QMP JSON); the rest is prose.
    """
    return {("*" if k == "any" else k.replace("_", ":", 1)): v for k, v in by_kind.items()}


_DEFLATE_LIBVIRT = "$ virsh -c {instance} setmem {vm_uuid} {max_kib}K --live"
_INSIDE = "Inside the guest, see what holds its memory and whether it fought the balloon:\n"

FINDINGS: tuple[Code, ...] = (
    Code(
        "source_down",
        "source",
        "the source did not answer",
        message=_t(any="The {kind} source {instance} did not answer: {error}."),
        remedy=_t(
            guest="Check that {instance}/proc/meminfo is readable by this user (a container "
            "needs the host's /proc and /sys mounted under that root).",
            libvirt="Check the daemon and the URI (the plugin reconnects on its own):\n"
            "$ virsh -c {instance} list",
            vsphere="Check that {instance} answers and the account can log in: network, "
            "certificate (ca_file), password or password_file.",
            qmp="Check that the sockets exist and that the plugin runs as root: QMP sockets are "
            "root:root 0755 and connecting needs write permission.\n$ ls -l {socket_dirs}",
            logs="Check that the files exist and are readable by this user.",
            any="Check that {instance} answers.",
        ),
    ),
    Code(
        "no_balloon_device",
        "vm",
        "guest: no balloon device; libvirt/qmp: `<memballoon model='none'/>`; Proxmox `balloon: 0`",
        message=_t(
            guest="This guest has no balloon device: the hypervisor cannot reclaim any of its "
            "{max}.",
            libvirt="The domain has <memballoon model='none'/>: no balloon device, so the host "
            "cannot reclaim any of its {max} and there are no guest statistics.",
            qmp="The VM has no balloon device (Proxmox `balloon: 0`): the host cannot reclaim "
            "any of its {max}.",
            any="The VM has no balloon device: the host cannot reclaim any of its {max}.",
        ),
        remedy=_t(
            guest="Add a balloon device on the hypervisor side. libvirt: `virsh edit <domain>`, "
            "in <devices> put\n| <memballoon model='virtio'><stats period='10'/></memballoon>\n"
            "then shut the domain down and start it; Proxmox: `qm set <vmid> --balloon <MiB>`.",
            guest_vmware="Install open-vm-tools and load the VMware balloon driver:\n"
            "$ modprobe vmw_balloon",
            guest_hyperv="Enable Dynamic Memory for the VM on the Hyper-V host, then load "
            "the driver:\n$ modprobe hv_balloon",
            guest_xen="Load the Xen balloon driver (or boot a kernel with CONFIG_XEN_BALLOON):\n"
            "$ modprobe xen_balloon",
            libvirt="Give the domain a virtio balloon: in its XML\n"
            "$ virsh -c {instance} edit {vm_uuid}\n"
            "replace <memballoon model='none'/> with\n"
            "| <memballoon model='virtio'><stats period='10'/></memballoon>\n"
            "then shut the domain down and start it (a balloon cannot be hot-plugged).",
            qmp_proxmox="Give the VM a balloon device with a minimum below its memory, then stop "
            "and start it:\n$ qm set {vmid} --balloon {half_mib}",
            qmp="Give the VM a balloon device: add `-device virtio-balloon-pci,id=balloon0` to "
            "its QEMU command line, then stop and start it.",
        ),
    ),
    Code(
        "driver_not_loaded",
        "vm",
        "guest: a balloon device with no driver bound; libvirt/qmp: the guest driver never "
        "reported (needs `--watch` longer than max(30 s, 3 stats periods) of that VM)",
        message=_t(
            guest="A {driver} device is present but no driver is bound to it: the balloon "
            "cannot move (`lsmod` shows no balloon module).",
            any="The balloon device's driver in the guest never reported: no statistics since "
            "the plugin first saw the VM {seen_for} ago and the balloon never moved.",
        ),
        remedy=_t(
            guest="Load the driver now and at every boot:\n$ modprobe {module}\n"
            "$ echo {module} > /etc/modules-load.d/balloon.conf",
            any="Inside the guest, load the balloon driver and make it load at boot "
            "(a built-in driver shows under /sys/bus/virtio/drivers/virtio_balloon):\n"
            "$ modprobe virtio_balloon\n$ echo virtio_balloon > /etc/modules-load.d/balloon.conf",
        ),
        needs_watch=("libvirt", "qmp"),
    ),
    Code(
        "driver_blacklisted",
        "vm",
        "guest: the balloon driver is blacklisted (the message names the modprobe.d file)",
        message=_t(
            any="The balloon driver {module} is blacklisted in {where}: it never loads, so "
            "the hypervisor cannot reclaim memory from this guest.",
        ),
        remedy=_t(
            any="{unblacklist}Then load it:\n$ modprobe {module}\n"
            "If the initramfs holds a copy of the file, rebuild it (`update-initramfs -u` "
            "or `dracut -f`).",
        ),
    ),
    Code(
        "inflation_blocked",
        "vm",
        "reservation >= memory (vSphere, libvirt memtune, Proxmox minimum = memory)",
        message=_t(
            any="The reservation ({reservation}) is at or above the VM's memory ({max}): the "
            "balloon can never inflate, the host must back every page.",
        ),
        remedy=_t(
            vsphere="Unless the VM is pinned on purpose (a full reservation does that), lower "
            "its memory reservation below {max_mib} MB: vSphere Client, Edit Settings > Memory > "
            "Reservation, or\n$ govc vm.change -vm.uuid={vm_uuid} -mem.reservation {half_mib}",
            libvirt="If the domain is not meant to be pinned, lower or remove "
            "<memtune><min_guarantee> in its XML, or:\n"
            "$ virsh -c {instance} memtune {vm_uuid} --min-guarantee {half_kib} --live --config",
            qmp_proxmox="If the VM is not meant to be pinned, set its balloon minimum below its "
            "memory:\n$ qm set {vmid} --balloon {half_mib}",
            any="Lower the VM's reservation below its memory unless it is meant to be pinned.",
        ),
    ),
    Code(
        "stats_disabled",
        "vm",
        "stats period 0 (such a VM gets no `stale` finding: same cause, one remedy)",
        message=_t(
            any="The balloon's statistics period is 0: the guest's own figures (free, swap, "
            "faults) no longer update{age_note}.",
        ),
        remedy=_t(
            libvirt="Re-arm the period on the running domain and in its config:\n"
            "$ virsh -c {instance} dommemstat {vm_uuid} --period 10 --live --config\n"
            "or let the plugin arm it: set_stats_period = 10 with read_only = false.",
            qmp="Re-arm the period through the VM's QMP socket {socket} (after "
            "qmp_capabilities):\n"
            '| {{"execute": "qom-set", "arguments": {{"path": "/machine/peripheral/balloon0", '
            '"property": "guest-stats-polling-interval", "value": 10}}}}\n'
            "or let the plugin do it: set_stats_period = 10 in [[sources.qmp]].",
            any="Set a balloon statistics period above 0 on the hypervisor.",
        ),
    ),
    Code(
        "stale",
        "vm",
        "guest stats older than `stale_after`",
        rule="stale",
        message=_t(
            any="The guest's statistics are {age} old, beyond stale_after ({stale_after}): "
            "the guest stopped answering the balloon (paused, hung, or its driver is gone).",
        ),
        remedy=_t(
            libvirt="Check that the domain runs and its driver answers:\n"
            "$ virsh -c {instance} domstate {vm_uuid}\n"
            "$ virsh -c {instance} dommemstat {vm_uuid}\n"
            "then, inside the guest, `lsmod | grep virtio_balloon`.",
            any="Check that the VM runs and its balloon driver is loaded "
            "(`lsmod | grep virtio_balloon` inside the guest).",
        ),
    ),
    Code(
        "short_of_target",
        "vm",
        "gap / max above `stuck_gap_ratio` now",
        message=_t(
            any="The balloon holds {actual} of a {target} target: {gap} short ({gap_pct} of "
            "the VM's memory, above stuck_gap_ratio {gap_limit}); {stuck_note}.",
        ),
        remedy=_t(
            guest=_INSIDE + "$ free -m\n$ dmesg | grep -i -e balloon -e vmmemctl\n"
            "A guest that cannot release more pages is under real pressure: "
            "give it memory back on the hypervisor, or move load off it.",
            vsphere="The guest cannot release more pages. Look for "
            "'Failed to extend balloon' in /var/log/vmware/hostd.log, check the guest's "
            "memory pressure, and lower the host's demand (DRS, vMotion) or give the VM a "
            "reservation.",
            any="The guest cannot release more pages: check its memory "
            "pressure and lower the host's demand.",
        ),
    ),
    Code(
        "stuck",
        "vm",
        "the `stuck` field is true (needs `--watch` >= `stuck_for`)",
        rule="stuck",
        message=_t(
            any="The balloon is stuck: {gap} short of its {target} target ({gap_pct} of the "
            "VM's memory) for {stuck_held}, beyond stuck_for ({stuck_for}).",
        ),
        remedy=_t(
            guest=_INSIDE + "$ free -m\n$ dmesg | grep -i -e balloon -e vmmemctl\n"
            "'vmmemctl: PIN_FAILED' or 'G_FREEZE' is a driver-level lock; "
            "otherwise the guest has nothing left to give: return memory to it on the "
            "hypervisor.",
            vsphere="Check /var/log/vmware/hostd.log for 'Failed to extend balloon' and "
            "'Insufficient host resources to pin memory', and the guest for 'vmmemctl: "
            "PIN_FAILED'; lower the host's demand (DRS, vMotion) or add memory.",
            any="Check the guest's memory pressure and its driver log; lower the host's "
            "demand or return memory to the guest.",
        ),
    ),
    Code(
        "balloon_high",
        "vm",
        "balloon_ratio at or above the balloon_ratio rule's warn",
        rule="balloon_ratio",
        message=_t(
            any="The balloon holds {ratio_pct} of the VM's memory ({actual} of {max}), at or "
            "above the balloon_ratio rule's {limit_name} ({limit_pct}); {for_note}.",
        ),
        remedy=_t(
            libvirt="The host is reclaiming hard from this VM. If the host has "
            "room, give the memory back:\n" + _DEFLATE_LIBVIRT + "\n"
            "otherwise move VMs off this host or add memory.",
            qmp="The host is reclaiming hard from this VM. If the host has room, give the "
            "memory back (QMP `balloon` to {max_bytes} bytes, or Proxmox: raise the VM's "
            "balloon minimum), otherwise move VMs off this host or add memory.",
            vsphere="ESXi is reclaiming hard from this VM: check the host's and the resource "
            "pool's memory (esxtop, MCTLSZ); move VMs (DRS, vMotion) or add memory.",
            any="The hypervisor is reclaiming hard from this guest: its host "
            "is short of memory. Move VMs off that host or add memory.",
        ),
    ),
    Code(
        "swapping",
        "vm",
        "swap-out rate > 0 while the balloon holds memory (needs `--watch`)",
        rule="swap_out_bytes_per_second",
        message=_t(
            any="The guest swapped out {swapped} while watched ({swap_rate}/s on average) "
            "with the balloon holding {actual}: the balloon pushes it onto its disk.",
        ),
        remedy=_t(
            libvirt="Give the guest memory back while it swaps:\n" + _DEFLATE_LIBVIRT,
            any="Give the guest memory back on the hypervisor, or lower the host's demand.",
        ),
        needs_watch=("*",),
    ),
    Code(
        "no_swap_under_balloon",
        "vm",
        "balloon_ratio at or above the balloon_ratio rule's warn (0.20 without a rule) and no swap",
        message=_t(
            any="The balloon holds {ratio_pct} of the VM's memory ({actual}) and the guest has "
            "no swap: when it needs memory back it has nowhere to put pages and the OOM "
            "killer ends processes.",
        ),
        remedy=_t(
            any="Add swap in the guest (and to /etc/fstab), or deflate the balloon:\n"
            "$ fallocate -l 1G /swapfile && chmod 600 /swapfile\n"
            "$ mkswap /swapfile && swapon /swapfile",
        ),
    ),
    Code(
        "thp_always_under_balloon",
        "vm",
        "the same balloon condition and THP `always`",
        message=_t(
            any="Transparent hugepages are `always` while the balloon holds {ratio_pct} of the "
            "VM's memory: the balloon splits 2 MiB pages into 4 KiB ones, with fragmentation "
            "and CPU spikes.",
        ),
        remedy=_t(
            any="Inside the guest, now and at boot (transparent_hugepage=madvise on the kernel "
            "command line):\n$ echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
        ),
    ),
    Code(
        "oom_kills",
        "vm",
        "`oom_kills_total` grew while watching (one-shot: the total is a figure, not a finding)",
        message=_t(
            any="The guest's OOM killer ran {oom_new} time(s) while watched, with the balloon "
            "holding {actual}.",
        ),
        remedy=_t(
            libvirt="See what it killed (`dmesg | grep -i -e 'out of memory' -e oom-kill` in "
            "the guest), give the guest memory back, and let the balloon deflate on OOM "
            "(<memballoon model='virtio' autodeflate='on'>, at the next start):\n"
            + _DEFLATE_LIBVIRT,
            any="See what it killed (`dmesg | grep -i -e 'out of memory' -e oom-kill` in the "
            "guest) and give the guest memory back on the hypervisor.",
        ),
        needs_watch=("*",),
    ),
    Code(
        "balloon_without_pressure",
        "vm",
        "the balloon holds at or above the balloon_ratio rule's warn while its host has more than "
        "half its memory free (SOURCE FAQ: the guest may have lost contact and the driver kept "
        "its last state)",
        message=_t(
            any="The balloon holds {ratio_pct} of the VM's memory ({actual}) while its host "
            "{vm_host} has {host_free} of {host_memory} free: nothing asks for that memory; "
            "the guest may have lost contact and its driver kept its last state.",
        ),
        remedy=_t(
            libvirt="Give the memory back, then check the driver answers:\n"
            + _DEFLATE_LIBVIRT
            + "\n$ virsh -c {instance} dommemstat {vm_uuid}",
            any="Give the memory back on the hypervisor and check the guest's balloon driver.",
        ),
    ),
    Code(
        "host_overcommitted",
        "host",
        "overcommit_ratio > 1",
        message=_t(
            any="VMs on {host} are promised {promised} on {physical} of RAM "
            "(overcommit {overcommit}): ballooning and host swap must cover the difference.",
        ),
        remedy=_t(
            vsphere="Keep it within what ballooning can reclaim: watch reclaimed_ratio, "
            "move VMs (DRS, vMotion) or add memory.",
            any="Keep the promise within what the balloons can reclaim: watch reclaimed_ratio, "
            "move VMs to a host with room or add memory.",
        ),
    ),
    Code(
        "host_reclaiming",
        "host",
        "reclaimed_ratio at or above the `balloon_host` reclaimed_ratio rule's warn "
        "(0.20 without a rule)",
        rule="reclaimed_ratio",
        message=_t(
            any="Balloons on {host} hold {reclaimed} ({reclaimed_pct} of its {physical}), at or "
            "above the 20% capacity rule ({limit_pct} here){for_note}: the host is structurally "
            "overcommitted.",
        ),
        remedy=_t(
            libvirt="Move VMs to a host with room or add memory; the VMs listed above and the "
            "host's own figures show who gives what:\n$ virsh -c {instance} nodememstats",
            any="Move VMs to a host with room or add memory.",
        ),
    ),
)

BY_CODE: dict[str, Code] = {c.code: c for c in FINDINGS}


# --- results ---------------------------------------------------------------------------------


@dataclass
class Finding:
    code: str
    severity: str
    message: str
    remedy: str

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "remedy": self.remedy,
        }


def _verdict(findings: Sequence[Finding]) -> str:
    worst = OK
    for finding in findings:
        if _RANK[finding.severity] > _RANK[worst]:
            worst = finding.severity
    return worst


def _needs_watch(code: Code, kind: str) -> bool:
    """One poll of a `kind` source cannot judge `code`."""
    return "*" in code.needs_watch or kind in code.needs_watch


def _make_finding(code_name: str, severity: str, ctx: _Context, keys: Sequence[str]) -> Finding:
    """One finding of the table, its message and remedy rendered for the first of `keys`
    (e.g. "guest:vmware", "guest", "*") that has a template."""
    code = BY_CODE[code_name]
    return Finding(
        code_name,
        severity,
        _render(_pick(code.message, keys), ctx),
        _render(_pick(code.remedy, keys), ctx),
    )


@dataclass
class HostReport:
    """A judged hypervisor host (and the base of a judged VM)."""

    source: str
    instance: str
    host: str
    tags: Tags
    fields: Fields
    findings: list[Finding]

    @property
    def verdict(self) -> str:
        return _verdict(self.findings)


@dataclass(frozen=True)
class Pending:
    """A judgement this VM still waits for: `code` is judged by a watch of `watch` seconds."""

    code: str
    watch: float

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "needs_watch_seconds": self.watch}


@dataclass
class VmReport(HostReport):
    """A judged VM: its host's report plus the VM's name, and what could not be judged yet."""

    guest: str = ""
    pending: list[Pending] = field(default_factory=list)
    not_a_vm: bool = False  # the guest source on a machine that is not a VM: nothing to judge


@dataclass
class SourceReport:
    source: str
    instance: str
    up: bool
    error: Optional[str]
    findings: list[Finding]
    not_judged: list[str]
    vms: list[VmReport] = field(default_factory=list)
    hosts: list[HostReport] = field(default_factory=list)


@dataclass
class Report:
    sources: list[SourceReport]
    polls: int
    watched: float  # seconds between the first and the last poll
    busy: bool = False  # a source call is still stuck in a C library at the end

    def findings(self) -> list[Finding]:
        out: list[Finding] = []
        for source in self.sources:
            out.extend(source.findings)
            for vm in source.vms:
                out.extend(vm.findings)
            for host in source.hosts:
                out.extend(host.findings)
        return out

    def pending(self) -> list[VmReport]:
        """VMs with a judgement still to come (a watch too short for them): no all-clear."""
        return [vm for source in self.sources for vm in source.vms if vm.pending]

    @property
    def exit_code(self) -> int:
        """0: nothing to act on; 1: a finding, or a VM not judged yet (watch it for longer).

        What no single poll can judge for any VM (rates, growth) is listed as not judged and
        leaves the exit code alone: one poll judges what holds now, by design. A VM whose
        own judgement is still open is different: "nothing found" would be a guess.
        """
        return 1 if self.findings() or self.pending() else 0


# --- formatting helpers -----------------------------------------------------------------------


def size(value: object) -> str:
    """Bytes for people: MiB below 1 GiB, GiB below 1 TiB, then TiB."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    number = float(value)
    sign = "-" if number < 0 else ""
    number = abs(number)
    if number >= TIB:
        return f"{sign}{number / TIB:.1f} TiB"
    if number >= GIB:
        return f"{sign}{number / GIB:.1f} GiB"
    mib = number / MIB
    return f"{sign}{mib:.1f} MiB" if 0 < mib < 10 else f"{sign}{mib:.0f} MiB"


def percent(value: object) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{float(value) * 100:.1f}%"


def duration(seconds: float) -> str:
    """'45s', '5m', '1h30m', like the config's durations."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{hours // 24}d"
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return out + (f"{secs}s" if secs else "")


class _Context(dict):  # type: ignore[type-arg]
    """Template values; a figure a source did not give shows as '?' in prose (commands never
    get a guess: see _command)."""

    def __missing__(self, key: str) -> str:
        return "?"


# What a command leaves out when a value is missing, named for the reader.
_VALUE_NAMES = {
    "vm_uuid": "UUID",
    "vmid": "Proxmox vmid",
    "socket": "QMP socket",
    "max_kib": "memory size",
    "half_kib": "memory size",
    "half_mib": "memory size",
    "max_mib": "memory size",
}


def _command(line: str, ctx: _Context) -> str:
    """A `$ ` line of a template: every inserted value shell-quoted as one word (a list as
    one word per item). A value the source did not give, or one holding a control character
    (a terminal cannot show it as typed), leaves the command out with a note: an operator
    runs what is printed, and a guess would act on the wrong VM."""
    values: dict[str, str] = {}
    for _text, name, _spec, _conversion in string.Formatter().parse(line):
        if not name or name in values:
            continue
        if name not in ctx:
            what = _VALUE_NAMES.get(name, name.replace("_", " "))
            return f"(No command: the source gave no {what} for this VM.)"
        value = ctx[name]
        words = [str(w) for w in value] if isinstance(value, (list, tuple)) else [str(value)]
        if not words or not all(w.isprintable() for w in words):
            what = _VALUE_NAMES.get(name, name.replace("_", " "))
            return f"(No command: the {what} holds characters a terminal cannot show.)"
        values[name] = " ".join(shlex.quote(w) for w in words)
    return line.format_map(values)


def _render(template: str, ctx: _Context) -> str:
    """Prose lines with the values as they are; `$ ` lines (commands) through _command;
    `| ` lines are text to paste (XML, QMP), not commands."""
    return "\n".join(
        _command(line, ctx) if line.startswith("$ ") else line.format_map(ctx)
        for line in template.split("\n")
    )


def _pick(templates: dict[str, str], keys: Sequence[str]) -> str:
    for key in keys:
        if key in templates:
            return templates[key]
    return ""


def _keys(kind: str, tags: Tags) -> tuple[str, ...]:
    """Template keys for a VM, most specific first: a QMP VM of Proxmox (it has a vmid) gets
    the `qm` commands; a guest its hypervisor's driver."""
    variant = "proxmox" if kind == catalog.QMP and "vmid" in tags else tags.get("hypervisor", "")
    return (f"{kind}:{variant}", kind, "*")


def _number(fields: Fields, name: str) -> Optional[float]:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# --- judging ----------------------------------------------------------------------------------

# fields shown in messages as sizes for people, and their template names
_SIZES = (
    ("memory_max_bytes", "max"),
    ("balloon_actual_bytes", "actual"),
    ("balloon_target_bytes", "target"),
    ("balloon_gap_bytes", "gap"),
    ("reservation_bytes", "reservation"),
)


@dataclass
class _Watch:
    """What the first poll of a watch saw of one VM, to tell what grew since."""

    time: float
    oom_kills: Optional[float]
    swap_out: Optional[float]


@dataclass
class Judge:
    """Turns judged batches into findings; keeps what the first poll saw of each VM."""

    config: Config
    runner: Runner
    watching: bool = False
    first: dict[tuple[str, str], _Watch] = field(default_factory=dict)
    first_time: Optional[float] = None

    def remember(self, batch: Batch) -> None:
        """Call after every poll: the first sight of each VM is what growth is measured from."""
        if self.first_time is None:
            self.first_time = batch.now
        for part in batch.sources:
            for sample in part.samples:
                key = (part.key, sample.key)
                if key not in self.first:
                    self.first[key] = _Watch(
                        batch.now,
                        _number(sample.fields, "oom_kills_total"),
                        _number(sample.fields, "swap_out_bytes_total"),
                    )

    def report(self, batch: Batch, polls: int) -> Report:
        watched = batch.now - (self.first_time if self.first_time is not None else batch.now)
        return Report(
            [self._source(part, batch.now, watched) for part in batch.sources], polls, watched
        )

    # -- per source --

    def _source(self, part: SourceBatch, now: float, watched: float) -> SourceReport:
        findings: list[Finding] = []
        if not part.up:
            ctx = self._source_context(part)
            findings.append(_make_finding("source_down", WARNING, ctx, (part.kind, "*")))
        report = SourceReport(part.kind, part.instance, part.up, part.error, findings, [])
        if part.up:
            hosts_by_name = {tags.get("host", ""): fields for tags, fields in part.hosts}
            for sample in part.samples:
                report.vms.append(self._vm(part, sample, hosts_by_name, now, watched))
            for tags, fields in part.hosts:
                report.hosts.append(self._host(part, tags, fields, now))
        report.not_judged = self._not_judged(report, watched)
        return report

    @staticmethod
    def _source_context(part: SourceBatch) -> _Context:
        ctx = _Context(kind=part.kind, instance=part.instance, error=part.error or "no answer")
        if part.kind == catalog.QMP:  # the instance is the configured globs, comma-joined
            ctx["socket_dirs"] = sorted(
                {os.path.dirname(glob) or "." for glob in part.instance.split(",")}
            )
        return ctx

    @staticmethod
    def _not_judged(report: SourceReport, watched: float) -> list[str]:
        """The codes this source could not judge: those that need two polls or more (on a
        one-shot run), and those a VM of it still waits for (a watch too short for it)."""
        if report.source == catalog.LOGS or not report.up:
            return []
        waiting = {p.code for vm in report.vms for p in vm.pending}
        out: list[str] = []
        for code in FINDINGS:
            if code.code in waiting:
                out.append(code.code)
            elif code.code == "driver_not_loaded":
                continue  # judged per VM, against that VM's own stats period
            elif watched <= 0 and _needs_watch(code, report.source):
                out.append(code.code)
        return out

    # -- per VM --

    def _vm(
        self,
        part: SourceBatch,
        sample: Sample,
        hosts_by_name: dict[str, Fields],
        now: float,
        watched: float,
    ) -> VmReport:
        fields, tags, kind = sample.fields, sample.tags, part.kind
        if kind == catalog.GUEST and tags.get("hypervisor") == "none":
            # Not a VM: no balloon to judge, and the source sent no judgement to turn into one.
            return VmReport(
                kind,
                part.instance,
                tags.get("host", ""),
                dict(tags),
                dict(fields),
                [],
                guest=tags.get("guest", ""),
                not_a_vm=True,
            )
        health = self.runner.health
        rules = health.vm_rules_now(part.key, sample.key, now)
        ctx = self._vm_context(part, sample, now, watched)
        keys = _keys(kind, tags)
        found: list[Finding] = []
        pending: list[Pending] = []

        def add(code_name: str, severity: str = WARNING) -> None:
            found.append(_make_finding(code_name, severity, ctx, keys))

        maximum = _number(fields, "memory_max_bytes")
        actual = _number(fields, "balloon_actual_bytes")
        ratio = _number(fields, "balloon_ratio")
        reservation = _number(fields, "reservation_bytes")
        reserved = reservation is not None and maximum is not None and reservation >= maximum

        # Step 1: is there a balloon, and a driver behind it?
        if kind == catalog.GUEST:
            blacklisted = fields.get("driver_blacklisted") is True
            if blacklisted:
                self._blacklist_context(sample, ctx)
                add("driver_blacklisted")
            elif tags.get("driver") == "none":
                add("no_balloon_device")
            elif fields.get("driver_loaded") is False:
                ctx["module"] = tags.get("driver", "")
                add("driver_not_loaded")
        elif fields.get("inflation_blocked") is True and not reserved:
            if "stats_period_seconds" not in fields:
                add("no_balloon_device")  # memballoon none / Proxmox balloon: 0
            else:
                add("driver_not_loaded")  # the source's own grace has passed
        elif kind in (catalog.LIBVIRT, catalog.QMP):
            # The sources' own rule, on what this watch saw: a driver that has not reported
            # yet is judged only once the VM was watched past its grace.
            period = _number(fields, "stats_period_seconds")
            whole = int(period) if period is not None else None
            verdict = driver_verdict(
                whole,
                "stats_age_seconds" in fields,
                _number(fields, "memory_current_bytes"),
                maximum,
                watched,
            )
            if verdict is True and reserved:
                add("driver_not_loaded")  # inflation_blocked says the reservation already
            elif verdict is not False:  # not yet, or the source has not seen it for as long
                grace = driver_grace(whole or 0)
                pending.append(Pending("driver_not_loaded", math.ceil(grace) + WATCH_INTERVAL))
        if reserved:
            add("inflation_blocked")

        # Step 2: are the stats flowing?
        if fields.get("stats_disabled") is True:
            add("stats_disabled")
        elif fields.get("stale") is True:
            add("stale", self._rule_severity(rules, "stale") or WARNING)

        # Step 3: is the balloon reaching its target?
        if fields.get("stuck") is True:
            add("stuck", self._rule_severity(rules, "stuck") or WARNING)
        else:
            gap = _number(fields, "balloon_gap_bytes")
            if gap is not None and maximum and gap / maximum > self.config.health.stuck_gap_ratio:
                held = health.stuck_held(part.key, sample.key, now)
                stuck_for = self.config.health.stuck_for
                if self.watching:
                    ctx["stuck_note"] = (
                        f"it has held {duration(held)} of stuck_for ({duration(stuck_for)})"
                    )
                else:
                    ctx["stuck_note"] = (
                        "one poll cannot tell whether it is stuck: that needs the gap to hold "
                        f"for stuck_for ({duration(stuck_for)}); --watch {duration(stuck_for)} "
                        "judges it"
                    )
                add("short_of_target")

        # Step 4: how much does the balloon hold?
        ratio_rules = [r for r in rules if r.field == "balloon_ratio"]
        raw = max((r.raw for r in ratio_rules), default=0)
        if raw:
            self._for_context(ratio_rules, raw, ctx)
            add("balloon_high", _SEVERITY[raw])
        warn = self._warn(ratio_rules, DEFAULT_BALLOON_WARN)
        large = ratio is not None and ratio >= warn

        # Step 5: swap and OOM kills under the balloon.
        first = self.first.get((part.key, sample.key))
        if self.watching and first is not None:
            swap_out = _number(fields, "swap_out_bytes_total")
            if (
                first.swap_out is not None
                and swap_out is not None
                and swap_out > first.swap_out
                and (actual or 0) > 0
            ):
                grown = swap_out - first.swap_out
                span = max(now - first.time, 1e-9)
                ctx["swapped"] = size(grown)
                ctx["swap_rate"] = size(grown / span)
                add("swapping", self._rule_severity(rules, "swap_out_bytes_per_second") or WARNING)
            oom = _number(fields, "oom_kills_total")
            if first.oom_kills is not None and oom is not None and oom > first.oom_kills:
                ctx["oom_new"] = f"{oom - first.oom_kills:.0f}"
                add("oom_kills")
        if large and fields.get("swap_total_bytes") == 0:
            add("no_swap_under_balloon")
        if large and fields.get("thp_mode") == "always":
            add("thp_always_under_balloon")

        # SOURCE FAQ 1: a large balloon on a host with plenty free.
        host = hosts_by_name.get(tags.get("host", ""))
        if large and host is not None:
            free = _number(host, "host_free_bytes")
            memory = _number(host, "host_memory_bytes")
            if free is not None and memory and free / memory > HOST_FREE_RATIO:
                ctx["host_free"] = size(free)
                ctx["host_memory"] = size(memory)
                add("balloon_without_pressure")

        found.sort(key=lambda f: -_RANK[f.severity])
        return VmReport(
            kind,
            part.instance,
            tags.get("host", ""),
            dict(tags),
            dict(fields),
            found,
            guest=tags.get("guest", ""),
            pending=pending,
        )

    def _vm_context(
        self, part: SourceBatch, sample: Sample, now: float, watched: float
    ) -> _Context:
        fields, tags = sample.fields, sample.tags
        guest = tags.get("guest", sample.key)
        ctx = _Context(
            kind=part.kind,
            instance=part.instance,
            guest=guest,
            vm_host=tags.get("host", "?"),
            driver=tags.get("driver", "balloon"),
            module=tags.get("driver", "virtio_balloon"),
            gap_limit=f"{self.config.health.stuck_gap_ratio:g}",
            stuck_for=duration(self.config.health.stuck_for),
            stuck_held=duration(self.runner.health.stuck_held(part.key, sample.key, now)),
            seen_for=duration(watched),
            age_note="",
        )
        # Commands name the VM by what cannot match another one: virsh by UUID (a name
        # like "5" is an ID to virsh), qm by vmid, govc by instance UUID; a QMP VM by its
        # socket. Absent when the source does not know it: the command is then left out.
        if "uuid" in tags:
            ctx["vm_uuid"] = tags["uuid"]
        if "vmid" in tags:
            ctx["vmid"] = tags["vmid"]
        if part.kind == catalog.QMP:
            ctx["socket"] = sample.key
        for name, short in _SIZES:
            value = fields.get(name)
            if value is not None:
                ctx[short] = size(value)
        maximum = _number(fields, "memory_max_bytes")
        if maximum is not None:
            ctx["max_bytes"] = f"{maximum:.0f}"
            ctx["max_kib"] = f"{maximum / 1024:.0f}"
            ctx["max_mib"] = f"{maximum / MIB:.0f}"
            ctx["half_mib"] = f"{maximum / MIB / 2:.0f}"
            ctx["half_kib"] = f"{maximum / 1024 / 2:.0f}"
            gap = _number(fields, "balloon_gap_bytes")
            if gap is not None and maximum:
                ctx["gap_pct"] = percent(gap / maximum)
        ratio = _number(fields, "balloon_ratio")
        if ratio is not None:
            ctx["ratio_pct"] = percent(ratio)
        age = _number(fields, "stats_age_seconds")
        if age is not None:
            ctx["age"] = duration(age)
            if fields.get("stats_disabled") is True:
                ctx["age_note"] = f"; its last report is {duration(age)} old"
        stale_after = self.config.health.stale_after
        if stale_after is None:
            period = _number(fields, "stats_period_seconds") or 0.0
            stale_after = max(60.0, 3.0 * period)
        ctx["stale_after"] = duration(stale_after)
        return ctx

    @staticmethod
    def _blacklist_context(sample: Sample, ctx: _Context) -> None:
        """The driver and where it is blacklisted, as the guest source saw them at its poll."""
        origins = sample.detail.blacklist_origins if sample.detail is not None else {}
        module = sample.tags.get("driver", "none")
        if module == "none" or module not in origins:
            module = next(iter(origins), module)  # the source's first balloon driver
        where = origins.get(module, [])
        ctx["module"] = module
        ctx["where"] = (
            " and ".join(where) if where else "a modprobe.d file or the kernel command line"
        )
        steps: list[str] = []
        for place in where:
            if place.startswith("/"):
                steps.append(
                    f"Delete the `blacklist {module}` (or `install {module} /bin/false`) line "
                    f"in {place}."
                )
            else:
                steps.append(
                    f"Remove {module} from modprobe.blacklist= / module_blacklist= on the kernel "
                    "command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub "
                    "and a reboot)."
                )
        ctx["unblacklist"] = (" ".join(steps) + " ") if steps else ""

    @staticmethod
    def _rule_severity(rules: list[RuleState], name: str) -> Optional[str]:
        raw = max((r.raw for r in rules if r.field == name), default=0)
        return _SEVERITY.get(raw)

    @staticmethod
    def _warn(rules: list[RuleState], default: float) -> float:
        limits = [r.warn if r.warn is not None else r.crit for r in rules]
        values = [v for v in limits if v is not None]
        return min(values) if values else default

    def _for_context(self, rules: list[RuleState], raw: int, ctx: _Context) -> None:
        """The limit crossed, and whether the condition has held for the rule's `for` yet."""
        crossing = [r for r in rules if r.raw >= raw]
        rule = crossing[0]
        limit = rule.crit if raw == 2 else rule.warn
        ctx["limit_name"] = "crit" if raw == 2 else "warn"
        ctx["limit_pct"] = percent(limit)
        if rule.level >= raw or rule.for_seconds <= 0:
            held = f" for {duration(rule.held)}" if rule.held >= 1 else ""
            ctx["for_note"] = (
                f"it has held{held}, past the rule's for ({duration(rule.for_seconds)})"
                if rule.for_seconds > 0
                else "the rule has no for: it counts at once"
            )
        elif self.watching:
            ctx["for_note"] = (
                f"it has held {duration(rule.held)}, not yet the rule's for "
                f"({duration(rule.for_seconds)})"
            )
        else:
            ctx["for_note"] = (
                "it holds now, but has not yet been seen to hold for the rule's for "
                f"({duration(rule.for_seconds)}): --watch {duration(rule.for_seconds)} judges that"
            )

    # -- per host --

    @staticmethod
    def _host_context(part: SourceBatch, tags: Tags, fields: Fields) -> _Context:
        ctx = _Context(
            kind=part.kind,
            instance=part.instance,
            host=tags.get("host", ""),
            promised=size(fields.get("memory_max_bytes")),
            physical=size(fields.get("host_memory_bytes")),
            reclaimed=size(fields.get("balloon_actual_bytes")),
            reclaimed_pct=percent(fields.get("reclaimed_ratio")),
            for_note="",
        )
        overcommit = _number(fields, "overcommit_ratio")
        if overcommit is not None:
            ctx["overcommit"] = f"{overcommit:.2f}x"
        return ctx

    def _host(self, part: SourceBatch, tags: Tags, fields: Fields, now: float) -> HostReport:
        name = tags.get("host", "")
        rules = self.runner.health.host_rules_now(part.key, name, now)
        ctx = self._host_context(part, tags, fields)
        overcommit = _number(fields, "overcommit_ratio")
        found: list[Finding] = []

        def add(code_name: str, severity: str = WARNING) -> None:
            found.append(_make_finding(code_name, severity, ctx, (part.kind, "*")))

        if overcommit is not None and overcommit > 1:
            add("host_overcommitted")
        reclaimed = _number(fields, "reclaimed_ratio")
        ratio_rules = [r for r in rules if r.field == "reclaimed_ratio"]
        warn = self._warn(ratio_rules, DEFAULT_RECLAIMED_WARN)
        if reclaimed is not None and reclaimed >= warn:
            ctx["limit_pct"] = percent(warn)
            raw = max((r.raw for r in ratio_rules), default=0)
            if ratio_rules and raw:
                self._for_context(ratio_rules, raw, ctx)
                ctx["for_note"] = "; " + ctx["for_note"]
            add("host_reclaiming", _SEVERITY.get(raw, WARNING))
        found.sort(key=lambda f: -_RANK[f.severity])
        return HostReport(part.kind, part.instance, name, dict(tags), dict(fields), found)


# --- running ----------------------------------------------------------------------------------


def run(
    config: Config,
    sources: Sequence[Source],
    log: Log,
    hostname: str,
    watch: Optional[float] = None,
    interval: float = WATCH_INTERVAL,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Poll once (or every `interval` for `watch` seconds) and judge the last poll."""
    runner = Runner(config, sources, io.BytesIO(), log, hostname, clock=clock)
    judge = Judge(config, runner, watching=bool(watch))
    batch: Optional[Batch] = None
    polls = 0
    try:
        start = clock()
        end = start + (watch or 0.0)
        next_poll = start
        while True:
            polled = runner.poll_batch()
            if polled is None:
                break
            batch = polled
            polls += 1
            judge.remember(batch)
            if not watch or clock() >= end:
                break
            next_poll = min(next_poll + interval, end)
            sleep(max(0.0, next_poll - clock()))
    except KeyboardInterrupt:
        pass  # judge what was seen so far
    finally:
        runner.close()
    busy = any(worker.busy for worker in runner.workers)
    if batch is None:
        return Report([], polls, 0.0, busy)
    report = judge.report(batch, polls)
    report.busy = busy
    return report


# --- output -----------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    """The --format json document: {"vms": [...], "hosts": [...], "sources": [...]}."""
    vms: list[dict[str, Any]] = []
    hosts: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    for source in report.sources:
        sources.append(
            {
                "source": source.source,
                "instance": source.instance,
                "up": source.up,
                "error": source.error,
                "findings": [f.as_dict() for f in source.findings],
                "not_judged": source.not_judged,
            }
        )
        for vm in source.vms:
            vms.append(
                {
                    "source": vm.source,
                    "instance": vm.instance,
                    "guest": vm.guest,
                    "host": vm.host,
                    "tags": vm.tags,
                    "fields": vm.fields,
                    "verdict": vm.verdict,
                    "findings": [f.as_dict() for f in vm.findings],
                    "not_judged": [p.as_dict() for p in vm.pending],
                    "not_a_vm": vm.not_a_vm,
                }
            )
        for host in source.hosts:
            hosts.append(
                {
                    "source": host.source,
                    "instance": host.instance,
                    "host": host.host,
                    "tags": host.tags,
                    "fields": host.fields,
                    "verdict": host.verdict,
                    "findings": [f.as_dict() for f in host.findings],
                }
            )
    return json.dumps({"vms": vms, "hosts": hosts, "sources": sources}, indent=2) + "\n"


WIDTH = 80
_COLOURS = {CRITICAL: "\033[1;31m", WARNING: "\033[33m", OK: "\033[32m"}
_RESET = "\033[0m"


def printable(text: str) -> str:
    """Names and errors come from VMs and remote systems: no control characters reach a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fit(text: str, width: int) -> str:
    text = printable(text)
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


class _Text:
    def __init__(self, colour: bool, show_all: bool) -> None:
        self.colour = colour
        self.show_all = show_all
        self.lines: list[str] = []

    def paint(self, word: str, severity: str) -> str:
        return f"{_COLOURS[severity]}{word}{_RESET}" if self.colour else word

    def line(self, text: str = "") -> None:
        self.lines.append(text)

    def wrapped(self, text: str, indent: str) -> None:
        """Prose wraps at 80 columns; commands ('$ ') and text to paste ('| ') stay whole."""
        for chunk in text.split("\n"):
            if chunk.startswith(("$ ", "| ")):
                self.line(indent + "  " + printable(chunk[2:]))
            else:
                self.lines.extend(
                    textwrap.wrap(
                        printable(chunk),
                        WIDTH,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                        break_long_words=False,
                    )
                )

    def table(self, head: list[str], rows: list[tuple[list[str], str]], first_max: int) -> None:
        """Right-aligned figures, the first column fitted to what is left of 80 columns."""
        widths = [max(len(head[i]), *(len(r[0][i]) for r in rows)) for i in range(1, len(head))]
        rest = sum(widths) + 2 * len(widths) + 2
        name_width = max(4, min(first_max, WIDTH - rest, max(len(r[0][0]) for r in rows)))
        name_width = max(name_width, min(len(head[0]), WIDTH - rest))

        def join(cells: list[str], verdict: Optional[str]) -> str:
            out = "  " + _fit(cells[0], name_width).ljust(name_width)
            for i, cell in enumerate(cells[1:]):
                text = cell.rjust(widths[i])
                if verdict is not None and i == len(widths) - 1:
                    text = " " * (widths[i] - len(cell)) + self.paint(cell, verdict)
                out += "  " + text
            return out

        self.line(join(head, None))
        for cells, verdict in rows:
            self.line(join(cells, verdict))


def _gap_cell(fields: Fields) -> str:
    gap = fields.get("balloon_gap_bytes")
    return size(gap) if gap is not None else "-"


def to_text(report: Report, colour: bool = False, show_all: bool = False) -> str:
    """The human view: per source a table, then one block per VM with findings, hosts last."""
    out = _Text(colour, show_all)
    vms = sum(len(s.vms) for s in report.sources)
    hosts = sum(len(s.hosts) for s in report.sources)
    how = (
        f"watched {duration(report.watched)} ({report.polls} polls)"
        if report.polls > 1
        else "one poll"
    )
    out.line(
        f"telegraf-balloon --explain: {len(report.sources)} source(s), {vms} VM(s), "
        f"{hosts} host(s); {how}"
    )
    blocks: list[VmReport] = []
    for source in report.sources:
        out.line()
        state = "up" if source.up else out.paint("DOWN", WARNING)
        out.line(printable(f"{source.source} {source.instance}: ") + state)
        for finding in source.findings:
            _finding(out, finding, "  ")
        if not source.up or source.source == catalog.LOGS:
            continue
        for vm in source.vms:
            if vm.not_a_vm:
                out.line(
                    printable(f"  {vm.guest}: ")
                    + "not a VM (no hypervisor found): no balloon to judge"
                )
        vms_here = [v for v in source.vms if not v.not_a_vm]
        ranked = sorted(vms_here, key=lambda v: (-_RANK[v.verdict], v.guest))
        shown = [v for v in ranked if v.findings or show_all]
        waiting = sum(1 for v in vms_here if v.pending and not v.findings)
        healthy = len(vms_here) - sum(1 for v in vms_here if v.findings) - waiting
        if shown:
            rows = [
                (
                    [
                        v.guest,
                        size(v.fields.get("memory_max_bytes")),
                        size(v.fields.get("balloon_actual_bytes")),
                        percent(v.fields.get("balloon_ratio")),
                        size(v.fields.get("balloon_target_bytes"))
                        if "balloon_target_bytes" in v.fields
                        else "-",
                        _gap_cell(v.fields),
                        v.verdict,
                    ],
                    v.verdict,
                )
                for v in shown
            ]
            head = ["VM", "memory", "balloon", "ratio", "target", "gap", "verdict"]
            out.table(head, rows, 40)
        if not source.vms:
            out.line("  no VMs")
        elif healthy and not show_all:
            out.line(f"  {healthy} VM(s) with nothing to act on (--all lists them)")
        if waiting:
            out.line(f"  {waiting} VM(s) not judged yet: see Not judged below")
        blocks.extend(v for v in ranked if v.findings)

    for vm in blocks:
        out.line()
        where = f"{vm.source} {vm.instance}" + (
            f", host {vm.host}" if vm.host and vm.host != vm.guest else ""
        )
        out.line(printable(f"{vm.guest} ({where}): ") + out.paint(vm.verdict.upper(), vm.verdict))
        for finding in vm.findings:
            _finding(out, finding, "  ")

    host_reports = [h for s in report.sources for h in s.hosts]
    if host_reports:
        out.line()
        out.line("Hosts (capacity rule: balloons holding 20% of a host's memory or more)")
        rows = [
            (
                [
                    h.host,
                    str(h.fields.get("vms_total", "-")),
                    size(h.fields.get("memory_max_bytes")),
                    size(h.fields.get("host_memory_bytes")),
                    f"{float(h.fields['overcommit_ratio']):.2f}x"  # type: ignore[arg-type]
                    if "overcommit_ratio" in h.fields
                    else "-",
                    percent(h.fields.get("reclaimed_ratio")),
                    h.verdict,
                ],
                h.verdict,
            )
            for h in host_reports
        ]
        out.table(
            ["host", "VMs", "promised", "physical", "overcommit", "reclaimed", "verdict"], rows, 30
        )
        for host in host_reports:
            if host.findings:
                out.line()
                out.line(
                    printable(f"{host.host} ({host.source} {host.instance}): ")
                    + out.paint(host.verdict.upper(), host.verdict)
                )
                for finding in host.findings:
                    _finding(out, finding, "  ")

    parts = _not_judged_text(report)
    if parts:
        out.line()
        out.wrapped("Not judged: " + "; ".join(parts) + ".", "")

    findings = report.findings()
    open_vms = report.pending()
    out.line()
    if findings:
        crit = sum(1 for f in findings if f.severity == CRITICAL)
        warn = len(findings) - crit
        later = f"; {len(open_vms)} VM(s) not judged yet" if open_vms else ""
        out.line(
            f"{len(findings)} finding(s): "
            + out.paint(f"{crit} critical", CRITICAL if crit else OK)
            + ", "
            + out.paint(f"{warn} warning", WARNING if warn else OK)
            + f"{later}. Exit 1."
        )
    elif open_vms:
        out.line(
            out.paint(f"No finding, but {len(open_vms)} VM(s) not judged yet", WARNING)
            + ": watch for longer (see Not judged). Exit 1."
        )
    elif parts:
        out.line(
            out.paint("Nothing to act on", OK) + " in what this run could judge "
            "(see Not judged). Exit 0."
        )
    else:
        out.line(out.paint("Nothing to act on.", OK) + " Exit 0.")
    return "\n".join(out.lines) + "\n"


def _not_judged_text(report: Report) -> list[str]:
    """One part per code and source kind: which VMs wait (by name, the first five), and the
    watch that judges them (the longest any of them needs)."""
    parts: list[str] = []
    for code in sorted(FINDINGS, key=lambda c: c.code):
        kinds: dict[str, list[VmReport]] = {}
        for source in report.sources:
            if code.code in source.not_judged:
                waiting = [v for v in source.vms if any(p.code == code.code for p in v.pending)]
                kinds.setdefault(source.source, []).extend(waiting)
        for kind, vms in kinds.items():
            if not vms:
                parts.append(f"{code.code} ({kind}: needs --watch)")
                continue
            watch = max(p.watch for v in vms for p in v.pending if p.code == code.code)
            names = sorted(printable(v.guest) for v in vms)
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            need = f"needs --watch {duration(watch)} or longer"
            parts.append(f"{code.code} ({kind}: {shown}: {need})")
    return parts


def _finding(out: _Text, finding: Finding, indent: str) -> None:
    out.line(indent + out.paint(finding.severity, finding.severity) + f" {finding.code}")
    out.wrapped(finding.message, indent + "  ")
    out.wrapped("Do: " + finding.remedy, indent + "  ")


# --- the README's table -----------------------------------------------------------------------


def markdown_table() -> str:
    """The README's findings section body, generated from FINDINGS (a test compares)."""
    rows = [
        "| code | about | when | severity | needs `--watch` |",
        "|---|---|---|---|---|",
    ]
    for code in FINDINGS:
        watch = (
            "yes"
            if "*" in code.needs_watch
            else ", ".join(code.needs_watch)
            if code.needs_watch
            else "no"
        )
        rows.append(
            f"| `{code.code}` | {code.scope} | {code.when} | {code.severity_doc()} | {watch} |"
        )
    return "\n".join(rows)
