#!/usr/bin/env python3
"""How fast the qmp source polls N QEMU VMs, next to other ways of asking the same things.

    python bench/bench_qmp.py [--vms 200] [--repeat 5] [--no-vmem] [--quick]

Needs root and qemu-system-x86_64: it starts N paused QEMU processes (``-S``: they never
boot, and answer every QMP command) in Proxmox's layout, with Proxmox configs and a 256 MiB
virtio-mem device each (none with --no-vmem), and always stops them. One poll of every VM,
done six ways in the same run, interleaved, median of --repeat after a warm-up:

  a. naive: a fresh ``qemu.qmp`` session (its legacy sync class) per command, VM after VM;
  b. ``qemu.qmp``'s sync class, one session per VM for its three commands, VM after VM;
  c. ``qemu.qmp``'s asyncio client, one session per VM, every VM at once (asyncio.gather);
  d. the bare exchange: a minimal socket + json client, one VM after another, one command
     after another (connect, greeting, qmp_capabilities, query-balloon, guest-stats,
     guest-stats-polling-interval, close);
  e. ``QmpSource.poll(now)`` in steady state (identity read once per VM start): the same
     commands and ``query-memory-devices`` (virtio-mem), all VMs side by side from one
     thread, each VM's commands in one write;
  f. the same without ``query-memory-devices`` (as the source polls a QEMU that does not
     know the command): what virtio-mem adds to a poll. Every VM with a device is asked every
     poll; with --no-vmem, a VM without one is asked again every 10th poll only.

The figures are per VM (total / N). Targets: e within 1.5x d per VM, N = 200 under 1 s, and
e within 1.1x f (virtio-mem costs at most 10% more).
Table 2: import time and memory of ``qemu.qmp`` against this source's module.

Table 3: the host's side of reclaim on the same VMs (host swap, KSM, zswap, pressure, each
VM's QEMU), in the same rounds: ``QmpSource.poll`` without host facts, as shipped, with every
VM's files read (as on a host with pages in swap), and the naive way (the poll without host
facts plus every QEMU's /proc/<pid>/smaps_rollup). Each QEMU runs in memory cgroups of its
own (a v1 memory group and a v2 group, made by the bench and removed after), as libvirt and
Proxmox give each VM a scope: its swap comes from its group's memory.stat and its stall from
its group's memory.pressure. Targets: host facts add <= 15% to the poll and <= 40 µs per VM.

Exits 0 even when a target fails; a failed target prints FAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable

from benchlib import (
    REPO_ROOT,
    CpuMeter,
    every_file_read,
    fmt_ms,
    host_facts_labels,
    host_facts_rounds,
    host_facts_table,
    median,
    parser,
    table,
    verdict,
    ways_table,
)

from telegraf_balloon.config import QmpConfig
from telegraf_balloon.log import Log
from telegraf_balloon.sources.qmp import source as qmp_source
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.stack.common import need_program
from tests.stack.host_reclaim import MemoryGroups
from tests.stack.qemu_stack import QemuHost
from tests.stack.vmem import qemu_args

TARGET_VS_BARE = 1.5
TARGET_POLL_SECONDS = 1.0  # for 200 VMs
TARGET_VMEM = 1.10  # the poll with query-memory-devices against the poll without it
BALLOON = "/machine/peripheral/balloon0"
COMMANDS: list[tuple[str, dict[str, Any]]] = [
    ("query-balloon", {}),
    ("qom-get", {"path": BALLOON, "property": "guest-stats"}),
    ("qom-get", {"path": BALLOON, "property": "guest-stats-polling-interval"}),
]


def bare(paths: list[str]) -> None:
    """d. The minimal client: one request, one reply, one VM after another."""
    for path in paths:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            stream = sock.makefile("rb")
            json.loads(stream.readline())
            for name, arguments in [("qmp_capabilities", {}), *COMMANDS]:
                message: dict[str, Any] = {"execute": name}
                if arguments:
                    message["arguments"] = arguments
                sock.sendall(json.dumps(message).encode() + b"\n")
                while "event" in (reply := json.loads(stream.readline())):
                    pass
                assert "return" in reply, reply


def library_per_command(paths: list[str]) -> None:
    """a. A fresh qemu.qmp session for every command."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    for path in paths:
        for name, arguments in COMMANDS:
            qmp = QEMUMonitorProtocol(path)
            qmp.connect(negotiate=True)
            qmp.cmd_raw(name, arguments or None)
            qmp.close()


