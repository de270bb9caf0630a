"""[[sources.qmp]] against real QEMU processes (TCG) laid out as Proxmox VE lays them out.

The session's QEMUs (tests/stack/fixtures.py ``qmp_host``): 101 booted with a virtio balloon
and a Proxmox config (256 MiB minimum, a name QEMU's -name does not have); 102 paused with no
balloon device, its config saying ``balloon: 0``; 104 paused, a balloon device, no config.
Tests that need other VMs start and stop their own in the same directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import QmpConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult, Sample
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.stack.common import logged, need_program, unavailable
from tests.stack.fixtures import QMP_BOOTED, QMP_NO_BALLOON, QMP_PLAIN, QMP_UUID
from tests.stack.inprocess import Plugin
from tests.stack.libvirt_stack import LibvirtStack
from tests.stack.qemu_stack import QemuError, QemuHost

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def source_for(
    host: QemuHost, stream: io.StringIO, proxmox: Optional[str] = None, **options: Any
) -> QmpSource:
    pve = str(host.conf_dir) if proxmox is None else proxmox
    config = QmpConfig(sockets=(host.glob,), proxmox_config=pve, **options)
    return QmpSource(config, "node-1", Log(stream))


def said(stream: io.StringIO) -> list[str]:
    """The `I! ` lines of the log but those about this machine (`logged`)."""
    return [line for line in logged(stream.getvalue()) if line.startswith("I! ")]


def _wait_refused(path: Path, timeout: float = 10.0) -> None:
    """Until connecting to `path` is refused: nothing listens there any more."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                return
            except OSError:
                pass
        assert time.monotonic() < deadline, f"{path} still accepts connections"
        time.sleep(0.05)


def by_vmid(result: PollResult) -> dict[int, Sample]:
    assert result.error is None, result.error
    return {int(Path(s.key).stem): s for s in result.samples}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.2)


def number(sample: Sample, name: str) -> int:
    value = sample.fields[name]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
    return int(value)


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_booted_vm_exact_bytes_before_and_after_inflating(qmp_host: QemuHost) -> None:
    monitor = qmp_host.monitor(QMP_BOOTED)
    monitor.set_interval(1)
    monitor.call("balloon", value=512 * MIB)
    wait_for(lambda: monitor.actual() == 512 * MIB, 30, "balloon deflated")
    stream = io.StringIO()
    source = source_for(qmp_host, stream)

    def guest_view_matches(expected_total: Callable[[int], bool]) -> Sample:
        """Poll until the guest's stats agree with what the guest prints on its console."""
        found: list[Sample] = []

        def check() -> bool:
            sample = by_vmid(source.poll(time.time()))[QMP_BOOTED]
            found[:] = [sample]
            total = sample.fields.get("guest_total_bytes")
            try:
                console = qmp_host.guest_meminfo(QMP_BOOTED)["MemTotal"] * 1024
            except QemuError:
                return False  # the guest has not printed a whole snapshot yet
            return isinstance(total, int) and total == console and expected_total(total)

        wait_for(check, 60, "guest stats agree with the guest's own /proc/meminfo")
        return found[0]

    before = guest_view_matches(lambda total: total > 400 * MIB)
    assert before.tags == {
        "host": "node-1",
        "source": "qmp",
        "guest": "web-renamed",  # the Proxmox config's name; QEMU's -name says "web"
        "hypervisor": "qemu",  # TCG: query-kvm says enabled = false
        "uuid": QMP_UUID,
        "vmid": str(QMP_BOOTED),
    }
    fields = before.fields
    assert fields["memory_max_bytes"] == 512 * MIB
    assert fields["memory_current_bytes"] == 512 * MIB
    assert fields["balloon_actual_bytes"] == 0
    assert fields["reservation_bytes"] == 256 * MIB
    assert fields["stats_period_seconds"] == 1 and fields["stats_disabled"] is False
    assert fields["inflation_blocked"] is False
    assert 0 <= float(fields["stats_age_seconds"]) < 5
    for name in ("guest_free_bytes", "guest_available_bytes", "minor_faults_total"):
        assert number(before, name) > 0, name
    pid = qmp_host.vms[QMP_BOOTED].pid
    rss = vm_rss(pid)
    assert abs(number(before, "rss_bytes") - rss) < rss * 0.2
    assert catalog.check_point(catalog.BALLOON, before.tags, dict(before.fields)) == []

    # Inflate over the VM's own QMP connection, as Proxmox's pvestatd does.
    monitor.call("balloon", value=256 * MIB)
    wait_for(lambda: monitor.actual() == 256 * MIB, 30, "balloon inflated to 256 MiB")
    after = guest_view_matches(lambda total: total < number(before, "guest_total_bytes"))
    fields = after.fields
    assert fields["memory_max_bytes"] == 512 * MIB
    assert fields["memory_current_bytes"] == 256 * MIB
    assert fields["balloon_actual_bytes"] == 256 * MIB
    # virtio without DEFLATE_ON_OOM takes the balloon out of the guest's MemTotal
    assert number(before, "guest_total_bytes") - number(after, "guest_total_bytes") == 256 * MIB
    monitor.call("balloon", value=512 * MIB)
    wait_for(lambda: monitor.actual() == 512 * MIB, 30, "balloon deflated again")
    assert "W! " not in stream.getvalue() and "E! " not in stream.getvalue()


