"""Balloon targets only from recent realtime samples, against the real vCenter simulator.

The plugin logs in as its own user, "monitor"; the test sets VMs up as the simulator's
administrator. The simulator refuses QueryPerf to "monitor" on demand with NoPermission (what
vCenter answers a role without the privilege on the VMs), puts a VM's newest sample in the
past (a host that stopped reporting) or leaves a VM out of the answer.

Sample ages are the server's (its reply's Date minus the sample's timestamp) plus the time
since, on the source's clock: the tests move that clock (and the runner's) rather than sleep.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import line_protocol_parser
import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.runner import Runner
from telegraf_balloon.sources.vsphere.source import VsphereSource
from tests.stack.clock import Clock
from tests.stack.fixtures import running_vcsim
from tests.stack.vcsim import Vcsim
from tests.stack.vsphere_setup import (
    all_vms,
    configure_vm,
    connect,
    disconnect,
    query_perf,
    vm_by_name,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
GIB = 1024 * MIB
MONITOR = "monitor"
MONITOR_PASSWORD = "m0nitor-Passw0rd"
INVENTORY = {
    "dc": 1,
    "cluster": 1,
    "host": 2,
    "standalone_host": 0,
    "vm": 4,
    "users": {MONITOR: MONITOR_PASSWORD},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with running_vcsim(INVENTORY) as simulator:
        yield simulator


@pytest.fixture()
def si(sim: Vcsim) -> Iterator[Any]:
    client = connect(sim)  # the administrator
    sim.refuse_query_perf([])
    try:
        yield client
    finally:
        sim.refuse_query_perf([])
        for vm in all_vms(client):  # every VM back to no balloon and no lag
            configure_vm(vm, ballooned_mb=0, vmmemctltarget_kb=0, perf_lag_s=0, perf_omit=False)
        disconnect(client)


class Harness:
    """The real runner and a real vSphere source (as "monitor"), on one test clock."""

    def __init__(self, sim: Vcsim, health: str = "") -> None:
        self.clock = Clock(1000.0)  # the source's monotonic clock and the runner's wall clock
        self.log_stream = io.StringIO()
        log = Log(self.log_stream)
        config = sim.source_config(username=MONITOR, password=MONITOR_PASSWORD, page_size=500)
        self.source = VsphereSource(config, log, timeout=10, clock=self.clock)
        toml = f'[[sources.vsphere]]\nurl = "{sim.url}"\n{health}'
        self.out = io.BytesIO()
        self.runner = Runner(
            load_text(toml, "test.toml"), [self.source], self.out, log, "plugin-host", self.clock
        )

    def poll(self, at: float) -> dict[str, dict[str, Any]]:
        """One poll at test time `at`: {guest or "collector": fields}, lines checked."""
        self.clock.now = at
        start = self.out.tell()
        self.runner.poll()
        out: dict[str, dict[str, Any]] = {}
        for text in self.out.getvalue()[start:].decode().splitlines():
            line = line_protocol_parser.parse_line(text)
            problems = catalog.check_point(line["measurement"], line["tags"], line["fields"])
            assert problems == [], problems
            if line["measurement"] == catalog.BALLOON:
                out[line["tags"]["guest"]] = dict(line["fields"])
            elif line["measurement"] == catalog.COLLECTOR:
                out["collector"] = dict(line["fields"])
        return out

    def lines(self, prefix: str, text: str) -> list[str]:
        return [
            line
            for line in self.log_stream.getvalue().splitlines()
            if line.startswith(prefix) and text in line
        ]

    def close(self) -> None:
        self.runner.close()


def _early_in_a_sample() -> None:
    """Wait (at most 9 s) until the newest 20 s sample is 0.5-12 s old, so that a sample
    taken now is under 13 s old: still within the bound 20 s later, past it 45 s later."""
    phase = time.time() % 20
    if not 0.5 <= phase <= 12:
        time.sleep((20.5 - phase) % 20)


def test_refused_queryperf_freezes_no_balloon(sim: Vcsim, si: Any) -> None:
    name = sorted(vm.name for vm in all_vms(si))[0]
    configure_vm(
        vm_by_name(si, name), memory_mb=4096, ballooned_mb=1024, vmmemctltarget_kb=2 * GIB // 1024
    )
    plugin = Harness(sim, '[health]\nstuck_for = "0s"\nstuck_gap_ratio = 0.05\n')
    try:
        _early_in_a_sample()
        first = plugin.poll(1000.0)[name]
        assert first["balloon_actual_bytes"] == 1 * GIB
        assert first["balloon_target_bytes"] == 2 * GIB
        assert first["stuck"] is True  # a quarter of its memory short, for stuck_for = 0 s

        sim.refuse_query_perf([MONITOR])  # the plugin's role loses the privilege
        configure_vm(vm_by_name(si, name), ballooned_mb=0, vmmemctltarget_kb=0)  # balloon gone
        # The refusal is the plugin user's only: vCenter itself has fresh samples.
        vm_ref = vm_by_name(si, name)
        fresh = query_perf(si, [vm_ref], ["mem.vmmemctl.average"])
        assert fresh[vm_ref._moId]["mem.vmmemctl.average"] == [0]

        # 20 s on, one QueryPerf refused: the sample (now under 40 s old) still holds.
        held = plugin.poll(1020.0)
        assert held[name]["balloon_target_bytes"] == 2 * GIB
        warnings = plugin.lines("W! ", "QueryPerf failed")
        assert len(warnings) == 1, plugin.log_stream.getvalue()
        assert "NoPermission" in warnings[0]

        # 45 s after the last sample: quickStats' 0, no target, not judged stuck.
        for at in (1045.0, 1055.0, 1120.0):
            later = plugin.poll(at)
            vm = later[name]
            assert vm["balloon_actual_bytes"] == 0, (at, vm)
            assert vm["memory_current_bytes"] == 4096 * MIB
            assert "balloon_target_bytes" not in vm and "balloon_gap_bytes" not in vm, (at, vm)
            assert "stuck" not in vm, (at, vm)
            assert all("balloon_target_bytes" not in f for f in later.values())
            assert later["collector"]["up"] is True and "error" not in later["collector"]
        assert plugin.lines("W! ", "QueryPerf failed") == warnings  # once, not every poll
        assert "balloon targets absent (quickStats used)" in warnings[0]
        assert "last 40 s" in warnings[0]  # two realtime samples
        assert plugin.lines("I! ", "QueryPerf") == []

        sim.refuse_query_perf([])  # the role is fixed
        back = plugin.poll(1140.0)
        assert back[name]["balloon_target_bytes"] == 0
        assert back[name]["stuck"] is False
        assert all("balloon_target_bytes" in f for g, f in back.items() if g != "collector")
        assert len(plugin.lines("I! ", "QueryPerf answering again")) == 1
        assert len(plugin.lines("W! ", "QueryPerf failed")) == 1
    finally:
        plugin.close()


def test_a_late_sample_is_not_used_even_when_queryperf_answers(sim: Vcsim, si: Any) -> None:
    names = sorted(vm.name for vm in all_vms(si))
    late, recent = names[1], names[2]
    # The counter says 900 MiB ballooned where quickStats say 512 MB: which one shows is seen.
    for vm_name in (late, recent):
        configure_vm(
            vm_by_name(si, vm_name),
            memory_mb=2048,
            ballooned_mb=512,
            vmmemctltarget_kb=1024 * 1024,
            perf={"mem.vmmemctl.average": 900 * 1024},
        )
    configure_vm(vm_by_name(si, late), perf_lag_s=120)  # its host stopped reporting 2 min ago
    plugin = Harness(sim)
    try:
        got = plugin.poll(1000.0)
        assert got[recent]["balloon_actual_bytes"] == 900 * MIB
        assert got[recent]["balloon_target_bytes"] == 1 * GIB
        assert got[late]["balloon_actual_bytes"] == 512 * MIB  # quickStats
        assert got[late]["memory_current_bytes"] == (2048 - 512) * MIB
        assert "balloon_target_bytes" not in got[late]
        assert got["collector"]["up"] is True
        warnings = plugin.lines("W! ", "realtime sample of 1 VM(s) is over")
        assert len(warnings) == 1, plugin.log_stream.getvalue()
        assert plugin.lines("W! ", "QueryPerf failed") == []

        got = plugin.poll(1020.0)  # asked again: still late, not logged again
        assert "balloon_target_bytes" not in got[late]
        assert len(plugin.lines("W! ", "is over")) == 1

        configure_vm(vm_by_name(si, late), perf_lag_s=0)  # the host reports again
        got = plugin.poll(1040.0)
        assert got[late]["balloon_target_bytes"] == 1 * GIB
        assert got[late]["balloon_actual_bytes"] == 900 * MIB
        assert len(plugin.lines("I! ", "recent again")) == 1
    finally:
        plugin.close()


def test_a_vm_left_out_of_the_answer_gets_no_target(sim: Vcsim, si: Any) -> None:
    name = sorted(vm.name for vm in all_vms(si))[3]
    configure_vm(
        vm_by_name(si, name), memory_mb=2048, ballooned_mb=300, vmmemctltarget_kb=700 * 1024
    )
    plugin = Harness(sim)
    try:
        first = plugin.poll(1000.0)[name]
        assert first["balloon_target_bytes"] == 700 * MIB
        configure_vm(vm_by_name(si, name), ballooned_mb=100, perf_omit=True)
        # 20 s on the last sample is still recent, but the new answer has nothing for the VM.
        got = plugin.poll(1020.0)
        assert "balloon_target_bytes" not in got[name], got[name]
        assert got[name]["balloon_actual_bytes"] == 100 * MIB  # quickStats
        others = [f for g, f in got.items() if g not in (name, "collector")]
        assert others and all("balloon_target_bytes" in f for f in others)
        assert got["collector"]["up"] is True
    finally:
        plugin.close()


def test_the_refusal_is_for_the_named_user_only(sim: Vcsim, si: Any) -> None:
    """The simulator's switch itself: NoPermission for "monitor", the administrator unaffected,
    after the given number of successful calls; other credentials still cannot log in."""
    from pyVmomi import vim

    monitor = connect(sim, user=MONITOR, pwd=MONITOR_PASSWORD)
    try:
        vms = all_vms(monitor)
        sim.reset_calls()
        sim.refuse_query_perf([MONITOR], after=1)
        assert query_perf(monitor, vms, ["mem.vmmemctl.average"])  # the one let through
        with pytest.raises(vim.fault.NoPermission) as refused:
            query_perf(monitor, vms, ["mem.vmmemctl.average"])
        assert refused.value.privilegeId == "System.View"
        assert query_perf(si, all_vms(si), ["mem.vmmemctl.average"])
        sim.refuse_query_perf([])
        assert query_perf(monitor, vms, ["mem.vmmemctl.average"])
        assert sim.calls()["query_perf"]["denied"] == 1
    finally:
        disconnect(monitor)
    for user, pwd in ((MONITOR, "wrong"), ("nobody", MONITOR_PASSWORD)):
        with pytest.raises(vim.fault.InvalidLogin):
            connect(sim, user=user, pwd=pwd)
    assert {s["user"] for s in sim.sessions()} == {sim.username}
