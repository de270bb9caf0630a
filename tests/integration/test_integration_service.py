"""The guest's integration service against real components: VMware Tools on the vCenter
simulator, and the QEMU guest agent under a real libvirtd and behind plain QEMU in the
Proxmox layout.

The host side is real (libvirtd, QEMU, its virtio-serial port and socket). Inside the test
guest no qemu-ga runs: its /init starts a small stand-in on the org.qemu.guest_agent.0 port
when the kernel command line says `tb.agent=1` (tests/stack/guest_image.py), answering
guest-sync, guest-sync-delimited and guest-ping as qemu-ga does. Three cases on each host: a
channel nothing in the guest opens, a guest that answers, and a guest that does not answer
in time (its QEMU stopped with SIGSTOP; on QMP also its vCPUs stopped with QMP `stop`).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from telegraf_balloon.config import QmpConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import Sample
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.integration.test_explain_libvirt import explain_once
from tests.stack.common import StackError, wait_for
from tests.stack.fixtures import new_qemu_host, running
from tests.stack.inprocess import Plugin
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.qemu_stack import QemuError, QemuHost
from tests.stack.vcsim import Vcsim
from tests.stack.vsphere_setup import all_vms, configure_vm, connect, disconnect, vm_by_name
from tests.test_explain import assert_found

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
UP, DOWN = "agent-up", "agent-down"  # libvirt domains: a stand-in agent, and none
AGENT_UP, AGENT_DOWN, NO_AGENT = 301, 302, 303  # QMP VMs (Proxmox vmids)
DEADLINE = 5.0  # [agent] timeout of the runs below


def agent_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k.startswith("guest_agent_")}


# --- libvirt ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_domains(libvirt_stack: LibvirtStack) -> Iterator[LibvirtStack]:
    """Two booted guests with the agent's channel: one runs the stand-in agent, one nothing."""

    def boot() -> None:
        libvirt_stack.define_guest(UP, 256, 2, agent_channel=True, cmdline_extra="tb.agent=1")
        libvirt_stack.define_guest(DOWN, 256, 2, agent_channel=True)
        for name in (UP, DOWN):
            libvirt_stack.wait_guest_stats(name, timeout=240)
        wait_for(
            lambda: "state='connected'" in _xml(libvirt_stack, UP), 60, "the agent's port open"
        )

    def remove() -> None:
        libvirt_stack.remove_domains([UP, DOWN])

    with running(boot, remove, (StackError,), "the agent guests did not boot"):
        yield libvirt_stack


def _xml(stack: LibvirtStack, name: str) -> str:
    with stack.connection() as conn:
        return str(conn.lookupByName(name).XMLDesc(0))


def _toml(stack: LibvirtStack, source: str = "", extra: str = "") -> str:
    return (
        f'[agent]\ntimeout = "{DEADLINE:g}s"\n[[sources.libvirt]]\nuri = "{stack.uri}"\n'
        f'refresh_interval = "2s"\n{source}\n{extra}'
    )


PINGING = "read_only = false\nagent_ping = true\n"


def test_libvirt_channel_state_comes_with_the_xml(agent_domains: LibvirtStack) -> None:
    """agent_ping off: the live XML's channel state, no ping, no latency; a domain without
    the channel has no agent field at all."""
    plugin = Plugin(_toml(agent_domains))
    try:
        lines = {
            line["tags"]["guest"]: line["fields"]
            for line in plugin.poll()
            if line["measurement"] == "balloon"
        }
        assert agent_fields(lines[UP]) == {"guest_agent_connected": True}
        assert agent_fields(lines[DOWN]) == {"guest_agent_connected": False}
        others = [g for g in lines if g not in (UP, DOWN)]
        assert all(agent_fields(lines[g]) == {} for g in others)
    finally:
        plugin.close()


