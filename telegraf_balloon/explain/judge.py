"""The judge: the findings of one poll (or the last poll of a watch), from the judged fields
the Runner's health stage left on the samples and its rule state, never a second set of
rules. Which finding a sample raises is decided here, step by step as the troubleshooting
procedure goes; what a finding is (scope, severity rule, texts) is the findings table's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from .. import catalog
from ..config import Config
from ..findings import BY_CODE, FINDINGS
from ..health import RuleState
from ..model import Fields, Sample, Tags
from ..runner import Batch, Runner, SourceBatch
from ..sources.kvm import driver_grace, driver_verdict
from .figures import MIB, duration, latency, percent, size
from .report import (
    CRITICAL,
    RANK,
    WARNING,
    Finding,
    HostReport,
    Pending,
    Report,
    SourceReport,
    VmReport,
)
from .templates import Context, make_finding, template_keys

WATCH_INTERVAL = 2.0  # seconds between polls under --watch
DEFAULT_BALLOON_WARN = 0.20  # a balloon above 20% of its VM, where no balloon_ratio rule says
DEFAULT_RECLAIMED_WARN = 0.20
DEFAULT_STALL_WARN = 0.10  # a tenth of the time waiting for memory, where no rule says
HOST_FREE_RATIO = 0.5  # "host RAM usage is low": more than half of it free
_SEVERITY = {1: WARNING, 2: CRITICAL}  # a rule's raw level -> the severity it gives


def _number(fields: Fields, name: str) -> Optional[float]:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# fields shown in messages as sizes for people, and their template names: a VM's, a host's
_SIZES = (
    ("memory_max_bytes", "max"),
    ("balloon_actual_bytes", "actual"),
    ("balloon_target_bytes", "target"),
    ("balloon_gap_bytes", "gap"),
    ("reservation_bytes", "reservation"),
    ("host_swapped_bytes", "host_swapped"),
)
_HOST_SIZES = (
    ("host_swap_out_bytes_per_second", "host_swap_rate"),
    ("host_swap_used_bytes", "host_swap_used"),
    ("host_swap_total_bytes", "host_swap_total"),
    ("ksm_saved_bytes", "ksm_saved"),
    ("ksm_profit_bytes", "ksm_profit"),
)


def _put_sizes(ctx: Context, fields: Fields, names: tuple[tuple[str, str], ...]) -> None:
    """Each of the `names` (field, template name) the line carries, as a size for people."""
    for name, short in names:
        value = fields.get(name)
        if value is not None:
            ctx[short] = size(value)


def severity(code_name: str, rules: list[RuleState]) -> str:
    """A finding's severity, as the table says: the level its rule (the code's `rule`, a
    [[thresholds]] field) reaches now; warning without a rule or below the rule's warn."""
    fields = BY_CODE[code_name].rules
    raw = max((r.raw for r in rules if r.field in fields), default=0)
    return _SEVERITY.get(raw, WARNING)


