"""Every measurement, tag and field the plugin writes: one table for output, docs and tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

BALLOON = "balloon"
HOST = "balloon_host"
COLLECTOR = "balloon_collector"
LOG = "balloon_log"

GUEST = "guest"
LIBVIRT = "libvirt"
VSPHERE = "vsphere"
QMP = "qmp"
HEALTH = "health"  # computed by the health stage from what a source gave, for every source


@dataclass(frozen=True)
class Field:
    """One field: its line-protocol type, unit, meaning and who fills it."""

    name: str
    type: type
    unit: str
    description: str
    sources: tuple[str, ...]
    note: str = ""


def _f(name: str, kind: type, unit: str, description: str, *sources: str, note: str = "") -> Field:
    return Field(name, kind, unit, description, sources, note)


BALLOON_TAGS: dict[str, str] = {
    "host": "hypervisor host; inside a guest, the guest's hostname",
    "guest": "VM name; inside a guest, its hostname",
    "hypervisor": "kvm, qemu, xen, vmware, hyperv, test or unknown; none: the guest source on "
    "a machine that is not a VM (no judgement fields then)",
    "source": "guest, libvirt, vsphere or qmp",
    "uuid": "the VM's UUID, where known",
    "driver": "guest source only: virtio_balloon, vmw_balloon, xen_balloon, hv_balloon or none",
    "vcenter": "vsphere only: the vCenter (or ESXi) host the source polls",
    "datacenter": "vsphere only: the VM's datacenter",
    "cluster": "vsphere only: the VM's cluster (absent on a standalone host)",
    "vmid": "qmp source on Proxmox VE only: the VM's id",
    "shard": "vsphere only, when set: the part of the vCenter this agent reports (`shard`)",
}

BALLOON_FIELDS: tuple[Field, ...] = (
    _f(
        "memory_max_bytes",
        int,
        "bytes",
        "the VM's configured memory",
        GUEST,
        LIBVIRT,
        VSPHERE,
        QMP,
        note="guest: MemTotal, plus the balloon where the driver shrinks MemTotal; "
        "vsphere: config.hardware.memoryMB; qmp: base plus hotplugged memory",
    ),
    _f(
        "memory_current_bytes",
        int,
        "bytes",
        "memory the guest has now (max - balloon)",
        GUEST,
        LIBVIRT,
        VSPHERE,
        QMP,
    ),
    _f(
        "balloon_actual_bytes",
        int,
        "bytes",
        "memory held by the balloon now",
        GUEST,
        LIBVIRT,
        VSPHERE,
        QMP,
        note="vsphere: the mem.vmmemctl counter (KB) with target_counters, else "
        "quickStats.balloonedMemory (MB)",
    ),
    _f(
        "balloon_target_bytes",
        int,
        "bytes",
        "memory the hypervisor asked the balloon to hold",
        GUEST,
        VSPHERE,
        note="guest: vmw_balloon and Xen only; libvirt exposes no target; vsphere: the "
        "mem.vmmemctltarget counter, with target_counters",
    ),
    _f(
        "balloon_gap_bytes",
        int,
        "bytes",
        "target - actual (positive: balloon short of target)",
        HEALTH,
        note="where a target is known",
    ),
    _f("balloon_ratio", float, "ratio", "actual / max", HEALTH),
    _f("guest_total_bytes", int, "bytes", "guest MemTotal", GUEST, LIBVIRT, QMP),
    _f("guest_free_bytes", int, "bytes", "guest MemFree", GUEST, LIBVIRT, QMP),
    _f("guest_available_bytes", int, "bytes", "guest MemAvailable", GUEST, LIBVIRT, QMP),
    _f(
        "guest_disk_caches_bytes",
        int,
        "bytes",
        "guest page cache that can be dropped",
        GUEST,
        LIBVIRT,
        QMP,
    ),
    _f(
        "swap_in_bytes_total",
        int,
        "bytes",
        "guest swap-in traffic (cumulative)",
        GUEST,
        LIBVIRT,
        QMP,
    ),
    _f(
        "swap_out_bytes_total",
        int,
        "bytes",
        "guest swap-out traffic (cumulative)",
        GUEST,
        LIBVIRT,
        QMP,
    ),
    _f(
        "swap_in_bytes_per_second",
        float,
        "bytes/s",
        "swap-in rate between two polls",
        HEALTH,
        note="absent on the first poll and after a counter reset",
    ),
    _f(
        "swap_out_bytes_per_second",
        float,
        "bytes/s",
        "swap-out rate between two polls",
        HEALTH,
        note="absent on the first poll and after a counter reset",
    ),
    _f(
        "major_faults_total",
        int,
        "count",
        "guest major page faults (cumulative)",
        GUEST,
        LIBVIRT,
        QMP,
    ),
    _f(
        "minor_faults_total",
        int,
        "count",
        "guest minor page faults (cumulative)",
        GUEST,
        LIBVIRT,
        QMP,
    ),
    _f("rss_bytes", int, "bytes", "host memory of the VM process", LIBVIRT, QMP),
    _f(
        "stats_age_seconds",
        float,
        "seconds",
        "now - the guest's last stats update",
        LIBVIRT,
        QMP,
        note="absent while the guest has never reported",
    ),
    _f(
        "stats_period_seconds",
        int,
        "seconds",
        "balloon stats period (0 = guest stats frozen)",
        LIBVIRT,
        QMP,
    ),
    _f(
        "host_swapped_bytes",
        int,
        "bytes",
        "guest memory swapped by the host",
        VSPHERE,
        note="quickStats.swappedMemory (MB), else the mem.swapped counter",
    ),
    _f(
        "compressed_bytes",
        int,
        "bytes",
        "guest memory compressed by the host",
        VSPHERE,
        note="quickStats.compressedMemory (KB), else the mem.compressed counter",
    ),
    _f("granted_bytes", int, "bytes", "host memory granted to the VM", VSPHERE),
    _f("consumed_bytes", int, "bytes", "host memory consumed by the VM", VSPHERE),
    _f("active_bytes", int, "bytes", "guest memory recently touched", VSPHERE),
    _f("shared_bytes", int, "bytes", "guest memory shared with other VMs", VSPHERE),
    _f("overhead_bytes", int, "bytes", "host memory overhead of the VM", VSPHERE),
    _f(
        "reservation_bytes",
        int,
        "bytes",
        "guaranteed memory",
        LIBVIRT,
        QMP,
        VSPHERE,
        note="libvirt: memtune min_guarantee where set; qmp: the Proxmox `balloon` minimum",
    ),
    _f(
        "limit_bytes",
        int,
        "bytes",
        "capped memory (absent if unlimited)",
        LIBVIRT,
        VSPHERE,
        note="libvirt: memtune hard_limit where set",
    ),
    _f("inflate_pages_total", int, "pages", "balloon inflations (cumulative)", GUEST),
    _f("deflate_pages_total", int, "pages", "balloon deflations (cumulative)", GUEST),
    _f("migrate_pages_total", int, "pages", "balloon page migrations (cumulative)", GUEST),
    _f("oom_kills_total", int, "count", "guest OOM killer invocations (cumulative)", GUEST),
    _f("swap_total_bytes", int, "bytes", "guest swap space (0 = none)", GUEST),
    _f("thp_mode", str, "", "transparent hugepages: always, madvise or never", GUEST),
    _f("feature_stats_vq", bool, "", "virtio balloon feature STATS_VQ", GUEST),
    _f("feature_deflate_on_oom", bool, "", "virtio balloon feature DEFLATE_ON_OOM", GUEST),
    _f("feature_free_page_hint", bool, "", "virtio balloon feature FREE_PAGE_HINT", GUEST),
    _f("feature_free_page_reporting", bool, "", "virtio balloon feature REPORTING", GUEST),
    _f("driver_loaded", bool, "", "a balloon driver is bound to a device", GUEST),
    _f("driver_blacklisted", bool, "", "the balloon driver is blacklisted", GUEST),
    _f(
        "virtio_console_blacklisted",
        bool,
        "",
        "virtio_console (virtio serial ports: the guest agent's channel) is blacklisted",
        GUEST,
    ),
    _f(
        "debugfs_world_readable",
        bool,
        "",
        "the balloon driver's debugfs file (vmmemctl, hv-balloon) is readable by every user",
        GUEST,
        note="vmw_balloon and hv_balloon guests with debugfs mounted",
    ),
    _f(
        "stuck",
        bool,
        "",
        "gap / max above stuck_gap_ratio for stuck_for",
        HEALTH,
        note="where a target is known",
    ),
    _f(
        "stale",
        bool,
        "",
        "guest stats older than stale_after",
        HEALTH,
        note="where the source reports the stats age",
    ),
    _f("stats_disabled", bool, "", "stats period 0: guest fields frozen", LIBVIRT, QMP),
    _f(
        "inflation_blocked",
        bool,
        "",
        "the balloon cannot inflate: no device or driver, or reservation >= memory",
        GUEST,
        LIBVIRT,
        QMP,
        VSPHERE,
    ),
    _f(
        "alert_level",
        int,
        "level",
        "max of all <field>_level on the line (0 ok, 1 warn, 2 crit)",
        HEALTH,
    ),
)

HOST_TAGS: dict[str, str] = {
    "host": "the hypervisor host: libvirt's name for it (virsh hostname), the ESXi host, or "
    "[agent] hostname (else the machine's hostname) for qmp",
    "hypervisor": "as on balloon",
    "source": "libvirt, vsphere or qmp (the guest source writes no balloon_host line)",
    "vcenter": "as on balloon",
    "datacenter": "as on balloon",
    "cluster": "as on balloon",
    "shard": "as on balloon",
}

HOST_FIELDS: tuple[Field, ...] = (
    _f("vms_total", int, "count", "VMs seen on the host this poll", HEALTH),
    _f("vms_ballooned", int, "count", "VMs whose balloon holds memory", HEALTH),
    _f("vms_stuck", int, "count", "VMs with stuck = true", HEALTH),
    _f("vms_stale", int, "count", "VMs with stale = true", HEALTH),
    _f("vms_blocked", int, "count", "VMs with inflation_blocked = true", HEALTH),
    _f("memory_max_bytes", int, "bytes", "sum of VM memory (memory promised to VMs)", HEALTH),
    _f("balloon_actual_bytes", int, "bytes", "sum of balloon sizes", HEALTH),
    _f(
        "balloon_target_bytes",
        int,
        "bytes",
        "sum of balloon targets",
        HEALTH,
        note="only when every VM on the host reports a target",
    ),
    _f(
        "host_memory_bytes",
        int,
        "bytes",
        "physical memory of the host",
        LIBVIRT,
        VSPHERE,
        QMP,
        note="qmp, and libvirt with a local URI: the host's own /proc/meminfo; libvirt with a "
        "remote URI: libvirt's node info; vsphere: summary.hardware.memorySize",
    ),
    _f(
        "host_free_bytes",
        int,
        "bytes",
        "free memory of the host",
        LIBVIRT,
        VSPHERE,
        QMP,
        note="vsphere: memorySize - quickStats.overallMemoryUsage",
    ),
    _f(
        "ecc_corrected_total",
        int,
        "count",
        "corrected ECC memory errors, summed over the host's EDAC memory controllers",
        LIBVIRT,
        QMP,
        note="only where the host has EDAC and the source reads it locally",
    ),
    _f(
        "ecc_uncorrected_total",
        int,
        "count",
        "uncorrected ECC memory errors, summed over the host's EDAC memory controllers",
        LIBVIRT,
        QMP,
        note="only where the host has EDAC and the source reads it locally",
    ),
    _f(
        "ecc_corrected_new",
        int,
        "count",
        "corrected ECC errors since the previous poll",
        HEALTH,
        note="with ecc_corrected_total, from the second poll on",
    ),
    _f(
        "ecc_uncorrected_new",
        int,
        "count",
        "uncorrected ECC errors since the previous poll (the default rule: critical at 1)",
        HEALTH,
        note="with ecc_uncorrected_total, from the second poll on",
    ),
    _f(
        "partial",
        bool,
        "",
        "true: the sums cover only the VMs this agent reports, vm_include left others out",
        VSPHERE,
        note="absent when the sums are the host's whole; the other VMs' sums are on other "
        "agents' lines (tell them apart by shard); no ratios on a partial line, and "
        "host_memory_bytes and host_free_bytes are the host's own on each, not to be added up",
    ),
    _f("overcommit_ratio", float, "ratio", "memory promised to VMs / physical memory", HEALTH),
    _f("reclaimed_ratio", float, "ratio", "ballooned memory / physical memory", HEALTH),
    _f("alert_level", int, "level", "max of all <field>_level on the line", HEALTH),
)

COLLECTOR_TAGS: dict[str, str] = {
    "host": "the machine the plugin runs on",
    "source": "guest, libvirt, vsphere, qmp or logs",
    "instance": "root path, URI, vCenter host, QMP socket globs or log globs (never credentials)",
}

COLLECTOR_FIELDS: tuple[Field, ...] = (
    _f("up", bool, "", "the source answered this poll", HEALTH),
    _f("duration_seconds", float, "seconds", "time the source's poll took", HEALTH),
    _f(
        "api_latency_seconds",
        float,
        "seconds",
        "the main API round trip",
        GUEST,
        LIBVIRT,
        VSPHERE,
        QMP,
        note="guest: the /proc and /sys reads; libvirt: the stats fetch only, its concurrent "
        "chunks or its one bulk call (per-domain fallback calls count in duration_seconds); "
        "vsphere: the VMs' property retrieval; qmp: every VM's exchange, run side by side",
    ),
    _f("vms", int, "count", "VMs reported this poll", HEALTH),
    _f("polls_total", int, "count", "polls of this source since start", HEALTH),
    _f("errors_total", int, "count", "failed polls of this source since start", HEALTH),
    _f("error", str, "", "last error (absent when up)", HEALTH),
)

LOGS = "logs"
LOG_TAGS: dict[str, str] = {
    "host": "the machine the plugin runs on",
    "file": "the log file, or kmsg for the kernel log",
    "event": "balloon_extend_failed, host_pin_failed, vmmemctl_freeze, vmmemctl_pin_failed, "
    "virtio_out_of_puff, oom_kill, or a configured name",
}

LOG_FIELDS: tuple[Field, ...] = (
    _f("count", int, "count", "new matches since the last poll", LOGS),
    _f("count_total", int, "count", "matches since the plugin started", LOGS),
)

MEASUREMENTS: dict[str, tuple[dict[str, str], tuple[Field, ...]]] = {
    BALLOON: (BALLOON_TAGS, BALLOON_FIELDS),
    HOST: (HOST_TAGS, HOST_FIELDS),
    LOG: (LOG_TAGS, LOG_FIELDS),
    COLLECTOR: (COLLECTOR_TAGS, COLLECTOR_FIELDS),
}

# The sources whose polls write each measurement (balloon_collector: every source; balloon_log:
# the logs source). The guest source describes no hypervisor host: no balloon_host line.
WRITTEN_BY: dict[str, tuple[str, ...]] = {
    BALLOON: (GUEST, LIBVIRT, VSPHERE, QMP),
    HOST: (LIBVIRT, VSPHERE, QMP),
}

_BY_NAME: dict[str, dict[str, Field]] = {
    m: {f.name: f for f in fields} for m, (_, fields) in MEASUREMENTS.items()
}

LEVEL_SUFFIX = "_level"


def field(measurement: str, name: str) -> Optional[Field]:
    """The catalog entry of a field, or None."""
    return _BY_NAME.get(measurement, {}).get(name)


def thresholdable(measurement: str, name: str) -> bool:
    """A [[thresholds]] rule may watch numeric and boolean fields of balloon and balloon_host."""
    entry = field(measurement, name)
    return (
        measurement in (BALLOON, HOST)
        and entry is not None
        and entry.type in (int, float, bool)
        and name != "alert_level"
    )


def check_point(measurement: str, tags: dict[str, str], fields: dict[str, object]) -> list[str]:
    """What in a point the catalog does not allow (used by tests on every line emitted)."""
    problems: list[str] = []
    if measurement not in MEASUREMENTS:
        return [f"unknown measurement {measurement!r}"]
    allowed_tags, _ = MEASUREMENTS[measurement]
    for tag in tags:
        if tag not in allowed_tags:
            problems.append(f"{measurement}: unknown tag {tag!r}")
    for name, value in fields.items():
        if name.endswith(LEVEL_SUFFIX) and name != "alert_level":
            base = name[: -len(LEVEL_SUFFIX)]
            if not thresholdable(measurement, base):
                problems.append(f"{measurement}: level of unknown field {base!r}")
            elif type(value) is not int:
                problems.append(f"{measurement}.{name}: level is not int")
            continue
        entry = field(measurement, name)
        if entry is None:
            problems.append(f"{measurement}: unknown field {name!r}")
        elif type(value) is not entry.type:
            problems.append(
                f"{measurement}.{name}: {type(value).__name__}, catalog says {entry.type.__name__}"
            )
    return problems


_SOURCE_COLUMNS = (GUEST, LIBVIRT, VSPHERE, QMP)


def _type_word(kind: type) -> str:
    return {int: "integer", float: "float", bool: "boolean", str: "string"}[kind]


def markdown_tables() -> str:
    """The README's Metrics section body, generated from this catalog (a test compares)."""
    out: list[str] = []
    for measurement, (tags, fields) in MEASUREMENTS.items():
        out.append(f"### `{measurement}`\n")
        out.append("Tags: " + "; ".join(f"`{k}` ({v})" for k, v in tags.items()) + ".\n")
        with_sources = measurement in (BALLOON, HOST)
        head = "| field | type | unit |"
        rule = "|---|---|---|"
        if with_sources:
            head += " guest | libvirt | vsphere | qmp |"
            rule += "---|---|---|---|"
        out.append(head + " meaning |")
        out.append(rule + "---|")
        for entry in fields:
            row = f"| `{entry.name}` | {_type_word(entry.type)} | {entry.unit or '-'} |"
            if with_sources:
                for column in _SOURCE_COLUMNS:
                    if column not in WRITTEN_BY[measurement]:
                        mark = "-"
                    elif HEALTH in entry.sources:
                        mark = "computed"
                    else:
                        mark = "yes" if column in entry.sources else "-"
                    row += f" {mark} |"
            meaning = entry.description + (f" ({entry.note})" if entry.note else "")
            out.append(row + f" {meaning} |")
        if measurement in (BALLOON, HOST):
            marks = " | ".join(
                "computed" if c in WRITTEN_BY[measurement] else "-" for c in _SOURCE_COLUMNS
            )
            out.append(
                f"| `<field>_level` | integer | level | {marks} |"
                " per `[[thresholds]]` rule: 0 ok, 1 warning, 2 critical |"
            )
        out.append("")
    return "\n".join(out)