def test_libvirt_guest_ping_answered_and_not(agent_domains: LibvirtStack) -> None:
    plugin = Plugin(_toml(agent_domains, PINGING))
    try:
        up = plugin.vm(UP)
        assert up["guest_agent_connected"] is True
        assert 0 < up["guest_agent_latency_seconds"] < 1.0
        down = plugin.vm(DOWN)
        assert agent_fields(down) == {"guest_agent_connected": False}  # no agent: no latency
    finally:
        plugin.close()


def test_libvirt_stopped_qemu_does_not_answer_and_the_poll_keeps_its_deadline(
    agent_domains: LibvirtStack,
) -> None:
    plugin = Plugin(_toml(agent_domains, PINGING))
    pid = agent_domains.guest_pid(UP)
    try:
        assert plugin.vm(UP)["guest_agent_connected"] is True
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # the second poll: the first ping has still not come back
                started = time.monotonic()
                lines = plugin.poll()
                took = time.monotonic() - started
                assert took < DEADLINE, took
                collector = next(x for x in lines if x["measurement"] == "balloon_collector")
                assert collector["fields"]["up"] is True, plugin.log_stream.getvalue()
                up = next(
                    x["fields"]
                    for x in lines
                    if x["measurement"] == "balloon" and x["tags"]["guest"] == UP
                )
                assert agent_fields(up) == {"guest_agent_connected": False}
        finally:
            os.kill(pid, signal.SIGCONT)

        def answers_again() -> bool:
            return plugin.vm(UP).get("guest_agent_connected") is True

        wait_for(answers_again, 30, "the agent answering after SIGCONT")
    finally:
        os.kill(pid, signal.SIGCONT)
        plugin.close()


def test_libvirt_explain_integration_service_down_and_guest_slow(
    agent_domains: LibvirtStack,
) -> None:
    """A domain whose agent is not there while its balloon holds 64 MiB; a rule that calls
    any answer slow (the stand-in answers in milliseconds)."""
    with agent_domains.connection() as conn:
        dom = conn.lookupByName(DOWN)
        dom.setMemory(192 * 1024)
        try:
            wait_for(lambda: dom.info()[2] == 192 * 1024, 60, "the balloon at 64 MiB")
            doc = explain_once(
                _toml(
                    agent_domains,
                    PINGING,
                    '[[thresholds]]\nfield = "guest_agent_latency_seconds"\nwarn = 0.000001\n',
                )
            )
        finally:
            dom.setMemory(256 * 1024)
    vms = {vm["guest"]: vm for vm in doc["vms"]}
    down = {f["code"]: f for f in vms[DOWN]["findings"]}
    assert "integration_service_down" in down and "guest_slow" not in down
    finding = down["integration_service_down"]
    assert "holds 64 MiB" in finding["message"]
    uuid = vms[DOWN]["tags"]["uuid"]
    assert "systemctl enable --now qemu-guest-agent" in finding["remedy"]
    assert f"qemu-agent-command {uuid} " in finding["remedy"]
    up = {f["code"]: f for f in vms[UP]["findings"]}
    assert "guest_slow" in up and "integration_service_down" not in up  # its balloon is empty
    assert "ms to answer a guest-ping" in up["guest_slow"]["message"]


# --- qmp: plain QEMU in the Proxmox layout -------------------------------------------------------


