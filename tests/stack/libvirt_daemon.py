"""A private libvirtd (QEMU and test drivers) for the tests, and TCG guests on it.

:class:`LibvirtStack` runs ``libvirtd`` as root inside a private mount namespace: every state
directory, ``/etc/libvirt``, ``/etc/passwd`` and ``/etc/group`` are bind-mounted from a
temporary directory, so the machine's own files are never written. Missing mount points
(``/run/libvirt`` on a machine without libvirt-daemon-system) are created on an overlay whose
upper layer is a tmpfs that only the namespace sees. On it: booted guests of the image
:mod:`tests.stack.guest_image` builds, paused domains (QEMU's ``-S``), and the test driver
(``LibvirtStack.test_uri`` of a :mod:`tests.stack.node_xml` file).

Needs root, ``unshare``, ``mount``, ``taskset``, ``libvirtd`` with the QEMU driver,
``qemu-system-x86_64`` and the ``libvirt`` Python binding. Every failure raises
:class:`tests.stack.common.StackError` carrying the tails of the daemon log, the QEMU log and
the guest console.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from tests.stack.common import StackError, pid_alive, require_program, stop_process, tail
from tests.stack.guest_image import DEFAULT_CACHE_DIR, GuestImage, build_guest, parse_console

__all__ = ["LibvirtStack"]


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as e:
        raise StackError(
            f"the libvirt Python binding is missing (pip install libvirt-python): {e}"
        ) from e
    return libvirt


def _head(path: Path, lines: int = 25, max_bytes: int = 16 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes)
    except OSError as e:
        return f"({path}: {e.strerror})"
    text = data.decode("utf-8", "replace").replace("\r", "")
    return "\n".join(text.splitlines()[:lines]) or "(empty)"


_STATE_DIRS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}

_QEMU_CONF = """\
# private qemu.conf of a test LibvirtStack: QEMU runs as root, no cgroups, no namespaces
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""

_QEMU_USER = "libvirt-qemu"

