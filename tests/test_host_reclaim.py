"""The host's side of reclaim read from host trees: each VM's QEMU and its cgroups, the host's
swap, KSM, zswap and pressure, and the libvirt source putting them on its lines.

The trees here are CONSTRUCTED, written as the kernel lays its files out, for what this
machine's kernel cannot show: a cgroup v2 memory controller (memory.swap.current, zswapped;
the machine has its memory controller on v1), libvirt's threaded groups on v2, a kernel
without KSM or PSI. The real machine's files are read in tests/integration/test_host_reclaim.py
(real host swap, KSM and pressure), and by the tests at the end of this module that read /.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest

from telegraf_balloon.aggregate import host_lines
from telegraf_balloon.config import GuestConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import HostInfo, Sample
from telegraf_balloon.sources.guest.source import GuestSource
from telegraf_balloon.sources.hostfacts import (
    PAGE_SIZE,
    SWAP_STATUS,
    SWAP_V1_TOTAL,
    SWAP_V2,
    CgroupMounts,
    HostReclaim,
    QemuProcess,
    find_qemu,
    process_groups,
    psi_totals,
)

MIB = 1024 * 1024
UUID = "9b80c8bf-8be2-4fe2-889f-f8d3e0c0b06d"
QEMU = 4242
# libvirt's scope name, escaped by systemd: the backslashes are in the directory's name
SCOPE = "/machine.slice/machine-qemu\\x2d1\\x2dweb\\x2d01.scope"
PRESSURE = (
    "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\n"
    "full avg10=0.50 avg60=0.20 avg300=0.05 total=1250000\n"
)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def process(
    root: Path,
    pid: int,
    groups: str,
    *,
    comm: str = "qemu-system-x86",
    parent: int = 1,
    uuid: str = UUID,
    swap_kib: int = 2048,
) -> None:
    """/proc/<pid> of a process: stat (its parent, its start time), cgroup, status, comm,
    cmdline (QEMU's, with -uuid) and ksm_merging_pages."""
    stat = f"{pid} ({comm}) S {parent} " + " ".join(["0"] * 17) + f" {1000 + pid} 0 0\n"
    write(root, f"proc/{pid}/stat", stat)
    write(root, f"proc/{pid}/cgroup", groups)
    write(root, f"proc/{pid}/comm", comm + "\n")
    write(
        root,
        f"proc/{pid}/status",
        f"Name:\t{comm}\nVmRSS:\t  524288 kB\nVmSwap:\t  {swap_kib} kB\n",
    )
    cmdline = f"/usr/bin/qemu-system-x86_64\0-name\0guest=web-01\0-uuid\0{uuid}\0-S\0"
    write(root, f"proc/{pid}/cmdline", cmdline if comm.startswith("qemu") else f"/bin/{comm}\0")
    write(root, f"proc/{pid}/ksm_merging_pages", "300\n")


def host_files(root: Path, *, swap_used_kib: int = 4096, zswapped_kib: int = 1024) -> None:
    """The host's own files: meminfo with swap and zswap, vmstat, KSM, PSI, our own groups."""
    total = 1048576
    write(
        root,
        "proc/meminfo",
        f"MemTotal:       65536000 kB\nMemFree:        32768000 kB\n"
        f"SwapTotal:      {total} kB\nSwapFree:       {total - swap_used_kib} kB\n"
        f"Zswap:              512 kB\nZswapped:       {zswapped_kib} kB\n",
    )
    write(root, "proc/vmstat", "nr_free_pages 1\npswpin 10\npswpout 30\npgfault 99\n")
    write(root, "sys/kernel/mm/ksm/pages_sharing", "1000\n")
    write(root, "sys/kernel/mm/ksm/ksm_zero_pages", "24\n")
    write(root, "sys/kernel/mm/ksm/general_profit", "-8192\n")
    write(root, "proc/pressure/memory", PRESSURE)
    write(root, "proc/self/ksm_merging_pages", "0\n")
    write(root, "proc/self/cgroup", "0::/system.slice/telegraf.service\n")


def pure_v2(root: Path) -> Path:
    """CONSTRUCTED: a systemd host on cgroup v2 with the memory controller, a libvirt domain
    whose QEMU sits in `<scope>/libvirt/emulator` (threaded; memory is accounted at the
    threaded domain `<scope>/libvirt`)."""
    host_files(root)
    write(root, "proc/1/mountinfo", "25 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids\n")
    vm = f"sys/fs/cgroup{SCOPE}/libvirt"
    write(root, f"{vm}/cgroup.type", "domain threaded\n")
    write(root, f"{vm}/cgroup.procs", f"{QEMU}\n")
    write(root, f"{vm}/memory.swap.current", f"{3 * MIB}\n")
    write(
        root, f"{vm}/memory.stat", f"anon 1\nfile 2\nzswap 4096\nzswapped {2 * MIB}\nswapcached 0\n"
    )
    write(root, f"{vm}/memory.pressure", PRESSURE)
    write(root, f"{vm}/emulator/cgroup.type", "threaded\n")
    process(root, QEMU, f"0::{SCOPE}/libvirt/emulator\n")
    return root


def hybrid(root: Path, group: str = "/tb-vm", members: str = f"{QEMU}\n") -> Path:
    """CONSTRUCTED after this machine: v1 controllers (memory with swap accounting) beside a
    v2 hierarchy at /sys/fs/cgroup/unified with no controllers."""
    host_files(root)
    write(
        root,
        "proc/1/mountinfo",
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    )
    write(root, "sys/fs/cgroup/unified/cgroup.controllers", "\n")
    write(root, "sys/fs/cgroup/memory/memory.memsw.usage_in_bytes", "0\n")
    write(root, f"sys/fs/cgroup/memory{group}/cgroup.procs", members)
    write(root, f"sys/fs/cgroup/memory{group}/memory.stat", "cache 0\nswap 4096\ntotal_swap 8192\n")
    write(root, f"sys/fs/cgroup/unified{group}/cgroup.procs", members)
    write(root, f"sys/fs/cgroup/unified{group}/memory.pressure", PRESSURE)
    process(root, QEMU, f"4:memory:{group}\n0::{group}\n")
    return root


def reclaim(root: Path) -> HostReclaim:
    host = HostReclaim(str(root))
    host.ksm_readable = True  # the tree's files are ours: no ptrace rights involved
    return host


def read(proc: QemuProcess, host: HostReclaim, rss: bool = False) -> dict[str, Any]:
    host.host_figures()
    fields: dict[str, Any] = {}
    proc.read(fields, host, rss=rss)
    return fields


# --- one QEMU, resolved once -------------------------------------------------------------------


def test_pure_v2_libvirt_domain_reads_its_threaded_domain_group(tmp_path: Path) -> None:
    root = pure_v2(tmp_path)
    host = reclaim(root)
    proc = host.process(QEMU)
    assert proc is not None and proc.shared is None
    assert (proc.pid, proc.start) == (QEMU, 1000 + QEMU)
    assert proc.groups[""].endswith(f"{SCOPE}/libvirt")  # the name as read, never rebuilt
    assert proc.swap_kind == SWAP_V2
    assert read(proc, host, rss=True) == {
        "rss_bytes": 524288 * 1024,
        "host_swapped_bytes": 3 * MIB,  # memory.swap.current, not VmSwap's 2 MiB
        "compressed_bytes": 2 * MIB,  # zswapped: the pages' own size, not the pool's
        "shared_bytes": 300 * PAGE_SIZE,
        "host_memory_stall_seconds_total": 2.5,
        "host_memory_stall_full_seconds_total": 1.25,
    }
    assert host.missing() == []


def test_hybrid_host_reads_v1_swap_and_v2_pressure(tmp_path: Path) -> None:
    root = hybrid(tmp_path)
    host = reclaim(root)
    proc = host.process(QEMU)
    assert proc is not None and proc.shared is None
    assert proc.swap_kind == SWAP_V1_TOTAL
    fields = read(proc, host)
    assert fields["host_swapped_bytes"] == 8192  # total_swap: the group with its children
    assert fields["host_memory_stall_seconds_total"] == 2.5  # v2 group without controllers
    assert "compressed_bytes" not in fields  # no v2 memory controller: no zswapped per VM
    assert host.missing() == [
        "compressed_bytes (no cgroup v2 memory controller: no zswapped per VM)"
    ]


def test_a_host_with_nothing_in_swap_reads_no_vm_file(tmp_path: Path) -> None:
    """SwapFree = SwapTotal, Zswapped 0 and no page merged by KSM: every VM has 0 there,
    without its files."""
    root = pure_v2(tmp_path)
    host_files(root, swap_used_kib=0, zswapped_kib=0)
    for name in ("pages_sharing", "pages_shared", "ksm_zero_pages"):
        write(root, f"sys/kernel/mm/ksm/{name}", "0\n")
    host = reclaim(root)
    proc = host.process(QEMU)
    assert proc is not None and proc.zswap_path is not None and proc.ksm_path is not None
    for path in (proc.swap_path, proc.zswap_path, proc.ksm_path):
        os.unlink(path)  # were one read, its field would be missing
    fields = read(proc, host)
    assert (fields["host_swapped_bytes"], fields["compressed_bytes"]) == (0, 0)
    assert fields["shared_bytes"] == 0
    host_files(root, swap_used_kib=4)  # the host swaps and merges again: the files are read
    write(root, "sys/kernel/mm/ksm/pages_shared", "1\n")
    assert not {"host_swapped_bytes", "shared_bytes"} & set(read(proc, host))


@pytest.mark.parametrize(
    ("case", "members", "groups_of_self"),
    [
        ("the plugin's own group", f"{QEMU}\n", "4:memory:/tb-vm\n0::/tb-vm\n"),
        ("another VM's QEMU", f"{QEMU}\n4343\n", ""),
        ("the libvirt daemon", f"{QEMU}\n4000\n", ""),
        ("the QEMU's parent", f"{QEMU}\n4001\n", ""),
    ],
)
def test_a_group_the_qemu_shares_is_not_its_own(
    tmp_path: Path, case: str, members: str, groups_of_self: str
) -> None:
    """A QEMU left in its starter's group (no cgroup management, plain QEMU from a shell):
    that group's figures are not the VM's. Its swap comes from VmSwap, and no group figure."""
    root = hybrid(tmp_path, members=members)
    if groups_of_self:
        write(root, "proc/self/cgroup", groups_of_self)
    process(root, 4343, "0::/tb-vm\n", uuid="other")
    process(root, 4000, "0::/tb-vm\n", comm="libvirtd")
    process(root, 4001, "0::/tb-vm\n", comm="bash")
    process(root, QEMU, "4:memory:/tb-vm\n0::/tb-vm\n", parent=4001)
    host = reclaim(root)
    proc = host.process(QEMU)
    assert proc is not None, case
    assert proc.shared == "/tb-vm", case
    assert proc.swap_kind == SWAP_STATUS and proc.pressure_path is None, case
    fields = read(proc, host)
    assert fields["host_swapped_bytes"] == 2048 * 1024, case  # VmSwap
    assert "host_memory_stall_seconds_total" not in fields, case
    assert "VmSwap" in host.shared_note(proc) and "stall" in host.shared_note(proc)


def test_a_helper_of_the_vm_in_its_group_keeps_it_its_own(tmp_path: Path) -> None:
    """swtpm or virtiofsd started for the VM share its scope: still the VM's group."""
    root = hybrid(tmp_path, members=f"{QEMU}\n4500\n")
    process(root, 4500, "0::/tb-vm\n", comm="swtpm")
    proc = reclaim(root).process(QEMU)
    assert proc is not None and proc.shared is None and proc.swap_kind == SWAP_V1_TOTAL


def test_the_root_group_is_no_vm_s_own(tmp_path: Path) -> None:
    root = hybrid(tmp_path)
    process(root, QEMU, "4:memory:/\n0::/\n")
    proc = reclaim(root).process(QEMU)
    assert proc is not None and proc.shared == "/" and proc.swap_kind == SWAP_STATUS


def test_a_process_that_is_gone_resolves_to_nothing(tmp_path: Path) -> None:
    host = reclaim(pure_v2(tmp_path))
    assert host.process(99999) is None and host.process(0) is None


def test_a_group_a_mount_does_not_show_is_not_read(tmp_path: Path) -> None:
    """A cgroup namespace's mount shows a subtree: groups outside it (or above it) are not
    under the mount point, and those inside are found below it."""
    write(tmp_path, "proc/1/mountinfo", "9 1 0:5 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 c rw\n")
    mounts = CgroupMounts(str(tmp_path))
    base = str(tmp_path / "sys/fs/cgroup")
    assert mounts.directory("", "/kubepods/pod1/vm") == base + "/vm"
    assert mounts.directory("", "/kubepods/pod1") == base
    assert mounts.directory("", "/system.slice/x") is None
    assert mounts.directory("", "/kubepods/pod1/../../x") is None
    assert mounts.directory("memory", "/x") is None  # no v1 memory mount


def test_mountinfo_escapes_and_cgroup_lines(tmp_path: Path) -> None:
    write(
        tmp_path, "proc/1/mountinfo", "9 1 0:5 / /sys/fs/cg\\040roup rw shared:1 - cgroup2 c rw\n"
    )
    assert CgroupMounts(str(tmp_path)).mounts[""][0] == str(tmp_path / "sys/fs/cg roup")
    write(tmp_path, "proc/7/cgroup", "12:cpu,cpuacct:/a\n4:memory:/b\n0::/c\ngarbage\n")
    assert process_groups(7, str(tmp_path)) == {
        "cpu": "/a",
        "cpuacct": "/a",
        "memory": "/b",
        "": "/c",
    }


# --- finding a libvirt domain's QEMU ---------------------------------------------------------


def test_a_pid_file_is_checked_against_the_uuid(tmp_path: Path) -> None:
    process(tmp_path, QEMU, "0::/\n")
    process(tmp_path, 5000, "0::/\n", uuid="0d0c3f4e-0000-4000-8000-000000000001")
    write(tmp_path, "run/libvirt/qemu/web-01.pid", f"{QEMU}\n")
    write(tmp_path, "run/libvirt/qemu/stale.pid", "5000\n")  # now another VM's pid
    pidfiles = {"a": ["run/libvirt/qemu/web-01.pid"], "b": ["run/libvirt/qemu/stale.pid"]}
    wanted = {"a": UUID, "b": UUID.upper().replace("9B80", "9b80")}  # case does not matter
    assert find_qemu(wanted, str(tmp_path), pidfiles) == {"a": QEMU, "b": QEMU}


def test_domains_without_pid_files_cost_one_pass_over_proc(tmp_path: Path) -> None:
    other = "0d0c3f4e-0000-4000-8000-000000000001"
    process(tmp_path, QEMU, "0::/\n")
    process(tmp_path, 5000, "0::/\n", uuid=other)
    process(tmp_path, 6000, "0::/\n", comm="bash")
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    found = find_qemu({"a": UUID, "b": other, "c": "not-running"}, str(tmp_path))
    assert found == {"a": QEMU, "b": 5000}


# --- the host's own figures, and what it will not give -----------------------------------------


def test_host_figures(tmp_path: Path) -> None:
    host = reclaim(pure_v2(tmp_path))
    assert host.host_figures() == {
        "host_swap_total_bytes": 1048576 * 1024,
        "host_swap_used_bytes": 4096 * 1024,
        "host_zswap_bytes": 1024 * 1024,
        "host_swap_in_bytes_total": 10 * PAGE_SIZE,
        "host_swap_out_bytes_total": 30 * PAGE_SIZE,
        "ksm_saved_bytes": (1000 + 24) * PAGE_SIZE,  # KSM's zero pages save memory too
        "ksm_profit_bytes": -8192,  # may be negative
        "host_memory_stall_seconds_total": 2.5,
        "host_memory_stall_full_seconds_total": 1.25,
    }


def test_a_bare_host_says_what_it_will_not_give(tmp_path: Path) -> None:
    """No KSM, no PSI file, no zswap, no cgroup mounts: every figure named, with why."""
    write(tmp_path, "proc/meminfo", "MemTotal: 1024 kB\nMemFree: 512 kB\nSwapTotal: 0 kB\n")
    host = reclaim(tmp_path)
    said = "; ".join(host.missing())
    assert "no KSM in this kernel" in said
    assert "this kernel has no PSI" in said
    assert "no zswap in this kernel" in said
    assert "VmSwap, which misses guest RAM in shared memory" in said
    figures = host.host_figures()
    assert set(figures) == set()  # SwapFree missing: no swap figures either
    write(tmp_path, "proc/meminfo", "MemTotal: 1024 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")
    assert host.host_figures() == {"host_swap_total_bytes": 0, "host_swap_used_bytes": 0}


def test_psi_switched_off_is_said_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel booted with psi=0 has the file, whose read fails with EOPNOTSUPP. This
    machine's kernel has PSI on: the read fault is made here, the one fake of this module."""
    root = pure_v2(tmp_path)
    pressure = str(root / "proc/pressure/memory")
    real_open = builtins.open

    def psi_off(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == pressure:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", psi_off)
    host = reclaim(root)
    assert not host.psi
    assert any("PSI is off: boot with psi=1" in line for line in host.missing())
    assert "host_memory_stall_seconds_total" not in host.host_figures()
    proc = host.process(QEMU)
    assert proc is not None and proc.pressure_path is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PRESSURE, (2.5, 1.25)),
        ("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n", (7e-6, None)),
        ("full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n", None),
        ("some total=-1\n", None),
        ("some total=x\n", None),
        ("", None),
    ],
)
def test_psi_totals(text: str, expected: Any) -> None:
    assert psi_totals(text.encode()) == expected