@pytest.fixture(scope="module")
def agent_host() -> Iterator[QemuHost]:
    """301 runs the stand-in agent, 302 has the channel and nothing in its guest, 303 (paused)
    has a channel its config does not enable: never pinged."""
    host = new_qemu_host()

    def boot() -> None:
        host.write_conf(AGENT_UP, "memory: 256\nballoon: 128\nagent: 1\nname: agent-up\n")
        host.write_conf(AGENT_DOWN, "memory: 256\nagent: 1,fstrim_cloned_disks=1\n")
        host.write_conf(NO_AGENT, "memory: 256\nagent: 0\n")
        host.start(AGENT_UP, memory_mib=256, agent=True, cmdline_extra="tb.agent=1", wait=False)
        host.start(AGENT_DOWN, memory_mib=256, agent=True, wait=False)
        host.start(NO_AGENT, memory_mib=256, agent=True, boot=False, wait=False)
        for vmid in (AGENT_UP, AGENT_DOWN, NO_AGENT):
            host.finish_start(host.vms[vmid])
        for vmid in (AGENT_UP, AGENT_DOWN):
            host.wait_guest_report(vmid)
        wait_for(lambda: "AGENT-READY" in host.console_tail(AGENT_UP, 100_000), 60, "the agent")

    with running(boot, host.close, (QemuError, OSError), "QEMU did not start"):
        yield host


def qmp_source(host: QemuHost, **options: Any) -> QmpSource:
    config = QmpConfig(sockets=(host.glob,), proxmox_config=str(host.conf_dir), **options)
    return QmpSource(config, "node-1", Log(io.StringIO()))


def poll(source: QmpSource) -> tuple[dict[int, Sample], float]:
    started = time.monotonic()
    result = source.poll(time.time())
    took = time.monotonic() - started
    assert result.error is None, result.error
    return {int(s.tags["vmid"]): s for s in result.samples}, took


def test_qmp_agent_answered_and_not(agent_host: QemuHost) -> None:
    samples, took = poll(qmp_source(agent_host))
    up = agent_fields(samples[AGENT_UP].fields)
    assert up["guest_agent_connected"] is True
    assert 0 < up["guest_agent_latency_seconds"] < 1.0
    assert agent_fields(samples[AGENT_DOWN].fields) == {"guest_agent_connected": False}
    assert agent_fields(samples[NO_AGENT].fields) == {}  # its config does not enable it
    assert took < DEADLINE
    # agent_ping off: nothing is sent to any agent socket
    samples, _ = poll(qmp_source(agent_host, agent_ping=False))
    assert all(agent_fields(s.fields) == {} for s in samples.values())


def test_qmp_guest_stopped_does_not_answer_in_time(agent_host: QemuHost) -> None:
    """QMP `stop`: the monitor answers, the guest's vCPUs (and so its agent) do not."""
    source = qmp_source(agent_host)
    monitor = agent_host.monitor(AGENT_UP)
    monitor.call("stop")
    try:
        samples, took = poll(source)
        assert agent_fields(samples[AGENT_UP].fields) == {"guest_agent_connected": False}
        assert "memory_current_bytes" in samples[AGENT_UP].fields  # the monitor still answered
        assert took < DEADLINE
    finally:
        monitor.call("cont")
    wait_for(
        lambda: poll(source)[0][AGENT_UP].fields.get("guest_agent_connected") is True,
        30,
        "the agent answering after cont",
    )


def test_qmp_sigstop_keeps_the_poll_within_its_deadline(agent_host: QemuHost) -> None:
    """A stopped QEMU answers neither its monitor nor its agent: the VM is skipped for the
    poll (its monitor is busy), the others are reported, and the poll ends in time."""
    source = qmp_source(agent_host)
    pid = agent_host.vms[AGENT_UP].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        samples, took = poll(source)
        assert AGENT_UP not in samples
        assert agent_fields(samples[AGENT_DOWN].fields) == {"guest_agent_connected": False}
        assert took < DEADLINE
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        lambda: (
            poll(source)[0].get(AGENT_UP, Sample("", {}, {})).fields.get("guest_agent_connected")
            is True
        ),
        30,
        "the agent answering after SIGCONT",
    )


