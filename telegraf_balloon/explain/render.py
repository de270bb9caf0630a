"""--explain's output: the text for people (80 columns, colour on a terminal) and the JSON
document for scripts, both from one Report."""

from __future__ import annotations

import json
import textwrap
from typing import Any, Optional

from .. import catalog
from ..findings import FINDINGS
from ..log import few
from ..model import Fields
from .figures import duration, percent, size
from .report import CRITICAL, OK, RANK, WARNING, Finding, Report, VmReport


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
                    "display_name": vm.display_name,
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
        ranked = sorted(vms_here, key=lambda v: (-RANK[v.verdict], v.guest))
        shown = [v for v in ranked if v.findings or show_all]
        waiting = sum(1 for v in vms_here if v.pending and not v.findings)
        healthy = len(vms_here) - sum(1 for v in vms_here if v.findings) - waiting
        if shown:
            rows = [
                (
                    [
                        v.label,
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
        out.line(printable(f"{vm.label} ({where}): ") + out.paint(vm.verdict.upper(), vm.verdict))
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
            names = sorted(printable(v.label) for v in vms)
            shown = few(names)
            need = f"needs --watch {duration(watch)} or longer"
            parts.append(f"{code.code} ({kind}: {shown}: {need})")
    return parts


def _finding(out: _Text, finding: Finding, indent: str) -> None:
    out.line(indent + out.paint(finding.severity, finding.severity) + f" {finding.code}")
    out.wrapped(finding.message, indent + "  ")
    out.wrapped("Do: " + finding.remedy, indent + "  ")