def _vm_report(
    part: SourceBatch,
    sample: Sample,
    found: list[Finding],
    pending: Optional[list[Pending]] = None,
    not_a_vm: bool = False,
) -> VmReport:
    """The report of one VM of `part`: its line as polled, and what was found of it."""
    tags = sample.tags
    return VmReport(
        part.kind,
        part.instance,
        tags.get("host", ""),
        dict(tags),
        dict(sample.fields),
        found,
        guest=tags.get("guest", ""),
        pending=[] if pending is None else pending,
        not_a_vm=not_a_vm,
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
            findings.append(make_finding("source_down", WARNING, ctx, (part.kind, "*")))
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
    def _source_context(part: SourceBatch) -> Context:
        ctx = Context(kind=part.kind, instance=part.instance, error=part.error or "no answer")
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
            elif code.watch_per_vm:
                continue  # judged per VM, against that VM's own stats period
            elif watched <= 0 and code.needs_watch_for(report.source):
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
            return _vm_report(part, sample, [], not_a_vm=True)
        health = self.runner.health
        rules = health.vm_rules_now(part.key, sample.key, now)
        ctx = self._vm_context(part, sample, now, watched)
        keys = template_keys(kind, tags)
        found: list[Finding] = []
        pending: list[Pending] = []

        def add(code_name: str) -> None:
            found.append(make_finding(code_name, severity(code_name, rules), ctx, keys))

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

        # Step 1b: the guest's integration service (VMware Tools, the QEMU guest agent).
        for code_name in self._integration(fields, rules, ctx):
            add(code_name)

        # Step 2: are the stats flowing?
        if fields.get("stats_disabled") is True:
            add("stats_disabled")
        elif fields.get("stale") is True:
            add("stale")

        # Step 3: is the balloon reaching its target?
        if fields.get("stuck") is True:
            add("stuck")
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

        # Step 3b: is virtio-mem reaching its requested size?
        self._vmem(part, sample, ctx, now, add)

        # Step 4: how much does the balloon hold?
        ratio_rules = [r for r in rules if r.field == "balloon_ratio"]
        raw = max((r.raw for r in ratio_rules), default=0)
        if raw:
            self._for_context(ratio_rules, raw, ctx)
            add("balloon_high")
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
                add("swapping")
            oom = _number(fields, "oom_kills_total")
            if first.oom_kills is not None and oom is not None and oom > first.oom_kills:
                ctx["oom_new"] = f"{oom - first.oom_kills:.0f}"
                add("oom_kills")
        if large and fields.get("swap_total_bytes") == 0:
            add("no_swap_under_balloon")
        if large and fields.get("thp_mode") == "always":
            add("thp_always_under_balloon")

        # Step 6: the host's side: does it take memory by force, does the VM wait for memory?
        self._host_reclaim(fields, rules, ctx, add)

        # A large balloon on a host with plenty free: the guest may have lost contact with the host.
        host = hosts_by_name.get(tags.get("host", ""))
        if large and host is not None:
            free = _number(host, "host_free_bytes")
            memory = _number(host, "host_memory_bytes")
            if free is not None and memory and free / memory > HOST_FREE_RATIO:
                ctx["host_free"] = size(free)
                ctx["host_memory"] = size(memory)
                add("balloon_without_pressure")

        found.sort(key=lambda f: -RANK[f.severity])
        return _vm_report(part, sample, found, pending=pending)

    @staticmethod
    def _integration(fields: Fields, rules: list[RuleState], ctx: Context) -> list[str]:
        """integration_service_down: Tools not running (or not installed), or the agent not
        connected or not answering, while the balloon holds memory or is asked to; guest_slow:
        the agent's answer at or above the guest_agent_latency_seconds rule's warn."""
        found: list[str] = []
        actual = _number(fields, "balloon_actual_bytes") or 0.0
        target = _number(fields, "balloon_target_bytes") or 0.0
        if actual > 0 or target > 0:
            if actual > 0:
                held = f" of a {size(target)} target" if target > 0 else ""
                ctx["balloon_use"] = f"holds {size(actual)}{held}"
            else:
                ctx["balloon_use"] = f"is asked to hold {size(target)}"
            status = fields.get("tools_status")
            if status == "not_installed":
                ctx["tools_state"] = "not installed"
            elif fields.get("tools_running") is False:
                ctx["tools_state"] = "not running" + (
                    f" (version status {status})" if isinstance(status, str) else ""
                )
            if "tools_state" in ctx or fields.get("guest_agent_connected") is False:
                found.append("integration_service_down")
        ruled = [r for r in rules if r.field == "guest_agent_latency_seconds"]
        raw = max((r.raw for r in ruled), default=0)
        took = _number(fields, "guest_agent_latency_seconds")
        if raw and took is not None:
            rule = next(r for r in ruled if r.raw >= raw)
            limit = rule.crit if raw == 2 else rule.warn
            ctx["agent_latency"] = latency(took)
            ctx["agent_limit"] = f"{'crit' if raw == 2 else 'warn'} ({latency(limit)})"
            found.append("guest_slow")
        return found

    def _vm_context(self, part: SourceBatch, sample: Sample, now: float, watched: float) -> Context:
        fields, tags = sample.fields, sample.tags
        guest = tags.get("guest", sample.key)
        ctx = Context(
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
        _put_sizes(ctx, fields, _SIZES)
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
        current = _number(fields, "memory_current_bytes")
        if current is not None and current > 0:
            # What the balloon should take back when the host swaps the VM: what the host
            # took by force, at most half of what the guest has at once.
            swapped = _number(fields, "host_swapped_bytes") or 0.0
            relief = max(current - swapped, current / 2)
            ctx["relief_bytes"] = f"{relief:.0f}"
            ctx["relief_kib"] = f"{relief / 1024:.0f}"
            ctx["relief_mib"] = f"{relief / MIB:.0f}"
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
        self._vmem_context(sample, ctx)
        return ctx

    def _vmem(
        self,
        part: SourceBatch,
        sample: Sample,
        ctx: Context,
        now: float,
        add: Callable[[str], None],
    ) -> None:
        """virtio-mem off its request (host side), or unused by the guest (guest side)."""
        fields = sample.fields
        if part.kind == catalog.GUEST:
            offline = _number(fields, "vmem_offline_bytes") or 0.0
            if fields.get("vmem_driver_loaded") is False:
                ctx["vmem_unused_why"] = (
                    "This guest has a virtio-mem device but no virtio_mem driver bound to it: "
                    "the host can plug nothing into it, and its requested size is never met."
                )
                add("vmem_unused")
            elif offline > 0:
                ctx["vmem_unused_why"] = (
                    f"{size(offline)} of the memory virtio-mem added to this guest is offline: "
                    "the host counts it as plugged, the guest cannot use it (hot-plugged "
                    "memory is not onlined here: no memhp_default_state, no udev rule)."
                )
                add("vmem_unused")
            return
        gap = _number(fields, "vmem_gap_bytes")
        block = _number(fields, "vmem_block_bytes") or 0.0
        if gap is None or abs(gap) <= block:
            return
        held = self.runner.health.vmem_stuck_held(part.key, sample.key, now)
        ctx["vmem_held"] = duration(held)
        if fields.get("vmem_stuck") is True:
            add("vmem_stuck")
            return
        stuck_for = self.config.health.stuck_for
        if self.watching:
            ctx["stuck_note"] = f"it has held {duration(held)} of stuck_for ({duration(stuck_for)})"
        else:
            ctx["stuck_note"] = (
                "one poll cannot tell whether it is stuck or still moving: that needs the gap "
                f"to hold for stuck_for ({duration(stuck_for)}); --watch {duration(stuck_for)} "
                "judges it"
            )
        add("vmem_short_of_target")

    @staticmethod
    def _vmem_context(sample: Sample, ctx: Context) -> None:
        """The virtio-mem figures and the words for its direction, where it has a request."""
        fields = sample.fields
        plugged = _number(fields, "vmem_plugged_bytes")
        gap = _number(fields, "vmem_gap_bytes")
        if plugged is None or gap is None:
            return
        block = _number(fields, "vmem_block_bytes") or 0.0
        ctx["vmem_plugged"] = size(plugged)
        ctx["vmem_requested"] = size(fields.get("vmem_requested_bytes"))
        ctx["vmem_gap"] = size(abs(gap))
        ctx["vmem_block"] = size(block) if block else "unknown"
        detail = sample.detail
        device = detail.vmem_device if detail is not None else ""
        # The size to ask of that one device: what it has plugged (the VM's sum when unknown).
        own = detail.vmem_device_plugged if detail is not None else None
        ask = float(own) if own is not None else plugged
        ctx["vmem_plugged_kib"] = f"{ask / 1024:.0f}"
        ctx["vmem_plugged_bytes"] = f"{ask:.0f}"
        if device:
            ctx["vmem_device"] = device
        ctx["vmem_path"] = json.dumps(
            f"/machine/peripheral/{device}"
            if device
            else "(no id: find the virtio-mem-pci device with qom-list /machine/peripheral-anon)"
        )
        if gap > 0:
            ctx["vmem_direction"] = "above the request"
            ctx["vmem_why"] = (
                "the guest cannot unplug that memory (in use, or not in a movable zone), and "
                "its driver retries in the background, silently, for as long as it differs"
            )
            ctx["vmem_advice"] = (
                "The guest holds memory it cannot give back. Free memory in the guest, or "
                "stop asking for it."
            )
        else:
            ctx["vmem_direction"] = "short of it"
            ctx["vmem_why"] = (
                "the guest has not taken the memory: the VM is paused, its virtio_mem driver "
                "is not loaded, or it cannot add memory (blocks left offline, too much offline "
                "already)"
            )
            ctx["vmem_advice"] = (
                "The guest did not plug what was asked. Check that the VM runs and that the "
                "guest has the virtio_mem driver; or ask for less."
            )

    def _host_reclaim(
        self, fields: Fields, rules: list[RuleState], ctx: Context, add: Callable[[str], None]
    ) -> None:
        """host_swapping and memory_stall of one VM, from the rates the health stage judged
        between its last two polls (absent after one poll: nothing is raised then)."""
        growth = _number(fields, "host_swapped_bytes_per_second")
        if growth is not None and growth > 0:
            ctx["swap_rate"] = size(growth)
            add("host_swapping")
        for name in ("host_memory_stall_ratio", "guest_memory_stall_ratio"):
            stall = _number(fields, name)
            if stall is None:
                continue
            warn = self._warn([r for r in rules if r.field == name], DEFAULT_STALL_WARN)
            if stall >= warn:
                ctx["stall_pct"] = percent(stall)
                add("memory_stall")
                break

    @staticmethod
    def _blacklist_context(sample: Sample, ctx: Context) -> None:
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
    def _warn(rules: list[RuleState], default: float) -> float:
        limits = [r.warn if r.warn is not None else r.crit for r in rules]
        values = [v for v in limits if v is not None]
        return min(values) if values else default

    def _for_context(self, rules: list[RuleState], raw: int, ctx: Context) -> None:
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
    def _host_context(part: SourceBatch, tags: Tags, fields: Fields) -> Context:
        ctx = Context(
            kind=part.kind,
            instance=part.instance,
            host=tags.get("host", ""),
            promised=size(fields.get("memory_max_bytes")),
            physical=size(fields.get("host_memory_bytes")),
            reclaimed=size(fields.get("balloon_actual_bytes")),
            reclaimed_pct=percent(fields.get("reclaimed_ratio")),
            for_note="",
        )
        _put_sizes(ctx, fields, _HOST_SIZES)
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

        # a host's own templates first ("libvirt:host", "host"): a code about VMs and hosts
        # both (host_swapping) keeps its VM templates under the kind alone
        keys = (f"{part.kind}:host", "host", part.kind, "*")

        def add(code_name: str) -> None:
            found.append(make_finding(code_name, severity(code_name, rules), ctx, keys))

        if overcommit is not None and overcommit > 1:
            add("host_overcommitted")
        swap_out = _number(fields, "host_swap_out_bytes_per_second")
        if swap_out is not None and swap_out > 0:
            add("host_swapping")
        profit = _number(fields, "ksm_profit_bytes")
        if profit is not None and profit < 0:
            add("ksm_unprofitable")
        reclaimed = _number(fields, "reclaimed_ratio")
        ratio_rules = [r for r in rules if r.field == "reclaimed_ratio"]
        warn = self._warn(ratio_rules, DEFAULT_RECLAIMED_WARN)
        if reclaimed is not None and reclaimed >= warn:
            ctx["limit_pct"] = percent(warn)
            raw = max((r.raw for r in ratio_rules), default=0)
            if ratio_rules and raw:
                self._for_context(ratio_rules, raw, ctx)
                ctx["for_note"] = "; " + ctx["for_note"]
            add("host_reclaiming")
        found.sort(key=lambda f: -RANK[f.severity])
        return HostReport(part.kind, part.instance, name, dict(tags), dict(fields), found)