def test_no_balloon_device_and_proxmox_balloon_zero(qmp_host: QemuHost) -> None:
    vms = by_vmid(source_for(qmp_host, io.StringIO()).poll(time.time()))
    fixed = vms[QMP_NO_BALLOON]
    assert fixed.tags["guest"] == "fixed-db" and fixed.tags["vmid"] == str(QMP_NO_BALLOON)
    assert "uuid" not in fixed.tags  # no -smbios uuid: all zeros, absent
    assert fixed.fields["memory_max_bytes"] == 256 * MIB
    assert fixed.fields["memory_current_bytes"] == 256 * MIB
    assert fixed.fields["balloon_actual_bytes"] == 0
    assert fixed.fields["inflation_blocked"] is True
    for absent in ("reservation_bytes", "stats_period_seconds", "guest_total_bytes"):
        assert absent not in fixed.fields
    plain = vms[QMP_PLAIN]  # paused, never booted: a device, no driver, no stats yet
    assert plain.tags["guest"] == "plain-104"  # no config: QEMU's -name
    assert plain.fields["memory_max_bytes"] == 192 * MIB
    assert plain.fields["stats_period_seconds"] == 0 and plain.fields["stats_disabled"] is True
    assert plain.fields["inflation_blocked"] is False
    for absent in ("guest_total_bytes", "stats_age_seconds", "reservation_bytes"):
        assert absent not in plain.fields

    # Without Proxmox configs, a VM without a balloon device is blocked all the same.
    plain_vms = by_vmid(source_for(qmp_host, io.StringIO(), proxmox="").poll(time.time()))
    bare = plain_vms[QMP_NO_BALLOON]
    assert "vmid" not in bare.tags and bare.tags["guest"] == f"vm{QMP_NO_BALLOON}"
    assert bare.fields["inflation_blocked"] is True
    assert plain_vms[QMP_BOOTED].tags["guest"] == "web"  # QEMU's -name without the config


def test_proxmox_tags_and_pool_follow_the_node_s_files(qmp_host: QemuHost) -> None:
    """context_tags = ["proxmox"]: the config's tags: and user.cfg's pool, read again only when
    a file changed; an oversized tags line is cut with one W!, and the line stays valid."""
    stream = io.StringIO()
    off = by_vmid(source_for(qmp_host, stream).poll(time.time()))
    assert not set(off[QMP_BOOTED].tags) & set(catalog.BALLOON_CONTEXT_TAGS)
    source = source_for(qmp_host, stream, context_tags=("proxmox",))
    vms = by_vmid(source.poll(time.time()))
    assert (vms[QMP_BOOTED].tags["pve_tags"], vms[QMP_BOOTED].tags["pool"]) == ("prod;web", "shop")
    assert (vms[QMP_NO_BALLOON].tags["pve_tags"], vms[QMP_NO_BALLOON].tags["pool"]) == ("db", "db")
    assert "pve_tags" not in vms[QMP_PLAIN].tags and "pool" not in vms[QMP_PLAIN].tags
    conf = qmp_host.conf_dir / f"{QMP_NO_BALLOON}.conf"
    user_cfg = qmp_host.root / "user.cfg"
    saved = conf.read_text(), user_cfg.read_text()
    many = ";".join(f"team-{i:04d}" for i in range(300))  # 2,999 characters
    try:
        conf.write_text(saved[0].replace("tags: db\n", f"tags: {many}\n"))
        user_cfg.write_text(saved[1].replace("pool:shop:Web%20shop:101:", "pool:shop:Web%20shop::"))
        user_cfg.write_text(user_cfg.read_text() + "pool:billing::101:\n")
        for _ in range(2):
            vms = by_vmid(source.poll(time.time()))
        assert vms[QMP_BOOTED].tags["pool"] == "billing"
        cut = vms[QMP_NO_BALLOON].tags["pve_tags"]
        assert cut.startswith("team-0000;team-0001;") and len(cut.encode()) <= 1024
        lines = [ln for ln in stream.getvalue().splitlines() if ln.startswith("W! ")]
        assert len(lines) == 1 and "pve_tags" in lines[0] and "1024 bytes" in lines[0], lines
        for sample in vms.values():
            assert catalog.check_point(catalog.BALLOON, sample.tags, dict(sample.fields)) == []
    finally:
        conf.write_text(saved[0])
        user_cfg.write_text(saved[1])
    vms = by_vmid(source.poll(time.time()))
    assert vms[QMP_NO_BALLOON].tags["pve_tags"] == "db" and vms[QMP_BOOTED].tags["pool"] == "shop"


