"""Plain QEMU processes laid out as Proxmox VE lays out a node, for the qmp source's tests.

:class:`QemuHost` owns one directory::

    run/<vmid>.qmp   the VM's QMP socket      (Proxmox: /var/run/qemu-server/<vmid>.qmp)
    run/<vmid>.qga   its guest agent's socket, when started with one (Proxmox: agent: 1)
    run/<vmid>.pid   its pidfile (-daemonize) (Proxmox: /var/run/qemu-server/<vmid>.pid)
    run/<vmid>.log   its serial console
    qemu-server/<vmid>.conf   its VM config   (Proxmox: /etc/pve/qemu-server/<vmid>.conf)
    user.cfg         users, pools, ACLs     (Proxmox: /etc/pve/user.cfg)

QEMU runs under TCG (the nested KVM here cannot run a stock kernel). A booted VM runs the
guest :func:`tests.stack.guest_image.build_guest` builds (virtio balloon driver loaded, its
console printing /proc/meminfo every second); a paused one (``-S``) never boots but answers
every QMP command. Every QEMU is stopped by its pid. :class:`Monitor` is the test's own QMP
client: one short connection per call, never held (the source under test needs the socket).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tests.stack.common import pid_alive, wait_for
from tests.stack.guest_image import GuestImage, parse_console

MIB = 1024 * 1024


class QemuError(RuntimeError):
    """A QEMU process did not start or a monitor call failed."""


@dataclass
class Vm:
    vmid: int
    pid: int
    qmp: Path
    console: Path
    qga: Optional[Path] = None


class Monitor:
    """One-shot QMP calls: connect, negotiate, run one command, close."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, command: str, timeout: float = 10.0, **arguments: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.path))
            stream = sock.makefile("rb")
            stream.readline()  # greeting
            last: dict[str, Any] = {"execute": command}
            if arguments:
                last["arguments"] = arguments
            messages: list[dict[str, Any]] = [{"execute": "qmp_capabilities"}, last]
            for message in messages:
                sock.sendall(json.dumps(message).encode() + b"\n")
                while True:
                    reply = json.loads(stream.readline())
                    if "event" not in reply:
                        break
                if "error" in reply:
                    raise QemuError(f"{message['execute']}: {reply['error']}")
            return reply["return"]

    def balloon_stats(self) -> dict[str, Any]:
        path = "/machine/peripheral/balloon0"
        value = self.call("qom-get", path=path, property="guest-stats")
        assert isinstance(value, dict)
        return value

    def set_interval(self, seconds: int) -> None:
        path = "/machine/peripheral/balloon0"
        self.call("qom-set", path=path, property="guest-stats-polling-interval", value=seconds)

    def interval(self) -> int:
        path = "/machine/peripheral/balloon0"
        return int(self.call("qom-get", path=path, property="guest-stats-polling-interval"))

    def actual(self) -> int:
        return int(self.call("query-balloon")["actual"])


