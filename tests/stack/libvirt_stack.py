"""A real libvirtd, a real QEMU (TCG) guest with a virtio balloon, and test-driver node files.

Three things live here:

* :func:`build_guest` builds (once, cached) a direct-boot guest: the Debian 6.1 cloud kernel,
  its virtio modules and busybox-static in an initramfs whose ``/init`` prints the whole of
  ``/proc/meminfo`` and ``/proc/vmstat`` to the serial console every second, between
  ``=== SNAPSHOT <n> ===`` and ``=== END <n> ===``.
* :class:`LibvirtStack` runs ``libvirtd`` as root inside a private mount namespace: every
  state directory, ``/etc/libvirt``, ``/etc/passwd`` and ``/etc/group`` are bind-mounted from
  a temporary directory, so the machine's own files are never written.  Missing mount points
  (``/run/libvirt`` on a machine without libvirt-daemon-system) are created on an overlay
  whose upper layer is a tmpfs that only the namespace sees.
* :func:`write_node_xml` and :class:`DomainSpec` write node files for libvirt's test driver
  (``test:///ABS/node.xml``, or ``LibvirtStack.test_uri`` through the daemon).

Needs root, ``unshare``, ``libvirtd`` with the QEMU driver, ``qemu-system-x86_64``,
``busybox`` (static), ``apt-get``/``apt-cache``/``dpkg-deb`` (for the kernel) and the
``libvirt`` Python binding.  Every failure raises :class:`StackError` carrying the tails of
the daemon log, the QEMU log and the guest console.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Literal, Set, Tuple

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DomainSpec",
    "DomainState",
    "GuestImage",
    "LibvirtStack",
    "Memballoon",
    "StackError",
    "build_guest",
    "parse_console",
    "write_node_xml",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "guest"

# ---------------------------------------------------------------------------------------------
# errors and small helpers
# ---------------------------------------------------------------------------------------------


class StackError(RuntimeError):
    """A component of the stack could not be built, started or observed."""


def _tail(
    path: Path | None,
    lines: int = 40,
    max_bytes: int = 256 * 1024,
    noise: re.Pattern[str] | None = None,
) -> str:
    if path is None:
        return "(no file)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError as e:
        return f"({path}: {e.strerror})"
    text = data.decode("utf-8", "replace").replace("\r", "")
    kept = [line for line in text.splitlines() if not (noise and noise.search(line))]
    return "\n".join(kept[-lines:]) or "(empty)"


def _head(path: Path, lines: int = 25, max_bytes: int = 16 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes)
    except OSError as e:
        return f"({path}: {e.strerror})"
    text = data.decode("utf-8", "replace").replace("\r", "")
    return "\n".join(text.splitlines()[:lines]) or "(empty)"


def _run(cmd: List[str], timeout: float, cwd: Path | None = None) -> str:
    try:
        res = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise StackError(f"{cmd[0]} is not installed: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise StackError(f"{shlex.join(cmd)} timed out after {timeout:.0f} s") from e
    if res.returncode != 0:
        raise StackError(
            f"{shlex.join(cmd)} exited {res.returncode}:\n"
            f"{res.stderr.decode('utf-8', 'replace')[-2000:]}"
        )
    return res.stdout.decode("utf-8", "replace")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _need(name: str) -> str:
    path = _which(name)
    if path is None:
        raise StackError(f"{name} is not installed (scripts/install-system-deps.sh installs it)")
    return path


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as e:
        raise StackError(
            f"the libvirt Python binding is missing (pip install libvirt-python): {e}"
        ) from e
    return libvirt


# ---------------------------------------------------------------------------------------------
# the guest image
# ---------------------------------------------------------------------------------------------

#: Bump when the build changes in a way the hashed inputs below do not show.
RECIPE_VERSION = "1"

#: Insmod order (each depends only on earlier ones).
GUEST_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_balloon",
)

GUEST_CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1"

SNAPSHOT_BEGIN = "=== SNAPSHOT"
SNAPSHOT_END = "=== END"

_INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 1 > /proc/sys/kernel/printk
echo "GUEST: kernel $(uname -r) up $(cut -d' ' -f1 /proc/uptime)s"
for m in @MODULES@; do
  insmod /lib/modules/$m.ko || echo "GUEST: insmod $m FAILED"
done
echo "GUEST: modules loaded at $(cut -d' ' -f1 /proc/uptime)s"
if ls /sys/bus/virtio/drivers/virtio_balloon/ 2>/dev/null | grep -q virtio; then
  echo "GUEST: BALLOON-READY"
else
  echo "GUEST: BALLOON-MISSING"
fi
n=0
while true; do
  n=$((n + 1))
  {
    echo "=== SNAPSHOT $n ==="
    echo "--- uptime $(cut -d' ' -f1 /proc/uptime)"
    echo "--- /proc/meminfo"
    cat /proc/meminfo
    echo "--- /proc/vmstat"
    cat /proc/vmstat
    echo "=== END $n ==="
  } > /tmp/snapshot
  cat /tmp/snapshot
  sleep 1
done
""".replace("@MODULES@", " ".join(GUEST_MODULES))