def library_per_vm(paths: list[str]) -> None:
    """b. One qemu.qmp sync session per VM."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    for path in paths:
        qmp = QEMUMonitorProtocol(path)
        qmp.connect(negotiate=True)
        for name, arguments in COMMANDS:
            qmp.cmd_raw(name, arguments or None)
        qmp.close()


def library_async(paths: list[str]) -> None:
    """c. qemu.qmp's asyncio client, every VM at once, each under a timeout."""
    from qemu.qmp import QMPClient

    async def one(path: str) -> None:
        client = QMPClient()
        await asyncio.wait_for(client.connect(path), 1.0)
        try:
            for name, arguments in COMMANDS:
                await client.execute(name, arguments or None)
        finally:
            await client.disconnect()

    async def every() -> None:
        await asyncio.gather(*(one(path) for path in paths))

    asyncio.run(every())


def import_cost(module: str, after: str) -> tuple[float, int]:
    """(seconds, resident KiB added) to import `module` in a fresh interpreter that has
    already imported `after` (what the plugin loads anyway)."""
    code = (
        "import time\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1])\n"
        f"import {after}\n"
        "before = rss()\n"
        "t = time.perf_counter()\n"
        f"import {module}\n"
        "took = time.perf_counter() - t\n"
        "print(took, rss() - before)\n"
    )
    runs = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
        ).stdout.split()
        runs.append((float(out[0]), int(out[1])))
    return median([r[0] for r in runs]), int(median([r[1] for r in runs]))


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--vms", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-vmem", action="store_true", help="VMs without a virtio-mem device")
    args = p.parse_args()
    vms = 20 if args.quick else args.vms
    repeat = 2 if args.quick else args.repeat
    if os.geteuid() != 0:
        print("bench_qmp: needs root (QMP sockets are root-only); skipped")
        return 0
    host = QemuHost(need_program("qemu-system-x86_64"))
    groups = contextlib.ExitStack()
    try:
        for vmid in range(1000, 1000 + vms):
            host.write_conf(vmid, f"memory: 128\nballoon: 64\nname: bench-{vmid}\n")
        started = time.monotonic()
        for first in range(1000, 1000 + vms, 20):
            batch = list(range(first, min(first + 20, 1000 + vms)))
            wrappers = [groups.enter_context(MemoryGroups(1024)).wrapper() for _ in batch]
            pending = [
                host.start(
                    vmid,
                    memory_mib=128,
                    boot=False,
                    wait=False,
                    wrapper=wrapper,
                    maxmem_mib=0 if args.no_vmem else 512,
                    extra_args=() if args.no_vmem else qemu_args(256, 0),
                )
                for vmid, wrapper in zip(batch, wrappers)
            ]
            for vm in pending:
                host.finish_start(vm)
        devices = "no virtio-mem device" if args.no_vmem else "a virtio-mem device each"
        print(f"started {vms} paused QEMU VMs ({devices}) in {time.monotonic() - started:.1f} s")
        paths = sorted(str(vm.qmp) for vm in host.vms.values())
        config = QmpConfig(sockets=(host.glob,), proxmox_config=str(host.conf_dir))
        source = QmpSource(config, "bench", Log(io.StringIO()))
        source.poll(time.time())  # first contact: identity, once per VM start
        without = QmpSource(config, "bench", Log(io.StringIO()))
        without.poll(time.time())
        for facts in without._facts.values():
            facts.vmem_unsupported = True  # what a QEMU without the command gets

        def plugin() -> None:
            result = source.poll(time.time())
            assert len(result.samples) == vms, (len(result.samples), result.error)
            assert all(("vmem_max_bytes" in s.fields) != args.no_vmem for s in result.samples)

        def plugin_without() -> None:
            result = without.poll(time.time())
            assert len(result.samples) == vms, (len(result.samples), result.error)
            assert not any("vmem_max_bytes" in s.fields for s in result.samples)

        ways: list[tuple[str, Callable[[], None]]] = [
            ("a. qemu.qmp, a session per command", lambda: library_per_command(paths)),
            ("b. qemu.qmp sync, a session per VM", lambda: library_per_vm(paths)),
            ("c. qemu.qmp asyncio, all VMs at once", lambda: library_async(paths)),
            ("d. bare exchange, socket + json", lambda: bare(paths)),
            ("e. QmpSource.poll (the plugin)", plugin),
            ("f. QmpSource.poll without query-memory-devices", plugin_without),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in ways}
        for _name, fn in ways:
            fn()  # warm-up
        pids = [vm.pid for vm in host.vms.values()]
        meter = CpuMeter(lambda: pids, "this bench and its QEMUs")
        for _ in range(repeat):
            for name, fn in ways:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        load = meter.report()
        reclaim = host_facts(host, config, vms, repeat)
    finally:
        host.close()
        groups.close()

    bare_way = "d. bare exchange, socket + json"
    bare_total = median(times[bare_way])
    print(f"\nTable 1: one poll of {vms} paused QEMU VMs, median of {repeat} (machine under load)")
    print(ways_table(times, [name for name, _ in ways], bare_way, vms, "VM", "bare"))
    print(load)
    ours = median(times["e. QmpSource.poll (the plugin)"])
    print(
        f"\nper-VM cost of the plugin / bare exchange: {ours / bare_total:.2f}x "
        f"(target <= {TARGET_VS_BARE}x): {verdict(ours <= TARGET_VS_BARE * bare_total)}"
    )
    plain = median(times["f. QmpSource.poll without query-memory-devices"])
    print(
        f"the poll with query-memory-devices / without: {ours / plain:.2f}x "
        f"(target <= {TARGET_VMEM}x): {verdict(ours <= TARGET_VMEM * plain)}"
    )
    scaled = ours * 200 / vms
    print(
        f"200 VMs (measured {vms}, scaled linearly): {scaled:.3f} s "
        f"(target < {TARGET_POLL_SECONDS:g} s): {verdict(scaled < TARGET_POLL_SECONDS)}"
    )

    library = import_cost("qemu.qmp", "telegraf_balloon.sources.qmp")
    own = import_cost("telegraf_balloon.sources.qmp", "telegraf_balloon.runner")
    print("\nTable 2: what each client adds to the running plugin (fresh interpreter, median of 5)")
    print(
        table(
            ["import", "ms", "RSS added KiB"],
            [
                ["qemu.qmp (on top of the plugin)", fmt_ms(library[0]), str(library[1])],
                ["telegraf_balloon.sources.qmp", fmt_ms(own[0]), str(own[1])],
            ],
            [False, True, True],
        )
    )
    print(f"\nTable 3: the host's side of reclaim on the same {vms} VMs, each QEMU in cgroups")
    print(reclaim)
    return 0