def test_stats_period_zero_then_set_by_set_stats_period(qmp_host: QemuHost) -> None:
    booted, plain = qmp_host.monitor(QMP_BOOTED), qmp_host.monitor(QMP_PLAIN)
    booted.set_interval(0)
    try:
        time.sleep(1.5)  # a report already under way may still land
        frozen_at = booted.balloon_stats()["last-update"]
        time.sleep(1.5)
        assert booted.balloon_stats()["last-update"] == frozen_at  # period 0: frozen
        stream = io.StringIO()
        frozen = by_vmid(source_for(qmp_host, stream).poll(time.time()))[QMP_BOOTED]
        assert frozen.fields["stats_period_seconds"] == 0
        assert frozen.fields["stats_disabled"] is True
        # The figures the driver reported before are still there, frozen: present, not zeroed.
        assert number(frozen, "guest_total_bytes") > 0
        assert number(frozen, "stats_age_seconds") >= 1
        assert booted.interval() == 0 and not said(stream)

        arming = source_for(qmp_host, stream, set_stats_period=3)
        first = by_vmid(arming.poll(time.time()))
        assert booted.interval() == 3 and plain.interval() == 3
        assert first[QMP_BOOTED].fields["stats_period_seconds"] == 3
        assert first[QMP_BOOTED].fields["stats_disabled"] is False
        assert "stats_period_seconds" not in first[QMP_NO_BALLOON].fields
        assert sorted(said(stream)) == sorted(
            f"I! qmp: {qmp_host.vms[vmid].qmp}: set guest-stats-polling-interval to 3s (it was 0)"
            for vmid in (QMP_BOOTED, QMP_PLAIN)
        )
        arming.poll(time.time())
        assert len(said(stream)) == 2

        def fresh() -> bool:
            sample = by_vmid(arming.poll(time.time()))[QMP_BOOTED]
            return number(sample, "stats_age_seconds") < number(frozen, "stats_age_seconds")

        wait_for(fresh, 20, "guest stats flowing again after arming")
        assert booted.balloon_stats()["last-update"] > frozen_at
    finally:
        booted.set_interval(1)
        plain.set_interval(0)


def test_vm_exiting_between_glob_and_connect(qmp_host: QemuHost) -> None:
    qmp_host.start(110, memory_mib=128, boot=False)

    class StopsAfterGlob(QmpSource):
        def _paths(self) -> list[str]:
            paths = super()._paths()
            qmp_host.stop(110)  # SIGTERM: QEMU removes its socket file on the way out
            return paths

    stream = io.StringIO()
    config = QmpConfig(sockets=(qmp_host.glob,), proxmox_config=str(qmp_host.conf_dir))
    source = StopsAfterGlob(config, "node-1", Log(stream))
    vms = by_vmid(source.poll(time.time()))
    assert 110 not in vms
    assert {QMP_BOOTED, QMP_NO_BALLOON, QMP_PLAIN} <= set(vms)
    assert logged(stream.getvalue()) == []  # a VM that stopped is no fault


