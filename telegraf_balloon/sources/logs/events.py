"""Which lines are balloon troubleshooting events: the built-in ones and the configured ones,
each a regex matched on every line, counted once per line however often it matches."""

from __future__ import annotations

import re
from collections.abc import Sequence

# The strings operators grep for (hypervisor logs, guest kernel and VMware Tools logs).
BUILTIN_EVENTS: tuple[tuple[str, str], ...] = (
    ("balloon_extend_failed", re.escape("Failed to extend balloon")),
    ("host_pin_failed", re.escape("Insufficient host resources to pin memory")),
    ("vmmemctl_freeze", re.escape("vmmemctl: G_FREEZE")),
    ("vmmemctl_pin_failed", re.escape("vmmemctl: PIN_FAILED")),
    ("virtio_out_of_puff", re.escape("Out of puff!")),
    # One match per kill: since Linux 4.19 a kill also logs an "oom-kill:" line, which would
    # count it twice; "Kill process" is the wording of older kernels, "Memory cgroup out of
    # memory" that of a cgroup limit. Starting with a literal (not [Oo]) lets the regex engine
    # skip ahead by it: 15x faster on a file of log lines.
    ("oom_kill", r"ut of memory: Kill(?:ed)? process"),
    # virtio-mem's driver (drivers/virtio/virtio_mem.c): each size request it reads from the
    # device ("virtio_mem virtio0: requested size: 0x10000000", also once at probe), and the
    # error that stops it for good until the guest reboots.
    ("virtio_mem_requested", r"virtio_mem virtio\d+: requested size: "),
    ("virtio_mem_broken", re.escape("unknown error, marking device broken")),
)
Events = list[tuple[str, re.Pattern[str]]]


def compile_events(custom: Sequence[tuple[str, str]]) -> Events:
    """The built-in events, then the configured ones (name, regex), compiled.

    MULTILINE: `^` and `$` are a line's start and end (see matching_lines).
    """
    return [(name, re.compile(regex, re.M)) for name, regex in (*BUILTIN_EVENTS, *custom)]


def count_events(events: Events, data: bytes) -> list[tuple[str, int]]:
    """(event, lines matched) for each event that matches a line of `data` (whole lines)."""
    text = data.decode("utf-8", "replace")
    out = []
    for name, regex in events:
        count = matching_lines(regex, text)
        if count:
            out.append((name, count))
    return out


def matching_lines(regex: re.Pattern[str], text: str) -> int:
    """How many lines of `text` (each ending with a newline) `regex` matches.

    A line counts once however many matches it holds, and a match never spans a newline.
    The regex (compiled with re.MULTILINE: `^` and `$` are each line's start and end) scans
    the whole text, as fast as one search can; only a match that runs into the next line
    makes its line be searched again alone (`endpos` at its end, where `$` matches).
    """
    count = pos = 0
    end = len(text)
    search, find = regex.search, text.find
    while pos < end:
        found = search(text, pos)
        if found is None:
            break
        start = found.start()
        if start >= end:
            break  # an empty match after the last newline: no line there
        eol = find("\n", start)
        if eol < 0:
            eol = end
        if found.end() > eol:  # ran over the line's end: does the line match on its own?
            bol = text.rfind("\n", 0, start) + 1
            if search(text, bol, eol) is None:
                pos = eol + 1
                continue
        count += 1
        pos = eol + 1
    return count
