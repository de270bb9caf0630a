"""What --explain hands to its renderers: findings, and the judged VMs, hosts and sources
that carry them, with the verdict and exit code they add up to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..model import Fields, Tags

OK, WARNING, CRITICAL = "ok", "warning", "critical"
RANK = {OK: 0, WARNING: 1, CRITICAL: 2}


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
        if RANK[finding.severity] > RANK[worst]:
            worst = finding.severity
    return worst


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

    @property
    def display_name(self) -> Optional[str]:
        """The name people know the VM by, where its context tags give one other than the
        domain name: OpenStack's instance name, KubeVirt's namespace/vm."""
        name = self.tags.get("instance_name")
        if name is None and "namespace" in self.tags and "vm" in self.tags:
            name = f"{self.tags['namespace']}/{self.tags['vm']}"
        return name if name and name != self.guest else None

    @property
    def label(self) -> str:
        """The domain name, with the display name beside it where there is one."""
        shown = self.display_name
        return self.guest if shown is None else f"{self.guest} ({shown})"


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
