"""Real QMP monitors coming and going through one Runner: the plugin's memory stops growing.

20 paused QEMU processes serve QMP sockets laid out as Proxmox lays them out, each with its
VM config. Every poll 10 of the sockets move to new names (`os.rename` of a listening unix
socket: the same QEMU answers under the new path) with a new config beside them, the old
config left on disk as Proxmox leaves a stopped VM's: to the plugin, 10 VMs stopped and 10
it never saw started. Every 50 polls one QEMU process is stopped and a new one started, so
monitors also come and go for real. One VM in four has a config with a bad line (a fault
logged under its key). Starting a QEMU per new key would take 0.2-0.5 s each; renaming
brings 4,000 keys through the real source, health stage, serializer and log in a minute.

What must hold: the health stage tracks the live VMs and those within their grace only;
the qmp source's Proxmox-config cache and the fault log hold the live VMs only; and what
the package's own code allocated during 100 polls (1,000 VMs passing) and still holds
(tracemalloc) is the state of the live VMs, not of the 1,000.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

import telegraf_balloon
from telegraf_balloon import lineprotocol
from telegraf_balloon.config import load_text
from telegraf_balloon.health import GRACE_POLLS
from telegraf_balloon.log import Log
from telegraf_balloon.runner import Runner
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.stack.common import need_program, unavailable
from tests.stack.qemu_stack import QemuError, QemuHost

pytestmark = pytest.mark.integration

LIVE = 20
CHURN = 10  # sockets renamed each poll
POLLS = 400
RESTART_EVERY = 50
WINDOWS = (100, 300)  # tracemalloc runs for WINDOW polls from each (it slows the plugin)
WINDOW = 100
HELD_LIMIT = 400_000  # bytes; before the fix, 1,000 VMs held about 1.2 MB
PACKAGE = str(Path(telegraf_balloon.__file__).parent)


def conf(vmid: int) -> str:
    bad = "this line is not key: value in a config\n" if vmid % 4 == 0 else ""
    return f"memory: 128\nballoon: 64\nname: churn-{vmid}\n{bad}"


@pytest.fixture(scope="module")
def churn_host() -> Iterator[QemuHost]:
    if os.geteuid() != 0:
        unavailable("QMP sockets are root-only: the qmp tests run as root")
    host = QemuHost(need_program("qemu-system-x86_64"))
    try:
        vmids = list(range(1000, 1000 + LIVE))
        for vmid in vmids:
            host.write_conf(vmid, conf(vmid))
        for first in range(0, LIVE, 10):
            host.start_many(vmids[first : first + 10], memory_mib=64, boot=False)
    except (QemuError, OSError) as exc:
        host.close()
        unavailable(f"QEMU did not start: {exc}")
    yield host
    host.close()


def package_bytes() -> int:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, PACKAGE + "*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_qmp_monitors_coming_and_going_leave_memory_flat(churn_host: QemuHost) -> None:
    host = churn_host
    toml = (
        f'[agent]\ntimeout = "10s"\n[[sources.qmp]]\nsockets = ["{host.glob}"]\n'
        f'proxmox_config = "{host.conf_dir}"\nconnect_timeout = "5s"\n'
    )
    config = load_text(toml, "churn.toml")
    sockets = {vmid: vm.qmp for vmid, vm in host.vms.items()}  # vmid it answers as -> path
    process_of = {vmid: vmid for vmid in sockets}  # vmid -> the QEMU (its first vmid)
    next_vmid = 5000
    lineprotocol.clear_caches()
    with open(os.devnull, "w") as stderr, open(os.devnull, "wb") as stdout:
        log = Log(stderr)
        source = QmpSource(config.qmp[0], "node-1", log)
        runner = Runner(config, [source], stdout, log, "node-1")
        held: list[int] = []
        try:
            for poll in range(POLLS):
                if poll in WINDOWS:
                    tracemalloc.start()
                assert runner.poll(), poll
                # The live VMs, those gone within the grace (a stopped one too), the host.
                assert runner.health.tracked() <= LIVE + (CHURN + 1) * GRACE_POLLS + 1, poll
                assert len(source._pve) <= LIVE, poll
                assert log.faults() <= LIVE, poll
                if poll + 1 - WINDOW in WINDOWS:
                    held.append(package_bytes())
                    tracemalloc.stop()
                for vmid in sorted(sockets)[:CHURN]:
                    path = sockets.pop(vmid)
                    new = path.with_name(f"{next_vmid}.qmp")
                    host.write_conf(next_vmid, conf(next_vmid))
                    os.rename(path, new)
                    sockets[next_vmid] = new
                    process_of[next_vmid] = process_of.pop(vmid)
                    next_vmid += 1
                if poll % RESTART_EVERY == RESTART_EVERY - 1:
                    gone = min(sockets)
                    host.stop(process_of.pop(gone))
                    sockets.pop(gone).unlink(missing_ok=True)  # QEMU removes its first name
                    host.write_conf(next_vmid, conf(next_vmid))
                    vm = host.start(next_vmid, memory_mib=64, boot=False)
                    sockets[next_vmid] = vm.qmp
                    process_of[next_vmid] = next_vmid
                    next_vmid += 1
        finally:
            tracemalloc.stop()
            runner.close()
    assert next_vmid - 5000 >= POLLS * CHURN
    assert len(held) == len(WINDOWS)
    assert all(size < HELD_LIMIT for size in held), held
