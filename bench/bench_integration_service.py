#!/usr/bin/env python3
"""What reading the guest's integration service costs a poll: VMware Tools on vSphere, the
QEMU guest agent on QMP (Proxmox layout).

    python bench/bench_integration_service.py [--quick] [--part vsphere|qmp|all]
        [--vsphere-vms 10000] [--qmp-vms 200] [--repeat 5]

vSphere (govmomi's simulator, pages of 500): ``VsphereSource.poll`` with its property list
as shipped (the two Tools paths guest.toolsRunningStatus and guest.toolsVersionStatus2
included) beside the same poll with those two paths left out, interleaved round by round,
the realtime QueryPerf in every round for both; every VM carries both Tools properties (most
running and current, some not running, some not installed), as a real vCenter reports
them. Target: at most 5% more wall time per poll at 10,000 VMs. The plugin's CPU per VM is
given for both.

QMP (N paused QEMUs, ``-S``, in Proxmox's layout, each with the agent's virtio-serial port
and its <vmid>.qga socket, every config saying ``agent: 1``), one poll of every VM:
  a. ``QmpSource.poll`` with agent_ping = false (the monitors only);
  b. the same with agent_ping = true, every agent answering: a paused guest runs no agent,
     so the agent sockets of this row are stand-ins for qemu-ga served by a separate process
     (guest-sync-delimited and guest-ping answered at once), one per VM;
  c. the same with agent_ping = true against QEMU's own agent sockets of the paused guests:
     no agent answers, every ping waits for its timeout (1 s), side by side;
  d. the naive way for b's agents: connect, sync, ping and close, one VM after another.
Target: b within 1.5x a + what the pings cost (b - a) below 1 ms per VM; c bounded by the
agent's timeout (about 1 s more than a, whatever N).

Timings are taken on a machine shared with other jobs: medians and ranges are printed with
the load average. Exits 0 even when a target fails; a failed target prints FAIL.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchlib import fmt_ms, fmt_us, median, parser, table, verdict

from telegraf_balloon.config import QmpConfig
from telegraf_balloon.log import Log
from telegraf_balloon.sources.qmp.source import QmpSource
from telegraf_balloon.sources.vsphere import source as vsphere_source
from telegraf_balloon.sources.vsphere.fields import VM_PATHS
from telegraf_balloon.sources.vsphere.soap import REALTIME_INTERVAL
from tests.stack.clock import Clock
from tests.stack.common import need_program
from tests.stack.qemu_stack import QemuHost
from tests.stack.vcsim import Vcsim, launcher_available
from tests.stack.vsphere_setup import all_vms, connect, disconnect

TOOLS_PATHS = ("guest.toolsRunningStatus", "guest.toolsVersionStatus2")
WITHOUT_TOOLS = tuple(p for p in VM_PATHS if p not in TOOLS_PATHS)
TARGET_TOOLS_EXTRA = 0.05  # at most 5% more per poll
TARGET_PING_VS_MONITORS = 1.5  # b within this many times a
TARGET_PING_MS_PER_VM = 1.0
# size -> the simulator's inventory (VMs per cluster, as bench_vsphere.py's)
SHAPES: dict[int, dict[str, Any]] = {
    200: {"cluster": 2, "host": 2, "vm": 100, "page": 50},
    2000: {"cluster": 4, "host": 5, "vm": 500},
    10000: {"cluster": 20, "host": 10, "vm": 500},
}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} (1/5 min) on {os.cpu_count()} cores"


# -- vSphere ------------------------------------------------------------------------------------


def tools_states(sim: Vcsim, si: Any, seed: int = 11) -> dict[str, int]:
    """Both Tools properties on every VM, as the guests would report them."""
    rng = random.Random(seed)
    counts = {"running": 0, "not running": 0, "not installed": 0}
    for vm in all_vms(si):
        draw = rng.random()
        if draw < 0.85:
            state, values = "running", ("guestToolsRunning", "guestToolsCurrent")
        elif draw < 0.95:
            state, values = "not running", ("guestToolsNotRunning", "guestToolsNeedUpgrade")
        else:
            state, values = "not installed", ("guestToolsNotRunning", "guestToolsNotInstalled")
        sim.update("VirtualMachine", vm._moId, dict(zip(TOOLS_PATHS, values)))
        counts[state] += 1
    return counts


class Poller:
    """One VsphereSource in steady state; `paths` the VM property paths its polls ask for."""

    def __init__(self, sim: Vcsim, paths: tuple[str, ...]) -> None:
        self.paths = paths
        self.clock = Clock(1_000_000.0)
        config = sim.source_config()
        self.source = vsphere_source.VsphereSource(
            config, Log(io.StringIO()), timeout=120, clock=self.clock
        )
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.samples = 0
        self.with_tools = 0

    def __call__(self) -> None:
        self.clock.now += REALTIME_INTERVAL  # a new realtime sample: QueryPerf every round
        module: Any = vsphere_source  # the list its poll reads is that module's global
        shipped = module.VM_PATHS
        module.VM_PATHS = self.paths
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            result = self.source.poll(time.time())
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)
        finally:
            module.VM_PATHS = shipped
        if result.error is not None:
            raise SystemExit(f"the vSphere poll failed: {result.error}")
        self.samples = len(result.samples)
        self.with_tools = sum(1 for s in result.samples if "tools_status" in s.fields)

    def close(self) -> None:
        self.source.close()


def bench_vsphere(size: int, repeat: int) -> bool:
    shape = SHAPES[size]
    started = time.perf_counter()
    sim = Vcsim(dc=1, standalone_host=0, **{"page": 500, **shape}).start()
    si = connect(sim)
    pollers: list[Poller] = []
    try:
        counts = tools_states(sim, si)
        prepared = time.perf_counter() - started
        pollers = [Poller(sim, VM_PATHS), Poller(sim, WITHOUT_TOOLS)]
        for poller in pollers:
            poller()  # log in, counters, warm-up
            poller.cpu.clear()
            poller.wall.clear()
        before = load()
        for _ in range(repeat):
            for poller in pollers:
                poller()
        after = load()
    finally:
        for poller in pollers:
            poller.close()
        disconnect(si)
        sim.stop()
    shipped, bare = pollers
    n = shipped.samples
    extra = median(shipped.wall) / median(bare.wall) - 1
    rows = []
    for label, poller in (
        (f"with the Tools paths ({len(VM_PATHS)} paths)", shipped),
        (f"without them ({len(WITHOUT_TOOLS)} paths)", bare),
    ):
        wall = poller.wall
        rows.append(
            [
                label,
                fmt_ms(median(wall)),
                f"{fmt_ms(min(wall))}..{fmt_ms(max(wall))}",
                fmt_us(median(wall) / n),
                fmt_us(median(poller.cpu) / n),
                f"{poller.with_tools:,}",
            ]
        )
    print(
        f"== vSphere: {n:,} powered-on VMs polled of {sum(counts.values()):,} "
        f"(Tools {counts['running']:,} running, {counts['not running']:,} not running, "
        f"{counts['not installed']:,} not installed); median of {repeat}, interleaved"
    )
    headers = ["VsphereSource.poll", "ms/poll", "min..max ms", "µs/VM", "CPU µs/VM", "tools_status"]
    print(table(headers, rows, [False, True, True, True, True, True]))
    ok = extra <= TARGET_TOOLS_EXTRA
    print(
        f"  the two Tools paths cost {extra * 100:+.1f}% per poll "
        f"(target <= {TARGET_TOOLS_EXTRA * 100:g}% at 10,000 VMs): "
        f"{verdict(ok) if size >= 10000 else '(not judged below 10,000 VMs)'}"
    )
    print(f"  simulator up and Tools set in {prepared:.1f} s; {before} before, {after} after\n")
    return ok or size < 10000


# -- QMP: the guest agent's socket ---------------------------------------------------------------

# The stand-in agents of row b: one process serving every socket from a selector, answering
# guest-sync-delimited (after the 0xFF sentinel) and guest-ping at once, as qemu-ga does.
STAND_IN = r"""
import json, os, selectors, socket, sys
paths = json.loads(sys.argv[1])
sel = selectors.DefaultSelector()
for path in paths:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.setblocking(False)
    sel.register(server, selectors.EVENT_READ, None)