def test_socket_file_with_nothing_listening(qmp_host: QemuHost) -> None:
    vm = qmp_host.start(111, memory_mib=128, boot=False)
    qmp_host.stop(111, signal.SIGKILL)  # the socket file stays behind
    assert vm.qmp.exists()
    try:
        stream = io.StringIO()
        source = source_for(qmp_host, stream)
        vms = by_vmid(source.poll(time.time()))
        assert 111 not in vms and {QMP_BOOTED, QMP_NO_BALLOON, QMP_PLAIN} <= set(vms)
        source.poll(time.time())
        warnings = [line for line in stream.getvalue().splitlines() if "111.qmp" in line]
        assert len(warnings) == 1, warnings  # said once, not every poll
        assert warnings[0].startswith("W! ") and "nothing listening" in warnings[0]
        vm.qmp.unlink()  # the operator cleans up: the fault is forgotten quietly
        source.poll(time.time())
        assert len([line for line in stream.getvalue().splitlines() if "111.qmp" in line]) == 1
        qmp_host.start(111, memory_mib=128, boot=False)
        qmp_host.stop(111, signal.SIGKILL)  # the same stale file again: said again
        _wait_refused(vm.qmp)  # a killed QEMU's listener can outlive its pid briefly
        source.poll(time.time())
        assert len([line for line in stream.getvalue().splitlines() if "111.qmp" in line]) == 2
    finally:
        vm.qmp.unlink(missing_ok=True)


class Holder:
    """Another QMP client (as Proxmox's qm or vzdump would be) holding a VM's monitor."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        stream = self.sock.makefile("rb")
        stream.readline()
        self.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert json.loads(stream.readline()) == {"return": {}}

    def close(self) -> None:
        self.sock.close()


def test_held_socket_skipped_within_connect_timeout(qmp_host: QemuHost) -> None:
    holder = Holder(qmp_host.vms[QMP_PLAIN].qmp)
    try:
        stream = io.StringIO()
        source = source_for(qmp_host, stream, connect_timeout=0.5)
        started = time.monotonic()
        vms = by_vmid(source.poll(time.time()))
        elapsed = time.monotonic() - started
        assert QMP_PLAIN not in vms and {QMP_BOOTED, QMP_NO_BALLOON} <= set(vms)
        assert 0.45 <= elapsed < 3.0, elapsed  # the busy VM cost connect_timeout, once
        source.poll(time.time())
        skipped = [line for line in stream.getvalue().splitlines() if "104.qmp" in line]
        assert len(skipped) == 1 and skipped[0].startswith("W! "), skipped
        assert "no greeting within 0.5s" in skipped[0]
    finally:
        holder.close()
    # QEMU now greets and drops our two given-up connections, queued while the holder held
    # on (a full queue refuses at once with EAGAIN); then the VM answers again.
    wait_for(lambda: QMP_PLAIN in by_vmid(source.poll(time.time())), 5, "VM 104 answering")
    assert f"I! qmp: {qmp_host.vms[QMP_PLAIN].qmp}: answering again" in stream.getvalue()


def test_queue_full_skipped_at_once(qmp_host: QemuHost) -> None:
    """A held monitor with a client already waiting: the kernel refuses our connect (EAGAIN)."""
    path = qmp_host.vms[QMP_PLAIN].qmp
    holder = Holder(path)
    waiters = []
    try:
        for _ in range(4):  # fill the listen queue (QEMU's backlog is small)
            waiter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waiter.setblocking(False)
            try:
                waiter.connect(str(path))
            except BlockingIOError:
                waiter.close()
                break
            waiters.append(waiter)
        stream = io.StringIO()
        source = source_for(qmp_host, stream, connect_timeout=3.0)
        started = time.monotonic()
        vms = by_vmid(source.poll(time.time()))
        elapsed = time.monotonic() - started
    finally:
        for waiter in waiters:
            waiter.close()
        holder.close()
    assert QMP_PLAIN not in vms and {QMP_BOOTED, QMP_NO_BALLOON} <= set(vms)
    assert elapsed < 1.5, elapsed  # refused at once, not after connect_timeout
    [line] = [line for line in stream.getvalue().splitlines() if "104.qmp" in line]
    assert line.startswith("W! ") and "connection queue is full" in line


def test_balloon_device_without_id_is_found(qmp_host: QemuHost) -> None:
    """QEMU started by a script with `-device virtio-balloon-pci` and no id: the device is
    looked for under /machine/peripheral-anon once per start."""
    qmp_host.start(112, memory_mib=160, boot=False, balloon_id=None, name="anon-balloon")
    try:
        qmp_host.monitor(112).call(
            "qom-set",
            path="/machine/peripheral-anon/device[0]",
            property="guest-stats-polling-interval",
            value=7,
        )
        source = source_for(qmp_host, io.StringIO())
        for _ in range(2):  # found on the first poll, remembered on the second
            sample = by_vmid(source.poll(time.time()))[112]
            assert sample.tags["guest"] == "anon-balloon"
            assert sample.fields["stats_period_seconds"] == 7
            assert sample.fields["memory_max_bytes"] == 160 * MIB
            assert sample.fields["inflation_blocked"] is False
    finally:
        qmp_host.stop(112)


def _plugin(
    config: Path, user: Optional[str] = None, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    command = [python, "-m", "telegraf_balloon", "--once", "--config", str(config)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=env, user=user, cwd="/"
    )


def test_held_socket_other_vms_within_the_deadline_end_to_end(qmp_host: QemuHost) -> None:
    """The whole program: one VM's monitor held, every other line written, source up."""
    config = qmp_host.root / "held.toml"
    config.write_text(
        f'[agent]\ntimeout = "2s"\n[[sources.qmp]]\nsockets = ["{qmp_host.glob}"]\n'
        f'proxmox_config = "{qmp_host.conf_dir}"\nconnect_timeout = "500ms"\n'
    )
    holder = Holder(qmp_host.vms[QMP_PLAIN].qmp)
    try:
        started = time.monotonic()
        result = _plugin(config)
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    balloon = [line for line in lines if line.startswith("balloon,")]
    guests = sorted(line.split(",guest=")[1].split(",")[0] for line in balloon)
    assert guests == ["fixed-db", "web-renamed"]
    collector = [line for line in lines if line.startswith("balloon_collector,")]
    assert len(collector) == 1 and "up=true" in collector[0] and "vms=2i" in collector[0]
    assert any(line.startswith("balloon_host,") and "vms_total=2i" in line for line in lines)
    assert elapsed < 10, elapsed  # interpreter start included; the poll itself is under 2 s
    assert "104.qmp: skipped this poll" in result.stderr


