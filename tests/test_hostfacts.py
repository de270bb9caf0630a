"""Host facts read from a host's own files: meminfo and EDAC trees written as the kernel does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from telegraf_balloon.sources.hostfacts import (
    edac_counts,
    host_memory,
    local_host,
    process_rss,
    process_start,
)
from telegraf_balloon.sources.libvirt.uri import is_local

# The layout and format of drivers/edac/edac_mc_sysfs.c: one mcN per memory controller,
# ce_count and ue_count printed as "%u\n".


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_meminfo_total_and_free(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "proc/meminfo",
        "MemTotal:       24596040 kB\nMemFree:        22041612 kB\nMemAvailable:   1 kB\n",
    )
    assert host_memory(str(tmp_path)) == (24596040 * 1024, 22041612 * 1024)


@pytest.mark.parametrize(
    "text",
    ["", "MemTotal: lots kB\n", "MemTotal:\n", "\x00\xff garbage", "MemFree: -5 kB\n"],
)
def test_meminfo_malformed_gives_none(tmp_path: Path, text: str) -> None:
    _write(tmp_path, "proc/meminfo", text)
    assert host_memory(str(tmp_path))[0] is None


def test_meminfo_missing(tmp_path: Path) -> None:
    assert host_memory(str(tmp_path)) == (None, None)


def test_edac_sums_controllers(tmp_path: Path) -> None:
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ce_count", "3\n")
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ue_count", "0\n")
    _write(tmp_path, "sys/devices/system/edac/mc/mc1/ce_count", "4\n")
    _write(tmp_path, "sys/devices/system/edac/mc/mc1/ue_count", "2\n")
    assert edac_counts(str(tmp_path)) == (7, 2)


def test_edac_absent_and_unreadable(tmp_path: Path) -> None:
    assert edac_counts(str(tmp_path)) is None
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ce_count", "junk\n")
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ue_count", "")
    assert edac_counts(str(tmp_path)) is None


def test_edac_counters_move(tmp_path: Path) -> None:
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ce_count", "0\n")
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ue_count", "0\n")
    assert edac_counts(str(tmp_path)) == (0, 0)
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ue_count", "1\n")
    assert edac_counts(str(tmp_path)) == (0, 1)


def test_local_host_fills_info(tmp_path: Path) -> None:
    _write(tmp_path, "proc/meminfo", "MemTotal: 1024 kB\nMemFree: 512 kB\n")
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ce_count", "5\n")
    _write(tmp_path, "sys/devices/system/edac/mc/mc0/ue_count", "1\n")
    info = local_host({"host": "h"}, str(tmp_path))
    assert (info.memory_bytes, info.free_bytes) == (1024 * 1024, 512 * 1024)
    assert (info.ecc_corrected_total, info.ecc_uncorrected_total) == (5, 1)


def test_this_machine_meminfo_is_read() -> None:
    total, free = host_memory("/")
    assert total is not None and free is not None
    assert 0 < free <= total
    assert total == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_process_facts_of_this_process() -> None:
    """The start time (field 22 of /proc/<pid>/stat) and resident memory of a live process."""
    pid = os.getpid()
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    assert process_start(pid, "/") == int(stat[stat.rfind(b")") + 2 :].split()[19]) > 0
    rss = process_rss(pid, "/")
    assert rss is not None and rss % 1024 == 0 and rss > 1 << 20


def test_process_facts_are_read_under_the_root(tmp_path: Path) -> None:
    """A process seen through another root (the host's /proc mounted elsewhere): its own
    files there, each copied from this process's and then changed, are the ones read."""
    pid = os.getpid()
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    head, _, rest = stat.rpartition(b") ")
    fields = rest.split(b" ")
    fields[19] = b"987654321"  # another start time: another process
    _write(tmp_path, f"proc/{pid}/stat", (head + b") " + b" ".join(fields)).decode())
    status = Path(f"/proc/{pid}/status").read_text()
    lines = ["VmRSS:\t  123456 kB" if s.startswith("VmRSS:") else s for s in status.split("\n")]
    _write(tmp_path, f"proc/{pid}/status", "\n".join(lines))
    assert process_start(pid, str(tmp_path)) == 987654321
    assert process_rss(pid, str(tmp_path)) == 123456 * 1024
    assert process_start(pid + 1, str(tmp_path)) == 0  # not under this root: unknown
    assert process_rss(pid + 1, str(tmp_path)) is None


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu+unix:///system?socket=/run/x/libvirt-sock", True),
        ("xen:///system", True),
        ("qemu+ssh://root@kvm1/system", False),
        ("qemu+tls://kvm1.example.com/system", False),
        ("test:///default", False),
        ("test+unix:///node.xml?socket=/s", False),
    ],
)
def test_local_uri(uri: str, local: bool) -> None:
    assert is_local(uri) is local
