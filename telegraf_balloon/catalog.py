"""Every measurement, tag and field the plugin writes: one table for output, docs and tests."""

from __future__ import annotations

from collections.abc import Collection
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

# Opt-in context tags (`context_tags` of a source): the names operators search by. Each is
# one more series per distinct value, so none is written unless the operator asks for it.
CONTEXT_TAGS: dict[str, dict[str, dict[str, str]]] = {
    LIBVIRT: {
        "openstack": {
            "instance_name": "libvirt, context_tags openstack: the instance's display name "
            "(Nova's <nova:name>; the domain is instance-XXXXXXXX)",
            "project": "libvirt, context_tags openstack: the instance's project (its name)",
            "user": "libvirt, context_tags openstack: the user who created the instance (its name)",
            "flavor": "libvirt, context_tags openstack: the instance's flavor (its name)",
        },
        "kubevirt": {
            "namespace": "libvirt, context_tags kubevirt: the VM's Kubernetes namespace "
            "(from the <namespace>_<name> domain name of a KubeVirt virt-launcher)",
            "vm": "libvirt, context_tags kubevirt: the VirtualMachineInstance's name",
        },
    },
    QMP: {
        "proxmox": {
            "pve_tags": "qmp on Proxmox VE, context_tags proxmox: the VM config's tags, "
            "sorted and joined by ';'",
            "pool": "qmp on Proxmox VE, context_tags proxmox: the VM's resource pool",
        },
    },
}
CUSTOM_ATTRIBUTE_TAG = (
    "vsphere, custom_attributes: one tag per configured custom attribute, named as the "
    "attribute lower-cased with every character but a-z, 0-9 and _ made _"
)
BALLOON_CONTEXT_TAGS: dict[str, str] = {
    tag: meaning
    for contexts in CONTEXT_TAGS.values()
    for tags in contexts.values()
    for tag, meaning in tags.items()
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
        "guest memory swapped by the host (hypervisor-level swap, taken by force)",
        LIBVIRT,
        VSPHERE,
        QMP,
        note="vsphere: quickStats.swappedMemory (MB), else the mem.swapped counter; libvirt "
        "(local URI) and qmp: the QEMU's own cgroup, v2 memory.swap.current or v1 memory.stat "
        "swap, else the process's VmSwap (which misses guest RAM in shared memory)",
    ),
    _f(
        "compressed_bytes",
        int,
        "bytes",
        "guest memory compressed by the host",
        LIBVIRT,
        VSPHERE,
        QMP,
        note="vsphere: quickStats.compressedMemory (KB), else the mem.compressed counter; "
        "libvirt (local URI) and qmp: zswapped of the QEMU's cgroup v2 memory.stat, where the "
        "host has zswap and a v2 memory controller",
    ),
    _f("granted_bytes", int, "bytes", "host memory granted to the VM", VSPHERE),
    _f("consumed_bytes", int, "bytes", "host memory consumed by the VM", VSPHERE),
    _f("active_bytes", int, "bytes", "guest memory recently touched", VSPHERE),
    _f(
        "shared_bytes",
        int,
        "bytes",
        "guest memory shared with other pages (KSM on KVM, page sharing on ESXi)",
        LIBVIRT,
        VSPHERE,
        QMP,
        note="libvirt (local URI) and qmp: /proc/<pid>/ksm_merging_pages x page size (counts "
        "the shared copies too: the VMs' figures do not add up to the host's ksm_saved_bytes)",
    ),
    _f("overhead_bytes", int, "bytes", "host memory overhead of the VM", VSPHERE),
    # -- the host's reclaim of a KVM VM, and the guest's own memory pressure --
    _f(
        "host_swapped_bytes_per_second",
        float,
        "bytes/s",
        "change of host_swapped_bytes per second between two polls (above 0: the host is "
        "swapping the VM out now; below 0: it swaps it back in)",
        HEALTH,
        note="absent on the first poll",
    ),
    _f(
        "host_memory_stall_seconds_total",
        float,
        "seconds",
        "time some of the VM's QEMU threads stalled on host memory (PSI some, cumulative)",
        LIBVIRT,
        QMP,
        note="local hosts: the memory.pressure of the QEMU's own cgroup v2 group",
    ),
    _f(
        "host_memory_stall_full_seconds_total",
        float,
        "seconds",
        "time all of the VM's QEMU threads stalled on host memory at once (PSI full, cumulative)",
        LIBVIRT,
        QMP,
        note="as host_memory_stall_seconds_total",
    ),
    _f(
        "host_memory_stall_ratio",
        float,
        "ratio",
        "share of wall time the VM stalled on host memory (some) between two polls",
        HEALTH,
        note="absent on the first poll",
    ),
    _f(
        "guest_memory_stall_seconds_total",
        float,
        "seconds",
        "time some of the guest's tasks stalled on memory (the guest's PSI some, cumulative): "
        "what the balloon costs the guest",
        GUEST,
        note="/proc/pressure/memory; absent where the guest kernel has PSI off",
    ),
    _f(
        "guest_memory_stall_full_seconds_total",
        float,
        "seconds",
        "time all of the guest's tasks stalled on memory at once (PSI full, cumulative)",
        GUEST,
        note="as guest_memory_stall_seconds_total",
    ),
    _f(
        "guest_memory_stall_ratio",
        float,
        "ratio",
        "share of wall time the guest stalled on memory (some) between two polls",
        HEALTH,
        note="absent on the first poll",
    ),
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
    # The guest's integration service: VMware Tools, the QEMU guest agent.
    _f(
        "tools_running",
        bool,
        "",
        "VMware Tools is running in the guest",
        VSPHERE,
        note="guest.toolsRunningStatus: running, or running its power-operation scripts",
    ),
    _f(
        "tools_status",
        str,
        "",
        "VMware Tools' version status: current, need_upgrade, not_installed, unmanaged, "
        "too_old, supported_old, supported_new, too_new or blacklisted",
        VSPHERE,
        note="guest.toolsVersionStatus2",
    ),
    _f(
        "guest_agent_connected",
        bool,
        "",
        "the QEMU guest agent's channel is connected (and, when pinged, the agent answered "
        "within 1 s)",
        LIBVIRT,
        QMP,
        note="libvirt: the live XML's org.qemu.guest_agent.0 channel state, read with the XML, "
        "or with agent_ping the ping's answer; qmp: the <vmid>.qga socket answered guest-ping "
        "(Proxmox VMs with agent enabled); absent without an agent channel",
    ),
    _f(
        "guest_agent_latency_seconds",
        float,
        "seconds",
        "round trip of a guest-ping to the QEMU guest agent, with the guest-sync before it",
        LIBVIRT,
        QMP,
        note="libvirt: with agent_ping, through libvirtd's agent command; qmp: on the "
        "<vmid>.qga socket, with agent_ping; absent when the agent did not answer",
    ),
    # virtio-mem: memory hot(un)plugged in blocks towards a requested size, summed per VM.
    _f(
        "vmem_plugged_bytes",
        int,
        "bytes",
        "virtio-mem memory plugged now, summed over the VM's devices",
        GUEST,
        LIBVIRT,
        QMP,
        note="libvirt: the live XML's <current>; qmp: query-memory-devices size; guest: the "
        "memory blocks the driver added, as /proc/iomem shows them to root, in whole blocks of "
        "128 MiB on x86: up to a block per device above the host's figure",
    ),
    _f(
        "vmem_requested_bytes",
        int,
        "bytes",
        "virtio-mem size the host asked for, summed over the VM's devices",
        LIBVIRT,
        QMP,
        note="libvirt: <requested>; qmp: requested-size",
    ),
    _f(
        "vmem_max_bytes",
        int,
        "bytes",
        "virtio-mem devices' maximum size, summed",
        GUEST,
        LIBVIRT,
        QMP,
        note="libvirt: <size>; qmp: max-size; guest: the devices' regions in /proc/iomem, for root",
    ),
    _f(
        "vmem_block_bytes",
        int,
        "bytes",
        "virtio-mem block size (the largest of the VM's devices): plugged meets requested "
        "within one block",
        LIBVIRT,
        QMP,
    ),
    _f(
        "vmem_gap_bytes",
        int,
        "bytes",
        "virtio-mem plugged - requested (positive: an unplug not done; negative: a plug not taken)",
        LIBVIRT,
        QMP,
    ),
    _f(
        "vmem_stuck",
        bool,
        "",
        "virtio-mem plugged more than a block off requested for stuck_for",
        HEALTH,
        note="where the requested size is known: libvirt, qmp",
    ),
    _f(
        "vmem_driver_loaded",
        bool,
        "",
        "the virtio_mem driver is bound to every virtio-mem device",
        GUEST,
        note="only where the guest has a virtio-mem device",
    ),
    _f(
        "vmem_offline_bytes",
        int,
        "bytes",
        "memory the virtio_mem driver added that is offline: the host counts it plugged, "
        "the guest cannot use it",
        GUEST,
        note="for root only, from /proc/iomem; in whole memory blocks",
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
    _f("vms_vmem_stuck", int, "count", "VMs with vmem_stuck = true", HEALTH),
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
    # -- the host's own reclaim (local KVM hosts: libvirt with a local URI, qmp) --
    _f(
        "host_swap_total_bytes",
        int,
        "bytes",
        "the host's swap space (0 = none)",
        LIBVIRT,
        QMP,
        note="/proc/meminfo SwapTotal; local hosts only",
    ),
    _f(
        "host_swap_used_bytes",
        int,
        "bytes",
        "the host's swap in use",
        LIBVIRT,
        QMP,
        note="SwapTotal - SwapFree; local hosts only",
    ),
    _f(
        "host_swap_in_bytes_total",
        int,
        "bytes",
        "the host's swap-in traffic (cumulative)",
        LIBVIRT,
        QMP,
        note="/proc/vmstat pswpin x page size; local hosts only",
    ),
    _f(
        "host_swap_out_bytes_total",
        int,
        "bytes",
        "the host's swap-out traffic (cumulative)",
        LIBVIRT,
        QMP,
        note="/proc/vmstat pswpout x page size; local hosts only",
    ),
    _f(
        "host_swap_in_bytes_per_second",
        float,
        "bytes/s",
        "the host's swap-in rate between two polls",
        HEALTH,
        note="absent on the first poll and after a counter reset",
    ),
    _f(
        "host_swap_out_bytes_per_second",
        float,
        "bytes/s",
        "the host's swap-out rate between two polls",
        HEALTH,
        note="absent on the first poll and after a counter reset",
    ),
    _f(
        "ksm_saved_bytes",
        int,
        "bytes",
        "memory KSM saves: (pages_sharing + ksm_zero_pages) x page size",
        LIBVIRT,
        QMP,
        note="/sys/kernel/mm/ksm; local hosts with KSM only",
    ),
    _f(
        "ksm_profit_bytes",
        int,
        "bytes",
        "what KSM saves less what its metadata costs (general_profit; below 0: it costs more)",
        LIBVIRT,
        QMP,
        note="local hosts whose kernel has general_profit",
    ),
    _f(
        "host_zswap_bytes",
        int,
        "bytes",
        "memory the host holds compressed in zswap (the pages' own size)",
        LIBVIRT,
        QMP,
        note="/proc/meminfo Zswapped; local hosts whose kernel has zswap",
    ),
    _f(
        "host_memory_stall_seconds_total",
        float,
        "seconds",
        "time some of the host's tasks stalled on memory (PSI some, cumulative)",
        LIBVIRT,
        QMP,
        note="/proc/pressure/memory; local hosts with PSI on",
    ),
    _f(
        "host_memory_stall_full_seconds_total",
        float,
        "seconds",
        "time all of the host's non-idle tasks stalled on memory at once (PSI full, cumulative)",
        LIBVIRT,
        QMP,
        note="as host_memory_stall_seconds_total",
    ),
    _f(
        "host_memory_stall_ratio",
        float,
        "ratio",
        "share of wall time the host stalled on memory (some) between two polls",
        HEALTH,
        note="absent on the first poll",
    ),
    _f(
        "host_memory_stall_full_ratio",
        float,
        "ratio",
        "share of wall time the host stalled on memory (full) between two polls",
        HEALTH,
        note="absent on the first poll",
    ),
    _f(
        "vms_host_swapped",
        int,
        "count",
        "VMs with host_swapped_bytes > 0",
        HEALTH,
        note="where the source sees the host's swap per VM",
    ),
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
        "vsphere: the VMs' property retrieval; qmp: every VM's monitor exchange, run side by side "
        "(the guest agents' pings beside them not counted)",
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
    "virtio_out_of_puff, oom_kill, virtio_mem_requested, virtio_mem_broken, or a configured name",
}