# --- on the lines ------------------------------------------------------------------------------


def test_host_lines_carry_the_figures_and_count_vms_swapped() -> None:
    tags = {"host": "kvm1", "source": "libvirt"}
    vms = [
        Sample("a", tags, {"memory_max_bytes": 1, "host_swapped_bytes": 4096}),
        Sample("b", tags, {"memory_max_bytes": 1, "host_swapped_bytes": 0}),
        Sample("c", tags, {"memory_max_bytes": 1}),  # its QEMU not found: not counted
    ]
    info = HostInfo(tags, 1024, 512)
    info.figures.update({"ksm_saved_bytes": 8192, "host_swap_used_bytes": 4096})
    [(_, fields)] = host_lines(vms, [info])
    assert fields["vms_host_swapped"] == 1
    assert (fields["ksm_saved_bytes"], fields["host_swap_used_bytes"]) == (8192, 4096)
    [(_, fields)] = host_lines(vms[2:], [HostInfo(tags, 1024, 512)])
    assert "vms_host_swapped" not in fields  # no VM says: unknown, not 0


# --- the guest's own pressure ------------------------------------------------------------------


def test_the_guest_s_psi_is_read_from_this_machine() -> None:
    """This machine is a guest with PSI on: its totals, between two reads of the file."""

    def some() -> float:
        with open("/proc/pressure/memory") as handle:
            return int(handle.readline().rsplit("total=", 1)[1]) / 1e6

    before = some()
    stream = io.StringIO()
    result = GuestSource(GuestConfig(root="/"), "h", Log(stream)).poll(0.0)
    after = some()
    fields = result.samples[0].fields
    stall = fields["guest_memory_stall_seconds_total"]
    assert isinstance(stall, float) and before <= stall <= after
    assert "guest_memory_stall_full_seconds_total" in fields
    assert "guest_memory_stall" not in stream.getvalue()