def test_unprivileged_user_gets_one_clear_error(qmp_host: QemuHost) -> None:
    config = qmp_host.root / "nobody.toml"
    config.write_text(f'[[sources.qmp]]\nsockets = ["{qmp_host.glob}"]\nproxmox_config = ""\n')
    os.chmod(config, 0o644)
    mode = os.stat(qmp_host.vms[QMP_BOOTED].qmp).st_mode & 0o777
    # QEMU's socket: 0755 under umask 022, 0750 here (-daemonize sets umask 027); others may
    # never write, and connecting to a unix socket needs write permission.
    assert not mode & 0o002, oct(mode)
    for parent in [ROOT, *ROOT.parents]:
        if not os.stat(parent).st_mode & 0o001:
            unavailable(f"{parent} is not traversable by an unprivileged user")
    # The system's Python: the test venv's interpreter may live where nobody cannot read.
    python = "/usr/bin/python3"
    usable = (
        os.access(python, os.X_OK)
        and subprocess.run([python, "-c", "import tomllib"]).returncode == 0
    )
    if not usable:
        unavailable("an interpreter the unprivileged user can run (/usr/bin/python3 >= 3.11)")
    result = _plugin(config, user="nobody", python=python)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("E! ")]
    assert len(errors) == 1, result.stderr
    assert "permission denied" in errors[0] and "run telegraf-balloon as root" in errors[0]
    collector = [line for line in result.stdout.splitlines() if line.startswith("balloon_")]
    assert len(collector) == 1 and "up=false" in collector[0]
    assert "permission denied" in collector[0]


@pytest.fixture(scope="module")
def fifty_paused(qmp_host: QemuHost) -> Iterator[QemuHost]:
    """50 paused QEMUs (-S: they never boot) with Proxmox configs, in a directory of their own."""
    host = QemuHost(need_program("qemu-system-x86_64"))
    try:
        for vmid in range(200, 250):
            memory = 128 + (vmid % 3) * 64
            host.write_conf(vmid, f"memory: {memory}\nballoon: 64\nname: scale-{vmid}\n")
        for first in range(200, 250, 10):  # ten at a time: their start-up overlaps
            host.start_many(list(range(first, first + 10)), memory_mib=128, boot=False)
    except (QemuError, OSError) as exc:
        host.close()
        unavailable(f"QEMU did not start: {exc}")
    yield host
    host.close()


