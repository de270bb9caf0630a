#!/usr/bin/env python3
"""What reading virtio-mem from libvirt's live XML adds to a poll, next to reading it naively.

    python bench/bench_libvirt_vmem.py [--domains 50] [--repeat 7] [--quick]

Needs root, libvirtd and qemu-system-x86_64: it starts a private libvirtd (the tests' stack)
with N paused TCG domains (QEMU's ``-S``), each with a virtio balloon and a 256 MiB
virtio-mem device, and always stops them. A requested size changes with no event (``virsh
update-memory-device``), so the libvirt source fetches the live XML of a domain with
virtio-mem every poll. One poll of every domain, three ways in the same run, interleaved,
median of --repeat after a warm-up:

  a. naive: the live XML of every virtio-mem domain, parsed whole, every poll;
  b. ``LibvirtSource.poll`` (the plugin): the live XML fetched, only the devices' own text
     compared with the last poll's and parsed when it changed;
  c. ``LibvirtSource.poll`` not reading virtio-mem at all: the XML read once per domain
     start, as for a domain without the device (the floor).

Table 2 times the pieces on one domain's real XML: the XMLDesc call, a whole parse, the
devices' text found and compared. Target: b within 1.25x c (virtio-mem costs at most a
quarter of a poll that already asks every QEMU for its balloon stats).

Exits 0 even when a target fails; a failed target prints FAIL.
"""

from __future__ import annotations

import io
import os
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable

from benchlib import CpuMeter, fmt_us, median, parser, table, verdict, ways_table

from telegraf_balloon.config import LibvirtConfig
from telegraf_balloon.log import Log
from telegraf_balloon.sources.libvirt.domainxml import (
    DomainFacts,
    parse_domain_xml,
    vmem_spans,
)
from tests.stack.common import StackError
from tests.stack.vmem import libvirt_vmem

TARGET = 1.25


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--domains", type=int, default=50)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    domains = 8 if args.quick else args.domains
    repeat = 2 if args.quick else args.repeat
    if os.geteuid() != 0:
        print("bench_libvirt_vmem: needs root (a private libvirtd); skipped")
        return 0
    try:
        import libvirt  # noqa: F401

        from telegraf_balloon.sources.libvirt.source import LibvirtSource
        from tests.stack.libvirt_daemon import LibvirtStack
    except ImportError as exc:
        print(f"bench_libvirt_vmem: {exc}; skipped")
        return 0
    names = [f"vmem-{n:03d}" for n in range(domains)]
    try:
        stack = LibvirtStack()
        stack.start_daemon()
    except StackError as exc:
        print(f"bench_libvirt_vmem: libvirtd did not start: {exc}; skipped")
        return 0
    try:
        started = time.monotonic()
        for first in range(0, domains, 10):
            stack.start_paused(names[first : first + 10], customize=libvirt_vmem(256, 0))
        print(f"started {domains} paused domains with virtio-mem in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        config = LibvirtConfig(uri=stack.uri, keepalive_interval=0, concurrency=1)
        plugin = LibvirtSource(config, Log(io.StringIO()))
        naive = LibvirtSource(config, Log(io.StringIO()))
        floor = LibvirtSource(config, Log(io.StringIO()))

        def whole(dom: Any, name: str, key: str, facts: DomainFacts) -> None:
            parse_domain_xml(dom.XMLDesc(0), facts)

        naive._reread_vmem = whole  # type: ignore[method-assign]
        floor._reread_vmem = lambda *args: None  # type: ignore[method-assign]

        def poll(source: Any) -> Callable[[], None]:
            def run() -> None:
                result = source.poll(time.time())
                assert len(result.samples) == domains, (len(result.samples), result.error)
                assert all("vmem_max_bytes" in s.fields for s in result.samples)

            return run

        ways = [
            ("a. naive: the live XML parsed whole, every poll", poll(naive)),
            ("b. LibvirtSource.poll (the plugin)", poll(plugin)),
            ("c. no virtio-mem reading (the floor)", poll(floor)),
        ]
        for _name, fn in ways:
            fn()  # warm-up, and each domain's XML read once at its start
        pids = [stack.daemon_pid, *(stack.guest_pid(n) for n in names)]
        meter = CpuMeter(lambda: pids, "this bench, its libvirtd and QEMUs")
        times: dict[str, list[float]] = {name: [] for name, _ in ways}
        for _ in range(repeat):
            for name, fn in ways:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        load = meter.report()

        with stack.connection(readonly=True) as conn:
            dom = conn.lookupByName(names[0])
            text = dom.XMLDesc(0)
            pieces = {
                "XMLDesc(0) call": _each(lambda: dom.XMLDesc(0)),
                "whole XML parsed (ElementTree)": _each(lambda: ET.fromstring(text)),
                "devices' text found and compared": _each(
                    lambda: vmem_spans(text) == text  # the comparison the plugin makes
                ),
            }
        for source in (plugin, naive, floor):
            source.close()
    finally:
        stack.stop()

    floor_way = "c. no virtio-mem reading (the floor)"
    floor_total = median(times[floor_way])
    print(f"\nTable 1: one poll of {domains} paused domains with virtio-mem, median of {repeat}")
    print(ways_table(times, [name for name, _ in ways], floor_way, domains, "domain", "floor"))
    print(load)
    ours = median(times["b. LibvirtSource.poll (the plugin)"])
    print(
        f"\nthe plugin's poll / the floor: {ours / floor_total:.2f}x (target <= {TARGET}x): "
        f"{verdict(ours <= TARGET * floor_total)}"
    )
    print(f"\nTable 2: the pieces, on one domain's live XML ({len(text):,} characters), median")
    print(
        table(
            ["piece", "us"],
            [[name, fmt_us(seconds)] for name, seconds in pieces.items()],
            [False, True],
        )
    )
    return 0


def _each(fn: Callable[[], object], runs: int = 300) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


if __name__ == "__main__":
    raise SystemExit(main())