def test_a_guest_with_psi_off_says_so_once_and_stops_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psi=0: the file is there, its read fails with EOPNOTSUPP (made here: this kernel has
    PSI on). One `I! ` line, no field, and the file is not read again."""
    from telegraf_balloon.sources.guest.files import read_regular as real

    write(tmp_path, "proc/meminfo", "MemTotal: 1024 kB\nMemFree: 512 kB\n")
    pressure = write(tmp_path, "proc/pressure/memory", PRESSURE)
    reads: list[str] = []

    def psi_off(path: str, head: Any = None) -> str:
        if path == str(pressure):
            reads.append(path)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real(path, head)

    monkeypatch.setattr("telegraf_balloon.sources.guest.source.read_regular", psi_off)
    stream = io.StringIO()
    source = GuestSource(GuestConfig(root=str(tmp_path)), "h", Log(stream))
    for now in (0.0, 10.0, 20.0):
        fields = source.poll(now).samples[0].fields
        assert "guest_memory_stall_seconds_total" not in fields
    assert stream.getvalue().count("PSI is off in this kernel (boot it with psi=1)") == 1
    assert stream.getvalue().startswith(f"I! guest {tmp_path}: no guest_memory_stall_*")
    assert len(reads) == 1


def test_a_malformed_guest_pressure_file_warns_once(tmp_path: Path) -> None:
    write(tmp_path, "proc/meminfo", "MemTotal: 1024 kB\nMemFree: 512 kB\n")
    write(tmp_path, "proc/pressure/memory", "some avg10=x total=lots\n")
    stream = io.StringIO()
    source = GuestSource(GuestConfig(root=str(tmp_path)), "h", Log(stream))
    for now in (0.0, 10.0):
        assert "guest_memory_stall_seconds_total" not in source.poll(now).samples[0].fields
    assert stream.getvalue().count("W! guest source: malformed") == 1
    write(tmp_path, "proc/pressure/memory", PRESSURE)
    assert source.poll(20.0).samples[0].fields["guest_memory_stall_seconds_total"] == 2.5


# --- the libvirt source on a local URI ---------------------------------------------------------


def test_libvirt_local_uri_puts_each_domain_s_qemu_figures_on_its_line(tmp_path: Path) -> None:
    """Through the source's connect seam, a connection answering what a real libvirtd did
    (tests/fakes), on a local URI whose host_root is a constructed v2 host: web-01's QEMU is
    found by its pid file, db-01's is not running here (looked for again only after
    refresh_interval, then found by its -uuid), and a restarted domain is found anew."""
    pytest.importorskip("libvirt")
    from telegraf_balloon.config import LibvirtConfig
    from telegraf_balloon.sources.libvirt.source import LibvirtSource
    from tests.test_libvirt_source import UUIDS, Opened, domain, fake, real_bulk

    root = pure_v2(tmp_path)
    write(root, "run/libvirt/qemu/web-01.pid", f"{QEMU}\n")
    web, db = domain("web-01"), domain("db-01", domain_id=2)
    conn = fake((web, real_bulk()), (db, real_bulk()))
    config = LibvirtConfig(
        uri="qemu:///system", keepalive_interval=0, concurrency=1, host_root=str(root)
    )
    stream = io.StringIO()
    source = LibvirtSource(config, Log(stream), connect=Opened(conn))
    assert stream.getvalue() == ""  # this host gives every figure: nothing to say at start

    def poll(now: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        result = source.poll(now)
        assert result.error is None, result.error
        by = {s.tags["guest"]: dict(s.fields) for s in result.samples}
        return by["web-01"], by["db-01"], dict(result.hosts[0].figures)

    t0 = 1_700_000_000.0
    first, other, figures = poll(t0)
    assert first["host_swapped_bytes"] == 3 * MIB and first["compressed_bytes"] == 2 * MIB
    assert first["shared_bytes"] == 300 * PAGE_SIZE
    assert first["host_memory_stall_seconds_total"] == 2.5
    assert first["rss_bytes"] == 232732 * 1024  # libvirt's, not the process's
    assert not {"host_swapped_bytes", "shared_bytes"} & set(other)
    assert figures["ksm_profit_bytes"] == -8192 and figures["host_swap_used_bytes"] == 4 * MIB

    db_pid = 4343
    write(root, "sys/fs/cgroup/db/cgroup.procs", f"{db_pid}\n")
    write(root, "sys/fs/cgroup/db/memory.swap.current", f"{MIB}\n")
    process(root, db_pid, "0::/db\n", uuid=UUIDS["db-01"])
    assert "host_swapped_bytes" not in poll(t0 + 10)[1]  # not looked for again yet
    assert poll(t0 + 301)[1]["host_swapped_bytes"] == MIB  # after refresh_interval

    process(root, 4444, f"0::{SCOPE}/libvirt/emulator\n")  # web-01 restarted: a new QEMU
    write(root, "run/libvirt/qemu/web-01.pid", "4444\n")
    write(root, "proc/4444/ksm_merging_pages", "7\n")
    conn.domain("web-01").answers["ID"] = 3
    assert poll(t0 + 320)[0]["shared_bytes"] == 7 * PAGE_SIZE
    source.close()
