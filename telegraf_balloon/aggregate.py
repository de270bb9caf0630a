"""balloon_host: per-hypervisor-host sums of the judged VM lines of one source poll.

One line per host per source poll that saw a VM there. A source that sees no VM on a host
writes no line for it: on a machine that two sources describe (libvirt and qmp, as the
all-sources example runs them), only the one with VMs speaks for it, so every sum over
`balloon_host` counts a machine once. Host-level figures (memory, ECC, the host's reclaim:
swap, KSM, zswap, pressure) ride on that line.
"""

from __future__ import annotations

from .model import Fields, HostInfo, Sample, Tags


class _Sums:
    """What one host's VMs add up to, so far in the poll."""

    __slots__ = (
        "ballooned",
        "blocked",
        "promised",
        "stale",
        "stuck",
        "swap_known",
        "swapped",
        "targets",
        "vmem_stuck",
        "vms",
        "vms_ballooned",
        "with_target",
    )

    def __init__(self) -> None:
        self.vms = self.promised = self.ballooned = self.targets = self.with_target = 0
        self.vms_ballooned = self.stuck = self.stale = self.blocked = self.vmem_stuck = 0
        self.swapped = self.swap_known = 0

    def add(self, fields: Fields) -> None:
        self.vms += 1
        self.promised += int(fields.get("memory_max_bytes", 0))
        actual = int(fields.get("balloon_actual_bytes", 0))
        self.ballooned += actual
        target = fields.get("balloon_target_bytes")
        if target is not None:
            self.targets += int(target)
            self.with_target += 1
        if actual:
            self.vms_ballooned += 1
        if fields.get("stuck") is True:
            self.stuck += 1
        if fields.get("stale") is True:
            self.stale += 1
        if fields.get("inflation_blocked") is True:
            self.blocked += 1
        if fields.get("vmem_stuck") is True:
            self.vmem_stuck += 1
        swapped = fields.get("host_swapped_bytes")
        if swapped is not None:
            self.swap_known += 1
            if swapped:
                self.swapped += 1


class HostSums:
    """The balloon_host lines of one source poll, summed one judged VM at a time (the
    Runner adds each VM as it writes its line, and drops it after)."""

    __slots__ = ("_by_host", "_hosts")

    def __init__(self, hosts: list[HostInfo]) -> None:
        self._hosts = hosts
        self._by_host: dict[str, _Sums] = {}

    def add(self, sample: Sample) -> None:
        """One VM's judged line (after the health stage: stuck/stale are those it says)."""
        if not self._hosts:
            return  # a source that describes no host (the guest source) gets no host line
        host = sample.tags.get("host", "")
        sums = self._by_host.get(host)
        if sums is None:
            sums = self._by_host[host] = _Sums()
        sums.add(sample.fields)

    def lines(self) -> list[tuple[Tags, Fields]]:
        """One (tags, fields) per host the source described and saw a VM on."""
        out: list[tuple[Tags, Fields]] = []
        for info in self._hosts:
            sums = self._by_host.get(info.tags.get("host", ""))
            if sums is None:
                continue
            out.append((dict(info.tags), _line(info, sums)))
        return out


def _line(info: HostInfo, sums: _Sums) -> Fields:
    result: Fields = {
        "vms_total": sums.vms,
        "vms_ballooned": sums.vms_ballooned,
        "vms_stuck": sums.stuck,
        "vms_stale": sums.stale,
        "vms_blocked": sums.blocked,
        "vms_vmem_stuck": sums.vmem_stuck,
        "memory_max_bytes": sums.promised,
        "balloon_actual_bytes": sums.ballooned,
    }
    if sums.with_target == sums.vms:
        result["balloon_target_bytes"] = sums.targets
    if info.partial:
        # Other VMs of the host are summed elsewhere (another agent's shard) or nowhere:
        # these sums add up with the others, a ratio of them to the host would not.
        result["partial"] = True
    if info.memory_bytes is not None:
        result["host_memory_bytes"] = info.memory_bytes
        if info.memory_bytes > 0 and not info.partial:
            result["overcommit_ratio"] = sums.promised / info.memory_bytes
            result["reclaimed_ratio"] = sums.ballooned / info.memory_bytes
    if info.free_bytes is not None:
        result["host_free_bytes"] = info.free_bytes
    if info.ecc_corrected_total is not None:
        result["ecc_corrected_total"] = info.ecc_corrected_total
    if info.ecc_uncorrected_total is not None:
        result["ecc_uncorrected_total"] = info.ecc_uncorrected_total
    if sums.swap_known:  # VMs whose memory the host swapped, where the source can see it
        result["vms_host_swapped"] = sums.swapped
    result.update(info.figures)
    return result


def host_lines(samples: list[Sample], hosts: list[HostInfo]) -> list[tuple[Tags, Fields]]:
    """One (tags, fields) per host the source described and saw a VM on; sums come from its
    VMs' lines.

    Run after the health stage, so stuck/stale flags are those on the VM lines.
    A source that describes no host (the guest source) gets no host line, and neither does a
    described host with no VM on it this poll.
    """
    sums = HostSums(hosts)
    for sample in samples:
        sums.add(sample)
    return sums.lines()