print("ready", flush=True)
buffers = {}
while True:
    for key, _ in sel.select():
        if key.data is None:
            conn, _ = key.fileobj.accept()
            conn.setblocking(False)
            buffers[conn] = b""
            sel.register(conn, selectors.EVENT_READ, "conn")
            continue
        conn = key.fileobj
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            sel.unregister(conn)
            buffers.pop(conn, None)
            conn.close()
            continue
        buffers[conn] += data
        while b"\n" in buffers[conn]:
            line, _, buffers[conn] = buffers[conn].partition(b"\n")
            request = json.loads(line.lstrip(b"\xff"))
            if request["execute"] == "guest-sync-delimited":
                ident = request["arguments"]["id"]
                conn.sendall(b"\xff" + json.dumps({"return": ident}).encode() + b"\n")
            else:
                conn.sendall(b'{"return": {}}\n')
"""


def naive_pings(sockets: list[str]) -> None:
    """d. One VM after another: connect, 0xFF + guest-sync-delimited, read to the sentinel
    and the answer, guest-ping, read its answer, close."""
    for path in sockets:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            ident = random.getrandbits(31)
            sync = {"execute": "guest-sync-delimited", "arguments": {"id": ident}}
            sock.sendall(b"\xff" + json.dumps(sync).encode() + b"\n")
            stream = sock.makefile("rb")
            while stream.read(1) != b"\xff":
                pass
            assert json.loads(stream.readline())["return"] == ident
            sock.sendall(b'{"execute": "guest-ping"}\n')
            assert "return" in json.loads(stream.readline())


def bench_qmp(vms: int, repeat: int) -> bool:
    if os.geteuid() != 0:
        print("== QMP: needs root (QMP sockets are root-only); skipped\n")
        return True
    host = QemuHost(need_program("qemu-system-x86_64"))
    answering = Path(tempfile.mkdtemp(prefix="qga-stand-in-"))
    stand_in = None
    try:
        first = 2000
        ids = list(range(first, first + vms))
        for vmid in ids:
            host.write_conf(vmid, f"memory: 128\nballoon: 64\nagent: 1\nname: bench-{vmid}\n")
        started = time.monotonic()
        for at in range(0, vms, 20):
            host.start_many(ids[at : at + 20], memory_mib=128, boot=False, agent=True)
        booted = time.monotonic() - started
        # row b's layout: the same monitors (symlinks), stand-in agents beside them
        for vmid in ids:
            (answering / f"{vmid}.qmp").symlink_to(host.vms[vmid].qmp)
        stand_ins = [str(answering / f"{vmid}.qga") for vmid in ids]
        stand_in = subprocess.Popen(
            [sys.executable, "-c", STAND_IN, json.dumps(stand_ins)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert stand_in.stdout is not None and stand_in.stdout.readline().strip() == "ready"

        def source(glob: str, ping: bool) -> QmpSource:
            config = QmpConfig(sockets=(glob,), proxmox_config=str(host.conf_dir), agent_ping=ping)
            return QmpSource(config, "bench", Log(io.StringIO()))

        monitors = source(host.glob, False)
        pinging = source(f"{answering}/*.qmp", True)
        silent = source(host.glob, True)

        def poll(src: QmpSource, connected: bool | None) -> Callable[[], None]:
            def run() -> None:
                result = src.poll(time.time())
                assert len(result.samples) == vms, (len(result.samples), result.error)
                got = {s.fields.get("guest_agent_connected") for s in result.samples}
                assert got == {connected}, got

            return run

        ways: list[tuple[str, Callable[[], None]]] = [
            ("a. QmpSource.poll, agent_ping = false", poll(monitors, None)),
            ("b. agent_ping = true, every agent answering", poll(pinging, True)),
            ("c. agent_ping = true, no agent answering", poll(silent, False)),
            ("d. naive: b's pings one VM after another", lambda: naive_pings(stand_ins)),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in ways}
        for _, fn in ways:
            fn()  # warm-up (and the identity, once per VM start)
        before = load()
        for _ in range(repeat):
            for name, fn in ways:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        after = load()
    finally:
        if stand_in is not None:
            stand_in.kill()
            stand_in.wait()
        host.close()
        for path in answering.iterdir():
            path.unlink()
        answering.rmdir()
    a = median(times[ways[0][0]])
    rows = []
    for name, _ in ways:
        m = median(times[name])
        rows.append([name, fmt_ms(m), f"{fmt_ms(min(times[name]))}..{fmt_ms(max(times[name]))}",
                     fmt_ms(m / vms), f"{m / a:.2f}x"])  # fmt: skip
    print(
        f"== QMP: one poll of {vms} paused QEMU VMs with the agent's port (Proxmox layout), "
        f"median of {repeat}, interleaved; started in {booted:.1f} s"
    )
    print(
        table(
            ["way", "ms/poll", "min..max ms", "ms/VM", "vs a"],
            rows,
            [False, True, True, True, True],
        )
    )
    b, c = median(times[ways[1][0]]), median(times[ways[2][0]])
    per_vm = (b - a) / vms * 1e3
    ok_ratio, ok_per_vm = b <= TARGET_PING_VS_MONITORS * a, per_vm < TARGET_PING_MS_PER_VM
    print(
        f"  answering agents: b / a = {b / a:.2f}x (target <= {TARGET_PING_VS_MONITORS:g}x): "
        f"{verdict(ok_ratio)}; the pings add {per_vm:.3f} ms per VM "
        f"(target < {TARGET_PING_MS_PER_VM:g} ms): {verdict(ok_per_vm)}"
    )
    d = median(times[ways[3][0]])
    print(
        f"  the pings side by side (b - a) {fmt_ms(b - a)} ms for {vms} VMs; the naive loop (d) "
        f"{fmt_ms(d)} ms ({d / max(b - a, 1e-9):.1f}x)"
    )
    print(
        f"  no agent answering: c - a = {c - a:.2f} s for {vms} VMs: the agent's timeout, "
        "side by side, not once per VM"
    )
    print(f"  {before} before, {after} after\n")
    return ok_ratio and ok_per_vm


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--part", choices=("vsphere", "qmp", "all"), default="all")
    p.add_argument("--vsphere-vms", type=int, default=10000, choices=sorted(SHAPES))
    p.add_argument("--qmp-vms", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    repeat = 2 if args.quick else args.repeat
    print(
        "The integration service's cost per poll (this machine is shared with other jobs: "
        "wall times are\ninflated and noisy; both ways of each table run interleaved in the "
        "same run)\n"
    )
    if args.part in ("vsphere", "all"):
        reason = launcher_available()
        if reason is not None:
            print(f"== vSphere: skipped, the simulator cannot be built: {reason}\n")
        else:
            bench_vsphere(200 if args.quick else args.vsphere_vms, repeat)
    if args.part in ("qmp", "all"):
        bench_qmp(20 if args.quick else args.qmp_vms, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