LOG_FIELDS: tuple[Field, ...] = (
    _f("count", int, "count", "new matches since the last poll", LOGS),
    _f("count_total", int, "count", "matches since the plugin started", LOGS),
)

MEASUREMENTS: dict[str, tuple[dict[str, str], tuple[Field, ...]]] = {
    BALLOON: ({**BALLOON_TAGS, **BALLOON_CONTEXT_TAGS}, BALLOON_FIELDS),
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


def check_point(
    measurement: str,
    tags: dict[str, str],
    fields: dict[str, object],
    custom_tags: Collection[str] = (),
) -> list[str]:
    """What in a point the catalog does not allow (used by tests on every line emitted).

    `custom_tags`: the balloon tags the config's vSphere custom_attributes name."""
    problems: list[str] = []
    if measurement not in MEASUREMENTS:
        return [f"unknown measurement {measurement!r}"]
    allowed_tags, _ = MEASUREMENTS[measurement]
    for tag in tags:
        if tag not in allowed_tags and not (measurement == BALLOON and tag in custom_tags):
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


def _context_tags_text(tags: dict[str, str]) -> str:
    """The balloon line's tags: the built-in ones, then the opt-in context tags."""
    built_in = [f"`{k}` ({v})" for k, v in tags.items() if k not in BALLOON_CONTEXT_TAGS]
    context = [f"`{k}` ({v})" for k, v in BALLOON_CONTEXT_TAGS.items()]
    return (
        "Tags: "
        + "; ".join(built_in)
        + ".\n\nOpt-in context tags (none unless the config asks; a VM's value that changes "
        + "starts a new series for it): "
        + "; ".join(context)
        + f"; {CUSTOM_ATTRIBUTE_TAG}.\n"
    )


def markdown_tables() -> str:
    """The README's Metrics section body, generated from this catalog (a test compares)."""
    out: list[str] = []
    for measurement, (tags, fields) in MEASUREMENTS.items():
        out.append(f"### `{measurement}`\n")
        if measurement == BALLOON:
            out.append(_context_tags_text(tags))
        else:
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
