"""The host's side of reclaim, for real: a host swapping a VM out, KSM merging a VM, memory
pressure on the host and in a guest.

- Host swap: a swap file of the test's own, a booted QEMU guest (qmp source) started inside a
  memory cgroup of the test's own limited below what the guest touches, the guest writing
  random data (zero pages would not be swapped). The plugin's host_swapped_bytes must be the
  group's own figure; the kernel's VmSwap also counts the swapped pages still in the swap
  cache, so it lies between the group's figure and that plus the group's swapcached.
  host_swapping must fire while the host swaps the VM and clear once it stops; the VM's v2
  group's memory.pressure, the host's swap and pressure and this machine's own PSI (this
  machine is itself a guest: the guest source on /) move.
- KSM: scanning fast with THP off, a preallocated paused libvirt domain: its shared_bytes and
  the host's ksm_saved_bytes are what /proc/<pid>/ksm_merging_pages and /sys/kernel/mm/ksm
  say, the domain's QEMU found by the -uuid on its command line.

Every machine change (swap file, cgroups, KSM, THP) is the test's own and put back, also when
the test fails (tests/stack/host_reclaim.py).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import line_protocol_parser
import pytest

import telegraf_balloon
from telegraf_balloon import catalog
from telegraf_balloon.config import LibvirtConfig, load_text
from telegraf_balloon.explain.judge import Judge
from telegraf_balloon.log import Log
from telegraf_balloon.runner import Runner
from telegraf_balloon.sources import build_sources
from telegraf_balloon.sources.hostfacts import PAGE_SIZE
from telegraf_balloon.sources.libvirt.source import LibvirtSource
from tests.stack.common import StackError, need_program, unavailable
from tests.stack.guest_image import DEFAULT_CACHE_DIR, GuestImage, build_guest
from tests.stack.host_reclaim import MemoryGroups, ksm_merging, swap_file
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.qemu_stack import QemuHost

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
VMID = 301
HOG_MIB = 150  # what the guest writes, beyond the group's limit
LIMIT_MIB = 128
# The shipped sample config (its guest source on /, this machine, and its rules: host swap
# critical), with the test's QMP socket directory as a source.
SAMPLE = (Path(telegraf_balloon.__file__).with_name("sample.toml")).read_text()


@pytest.fixture()
def booted_qemu() -> Iterator[tuple[str, GuestImage]]:
    if os.geteuid() != 0:
        unavailable("host swap, cgroups and QMP sockets need root")
    qemu = need_program("qemu-system-x86_64")
    for program in ("mkswap", "swapon", "swapoff"):
        need_program(program)
    try:
        image = build_guest(DEFAULT_CACHE_DIR)
    except (StackError, OSError) as exc:
        unavailable(f"the guest image could not be built: {exc}")
    yield qemu, image


def _vm_swap(pid: int) -> int:
    """The kernel's VmSwap of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSwap:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmSwap for {pid}")


def _lines(runner: Runner, out: io.BytesIO) -> None:
    """Every line written so far, each held to the catalog."""
    for text in out.getvalue().decode().splitlines():
        line = line_protocol_parser.parse_line(text)
        assert catalog.check_point(line["measurement"], line["tags"], line["fields"]) == []


