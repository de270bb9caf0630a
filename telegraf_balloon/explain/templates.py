"""Filling a finding's message and remedy templates for one VM, host or source.

Prose takes the values as they are; a command line (`$ `) takes every value shell-quoted, or
is left out with a note when a value is missing or cannot be shown; text to paste (`| `) is
prose. The templates themselves are the findings table's (telegraf_balloon/findings.py).
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Sequence

from .. import catalog
from ..findings import BY_CODE
from ..model import Tags
from .report import Finding


class Context(dict):  # type: ignore[type-arg]
    """Template values; a figure a source did not give shows as '?' in prose (commands never
    get a guess: see command)."""

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
    "vmem_device": "virtio-mem device alias",
    "vmem_plugged_kib": "virtio-mem plugged size",
    "relief_kib": "memory size",
    "relief_mib": "memory size",
    "relief_bytes": "memory size",
}


def command(line: str, ctx: Context) -> str:
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


def render_template(template: str, ctx: Context) -> str:
    """Prose lines with the values as they are; `$ ` lines (commands) through command;
    `| ` lines are text to paste (XML, QMP), not commands."""
    return "\n".join(
        command(line, ctx) if line.startswith("$ ") else line.format_map(ctx)
        for line in template.split("\n")
    )


def pick(templates: dict[str, str], keys: Sequence[str]) -> str:
    for key in keys:
        if key in templates:
            return templates[key]
    return ""


def template_keys(kind: str, tags: Tags) -> tuple[str, ...]:
    """Template keys for a VM, most specific first: a QMP VM of Proxmox (it has a vmid) gets
    the `qm` commands; a guest its hypervisor's driver."""
    variant = "proxmox" if kind == catalog.QMP and "vmid" in tags else tags.get("hypervisor", "")
    return (f"{kind}:{variant}", kind, "*")


def make_finding(code_name: str, severity: str, ctx: Context, keys: Sequence[str]) -> Finding:
    """One finding of the table, its message and remedy rendered for the first of `keys`
    (e.g. "guest:vmware", "guest", "*") that has a template."""
    code = BY_CODE[code_name]
    return Finding(
        code_name,
        severity,
        render_template(pick(code.message, keys), ctx),
        render_template(pick(code.remedy, keys), ctx),
    )