def host_facts(host: QemuHost, config: QmpConfig, vms: int, repeat: int) -> str:
    """Table 3's rounds: the poll without host facts, as shipped, every file read, naive."""
    without = QmpSource(config, "bench", Log(io.StringIO()))
    # the poll as before host facts: no host reclaim reads, rss_bytes from /proc/<pid>/status
    without._reclaim.host_figures = dict  # type: ignore[method-assign]
    without._process = lambda poll, facts: None  # type: ignore[method-assign]
    shipped = QmpSource(config, "bench", Log(io.StringIO()))
    full = QmpSource(config, "bench", Log(io.StringIO()))
    every_file_read(full._reclaim)
    sources: dict[str, object] = {"e0": without, "h": shipped, "h1": full}
    pids = [vm.pid for vm in host.vms.values()]
    rss = (qmp_source, "process_rss")  # e0 reads rss so; a QEMU's read does it with the rest
    totals, owns, inside = host_facts_rounds(sources, vms, "e0", pids, repeat, [rss])
    sample = shipped.poll(time.time()).samples[0].fields
    labels = host_facts_labels("e0", "QmpSource.poll")
    text, verdicts = host_facts_table(totals, owns, inside, labels, vms, "e0", "h1", "n")
    fields = sorted(k for k in sample if k.startswith(("host_", "shared", "compressed")))
    return "\n".join(
        [
            f"median of {repeat} rounds after a warm-up, the ways interleaved; own = the poll "
            "less its QMP exchange (host facts are read after it)",
            text,
            *verdicts,
            f"  per VM as shipped: {fields}",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