@dataclass(frozen=True)
class GuestImage:
    """A built direct-boot guest: pass ``kernel``/``initrd``/``cmdline`` to ``<os>``."""

    kernel: Path
    initrd: Path
    kernel_release: str
    kernel_package: str
    cmdline: str
    recipe_id: str


def _recipe_id() -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, _INIT_SCRIPT, " ".join(GUEST_MODULES), GUEST_CMDLINE):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _pick_kernel_package() -> str:
    override = os.environ.get("LIBVIRT_STACK_KERNEL_PACKAGE")
    if override:
        return override
    out = _run(
        [_need("apt-cache"), "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$"],
        timeout=60,
    )
    best: Tuple[int, str] | None = None
    for line in out.splitlines():
        m = re.match(r"^(linux-image-6\.1\.0-([0-9]+)-cloud-amd64) ", line)
        if m and (best is None or int(m.group(2)) > best[0]):
            best = (int(m.group(2)), m.group(1))
    if best is None:
        raise StackError(
            "apt-cache knows no linux-image-6.1.0-*-cloud-amd64 package "
            "(a Debian 12 apt source and `apt-get update` are needed)"
        )
    return best[1]


def _download_deb(package: str, debs: Path) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(prefix="download-", dir=debs) as tmp:
        os.chmod(tmp, 0o755)  # lets apt's _apt sandbox user write there when run as root
        _run([_need("apt-get"), "download", "-q", package], timeout=600, cwd=Path(tmp))
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not got:
            raise StackError(f"apt-get download {package} produced no .deb in {tmp}")
        dest = debs / got[-1].name
        os.replace(got[-1], dest)
    return dest