def test_fifty_paused_vms_in_one_poll(fifty_paused: QemuHost) -> None:
    stream = io.StringIO()
    source = source_for(fifty_paused, stream)
    source.poll(time.time())  # first contact reads each VM's identity once
    result = source.poll(time.time())
    vms = by_vmid(result)
    assert sorted(vms) == list(range(200, 250))
    for vmid, sample in vms.items():
        assert sample.tags["guest"] == f"scale-{vmid}"
        assert sample.fields["memory_max_bytes"] == 128 * MIB  # QEMU's size, not the config's
        assert sample.fields["balloon_actual_bytes"] == 0
        assert sample.fields["reservation_bytes"] == 64 * MIB
    assert result.api_latency_seconds is not None and result.api_latency_seconds < 2.0
    assert logged(stream.getvalue()) == []


# --- a hostile peer among real QEMUs ------------------------------------------------------------

HOSTILE_VMID = 199


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _normal_reply(command: str, arguments: dict[str, Any]) -> Any:
    """What a stock QEMU with a balloon device answers (the peer's replies when well-behaved)."""
    prop = arguments.get("property")
    replies: dict[str, Any] = {
        "qmp_capabilities": {},
        "query-name": {"name": "hostile"},
        "query-uuid": {"UUID": "00000000-0000-0000-0000-000000000000"},
        "query-kvm": {"enabled": False, "present": False},
        "query-memory-size-summary": {"base-memory": 256 * MIB},
        "query-balloon": {"actual": 256 * MIB},
        "query-memory-devices": [],
        "qom-get guest-stats": {"stats": {}, "last-update": 0},
        "qom-get guest-stats-polling-interval": 0,
    }
    return replies.get(f"{command} {prop}" if prop else command, {})


@dataclass(frozen=True)
class Hostile:
    """One malformed answer: to `command`, `reply(id)` instead of QEMU's; `fragment` is what
    the W! line must say. A `flood` peer sends `reply(id)` again and again, never a reply."""

    name: str
    command: str
    reply: Callable[[int], bytes]
    fragment: str
    flood: bool = False