def test_qmp_agent_socket_held_by_another_client_never_blocks(agent_host: QemuHost) -> None:
    """The agent's socket serves one client at a time: while another client holds it, the
    ping waits in its queue and counts as not answered after its timeout (as Proxmox's own
    `qm agent ping` would); the monitor's figures are not held up."""
    vm = agent_host.vms[AGENT_UP]
    assert vm.qga is not None
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.connect(str(vm.qga))
    try:
        samples, took = poll(qmp_source(agent_host))
        assert agent_fields(samples[AGENT_UP].fields) == {"guest_agent_connected": False}
        assert "memory_current_bytes" in samples[AGENT_UP].fields
        assert took < DEADLINE
    finally:
        holder.close()


def test_qmp_explain_integration_service_down_and_guest_slow(agent_host: QemuHost) -> None:
    """302's agent is not there while its balloon holds 64 MiB: the qm remedy names its vmid;
    a rule that calls any answer slow finds 301's (the only agent that answers)."""
    monitor = agent_host.monitor(AGENT_DOWN)
    monitor.call("balloon", value=192 * MIB)
    try:
        wait_for(lambda: monitor.actual() == 192 * MIB, 60, "the balloon at 64 MiB")
        doc = explain_once(
            f'[agent]\ntimeout = "{DEADLINE:g}s"\n[[sources.qmp]]\n'
            f'sockets = ["{agent_host.glob}"]\nproxmox_config = "{agent_host.conf_dir}"\n'
            '[[thresholds]]\nfield = "guest_agent_latency_seconds"\nwarn = 0.000001\n'
        )
    finally:
        monitor.call("balloon", value=256 * MIB)
    down = assert_found(
        doc, "integration_service_down", "warning", "holds 64 MiB", "systemctl enable --now"
    )
    assert f"$ qm agent {AGENT_DOWN} ping" in down["remedy"]
    slow = assert_found(doc, "guest_slow", "warning", "to answer a guest-ping", "vmstat 1")
    vms = {vm["tags"]["vmid"]: {f["code"] for f in vm["findings"]} for vm in doc["vms"]}
    assert "integration_service_down" in vms[str(AGENT_DOWN)]
    assert "guest_slow" in vms[str(AGENT_UP)] and slow["severity"] == "warning"


# --- vSphere: VMware Tools ----------------------------------------------------------------------


def test_vsphere_explain_tools_not_running_or_not_installed(
    vcsim_factory: Callable[..., Vcsim],
) -> None:
    sim = vcsim_factory(dc=1, cluster=1, host=1, standalone_host=0, vm=4)
    si = connect(sim)
    try:
        names = sorted(vm.name for vm in all_vms(si))
        stopped, missing, running_tools, idle = names
        configure_vm(
            vm_by_name(si, stopped),
            memory_mb=2048,
            ballooned_mb=512,
            tools_running_status="guestToolsNotRunning",
            tools_version_status="guestToolsCurrent",
        )
        configure_vm(
            vm_by_name(si, missing),
            memory_mb=2048,
            vmmemctltarget_kb=256 * 1024,
            tools_version_status="guestToolsNotInstalled",
        )
        configure_vm(
            vm_by_name(si, running_tools),
            memory_mb=2048,
            ballooned_mb=512,
            tools_running_status="guestToolsRunning",
            tools_version_status="guestToolsCurrent",
        )
    finally:
        disconnect(si)
    doc = explain_once(
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "{sim.username}"\n'
        f'password = "{sim.password}"\nca_file = "{sim.cert_file}"\n'
    )
    vms = {vm["guest"]: {f["code"]: f for f in vm["findings"]} for vm in doc["vms"]}
    down = vms[stopped]["integration_service_down"]
    assert "VMware Tools is not running (version status current)" in down["message"]
    assert "holds 512 MiB" in down["message"]
    assert "systemctl enable --now open-vm-tools" in down["remedy"]
    assert "not installed" in vms[missing]["integration_service_down"]["message"]
    assert "is asked to hold 256 MiB" in vms[missing]["integration_service_down"]["message"]
    assert "integration_service_down" not in vms[running_tools]
    assert "integration_service_down" not in vms[idle]  # tools not running, balloon unused