def test_a_vm_swapped_out_by_its_host(booted_qemu: tuple[str, GuestImage]) -> None:
    qemu, image = booted_qemu
    with swap_file(512), MemoryGroups(LIMIT_MIB) as groups:
        host = QemuHost(qemu, image)
        try:
            vm = host.start(
                VMID, memory_mib=384, cmdline_extra=f"tb.hog={HOG_MIB}", wrapper=groups.wrapper()
            )
            toml = SAMPLE + f'\n[[sources.qmp]]\nsockets = ["{host.glob}"]\nproxmox_config = ""\n'

            config = load_text(toml, "test.toml")
            stream, out = io.StringIO(), io.BytesIO()
            log = Log(stream)
            runner = Runner(config, build_sources(config, log), out, log, "plugin-host")
            judge = Judge(config, runner, watching=True)
            polls: list[dict[str, Any]] = []

            def poll() -> dict[str, Any]:
                batch = runner.poll_batch()
                assert batch is not None and batch.all_up, batch
                judge.remember(batch)
                runner.write_points(runner.points(batch))
                report = judge.report(batch, len(polls) + 1)
                by_kind = {part.kind: part for part in batch.sources}
                qmp, guest = by_kind["qmp"], by_kind["guest"]
                [found] = [v for r in report.sources if r.source == "qmp" for v in r.vms]
                [host_report] = [h for r in report.sources if r.source == "qmp" for h in r.hosts]
                seen = {
                    "vm": dict(qmp.samples[0].fields) if qmp.samples else {},
                    "host": dict(qmp.hosts[0][1]),
                    "guest": dict(guest.samples[0].fields),
                    "vm_findings": {f.code: f.severity for f in found.findings},
                    "host_findings": {f.code: f.severity for f in host_report.findings},
                    "group_swap": groups.swapped(),
                    "group_swapcached": groups.swapcached(),
                    "group_stall": groups.stall_seconds() if groups.v2 else None,
                    "vm_swap": _vm_swap(vm.pid),
                }
                polls.append(seen)
                return seen

            deadline = time.monotonic() + 300
            console = vm.console
            # 1: the guest boots and writes; the host swaps it out while the plugin watches
            while "HOG-DONE" not in console.read_text(errors="replace"):
                assert time.monotonic() < deadline, host.console_tail(VMID)
                poll()
                time.sleep(0.5)
            # 2: it settles (the same swapped figure on two polls): every figure agrees
            settled = poll()
            while True:
                time.sleep(0.5)
                now = poll()
                if now["vm"]["host_swapped_bytes"] == settled["vm"]["host_swapped_bytes"]:
                    break
                settled = now
                assert time.monotonic() < deadline
            # 3: the host stops taking the VM's memory (the limit lifted): the finding clears
            groups.set_limit(None)
            for _ in range(3):
                time.sleep(0.5)
                cleared = poll()
            _lines(runner, out)
            runner.close()
        finally:
            host.close()

    said = stream.getvalue()
    firing = [p for p in polls if "host_swapping" in p["vm_findings"]]
    assert firing, [p["vm"].get("host_swapped_bytes") for p in polls]
    assert {p["vm_findings"]["host_swapping"] for p in firing} == {"critical"}  # the sample rule
    assert any(p["host_findings"].get("host_swapping") == "critical" for p in polls)
    assert "host_swapping" not in cleared["vm_findings"], cleared
    assert cleared["vm"]["host_swapped_bytes_per_second"] <= 0

    # The plugin's figure is the group's own. The kernel's VmSwap counts the same pages and,
    # besides, those of them still in the swap cache (read back ahead of use, or written
    # and not yet freed): it lies between the group's swap and that plus its swapcached.
    swapped = now["vm"]["host_swapped_bytes"]
    assert swapped >= 64 * MIB, swapped  # 150 MiB written under a 128 MiB limit
    assert abs(swapped - now["group_swap"]) <= PAGE_SIZE, now
    figures = {k: v for k, v in now.items() if k.startswith(("group", "vm_swap"))}
    low, high = now["group_swap"], now["group_swap"] + now["group_swapcached"]
    assert low - PAGE_SIZE <= now["vm_swap"] <= high + PAGE_SIZE, figures
    # The host's side: its swap holds at least this VM's, it swapped out, and counts the VM.
    assert now["host"]["host_swap_used_bytes"] >= swapped - PAGE_SIZE
    assert max(p["host"].get("host_swap_out_bytes_per_second", 0) for p in polls) > 0
    assert now["host"]["vms_host_swapped"] == 1
    # Pressure: the VM's own (its v2 group's memory.pressure), the host's, the guest's own
    # (this machine is a guest: the stall the test made in its group is in its PSI).
    first = polls[0]
    if groups.v2 is not None:
        stall = now["vm"]["host_memory_stall_seconds_total"]
        assert stall > first["vm"].get("host_memory_stall_seconds_total", 0.0)
        assert stall <= now["group_stall"]
        assert "host_memory_stall_ratio" in now["vm"]
    assert (
        now["host"]["host_memory_stall_seconds_total"]
        > first["host"]["host_memory_stall_seconds_total"]
    )
    assert 0.0 <= now["host"]["host_memory_stall_ratio"] <= 1.0
    grew = now["guest"]["guest_memory_stall_seconds_total"]
    assert grew > first["guest"]["guest_memory_stall_seconds_total"]
    assert 0.0 <= now["guest"]["guest_memory_stall_ratio"] <= 1.0
    # What the host will not give was said once at start, and is absent from every line.
    start = [line for line in said.splitlines() if "will not give" in line]
    assert len(start) <= 1
    for name in ("compressed_bytes", "shared_bytes", "host_memory_stall_seconds_total"):
        if start and f" {name} (" in start[0]:
            assert all(name not in p["vm"] for p in polls), name


def test_ksm_merging_a_libvirt_domain(libvirt_stack: LibvirtStack) -> None:
    name = "ksm-merged"
    stream = io.StringIO()
    config = LibvirtConfig(uri=libvirt_stack.uri, domains=(name,), concurrency=1)
    source = LibvirtSource(config, Log(stream))

    def ksm_pages() -> int:
        ksm = Path("/sys/kernel/mm/ksm")
        zero = ksm / "ksm_zero_pages"
        sharing = int((ksm / "pages_sharing").read_text())
        return sharing + (int(zero.read_text()) if zero.exists() else 0)

    try:
        with ksm_merging():
            libvirt_stack.start_paused([name], memory_mib=256, prealloc=True)
            pid = libvirt_stack.guest_pid(name)
            merging = Path(f"/proc/{pid}/ksm_merging_pages")
            deadline = time.monotonic() + 120
            while True:
                before, saved_before = int(merging.read_text()), ksm_pages()
                result = source.poll(time.time())
                after, saved_after = int(merging.read_text()), ksm_pages()
                [sample] = result.samples
                fields = sample.fields
                shared = fields["shared_bytes"]
                assert isinstance(shared, int), fields
                stable = before == after and shared == after * PAGE_SIZE
                if stable and shared >= 200 * MIB:
                    break
                assert time.monotonic() < deadline, (fields, before, after)
                time.sleep(0.5)
            figures = result.hosts[0].figures
            low, high = sorted((saved_before, saved_after))
            saved = figures["ksm_saved_bytes"]
            assert isinstance(saved, int)
            assert low * PAGE_SIZE <= saved <= high * PAGE_SIZE
            assert saved >= shared // 2  # the VM's own copies merged, at least
            assert "ksm_profit_bytes" in figures
            # The tests' daemon manages no cgroups: its QEMU shares the runner's groups, so the
            # VM has no group figures, its swap is its VmSwap, and the source said so once.
            assert fields["host_swapped_bytes"] == _vm_swap(pid)
            assert "host_memory_stall_seconds_total" not in fields
            assert stream.getvalue().count("no cgroup of its own") == 1
    finally:
        source.close()
        libvirt_stack.remove_domains([name])