#: libvirtd log lines that every start prints on a machine without systemd, D-Bus, dnsmasq,
#: DMI or cgroup controllers: left out of error messages.
_LOG_NOISE = re.compile(
    r"dnsmasq|virGDBusGetSystemBus|DBus not available|udevGetDMIData|dmidecode|/dev/mem"
    r"|virSecurityManagerNew|virCgroupDetectControllers|is tainted: high-privileges"
    r"|virNetSocketReadWire:.*End of file"
    r"|^\s*$"
)


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
    return f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _proc_mntns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _socket_accepts(path: Path) -> bool:
    """True when something accepts connections on the unix socket (a stale file does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _is_qemu(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("qemu-system-")
    except OSError:
        return False


def _qemu_domain_xml(
    name: str,
    memory_mib: int,
    stats_period: int,
    boot: Optional[Tuple[GuestImage, Path]] = None,
    *,
    agent_channel: bool = False,
    cmdline_extra: str = "",
    metadata: str = "",
    prealloc: bool = False,
) -> str:
    """A TCG domain with a virtio balloon (``stats_period`` > 0: its ``<stats>`` period).

    With ``boot`` (the guest image and a console file) it boots the image, printing to that
    file; without, it has no kernel, console or disk: started paused, it never boots.
    ``agent_channel`` adds the QEMU guest agent's virtio channel (libvirt picks the socket);
    ``cmdline_extra`` is appended to the guest's kernel command line (``tb.agent=1``).
    ``metadata``: the XML of the elements of its ``<metadata>`` (each in its own namespace).
    ``prealloc``: QEMU touches all of the guest's RAM at start (``<allocation
    mode='immediate'/>``), as zero-filled pages KSM can merge.
    """
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    if metadata:
        dom.append(ET.fromstring(f"<metadata>{metadata}</metadata>"))
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "currentMemory", unit="MiB").text = str(memory_mib)
    if prealloc:
        backing = ET.SubElement(dom, "memoryBacking")
        ET.SubElement(backing, "allocation", mode="immediate")
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    if boot is not None:
        image = boot[0]
        ET.SubElement(os_el, "kernel").text = str(image.kernel)
        ET.SubElement(os_el, "initrd").text = str(image.initrd)
        ET.SubElement(os_el, "cmdline").text = f"{image.cmdline} {cmdline_extra}".strip()
        features = ET.SubElement(dom, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    ET.SubElement(devices, "controller", type="usb", model="none")
    if boot is not None:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(boot[1]))
        ET.SubElement(serial, "target", port="0")
    if agent_channel:
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    balloon = ET.SubElement(devices, "memballoon", model="virtio")
    if stats_period > 0:
        ET.SubElement(balloon, "stats", period=str(stats_period))
    return ET.tostring(dom, encoding="unicode")


class LibvirtStack:
    """A private libvirtd (QEMU + test drivers) in a mount namespace, and TCG guests in it.

    Use as a context manager, or call :meth:`start_daemon` and :meth:`stop`.  ``stop()`` is
    also registered with :mod:`atexit` while the stack runs.
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        guest_image: GuestImage | None = None,
        start_timeout: float = 180.0,
        keep_workdir: bool | None = None,
        probe_qemu: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).resolve()
        self._image = guest_image
        self.start_timeout = start_timeout
        self.probe_qemu = probe_qemu
        if keep_workdir is None:
            keep_workdir = os.environ.get("LIBVIRT_STACK_KEEP", "") not in ("", "0")
        self.keep_workdir = keep_workdir
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._namespaces: Set[str] = set()
        self._host_ns = _proc_mntns(os.getpid())
        if self._host_ns is None:
            raise StackError("cannot read /proc/self/ns/mnt")
        self._guests: Dict[str, Path] = {}
        self._paused: Set[str] = set()  # domains started paused (-S): never booted
        self._stopped = False
        self._qemu_pids: Set[int] = set()
        #: seconds: how long the last start_daemon() took, and the guest image build
        self.timings: Dict[str, float] = {}

    # -- paths and URIs --------------------------------------------------------------------

    def _wd(self) -> Path:
        if self.workdir is None:
            raise StackError("the stack has not been started")
        return self.workdir

    @property
    def socket_path(self) -> Path:
        return self._wd() / "sock" / "libvirt-sock"

    @property
    def log_path(self) -> Path:
        """The libvirtd log file."""
        return self._wd() / "libvirtd.log"

    @property
    def uri(self) -> str:
        """``qemu+unix:///system?socket=...`` for this daemon's QEMU driver."""
        return "qemu+unix:///system?socket=" + urllib.parse.quote(str(self.socket_path), safe="/")

    def test_uri(self, node_xml: Path) -> str:
        """``test+unix:///ABS/node.xml?socket=...``: the daemon serves the test driver."""
        path = urllib.parse.quote(str(Path(node_xml).resolve()), safe="/")
        sock = urllib.parse.quote(str(self.socket_path), safe="/")
        return f"test+unix://{path}?socket={sock}"

    @property
    def daemon_pid(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def console_path(self, name: str) -> Path:
        try:
            return self._guests[name]
        except KeyError:
            raise StackError(f"no guest {name!r} was defined by this stack") from None

    def qemu_log_path(self, name: str) -> Path:
        return self._wd() / "state" / "log" / "qemu" / f"{name}.log"

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> LibvirtStack:
        try:
            self.start_daemon()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- daemon lifecycle ------------------------------------------------------------------

    def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise StackError("LibvirtStack needs root (unshare --mount, libvirtd's QEMU driver)")
        for prog in ("unshare", "mount", "taskset", "libvirtd"):
            require_program(prog)
        wd = Path(tempfile.mkdtemp(prefix="lvstack-"))
        os.chmod(wd, 0o755)
        self.workdir = wd
        atexit.register(self.stop)
        for sub in ("sock", "ns", "guests", "etc", "etc/libvirt"):
            (wd / sub).mkdir(parents=True, exist_ok=True)
        for sub in _STATE_DIRS:
            (wd / "state" / sub).mkdir(parents=True, exist_ok=True)
        self._write_accounts(wd / "etc")
        (wd / "etc" / "libvirt" / "qemu.conf").write_text(_QEMU_CONF)
        (wd / "etc" / "libvirt" / "libvirtd.conf").write_text(
            "# private libvirtd.conf of a test LibvirtStack\n"
            f'unix_sock_dir = "{wd / "sock"}"\n'
            'unix_sock_rw_perms = "0770"\n'
            'auth_unix_ro = "none"\n'
            'auth_unix_rw = "none"\n'
            f'log_outputs = "2:file:{wd / "libvirtd.log"}"\n'
            'log_filters = "3:util 3:rpc 3:event 3:object 3:conf 3:security"\n'
        )
        caps = self.cache_dir / "libvirt-qemu-capabilities"
        if caps.is_dir():
            shutil.copytree(caps, wd / "state" / "cache" / "qemu" / "capabilities")
        (wd / "ns-setup.sh").write_text(self._ns_script(wd))

    @staticmethod
    def _write_accounts(etc: Path) -> None:
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        users = {line.split(":")[0]: line for line in passwd.splitlines() if line}
        groups = {line.split(":")[0]: line for line in group.splitlines() if line}
        used_uids = {int(line.split(":")[2]) for line in users.values() if line.count(":") >= 3}
        used_gids = {int(line.split(":")[2]) for line in groups.values() if line.count(":") >= 3}
        if _QEMU_USER not in groups:
            gid = next(g for g in range(999, 100, -1) if g not in used_gids)
            group = group.rstrip("\n") + f"\n{_QEMU_USER}:x:{gid}:\n"
        else:
            gid = int(groups[_QEMU_USER].split(":")[2])
        if _QEMU_USER not in users:
            uid = next(u for u in range(999, 100, -1) if u not in used_uids)
            passwd = passwd.rstrip("\n") + (
                f"\n{_QEMU_USER}:x:{uid}:{gid}:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
            )
        (etc / "passwd").write_text(passwd)
        (etc / "group").write_text(group)
        os.chmod(etc / "passwd", 0o644)
        os.chmod(etc / "group", 0o644)

    @staticmethod
    def _ns_script(wd: Path) -> str:
        """Shell run by ``unshare --mount`` before it execs libvirtd (same PID)."""
        q = shlex.quote
        lines = [
            "set -eu",
            f"mount -n -t tmpfs -o mode=0755,size=16m lvstack-scratch {q(str(wd / 'ns'))}",
        ]
        overlaid: List[Path] = []
        binds: List[Tuple[Path, Path]] = [
            (wd / "etc" / "passwd", Path("/etc/passwd")),
            (wd / "etc" / "group", Path("/etc/group")),
            (wd / "etc" / "libvirt", Path("/etc/libvirt")),
        ]
        binds += [(wd / "state" / sub, Path(target)) for sub, target in _STATE_DIRS.items()]
        for source, target in binds:
            if not target.exists():
                parent = target.parent
                while not parent.exists():
                    parent = parent.parent
                if not any(parent == o or o in parent.parents for o in overlaid):
                    k = len(overlaid)
                    upper, work = wd / "ns" / f"ovl{k}" / "upper", wd / "ns" / f"ovl{k}" / "work"
                    opts = f"lowerdir={parent},upperdir={upper},workdir={work}"
                    lines += [
                        f"mkdir -p {q(str(upper))} {q(str(work))}",
                        f"mount -n -t overlay -o {q(opts)} lvstack-overlay {q(str(parent))}"
                        f" || mount -n -t tmpfs -o mode=0755 lvstack-shadow {q(str(parent))}",
                    ]
                    overlaid.append(parent)
                lines.append(f"mkdir -p {q(str(target))}")
            lines.append(f"mount -n --bind {q(str(source))} {q(str(target))}")
        libvirtd = require_program("libvirtd")
        conf = wd / "etc" / "libvirt" / "libvirtd.conf"
        # libvirt 9.0 keeps CPUID leaf 0x1f (whose EDX is the x2APIC id of the CPU the probe
        # ran on) in its capability cache and re-probes QEMU (4 s) whenever the check runs on
        # another CPU: pin libvirtd to one CPU (QEMU guests get all CPUs back from libvirt).
        cpu = min(os.sched_getaffinity(0))
        lines.append(
            f"exec taskset -c {cpu} {q(libvirtd)} -f {q(str(conf))}"
            f" -p {q(str(wd / 'libvirtd.pid'))}"
        )
        return "\n".join(lines) + "\n"

    def prepare(self) -> Path:
        """Make the work dir, so the socket path is known, without starting the daemon."""
        if self.workdir is None:
            self._prepare()
        return self._wd()

    def start_daemon(self, timeout: float | None = None) -> None:
        """Start libvirtd (again) on the same state dirs and socket; wait until it answers."""
        if self._stopped:
            raise StackError("this stack was stopped; make a new one")
        if self.workdir is None:
            self._prepare()
        if self.daemon_pid is not None:
            raise StackError("libvirtd is already running")
        wd = self._wd()
        timeout = self.start_timeout if timeout is None else timeout
        t0 = time.monotonic()
        with open(wd / "libvirtd.stdout.log", "ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                [require_program("unshare"), "--mount", "--propagation", "private",
                 "/bin/sh", str(wd / "ns-setup.sh")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        libvirt = _libvirt()
        deadline = t0 + timeout
        last_err = ""
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self.error(f"libvirtd exited with status {code} while starting")
            if time.monotonic() > deadline:
                raise self.error(f"libvirtd did not answer within {timeout:.0f} s: {last_err}")
            ns = _proc_mntns(self._proc.pid)
            if ns is None or ns == self._host_ns:
                # unshare(2) has not happened yet: never record (or later kill) our own one
                time.sleep(0.02)
                continue
            # a namespace unshare(1) made for this daemon: it holds nothing but this stack
            self._namespaces.add(ns)
            if _socket_accepts(self.socket_path):
                try:
                    conn = libvirt.open(self.uri)
                    try:
                        conn.getLibVersion()
                        conn.listAllDomains(0)  # the QEMU driver is up and has loaded domains
                        if self.probe_qemu:
                            # QEMU capability probe (seconds when cold, cached in the state
                            # dir and in cache_dir): pay it here, not in define_guest()
                            conn.getDomainCapabilities(None, "x86_64", None, "qemu", 0)
                    finally:
                        conn.close()
                    break
                except libvirt.libvirtError as e:
                    last_err = str(e)
            time.sleep(0.1)
        self.timings["start_daemon"] = time.monotonic() - t0

    def kill_daemon(self) -> None:
        """SIGKILL libvirtd; its QEMU guests keep running."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise StackError("libvirtd is not running")
        os.kill(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise self.error("libvirtd survived SIGKILL for 30 s") from None

    @contextlib.contextmanager
    def connection(self, readonly: bool = False) -> Iterator[Any]:
        """A fresh ``virConnect`` to this daemon's QEMU driver, closed afterwards."""
        libvirt = _libvirt()
        try:
            conn = libvirt.openReadOnly(self.uri) if readonly else libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise self.error(f"cannot connect to {self.uri}: {e}") from e
        try:
            yield conn
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def stop(self) -> None:
        """Destroy the guests, stop libvirtd, kill anything left, remove the temp dirs."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        wd = self.workdir
        if wd is None:
            return
        self._collect_qemu_pids()
        if self.daemon_pid is not None:
            with contextlib.suppress(Exception):
                self._destroy_all()
        self._save_capabilities()
        if self._proc is not None:
            stop_process(self._proc, timeout=15)
        self._kill_leftovers()
        if not self.keep_workdir:
            shutil.rmtree(wd, ignore_errors=True)

    def _destroy_all(self) -> None:
        libvirt = _libvirt()
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isPersistent():
                        dom.undefine()
        finally:
            conn.close()

    def _save_capabilities(self) -> None:
        src = self._wd() / "state" / "cache" / "qemu" / "capabilities"
        if not src.is_dir() or not any(src.iterdir()):
            return
        dest = self.cache_dir / "libvirt-qemu-capabilities"
        with contextlib.suppress(OSError):
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".caps-", dir=self.cache_dir))
            shutil.copytree(src, tmp / "c")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp / "c", dest)
            shutil.rmtree(tmp, ignore_errors=True)

    def _collect_qemu_pids(self) -> None:
        if self.workdir is None:
            return
        for pidfile in (self.workdir / "state" / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                self._qemu_pids.add(int(pidfile.read_text().strip()))

    def _ours(self) -> List[int]:
        """PIDs of live processes this stack started.

        Only two kinds qualify: processes inside a mount namespace that ``unshare`` made for
        this stack's libvirtd (never the caller's own namespace), and QEMU processes named by
        this stack's pidfiles.  Nothing is matched by name or command line.
        """
        assert self._host_ns not in self._namespaces
        protected = {1, os.getpid(), os.getppid()}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in protected or not pid_alive(pid):
                continue
            ns = _proc_mntns(pid)
            in_our_ns = ns is not None and ns != self._host_ns and ns in self._namespaces
            if in_our_ns or (pid in self._qemu_pids and self._is_our_qemu(pid)):
                found.append(pid)
        return found

    def _is_our_qemu(self, pid: int) -> bool:
        """A QEMU whose ``-name guest=NAME,...`` is a guest this stack defined."""
        if not _is_qemu(pid):
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            return False
        values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-name"]
        wanted = {"guest=" + n.replace(",", ",,") for n in (*self._guests, *self._paused)}
        return any(v.split(",debug-threads=")[0] in wanted for v in values)

    def _kill_leftovers(self) -> None:
        self._collect_qemu_pids()
        deadline = time.monotonic() + 20
        while True:
            pids = self._ours()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise StackError(f"processes {pids} survive SIGKILL")
            time.sleep(0.1)

    # -- guests ----------------------------------------------------------------------------

    @property
    def guest_image(self) -> GuestImage:
        if self._image is None:
            t0 = time.monotonic()
            self._image = build_guest(self.cache_dir)
            self.timings["build_guest"] = time.monotonic() - t0
        return self._image

    def _domain_xml(
        self, name: str, memory_mib: int, stats_period: int, console: Path, **extra: Any
    ) -> str:
        boot = (self.guest_image, console)
        return _qemu_domain_xml(name, memory_mib, stats_period, boot, **extra)

    def define_guest(
        self,
        name: str,
        memory_mib: int = 512,
        stats_period: int = 2,
        *,
        agent_channel: bool = False,
        cmdline_extra: str = "",
        customize: Optional[Callable[[str], str]] = None,
    ) -> str:
        """Define and start a TCG guest with a virtio balloon; return its console log path.

        ``agent_channel``: give it the guest agent's channel; ``cmdline_extra``: options for
        the guest's /init (``tb.agent=1`` starts its stand-in agent on that channel);
        ``customize`` rewrites the domain XML before it is defined (more devices).
        """
        libvirt = _libvirt()
        console = self._wd() / "guests" / f"{_safe_name(name)}.console.log"
        with contextlib.suppress(FileNotFoundError):
            console.unlink()
        self._guests[name] = console
        xml = self._domain_xml(
            name,
            memory_mib,
            stats_period,
            console,
            agent_channel=agent_channel,
            cmdline_extra=cmdline_extra,
        )
        if customize is not None:
            xml = customize(xml)
        with self.connection() as conn:
            try:
                dom = conn.defineXML(xml)
                dom.create()
            except libvirt.libvirtError as e:
                raise self.error(f"cannot start guest {name!r}: {e}", name) from e
        self._collect_qemu_pids()
        return str(console)

    def start_paused(
        self,
        names: List[str],
        memory_mib: int = 128,
        stats_period: int = 2,
        metadata: Optional[Dict[str, str]] = None,
        customize: Optional[Callable[[str], str]] = None,
        prealloc: bool = False,
    ) -> None:
        """Define and start TCG domains paused (QEMU's ``-S``): real QEMU processes that never
        boot (about 38 MB each) but answer libvirt's stats calls over QMP like any domain.

        No kernel, console or disk: a virtio ``<memballoon>`` (with a stats period) and
        nothing else; ``metadata`` (name -> XML of its ``<metadata>`` elements) for those named;
        ``prealloc``: all of its RAM touched at start (zero pages).
        """
        libvirt = _libvirt()
        with self.connection() as conn:
            for name in names:
                extra = (metadata or {}).get(name, "")
                xml = _qemu_domain_xml(
                    name, memory_mib, stats_period, metadata=extra, prealloc=prealloc
                )
                if customize is not None:
                    xml = customize(xml)
                self._paused.add(name)
                try:
                    conn.defineXML(xml).createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
                except libvirt.libvirtError as e:
                    raise self.error(f"cannot start paused domain {name!r}: {e}") from e
        self._collect_qemu_pids()

    def remove_domains(self, names: List[str]) -> None:
        """Destroy and undefine domains (those already gone are skipped)."""
        libvirt = _libvirt()
        with self.connection() as conn:
            for name in names:
                try:
                    dom = conn.lookupByName(name)
                except libvirt.libvirtError:
                    continue
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
                self._paused.discard(name)

    def guest_pid(self, name: str) -> int:
        """PID of the guest's QEMU process (from libvirt's pidfile)."""
        pidfile = self._wd() / "state" / "run" / "qemu" / f"{name}.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as e:
            raise self.error(f"no QEMU pidfile for {name!r}: {e}", name) from e
        self._qemu_pids.add(pid)
        return pid

    def wait_guest_stats(self, name: str, timeout: float = 120.0) -> Dict[str, int]:
        """Wait until memoryStats() has guest fields ('available', last_update > 0)."""
        libvirt = _libvirt()
        deadline = time.monotonic() + timeout
        stats: Dict[str, int] = {}
        with self.connection() as conn:
            while True:
                try:
                    dom = conn.lookupByName(name)
                    if not dom.isActive():
                        raise self.error(f"guest {name!r} is not running", name)
                    stats = dict(dom.memoryStats())
                except libvirt.libvirtError as e:
                    raise self.error(f"memoryStats of {name!r} failed: {e}", name) from e
                if "available" in stats and stats.get("last_update", 0) > 0:
                    return stats
                if time.monotonic() > deadline:
                    raise self.error(
                        f"guest {name!r} reported no guest stats within {timeout:.0f} s "
                        f"(last memoryStats: {stats})",
                        name,
                    )
                time.sleep(0.25)

    def console_snapshot(self, name: str) -> Dict[str, int]:
        """The last complete meminfo+vmstat block on the guest's console, parsed."""
        got = self._read_snapshot(name)
        if got is None:
            raise self.error(f"guest {name!r} has printed no complete snapshot yet", name)
        return got[1]

    def _read_snapshot(self, name: str) -> Tuple[int, Dict[str, int]] | None:
        path = self.console_path(name)
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        return parse_console(text)

    def wait_console(
        self,
        name: str,
        predicate: Callable[[Dict[str, int]], bool],
        timeout: float = 60.0,
    ) -> Dict[str, int]:
        """Wait for a snapshot printed after this call that satisfies ``predicate``."""
        start = self._read_snapshot(name)
        first_new = start[0] + 1 if start else 0
        deadline = time.monotonic() + timeout
        last: Tuple[int, Dict[str, int]] | None = start
        while True:
            got = self._read_snapshot(name)
            if got is not None:
                last = got
                if got[0] >= first_new and predicate(got[1]):
                    return got[1]
            if time.monotonic() > deadline:
                seen = {k: v for k, v in (last[1] if last else {}).items()
                        if k.startswith(("Mem", "balloon"))}  # fmt: skip
                raise self.error(
                    f"no console snapshot of {name!r} satisfied the condition within "
                    f"{timeout:.0f} s (last: {seen})",
                    name,
                )
            time.sleep(0.2)

    # -- diagnostics -----------------------------------------------------------------------

    def diagnostics(self, name: str | None = None) -> str:
        """Tails of the libvirtd log and output, and of the guest's QEMU log and console."""
        if self.workdir is None:
            return "(stack not started)"
        wd = self.workdir
        parts = [
            f"workdir: {wd} (LIBVIRT_STACK_KEEP=1 keeps it)",
            f"--- libvirtd log {self.log_path} (tail, harmless startup noise left out):\n"
            + tail(self.log_path, noise=_LOG_NOISE),
            f"--- libvirtd output (tail):\n{tail(wd / 'libvirtd.stdout.log', 15)}",
        ]
        names = [name] if name is not None else list(self._guests)
        for n in names:
            console = self._guests.get(n)
            parts.append(f"--- QEMU log of {n!r} (tail):\n{tail(self.qemu_log_path(n), 15)}")
            if console is not None:
                parts.append(
                    f"--- console of {n!r} {console} (head):\n{_head(console, 15)}\n"
                    f"--- console of {n!r} (tail):\n{tail(console, 12)}"
                )
        return "\n".join(parts)

    def error(self, message: str, name: str | None = None) -> StackError:
        """A StackError whose text ends with :meth:`diagnostics`."""
        return StackError(f"{message}\n{self.diagnostics(name)}")