class QemuHost:
    """A temporary directory of QEMU processes with Proxmox's socket and config layout."""

    def __init__(self, qemu: str, image: Optional[GuestImage] = None) -> None:
        self.qemu = qemu
        self.image = image
        # World-traversable (0755): a test connects as an unprivileged user to see EACCES
        # on the socket itself, not on the directory.
        self.root = Path(tempfile.mkdtemp(prefix="qmp-host-"))
        os.chmod(self.root, 0o755)
        self.run_dir = self.root / "run"
        self.conf_dir = self.root / "qemu-server"
        self.run_dir.mkdir(mode=0o755)
        self.conf_dir.mkdir(mode=0o755)
        self.vms: dict[int, Vm] = {}
        self._pending: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def glob(self) -> str:
        return f"{self.run_dir}/*.qmp"

    def write_conf(self, vmid: int, text: str) -> None:
        (self.conf_dir / f"{vmid}.conf").write_text(text)

    def write_user_cfg(self, text: str) -> None:
        """The cluster's user.cfg beside qemu-server/ (Proxmox: /etc/pve/user.cfg): pools."""
        (self.root / "user.cfg").write_text(text)

    def start(
        self,
        vmid: int,
        *,
        memory_mib: int = 512,
        balloon: bool = True,
        balloon_id: Optional[str] = "balloon0",
        boot: bool = True,
        name: Optional[str] = None,
        uuid: Optional[str] = None,
        wait: bool = True,
        agent: bool = False,
        cmdline_extra: str = "",
        maxmem_mib: int = 0,
        extra_args: Sequence[str] = (),
        wrapper: Sequence[str] = (),
    ) -> Vm:
        """Start one QEMU the way Proxmox would (-daemonize, pidfile, QMP socket beside it).

        ``agent``: the guest agent's virtio-serial port, its socket ``<vmid>.qga`` beside the
        monitor, as Proxmox starts a VM whose config has ``agent: 1``; ``cmdline_extra``: options
        for the guest's /init (``tb.agent=1`` starts its stand-in agent on that port, ``tb.vmem=1``
        shows its virtio-mem devices, ``tb.hog=`` fills memory); ``maxmem_mib`` gives the machine
        room for memory devices, ``extra_args`` more QEMU arguments (such devices); ``wrapper``:
        a command QEMU's own is appended to and run by (one that enters a cgroup, then execs it).
        """
        qmp = self.run_dir / f"{vmid}.qmp"
        pidfile = self.run_dir / f"{vmid}.pid"
        console = self.run_dir / f"{vmid}.log"
        cmd = [
            self.qemu,
            "-accel", "tcg",
            "-m", f"{memory_mib}M,maxmem={maxmem_mib}M,slots=2" if maxmem_mib else str(memory_mib),
            "-nodefaults",
            "-display", "none",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-name", name or f"vm{vmid}",
            "-serial", f"file:{console}",
            "-daemonize",
            "-pidfile", str(pidfile),
        ]  # fmt: skip
        if balloon:
            cmd += ["-device", "virtio-balloon-pci" + (f",id={balloon_id}" if balloon_id else "")]
        if uuid:
            cmd += ["-smbios", f"type=1,uuid={uuid}"]
        qga = self.run_dir / f"{vmid}.qga" if agent else None
        if qga is not None:
            cmd += ["-chardev", f"socket,path={qga},server=on,wait=off,id=qga0"]
            cmd += ["-device", "virtio-serial,id=qga0"]
            cmd += ["-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
        cmd += list(extra_args)
        if boot:
            if self.image is None:
                raise QemuError("a booted VM needs the guest image")
            cmd += ["-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd)]
            cmd += ["-append", f"{self.image.cmdline} {cmdline_extra}".strip()]
        else:
            cmd.append("-S")
        cmd = [*wrapper, *cmd]
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        vm = Vm(vmid, 0, qmp, console, qga)
        if wait:
            self.finish_start(vm, process)
        else:
            vm.pid = -process.pid  # finished by finish_start
            self._pending[vmid] = process
        self.vms[vmid] = vm
        return vm

    def finish_start(self, vm: Vm, process: Optional[subprocess.Popen[bytes]] = None) -> None:
        """Wait for -daemonize's parent to exit, then read the pidfile."""
        process = process or self._pending.pop(vm.vmid)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise QemuError(f"QEMU {vm.vmid} did not daemonize within 120 s") from None
        if process.returncode != 0:
            raise QemuError(f"QEMU {vm.vmid} failed: {output.decode(errors='replace')[-2000:]}")
        pidfile = self.run_dir / f"{vm.vmid}.pid"
        vm.pid = int(pidfile.read_text().strip())

    def start_many(self, vmids: list[int], **options: Any) -> list[Vm]:
        """Start several QEMUs at once (their start-up overlaps)."""
        vms = [self.start(vmid, wait=False, **options) for vmid in vmids]
        for vm in vms:
            self.finish_start(vm)
        return vms

    def monitor(self, vmid: int) -> Monitor:
        return Monitor(self.vms[vmid].qmp)

    def wait_guest_report(self, vmid: int, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until the guest's balloon driver has reported stats at least once."""
        monitor = self.monitor(vmid)

        def reported() -> Optional[dict[str, Any]]:
            stats = monitor.balloon_stats()
            return stats if stats.get("last-update") else None

        def fail(message: str) -> QemuError:
            return QemuError(f"VM {vmid}: {message}: {self.console_tail(vmid)}")

        stats: dict[str, Any] = wait_for(reported, timeout, "its first guest stats", fail=fail)
        return stats

    def console_tail(self, vmid: int, size: int = 1500) -> str:
        try:
            return self.vms[vmid].console.read_text(errors="replace")[-size:]
        except OSError:
            return "(no console)"

    def guest_meminfo(self, vmid: int) -> dict[str, int]:
        """The last complete /proc/meminfo + /proc/vmstat the guest printed on its console."""
        parsed = parse_console(self.vms[vmid].console.read_text(errors="replace"))
        if parsed is None:
            raise QemuError(f"VM {vmid}: no console snapshot yet")
        return parsed[1]

    def stop(self, vmid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop one QEMU by its pid and wait until it is gone."""
        vm = self.vms.pop(vmid)
        if vm.pid <= 0:
            return
        try:
            os.kill(vm.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(vm.pid):  # gone, or a zombie until its parent reaps it
                return
            time.sleep(0.02)
        os.kill(vm.pid, signal.SIGKILL)

    def close(self) -> None:
        for vmid in list(self.vms):
            self.stop(vmid)
        shutil.rmtree(self.root, ignore_errors=True)
