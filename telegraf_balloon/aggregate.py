"""balloon_host: per-hypervisor-host sums of the judged VM lines of one source poll.

One line per host per source poll that saw a VM there. A source that sees no VM on a host
writes no line for it: on a machine that two sources describe (libvirt and qmp, as the
all-sources example runs them), only the one with VMs speaks for it, so every sum over
`balloon_host` counts a machine once. Host-level figures (memory, ECC, the host's reclaim:
swap, KSM, zswap, pressure) ride on that line.
"""

from __future__ import annotations

from .model import Fields, HostInfo, Sample, Tags


def host_lines(samples: list[Sample], hosts: list[HostInfo]) -> list[tuple[Tags, Fields]]:
    """One (tags, fields) per host the source described and saw a VM on; sums come from its
    VMs' lines.

    Run after the health stage, so stuck/stale flags are those on the VM lines.
    A source that describes no host (the guest source) gets no host line, and neither does a
    described host with no VM on it this poll.
    """
    if not hosts:
        return []
    by_host: dict[str, list[Fields]] = {}
    for sample in samples:
        by_host.setdefault(sample.tags.get("host", ""), []).append(sample.fields)
    out: list[tuple[Tags, Fields]] = []
    for info in hosts:
        vms = by_host.get(info.tags.get("host", ""))
        if not vms:
            continue
        promised = ballooned = targets = with_target = 0
        counts = {"vms_ballooned": 0, "vms_stuck": 0, "vms_stale": 0, "vms_blocked": 0}
        vmem_stuck = 0
        host_swapped = swap_known = 0
        for fields in vms:
            promised += int(fields.get("memory_max_bytes", 0))
            actual = int(fields.get("balloon_actual_bytes", 0))
            ballooned += actual
            target = fields.get("balloon_target_bytes")
            if target is not None:
                targets += int(target)
                with_target += 1
            if actual:
                counts["vms_ballooned"] += 1
            if fields.get("stuck") is True:
                counts["vms_stuck"] += 1
            if fields.get("stale") is True:
                counts["vms_stale"] += 1
            if fields.get("inflation_blocked") is True:
                counts["vms_blocked"] += 1
            if fields.get("vmem_stuck") is True:
                vmem_stuck += 1
            swapped = fields.get("host_swapped_bytes")
            if swapped is not None:
                swap_known += 1
                if swapped:
                    host_swapped += 1
        result: Fields = {"vms_total": len(vms), **counts}
        result["vms_vmem_stuck"] = vmem_stuck
        result["memory_max_bytes"] = promised
        result["balloon_actual_bytes"] = ballooned
        if with_target == len(vms):
            result["balloon_target_bytes"] = targets
        if info.partial:
            # Other VMs of the host are summed elsewhere (another agent's shard) or nowhere:
            # these sums add up with the others, a ratio of them to the host would not.
            result["partial"] = True
        if info.memory_bytes is not None:
            result["host_memory_bytes"] = info.memory_bytes
            if info.memory_bytes > 0 and not info.partial:
                result["overcommit_ratio"] = promised / info.memory_bytes
                result["reclaimed_ratio"] = ballooned / info.memory_bytes
        if info.free_bytes is not None:
            result["host_free_bytes"] = info.free_bytes
        if info.ecc_corrected_total is not None:
            result["ecc_corrected_total"] = info.ecc_corrected_total
        if info.ecc_uncorrected_total is not None:
            result["ecc_uncorrected_total"] = info.ecc_uncorrected_total
        if swap_known:  # VMs whose memory the host swapped, where the source can see it
            result["vms_host_swapped"] = host_swapped
        result.update(info.figures)
        out.append((dict(info.tags), result))
    return out