def _json(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\r\n"


HOSTILE = [
    Hostile(
        "deeply-nested-reply",
        "query-balloon",
        lambda i: b'{"return": ' + _deep(100_000) + b', "id": %d}\r\n' % i,
        "nested too deeply",
    ),
    Hostile("id-is-a-list", "query-balloon", lambda i: _json({"return": {}, "id": [i]}), "id"),
    Hostile(
        "plugged-memory-string",
        "query-memory-size-summary",
        lambda i: _json({"return": {"base-memory": 256 * MIB, "plugged-memory": "x"}, "id": i}),
        "plugged-memory",
    ),
    Hostile(
        "actual-beyond-any-memory",
        "query-balloon",
        lambda i: _json({"return": {"actual": 10**30}, "id": i}),
        "actual",
    ),
    Hostile(
        "actual-nan",
        "query-balloon",
        lambda i: b'{"return": {"actual": NaN}, "id": %d}\r\n' % i,
        "actual",
    ),
    Hostile(
        "stats-period-negative",
        "qom-get guest-stats-polling-interval",
        lambda i: _json({"return": -5, "id": i}),
        "guest-stats-polling-interval",
    ),
    Hostile(
        "guest-stat-not-a-number",
        "qom-get guest-stats",
        lambda i: _json({"return": {"stats": {"stat-free-memory": "lots"}}, "id": i}),
        "stat-free-memory",
    ),
    Hostile(
        "error-not-an-object",
        "query-balloon",
        lambda i: _json({"error": "no", "id": i}),
        "error",
    ),
    Hostile(
        "neither-return-nor-error",
        "query-balloon",
        lambda i: _json({"id": i}),
        "neither",
    ),
    Hostile(
        "reply-line-without-end",
        "query-balloon",
        lambda i: b'{"return": "' + b"a" * 65536,
        "longer than",
        flood=True,
    ),
    Hostile(
        "endless-events",
        "query-balloon",
        lambda i: _json({"event": "BALLOON_CHANGE", "data": {"actual": 1}, "timestamp": {}}),
        "events",
        flood=True,
    ),
]


class HostilePeer:
    """Not QEMU, on purpose: a QMP-shaped peer in the same glob as the real VMs, answering one
    command with a reply no QEMU sends (a real QEMU cannot be made to send any of these).
    Every other command gets a stock QEMU's answer."""

    def __init__(self, path: Path, case: Hostile) -> None:
        self.path = path
        self.case = case
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.server.settimeout(0.05)  # to see `stopping` soon: close() does not wake accept()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the source hung up: the point
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(10)  # blocking, bounded
        conn.sendall(_json({"QMP": {"version": {}, "capabilities": []}}))
        for line in conn.makefile("rb"):
            message = json.loads(line)
            arguments = message.get("arguments", {})
            command = message["execute"]
            prop = arguments.get("property")
            name = f"{command} {prop}" if prop else command
            ident = message["id"]
            if name != self.case.command:
                conn.sendall(_json({"return": _normal_reply(command, arguments), "id": ident}))
            elif self.case.flood:
                while True:  # until the source hangs up (sendall then fails)
                    conn.sendall(self.case.reply(ident))
            else:
                conn.sendall(self.case.reply(ident))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.server.close()
        self.path.unlink(missing_ok=True)


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_peer_in_the_glob_costs_only_itself(qmp_host: QemuHost, case: Hostile) -> None:
    """The real VMs are reported on every poll; the hostile socket is skipped with one W!."""
    path = qmp_host.run_dir / f"{HOSTILE_VMID}.qmp"
    peer = HostilePeer(path, case)
    try:
        stream = io.StringIO()
        source = source_for(qmp_host, stream, connect_timeout=5.0)
        for _ in range(3):
            result = source.poll(time.time())
            vms = by_vmid(result)
            assert {QMP_BOOTED, QMP_NO_BALLOON, QMP_PLAIN} <= set(vms), stream.getvalue()
            assert HOSTILE_VMID not in vms
            [host] = result.hosts
            assert host.tags["host"] == "node-1"
    finally:
        peer.close()
    logged = stream.getvalue().splitlines()
    hostile = [line for line in logged if f"{HOSTILE_VMID}.qmp" in line]
    assert len(hostile) == 1, logged  # said once, not every poll
    assert hostile[0].startswith(f"W! qmp: {path}: skipped this poll: "), hostile
    assert case.fragment in hostile[0], hostile
    assert len(hostile[0]) < 400, hostile  # a short line, whatever the peer sent
    assert "no reply within" not in hostile[0]  # cut off on what it sent, not by the deadline
    assert [line for line in logged if line[:3] in ("W! ", "E! ")] == hostile


# --- one machine, one host series ---------------------------------------------------------------


def test_one_machine_one_host_series(
    libvirt_stack: LibvirtStack, qemu_guest: str, qmp_host: QemuHost, tmp_path: Path
) -> None:
    """examples/all.toml on one machine: libvirt and qmp both describe this host, but only a
    source that saw a VM there writes its balloon_host line, so sums count the machine once."""
    empty = tmp_path / "no-qmp"
    empty.mkdir()

    def host_lines(libvirt_domains: str, qmp_glob: Path) -> list[dict[str, Any]]:
        plugin = Plugin(
            f'[[sources.libvirt]]\nuri = "{libvirt_stack.uri}"\ndomains = [{libvirt_domains}]\n'
            f'[[sources.qmp]]\nsockets = ["{qmp_glob}"]\nproxmox_config = ""\n'
        )
        try:
            lines = plugin.poll()
        finally:
            plugin.close()
        collectors = [x for x in lines if x["measurement"] == catalog.COLLECTOR]
        assert len(collectors) == 2 and all(c["fields"]["up"] for c in collectors), lines
        return [x for x in lines if x["measurement"] == catalog.HOST]

    [libvirt_only] = host_lines(f'"{qemu_guest}"', empty / "*.qmp")  # libvirt has the VM
    assert libvirt_only["tags"]["source"] == "libvirt"
    assert libvirt_only["fields"]["vms_total"] == 1
    [qmp_only] = host_lines('"no-such-domain-*"', Path(qmp_host.glob))  # qmp has the VMs
    assert qmp_only["tags"]["source"] == "qmp"
    assert qmp_only["fields"]["vms_total"] >= 3
