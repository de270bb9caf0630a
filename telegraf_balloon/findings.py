"""The findings table: every code --explain can report, its scope, severity, messages and
remedies per source kind.

Like catalog.py for the fields, this table is the one place a finding is defined: it drives
--explain's text and JSON output (explain/), the README's findings section (markdown_table)
and the tests. A new finding is a new row here plus the judgement that raises it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Code:
    """One finding: when it is raised, how severe, what it says and what to do, per source."""

    code: str
    scope: str  # "vm", "host" or "source"
    when: str  # for the README
    rule: str = ""  # the [[thresholds]] field whose level sets the severity; "" = warning
    also: tuple[str, ...] = ()  # further fields whose rules set it too (the highest level wins)
    message: dict[str, str] = field(default_factory=dict)  # source kind (or "*") -> template
    remedy: dict[str, str] = field(default_factory=dict)  # "kind:variant", kind or "*"
    needs_watch: tuple[str, ...] = ()  # source kinds where one poll cannot judge it ("*": all)
    # The watch it needs differs per VM (its own stats period): each VM waiting for it says
    # so, and a one-shot run does not list it as not judged for the whole source.
    watch_per_vm: bool = False

    def severity_doc(self) -> str:
        if not self.rule:
            return "warning"
        if not self.also:
            return f"the `{self.rule}` rule's level (warning at 0 or without a rule)"
        names = ", ".join(f"`{name}`" for name in (self.rule, *self.also))
        return f"the level of the rules on {names} (warning at 0 or without a rule)"

    @property
    def rules(self) -> tuple[str, ...]:
        """Every [[thresholds]] field whose rule's level sets this code's severity."""
        return (self.rule, *self.also) if self.rule else ()

    def needs_watch_for(self, kind: str) -> bool:
        """One poll of a `kind` source cannot judge this code."""
        return "*" in self.needs_watch or kind in self.needs_watch


def _t(**by_kind: str) -> dict[str, str]:
    """Templates keyed by source kind; `any` is the fallback, `guest_vmware` -> guest:vmware,
    `qmp_proxmox` -> qmp:proxmox (see explain.templates.template_keys).

    In a template, a line starting `$ ` is a command: every value put into it is shell-quoted
    (see explain.templates.command); a line starting `| ` is text to paste (XML, QMP JSON);
    the rest is prose.
    """
    return {("*" if k == "any" else k.replace("_", ":", 1)): v for k, v in by_kind.items()}


_DEFLATE_LIBVIRT = "$ virsh -c {instance} setmem {vm_uuid} {max_kib}K --live"
_INSIDE = "Inside the guest, see what holds its memory and whether it fought the balloon:\n"

# virtio-mem remedies: the request made to match what the guest did, and the guest fixed.
_VMEM_GUEST = (
    "Inside a Linux guest, memory can be unplugged only where it is movable and free: boot it "
    "with memhp_default_state=online_movable (or movable_node) on the kernel command line, "
    "and check that the driver is loaded (lsmod | grep virtio_mem)."
)
_VMEM_REMEDY = _t(
    libvirt="{vmem_advice}\nTo ask only for what the guest has (the device stops retrying):\n"
    "$ virsh -c {instance} update-memory-device {vm_uuid} --alias {vmem_device} "
    "--requested-size {vmem_plugged_kib}K --live\n" + _VMEM_GUEST,
    qmp="{vmem_advice}\nTo ask only for what the guest has (the device stops retrying), through "
    "the VM's QMP socket {socket} (after qmp_capabilities):\n"
    '| {{"execute": "qom-set", "arguments": {{"path": {vmem_path}, '
    '"property": "requested-size", "value": {vmem_plugged_bytes}}}}}\n' + _VMEM_GUEST,
    any="{vmem_advice}\n" + _VMEM_GUEST,
)

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
        watch_per_vm=True,
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
    # virtio-mem: the other dynamic-memory device, with its own stuck state.
    Code(
        "vmem_short_of_target",
        "vm",
        "virtio-mem plugged differs from requested by more than a block now",
        message=_t(
            any="virtio-mem has {vmem_plugged} plugged of {vmem_requested} requested: "
            "{vmem_gap} {vmem_direction}, more than a block ({vmem_block}); {vmem_why}; "
            "{stuck_note}.",
        ),
        remedy=_VMEM_REMEDY,
    ),
    Code(
        "vmem_stuck",
        "vm",
        "the `vmem_stuck` field is true (needs `--watch` >= `stuck_for`)",
        rule="vmem_stuck",
        message=_t(
            any="virtio-mem is stuck: {vmem_plugged} plugged of {vmem_requested} requested "
            "({vmem_gap} {vmem_direction}) for {vmem_held}, beyond stuck_for ({stuck_for}); "
            "{vmem_why}.",
        ),
        remedy=_VMEM_REMEDY,
    ),
    Code(
        "vmem_unused",
        "vm",
        "guest: a virtio-mem device without its driver bound, or memory the driver added "
        "left offline (the host counts it plugged, the guest cannot use it)",
        message=_t(
            any="{vmem_unused_why}",
        ),
        remedy=_t(
            any="Inside the guest, load the driver and have hot-plugged memory onlined as "
            "movable (so that it can be unplugged again): add memhp_default_state=online_movable "
            "to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub, "
            "reboot), or online what is offline now:\n"
            "$ modprobe virtio_mem\n"
            "$ for b in /sys/devices/system/memory/memory*/state; do grep -q offline $b && "
            "echo online_movable > $b; done",
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
        "half its memory free (the guest may have lost contact with the host and its driver kept "
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
    # The guest's integration service: VMware Tools, the QEMU guest agent.
    Code(
        "integration_service_down",
        "vm",
        "VMware Tools not running or not installed, or the guest agent disconnected or not "
        "answering, on a VM whose balloon is in use or asked to be",
        message=_t(
            vsphere="VMware Tools is {tools_state} in this VM while its balloon {balloon_use}: "
            "the guest's integration service is down, so vCenter loses its view of the guest "
            "(heartbeat, guest operations), and a balloon left inflated may belong to a guest "
            "that lost contact with the host.",
            any="The QEMU guest agent is not connected or did not answer a guest-ping within "
            "1 s while the balloon {balloon_use}: the guest's integration service is down or the "
            "guest itself does not answer, and a balloon left inflated may belong to a guest that "
            "lost contact with the host.",
        ),
        remedy=_t(
            vsphere="Inside the guest, start VMware Tools and keep it enabled (Linux: "
            "open-vm-tools, whose daemon is vmtoolsd; Windows: the VMware Tools service):\n"
            "$ systemctl enable --now open-vm-tools\n"
            "Not installed: install open-vm-tools from the guest's distribution (or VMware "
            "Tools from the vSphere Client, Guest OS > Install VMware Tools).",
            libvirt="Inside the guest, start the agent and keep it enabled:\n"
            "$ systemctl enable --now qemu-guest-agent\n"
            "If it runs, the guest itself may not answer (hung, out of memory); ask it from "
            "the host:\n"
            '$ virsh -c {instance} qemu-agent-command {vm_uuid} \'{{"execute":"guest-ping"}}\'',
            qmp_proxmox="Inside the guest, start the agent and keep it enabled:\n"
            "$ systemctl enable --now qemu-guest-agent\n"
            "The VM's config enables its channel (agent: 1); a VM given it while running has "
            "the channel only after a stop and a start. Ask the agent from the host:\n"
            "$ qm agent {vmid} ping",
            any="Inside the guest, start the agent and keep it enabled:\n"
            "$ systemctl enable --now qemu-guest-agent",
        ),
    ),
    Code(
        "guest_slow",
        "vm",
        "`guest_agent_latency_seconds` at or above its rule's warn",
        message=_t(
            any="The guest agent took {agent_latency} to answer a guest-ping, at or above the "
            "guest_agent_latency_seconds rule's {agent_limit}: the guest is slow "
            "to answer its host (starved of CPU, swapping, or its host overcommitted), and a "
            "slow guest is slow to give its balloon's pages too.",
        ),
        remedy=_t(
            libvirt="See what the guest waits on: inside it, `vmstat 1` (steal time, swap-in, "
            "blocked tasks); on the host, the domain's CPU and memory:\n"
            "$ virsh -c {instance} domstats {vm_uuid} --vcpu --balloon",
            any="See what the guest waits on: inside it, `vmstat 1` (steal time, swap-in, "
            "blocked tasks); on the host, its vCPUs' CPU time and the host's memory pressure.",
        ),
    ),
    # -- the host's side of reclaim: swap, pressure, KSM --
    Code(
        "host_swapping",
        "vm, host",
        "VM: its `host_swapped_bytes` grew between the last two polls (the host takes its "
        "memory by force); host: its swap-out rate > 0 (needs two polls: `--watch`)",
        rule="host_swapped_bytes_per_second",
        also=("host_swap_out_bytes_per_second",),
        message=_t(
            any="The host is swapping this VM's memory out: {swap_rate}/s between the last two "
            "polls, {host_swapped} swapped in all. Hypervisor-level swap is far slower for the "
            "guest than its own paging: the guest cannot choose which pages go.",
            host="{host} swaps out {host_swap_rate}/s ({host_swap_used} of {host_swap_total} "
            "swap in use): the host is short of memory and takes it from its VMs by force.",
        ),
        remedy=_t(
            libvirt="Let the balloon take the memory instead, so that the guest gives up the "
            "pages it can spare: lower the domain's memory by what the host swapped (at most "
            "by half):\n$ virsh -c {instance} setmem {vm_uuid} {relief_kib}K --live\n"
            "Else move VMs to a host with room, or add RAM.",
            qmp_proxmox="Let the balloon take the memory instead: lower the VM's balloon minimum, "
            "so that auto-ballooning takes memory back from the guest before the host swaps "
            "it:\n$ qm set {vmid} --balloon {relief_mib}\n"
            "Else move VMs to a host with room, or add RAM.",
            qmp="Let the balloon take the memory instead: through the VM's QMP socket {socket} "
            "(after qmp_capabilities) ask the guest for it:\n"
            '| {{"execute": "balloon", "arguments": {{"value": {relief_bytes}}}}}\n'
            "Else move VMs to a host with room, or add RAM.",
            vsphere="ESXi swaps this VM after ballooning and compression could not cover its "
            "host's demand: check that VMware Tools (the balloon driver) runs in the VM, move "
            "VMs (DRS, vMotion) or add memory.",
            any="Lower the VM's memory on the hypervisor so that its balloon gives the host the "
            "memory, move VMs off the host, or add RAM.",
            libvirt_host="The VMs whose memory it swaps are listed above: lower their memory "
            "(the balloon then takes it back without swap), move VMs to a host with room, or "
            "add RAM. The host's own figures:\n$ virsh -c {instance} nodememstats",
            host="The VMs whose memory it swaps are listed above: lower their balloon targets "
            "(or Proxmox balloon minimums), move VMs to a host with room, or add RAM.",
        ),
        needs_watch=("libvirt", "qmp", "vsphere"),
    ),
    Code(
        "memory_stall",
        "vm",
        "a VM's `host_memory_stall_ratio` or a guest's `guest_memory_stall_ratio` at or above "
        "its rule's warn (0.10 without a rule; needs two polls: `--watch`)",
        rule="host_memory_stall_ratio",
        also=("guest_memory_stall_ratio",),
        message=_t(
            guest="The guest spent {stall_pct} of the time between the last two polls waiting "
            "for memory (its own PSI, some), with the balloon holding {actual}: the balloon "
            "takes memory the guest needs.",
            any="The VM's QEMU spent {stall_pct} of the time between the last two polls waiting "
            "for host memory (PSI some of its cgroup): the host is reclaiming memory under it, "
            "and the guest runs slowly.",
        ),
        remedy=_t(
            guest="Give the guest memory back on the hypervisor (deflate its balloon) or lower "
            "its load; inside, see what holds the memory:\n$ free -m\n"
            "$ cat /proc/pressure/memory",
            libvirt="Free host memory: lower the memory of VMs that can give it (their balloons "
            "take it back), move VMs to a host with room, or add RAM; see the host's swap and "
            "KSM on its line below and:\n$ virsh -c {instance} nodememstats",
            any="Free host memory: lower the balloon targets of VMs that can give memory, move "
            "VMs to a host with room, or add RAM; the host's swap and KSM figures are on its "
            "line below.",
        ),
        needs_watch=("guest", "libvirt", "qmp"),
    ),
    Code(
        "ksm_unprofitable",
        "host",
        "host: `ksm_profit_bytes` < 0 (KSM's metadata costs more than its merging saves)",
        message=_t(
            any="KSM on {host} costs more than it saves: its profit is {ksm_profit} "
            "({ksm_saved} saved by merging): it keeps metadata for far more pages than it "
            "merges.",
        ),
        remedy=_t(
            any="Stop KSM and unmerge, which frees its metadata (more than the merged pages "
            "cost), or let a tuner run it only under memory pressure (ksmtuned, KSM_THRES_COEF "
            "in /etc/ksmtuned.conf):\n$ echo 2 > /sys/kernel/mm/ksm/run",
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