def _extract_kernel(deb: Path) -> Tuple[str, bytes, Dict[str, bytes]]:
    """(release, vmlinuz, {module: .ko bytes}) from a linux-image .deb."""
    proc = subprocess.Popen(
        [_need("dpkg-deb"), "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    vmlinuz: Tuple[str, bytes] | None = None
    modules: Dict[str, bytes] = {}
    wanted = set(GUEST_MODULES)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "/boot/vmlinuz-" in "/" + member.name.lstrip("./"):
                    data = tar.extractfile(member)
                    assert data is not None
                    vmlinuz = (base[len("vmlinuz-") :], data.read())
                    continue
                if "/kernel/" not in member.name:
                    continue
                m = re.match(r"^(.+)\.ko(\.xz|\.zst|\.gz)?$", base)
                if not m or m.group(1) not in wanted:
                    continue
                data = tar.extractfile(member)
                assert data is not None
                raw = data.read()
                suffix = m.group(2)
                if suffix == ".xz":
                    raw = lzma.decompress(raw)
                elif suffix == ".gz":
                    raw = gzip.decompress(raw)
                elif suffix == ".zst":
                    raw = _run_bytes(["zstd", "-dc"], raw)
                modules[m.group(1)] = raw
    finally:
        proc.stdout.close()
        err = proc.stderr.read() if proc.stderr else b""
        proc.wait(timeout=60)
    if proc.returncode != 0:
        raise StackError(f"dpkg-deb --fsys-tarfile {deb} failed: {err.decode(errors='replace')}")
    if vmlinuz is None:
        raise StackError(f"{deb} holds no boot/vmlinuz-*")
    missing = wanted - set(modules)
    if missing:
        raise StackError(f"{deb} lacks the modules {sorted(missing)}")
    return vmlinuz[0], vmlinuz[1], modules


def _run_bytes(cmd: List[str], data: bytes) -> bytes:
    res = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, timeout=120, check=False)
    if res.returncode != 0:
        raise StackError(f"{shlex.join(cmd)} exited {res.returncode}")
    return res.stdout


def _is_static_elf(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP program header (no dynamic loader)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # ELF64 only (x86-64)
            return False
        order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
        phoff = int.from_bytes(head[0x20:0x28], order)
        phentsize = int.from_bytes(head[0x36:0x38], order)
        phnum = int.from_bytes(head[0x38:0x3A], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type = int.from_bytes(table[i * phentsize : i * phentsize + 4], order)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def _static_busybox() -> Path:
    candidates = [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    found = _which("busybox")
    if found:
        candidates.insert(0, Path(found))
    for c in candidates:
        if c.is_file() and _is_static_elf(c):
            return c.resolve()
    raise StackError("no statically linked busybox found (install the busybox-static package)")


class _Cpio:
    """A minimal newc ("070701") cpio writer with fixed owners and mtimes."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: Tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = [
            self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        ]  # fmt: skip
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._buf.write(header + encoded)
        self._buf.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self._buf.write(data)
        self._buf.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self._buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _build_initrd(busybox: Path, modules: Dict[str, bytes]) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "sbin", "usr", "usr/bin", "usr/sbin", "lib",
              "lib/modules", "root"):  # fmt: skip
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, perm=0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), perm=0o755)
    for name in GUEST_MODULES:
        cpio.file(f"lib/modules/{name}.ko", modules[name])
    cpio.file("init", _INIT_SCRIPT.encode(), perm=0o755)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load_image(d: Path) -> GuestImage | None:
    try:
        meta = json.loads((d / "guest.json").read_text())
        kernel, initrd = d / "vmlinuz", d / "initrd.img"
        if not (kernel.is_file() and initrd.is_file()):
            return None
        return GuestImage(
            kernel=kernel,
            initrd=initrd,
            kernel_release=str(meta["kernel_release"]),
            kernel_package=str(meta["kernel_package"]),
            cmdline=str(meta["cmdline"]),
            recipe_id=str(meta["recipe_id"]),
        )
    except (OSError, ValueError, KeyError):
        return None


def build_guest(cache_dir: Path) -> GuestImage:
    """Build the direct-boot guest once; later calls return the cached one.

    The image lives in ``cache_dir/recipe-<hash>/`` where the hash covers the init script, the
    module list, the kernel command line and :data:`RECIPE_VERSION`, so changing the recipe
    builds a new image.  The kernel ``.deb`` is kept in ``cache_dir/debs/``.
    """
    cache_dir = Path(cache_dir).resolve()
    recipe = _recipe_id()
    dest = cache_dir / f"recipe-{recipe}"
    image = _load_image(dest)
    if image is not None:
        return image
    with _locked(cache_dir / ".lock"):
        image = _load_image(dest)
        if image is not None:
            return image
        busybox = _static_busybox()
        package = _pick_kernel_package()
        deb = _download_deb(package, cache_dir / "debs")
        release, vmlinuz, modules = _extract_kernel(deb)
        initrd = _build_initrd(busybox, modules)
        tmp = Path(tempfile.mkdtemp(prefix=f".recipe-{recipe}-", dir=cache_dir))
        try:
            (tmp / "vmlinuz").write_bytes(vmlinuz)
            (tmp / "initrd.img").write_bytes(initrd)
            (tmp / "init").write_text(_INIT_SCRIPT)
            meta = {
                "kernel_release": release,
                "kernel_package": package,
                "deb": deb.name,
                "cmdline": GUEST_CMDLINE,
                "recipe_id": recipe,
                "modules": list(GUEST_MODULES),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / "guest.json").write_text(json.dumps(meta, indent=1) + "\n")
            os.chmod(tmp, 0o755)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        image = _load_image(dest)
        if image is None:
            raise StackError(f"built guest image in {dest} cannot be read back")
        return image


# ---------------------------------------------------------------------------------------------
# console parsing
# ---------------------------------------------------------------------------------------------

_BEGIN_RE = re.compile(r"^=== SNAPSHOT (\d+) ===$", re.M)
_END_RE = re.compile(r"^=== END (\d+) ===$", re.M)
_MEMINFO_RE = re.compile(r"^([A-Za-z0-9_()]+):\s+(\d+)(?: kB)?$")
_VMSTAT_RE = re.compile(r"^([a-z0-9_]+) (\d+)$")


def parse_console(text: str) -> Tuple[int, Dict[str, int]] | None:
    """The last complete snapshot block in console text: ``(n, {key: int})`` or None.

    meminfo keys keep their names and values as printed (KiB for ``kB`` lines; counts for
    the HugePages_* lines); vmstat keys (``balloon_inflate``, ``pswpin``, ...) are counts.
    """
    text = text.replace("\r", "")
    for end in reversed(list(_END_RE.finditer(text))):
        n = end.group(1)
        begin: re.Match[str] | None = None
        for b in _BEGIN_RE.finditer(text, 0, end.start()):
            if b.group(1) == n:
                begin = b
        if begin is None:
            continue
        values: Dict[str, int] = {}
        section = ""
        for line in text[begin.end() : end.start()].splitlines():
            line = line.strip()
            if line.startswith("--- "):
                section = line
                continue
            if section == "--- /proc/meminfo":
                m = _MEMINFO_RE.match(line)
            elif section == "--- /proc/vmstat":
                m = _VMSTAT_RE.match(line)
            else:
                m = None
            if m:
                values[m.group(1)] = int(m.group(2))
        if "MemTotal" in values and "nr_free_pages" in values:
            return int(n), values
    return None


# ---------------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------------

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


def _proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


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


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return False


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
            _need(prog)
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
        libvirtd = _need("libvirtd")
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
                [_need("unshare"), "--mount", "--propagation", "private",
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
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
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
            if pid in protected or not _pid_alive(pid):
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

    def _domain_xml(self, name: str, memory_mib: int, stats_period: int, console: Path) -> str:
        image = self.guest_image
        dom = ET.Element("domain", type="qemu")
        ET.SubElement(dom, "name").text = name
        ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
        ET.SubElement(dom, "currentMemory", unit="MiB").text = str(memory_mib)
        ET.SubElement(dom, "vcpu").text = "1"
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
        ET.SubElement(os_el, "kernel").text = str(image.kernel)
        ET.SubElement(os_el, "initrd").text = str(image.initrd)
        ET.SubElement(os_el, "cmdline").text = image.cmdline
        features = ET.SubElement(dom, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            ET.SubElement(dom, event).text = "destroy"
        devices = ET.SubElement(dom, "devices")
        ET.SubElement(devices, "controller", type="usb", model="none")
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(console))
        ET.SubElement(serial, "target", port="0")
        balloon = ET.SubElement(devices, "memballoon", model="virtio")
        if stats_period > 0:
            ET.SubElement(balloon, "stats", period=str(stats_period))
        return ET.tostring(dom, encoding="unicode")

    def define_guest(self, name: str, memory_mib: int = 512, stats_period: int = 2) -> str:
        """Define and start a TCG guest with a virtio balloon; return its console log path."""
        libvirt = _libvirt()
        console = self._wd() / "guests" / f"{_safe_name(name)}.console.log"
        with contextlib.suppress(FileNotFoundError):
            console.unlink()
        self._guests[name] = console
        xml = self._domain_xml(name, memory_mib, stats_period, console)
        with self.connection() as conn:
            try:
                dom = conn.defineXML(xml)
                dom.create()
            except libvirt.libvirtError as e:
                raise self.error(f"cannot start guest {name!r}: {e}", name) from e
        self._collect_qemu_pids()
        return str(console)

    def start_paused(self, names: List[str], memory_mib: int = 128, stats_period: int = 2) -> None:
        """Define and start TCG domains paused (QEMU's ``-S``): real QEMU processes that never
        boot (about 38 MB each) but answer libvirt's stats calls over QMP like any domain.

        No kernel, console or disk: a virtio ``<memballoon>`` (with a stats period) and
        nothing else.
        """
        libvirt = _libvirt()
        with self.connection() as conn:
            for name in names:
                dom = ET.Element("domain", type="qemu")
                ET.SubElement(dom, "name").text = name
                ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
                ET.SubElement(dom, "currentMemory", unit="MiB").text = str(memory_mib)
                ET.SubElement(dom, "vcpu").text = "1"
                os_el = ET.SubElement(dom, "os")
                ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
                devices = ET.SubElement(dom, "devices")
                ET.SubElement(devices, "controller", type="usb", model="none")
                balloon = ET.SubElement(devices, "memballoon", model="virtio")
                if stats_period > 0:
                    ET.SubElement(balloon, "stats", period=str(stats_period))
                self._paused.add(name)
                try:
                    conn.defineXML(ET.tostring(dom, encoding="unicode")).createWithFlags(
                        libvirt.VIR_DOMAIN_START_PAUSED
                    )
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
            + _tail(self.log_path, noise=_LOG_NOISE),
            f"--- libvirtd output (tail):\n{_tail(wd / 'libvirtd.stdout.log', 15)}",
        ]
        names = [name] if name is not None else list(self._guests)
        for n in names:
            console = self._guests.get(n)
            parts.append(f"--- QEMU log of {n!r} (tail):\n{_tail(self.qemu_log_path(n), 15)}")
            if console is not None:
                parts.append(
                    f"--- console of {n!r} {console} (head):\n{_head(console, 15)}\n"
                    f"--- console of {n!r} (tail):\n{_tail(console, 12)}"
                )
        return "\n".join(parts)

    def error(self, message: str, name: str | None = None) -> StackError:
        """A StackError whose text ends with :meth:`diagnostics`."""
        return StackError(f"{message}\n{self.diagnostics(name)}")


# ---------------------------------------------------------------------------------------------
# test-driver node files
# ---------------------------------------------------------------------------------------------

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
DomainState = Literal["running", "paused", "shutoff"]
Memballoon = Literal["virtio", "none"]
_RUNSTATE = {"running": 1, "paused": 3, "shutoff": 5}


@dataclass
class DomainSpec:
    """One domain of a libvirt test-driver node file."""

    name: str
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    memory_kib: int = 1048576
    current_kib: int | None = None  # None: same as memory_kib
    state: DomainState = "running"
    memballoon: Memballoon = "virtio"
    stats_period: int = 10  # 0: no <stats> element

    def __post_init__(self) -> None:
        if self.state not in _RUNSTATE:
            raise ValueError(f"state must be one of {sorted(_RUNSTATE)}, not {self.state!r}")
        if self.memballoon not in ("virtio", "none"):
            raise ValueError(f"memballoon must be 'virtio' or 'none', not {self.memballoon!r}")
        if not self.name or "\n" in self.name or "/" in self.name:
            raise ValueError(f"libvirt refuses the domain name {self.name!r}")
        if any(ord(c) < 0x20 and c != "\t" for c in self.name):
            raise ValueError(f"XML 1.0 cannot carry the domain name {self.name!r}")
        if self.current_kib is not None and self.current_kib > self.memory_kib:
            raise ValueError(f"{self.name!r}: current_kib > memory_kib")
        self.uuid = str(uuidlib.UUID(self.uuid))

    @property
    def current(self) -> int:
        return self.memory_kib if self.current_kib is None else self.current_kib


def write_node_xml(path: Path, domains: List[DomainSpec], host_memory_kib: int = 67108864) -> None:
    """Write a node file for libvirt's test driver holding ``domains``.

    Names are escaped by ElementTree, so any name libvirt accepts round-trips.  The file is
    read again by the test driver on every ``open()``.
    """
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ValueError("domain names must be unique")
    if len({d.uuid for d in domains}) != len(domains):
        raise ValueError("domain UUIDs must be unique")
    ET.register_namespace("test", TEST_NS)
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("mhz", 2000), ("model", "x86_64"), ("active", 16), ("nodes", 1),
                       ("sockets", 1), ("cores", 8), ("threads", 2)):  # fmt: skip
        ET.SubElement(cpu, tag).text = str(value)
    ET.SubElement(node, "memory").text = str(host_memory_kib)
    for d in domains:
        dom = ET.SubElement(node, "domain", type="test")
        ET.SubElement(dom, "name").text = d.name
        ET.SubElement(dom, "uuid").text = d.uuid
        ET.SubElement(dom, "memory", unit="KiB").text = str(d.memory_kib)
        ET.SubElement(dom, "currentMemory", unit="KiB").text = str(d.current)
        ET.SubElement(dom, "vcpu").text = "1"
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type").text = "hvm"
        devices = ET.SubElement(dom, "devices")
        balloon = ET.SubElement(devices, "memballoon", model=d.memballoon)
        if d.memballoon == "virtio" and d.stats_period > 0:
            ET.SubElement(balloon, "stats", period=str(d.stats_period))
        ET.SubElement(dom, f"{{{TEST_NS}}}runstate").text = str(_RUNSTATE[d.state])
    ET.indent(node)
    data = ET.tostring(node, encoding="unicode")
    if "xmlns:test=" not in data:  # no domains: declare the namespace anyway
        data = data.replace("<node", f"<node xmlns:test='{TEST_NS}'", 1)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("<?xml version='1.0' encoding='UTF-8'?>\n" + data + "\n", encoding="utf-8")
    os.replace(tmp, path)
