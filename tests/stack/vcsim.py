"""A real vCenter simulator (govmomi's, from Debian) for the vSphere source's tests and benches.

Debian's ``golang-github-vmware-govmomi-dev`` ships the simulator library under
``/usr/share/gocode`` but no ``vcsim`` program, so :func:`build_launcher` compiles our own
launcher (``tests/vcsim/main.go``) in GOPATH mode, offline, once: the binary is cached under
``.cache/vcsim/`` keyed on a hash of main.go and the Go and govmomi versions (first build about
30 s, later calls return the cached path at once; a lock file keeps concurrent builds apart).

:class:`Vcsim` runs it on ``127.0.0.1`` (a free port) with its own TMPDIR::

    sim = Vcsim(cluster=2, host=2, vm=3, page=7).start()
    sim.url, sim.username, sim.password, sim.cert_file    # https://127.0.0.1:PORT/sdk ...
    sim.calls()["calls"]["QueryPerf"]; sim.reset_calls()
    sim.sessions(); sim.terminate_sessions()              # e.g. kill the plugin's session
    sim.restart()                                         # same port, same inventory and cert
    sim.pause(); sim.resume()                             # SIGSTOP/SIGCONT: a hung vCenter
    sim.refuse_query_perf(["monitor"])                    # its QueryPerf faults NoPermission
    sim.stop()

Inventory (the simulator's model multiplies it out):

* ``dc`` datacenters, each with ``cluster`` clusters of ``host`` hosts and ``standalone_host``
  standalone hosts;
* ``vm`` VMs in each cluster's root resource pool (placed on that cluster's hosts at random,
  deterministically) and ``vm`` on each standalone host;
* so VMs = ``dc * (cluster + standalone_host) * vm`` and hosts =
  ``dc * (cluster * host + standalone_host)``. The VMs are named ``DC0_C1_RP0_VM4`` (cluster)
  and ``DC0_H0_VM2`` (standalone host), powered on, 32 MB each.

See ``tests/vcsim/main.go`` for what the launcher changes in the stock simulator (paging,
per-VM perf counters, maxQueryMetrics, the ``/sim/*`` endpoints).

Where it still differs from a real vCenter (a client must not depend on these):

* a whole ``summary.quickStats`` (or ``summary``) object comes without its zero integers
  (pyvmomi reads None); leaf paths (``summary.quickStats.balloonedMemory``) return 0;
* QueryPerf faults NoPermission only when told to (:meth:`Vcsim.refuse_query_perf`); a VM's
  samples lag (``perf_lag_s``) or are left out (``perf_omit``) only when configure_vm says so;
* performance counter values are the same in every sample (no history), counter keys are
  the simulator's (resolve ``group.name.rollup``), ``mem.vmmemctltarget`` is 0 unless set;
* maxQueryMetrics counts entity x counter pairs and is enforced for realtime queries too
  (``max_query_metrics_historical_only=True`` limits it to historical intervals);
* sessions never expire unless ``session_idle_timeout`` is set (vCenter: 30 minutes);
* ``restart()`` rebuilds the inventory: same names and ids, API changes lost;
* pyvmomi's attribute reads (``vm.summary``) are ``Fetch`` calls, counted as such;
* no limit on request size (vCenter refuses more than 500,000 XML elements).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Optional, Type

from telegraf_balloon.config import VsphereConfig
from tests.stack.libvirt_stack import StackError

__all__ = [
    "DEFAULT_CACHE_DIR",
    "GOCODE",
    "LAUNCHER_SOURCE",
    "Vcsim",
    "VcsimError",
    "build_launcher",
    "govmomi_version",
    "launcher_available",
    "launcher_versions",
    "vm_count",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "vcsim"
LAUNCHER_SOURCE = REPO_ROOT / "tests" / "vcsim" / "main.go"
GOCODE = Path("/usr/share/gocode")
GOVMOMI_SIMULATOR = GOCODE / "src" / "github.com" / "vmware" / "govmomi" / "simulator"
GO_PACKAGE = "vcsimballoon"  # outside the github.com/vmware/govmomi import path


def default_base_dir() -> Optional[str]:
    """Where instance directories go: /dev/shm when usable, else the system's temp dir.

    The simulator writes about 6 small files per VM into its datastore folder; on a busy disk
    that made a 2,000-VM start take 35 s instead of 6 s, and a stop 7 s instead of 0.2 s.
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


_LIVE: weakref.WeakSet[Vcsim] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for sim in list(_LIVE):
        with contextlib.suppress(Exception):
            sim.stop()


class VcsimError(StackError):
    """The simulator could not be built, started, or answered."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def find_go() -> Optional[str]:
    """Path of the ``go`` program, or None."""
    return shutil.which("go") or shutil.which("go", path="/usr/lib/go/bin:/usr/bin")


def govmomi_version() -> Optional[str]:
    """The installed golang-github-vmware-govmomi-dev version; None when the library is missing."""
    if not GOVMOMI_SIMULATOR.is_dir():
        return None
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "golang-github-vmware-govmomi-dev"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    # not from dpkg: the simulator sources' sizes and mtimes stand in for a version
    h = hashlib.sha256()
    for p in sorted(GOVMOMI_SIMULATOR.glob("*.go")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return "files-" + h.hexdigest()[:12]


def _go_version(go: str) -> str:
    out = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60, check=False)
    return out.stdout.strip() or out.stderr.strip()


def launcher_available() -> Optional[str]:
    """None when go and govmomi are installed, else the reason the launcher cannot be built."""
    if find_go() is None:
        return "go is not installed (scripts/install-system-deps.sh installs golang-go)"
    if govmomi_version() is None:
        return (
            "the govmomi simulator library is not installed "
            "(scripts/install-system-deps.sh installs golang-github-vmware-govmomi-dev)"
        )
    return None


def launcher_versions() -> Dict[str, str]:
    """What a launcher build is made of: govmomi's and Go's versions and main.go's hash."""
    go = find_go()
    return {
        "govmomi": govmomi_version() or "not installed",
        "go": _go_version(go) if go is not None else "not installed",
        "main.go sha256": hashlib.sha256(LAUNCHER_SOURCE.read_bytes()).hexdigest()[:16],
    }


def build_launcher(cache_dir: Path = DEFAULT_CACHE_DIR, *, timeout: float = 600.0) -> Path:
    """Path of the launcher binary, built once per (main.go, Go, govmomi) and cached."""
    reason = launcher_available()
    if reason is not None:
        raise VcsimError(reason)
    go = find_go()
    assert go is not None
    source = LAUNCHER_SOURCE.read_bytes()
    key = hashlib.sha256(
        source + b"\0" + _go_version(go).encode() + b"\0" + (govmomi_version() or "").encode()
    ).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    binary = cache_dir / f"vcsim-{key}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    with open(cache_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
        build = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
        try:
            pkg = build / "gopath" / "src" / GO_PACKAGE
            pkg.mkdir(parents=True)
            (pkg / "main.go").write_bytes(source)
            env = dict(os.environ)
            env.update(
                GOPATH=f"{build / 'gopath'}:{GOCODE}",
                GO111MODULE="off",
                GOPROXY="off",
                GOFLAGS="",
                GOCACHE=str(cache_dir / "gocache"),
                CGO_ENABLED="0",
            )
            out_path = build / "vcsim"
            proc = subprocess.run(
                [go, "build", "-o", str(out_path), GO_PACKAGE],
                cwd=str(build),
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if proc.returncode != 0:
                raise VcsimError(
                    f"go build of {LAUNCHER_SOURCE} failed ({proc.returncode}):\n"
                    + "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
                )
            os.replace(out_path, binary)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        _prune(cache_dir, keep=binary)
    return binary


def _prune(cache_dir: Path, keep: Path, newest: int = 3) -> None:
    """Remove launchers built from older main.go versions (26 MB each), keeping a few."""
    old = sorted(
        (p for p in cache_dir.glob("vcsim-*") if p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for p in old[newest - 1 :]:
        with contextlib.suppress(OSError):
            p.unlink()


def vm_count(
    *, dc: int = 1, cluster: int = 1, standalone_host: int = 1, vm: int = 2, **_: Any
) -> int:
    """How many VMs an inventory holds: dc * (cluster + standalone_host) * vm."""
    return dc * (cluster + standalone_host) * vm


_INVENTORY_DEFAULTS: Dict[str, Any] = {
    "dc": 1,
    "cluster": 1,
    "host": 3,
    "standalone_host": 1,
    "vm": 2,
    "pool": 0,
    "page": 0,
    "max_query_metrics": 64,
    "max_query_metrics_historical_only": False,
    "username": "user",
    "password": "pass",
    "tls": True,
    "autostart": True,
    "session_idle_timeout": 0.0,
    "delay_ms": 0,
    "method_delay": None,
    "users": None,
}
# The numbers each passed as its own flag: -dc N, -standalone-host N, ...
_COUNTS = ("dc", "cluster", "host", "standalone_host", "vm", "pool", "page", "max_query_metrics")


class Vcsim:
    """One launcher process on 127.0.0.1, with its own directory (TMPDIR, cert, key, logs).

    Keyword arguments (also accepted by :meth:`start`): ``dc``, ``cluster``, ``host`` (per
    cluster), ``standalone_host`` (per datacenter), ``vm`` (per cluster and per standalone host),
    ``pool``, ``page`` (RetrievePropertiesEx page size, 0 = no paging), ``max_query_metrics``
    (``config.vpxd.stats.maxQueryMetrics``, <= 0 unlimited), ``max_query_metrics_historical_only``,
    ``username``, ``password``, ``tls`` (False: plain http, ``cert_file`` None), ``autostart``
    (power the VMs on), ``session_idle_timeout`` (seconds, 0 = never), ``delay_ms`` (added to
    every SOAP call, a network's round trip) and ``method_delay`` (``{"QueryPerf": 50}``, ms).
    ``users``: more users that may log in, ``{"monitor": "its password"}`` (e.g. one whose
    QueryPerf :meth:`refuse_query_perf` then refuses).
    ``base_dir``: where the instance directory goes (default :func:`default_base_dir`).
    """

    def __init__(
        self,
        *,
        binary: Optional[Path] = None,
        startup_timeout: Optional[float] = None,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        base_dir: Optional[str] = None,
        **inventory: Any,
    ) -> None:
        unknown = set(inventory) - set(_INVENTORY_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Vcsim arguments: {sorted(unknown)}")
        self.inventory: Dict[str, Any] = {**_INVENTORY_DEFAULTS, **inventory}
        self.binary = binary
        self.cache_dir = cache_dir
        self.base_dir = base_dir if base_dir is not None else default_base_dir()
        self.startup_timeout = startup_timeout
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.workdir: Optional[Path] = None
        self.host = "127.0.0.1"
        self.port = 0
        self.info: Dict[str, Any] = {}
        self.paused = False
        self.starts = 0

    # -- attributes ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.inventory["tls"] else "http"
        return f"{scheme}://{self.host}:{self.port}/sdk"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.inventory["tls"] else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def username(self) -> str:
        return str(self.inventory["username"])

    @property
    def password(self) -> str:
        return str(self.inventory["password"])

    @property
    def cert_file(self) -> Optional[str]:
        if not self.inventory["tls"] or self.workdir is None:
            return None
        return str(self.workdir / "server.pem")

    def source_config(self, **options: Any) -> VsphereConfig:
        """A vsphere source's config for this simulator: its URL, user, CA and page size."""
        settings: dict[str, Any] = {
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "ca_file": self.cert_file or "",
            "page_size": int(self.inventory["page"]),
        }
        settings.update(options)
        return VsphereConfig(**settings)

    @property
    def vms(self) -> int:
        """How many VMs the running simulator created."""
        return int(self.info.get("vms", vm_count(**self.inventory)))

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def stderr_path(self) -> Path:
        if self.workdir is None:
            raise VcsimError("the simulator has not been started")
        return self.workdir / "vcsim.stderr"

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.stderr_path, lines)

    def resident_mb(self) -> tuple[float, float]:
        """The launcher's resident memory now and at its peak (VmRSS, VmHWM), in MB."""
        if self.process is None:
            raise VcsimError("the simulator is not running")
        values = {}
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)

    # -- lifecycle -------------------------------------------------------------------------------

    def _args(self, listen: str) -> List[str]:
        inv = self.inventory
        assert self.workdir is not None
        args = [str(self.binary), "-listen", listen]
        for key in _COUNTS:
            args += ["-" + key.replace("_", "-"), str(inv[key])]
        args += [
            "-max-query-metrics-historical-only="
            + ("true" if inv["max_query_metrics_historical_only"] else "false"),
            "-username",
            self.username,
            "-password",
            self.password,
            f"-autostart={'true' if inv['autostart'] else 'false'}",
            "-session-idle-timeout",
            f"{float(inv['session_idle_timeout'])}s",
        ]
        if inv["delay_ms"]:
            args += ["-delay-ms", str(int(inv["delay_ms"]))]
        if inv["method_delay"]:
            args += [
                "-method-delay",
                ",".join(f"{k}={int(v)}" for k, v in dict(inv["method_delay"]).items()),
            ]
        for name, secret in dict(inv["users"] or {}).items():
            args += ["-user", f"{name}:{secret}"]
        if inv["tls"]:
            args += ["-cert-out", str(self.workdir / "server.pem")]
            args += ["-key-file", str(self.workdir / "server.key")]
        else:
            args.append("-no-tls")
        return args

    def start(self, *, port: int = 0, **inventory: Any) -> Vcsim:
        """Start on a free port, or `port` (the inventory arguments override the constructor's).

        A fixed port is for peers that cannot be told one (vmware_exporter dials 443 only).
        """
        if self.process is not None:
            raise VcsimError("the simulator is already running")
        unknown = set(inventory) - set(_INVENTORY_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Vcsim arguments: {sorted(unknown)}")
        self.inventory.update(inventory)
        if self.binary is None:
            self.binary = build_launcher(self.cache_dir)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="vcsim-", dir=self.base_dir))
        _LIVE.add(self)
        self._launch(f"127.0.0.1:{int(port)}")
        return self

    def _launch(self, listen: str) -> None:
        assert self.workdir is not None
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        out_path = self.workdir / "vcsim.stdout"
        env = dict(os.environ, TMPDIR=str(tmp))
        with open(out_path, "wb") as out, open(self.workdir / "vcsim.stderr", "ab") as err:
            self.process = subprocess.Popen(
                self._args(listen),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.workdir),
                start_new_session=True,
            )
        self.paused = False
        timeout = self.startup_timeout
        if timeout is None:
            timeout = 30.0 + vm_count(**self.inventory) * 0.01
        deadline = time.monotonic() + timeout
        while True:
            data = out_path.read_bytes()
            if b"\n" in data:
                line = data.split(b"\n", 1)[0]
                try:
                    self.info = json.loads(line)
                except ValueError as exc:
                    self._kill()
                    raise VcsimError(f"unexpected launcher output {line!r}: {exc}") from exc
                break
            rc = self.process.poll()
            if rc is not None:
                self.process = None
                raise VcsimError(
                    f"the vCenter simulator exited with {rc} before listening:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self._kill()
                raise VcsimError(
                    f"the vCenter simulator did not listen within {timeout:.0f} s:\n"
                    + self.log_tail()
                )
            time.sleep(0.02)
        self.port = int(self.info["port"])
        self.host = str(self.info.get("host") or "127.0.0.1")
        self.starts += 1

    def _kill(self) -> None:
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        self.process = None
        self.paused = False

    def _terminate(self, timeout: float = 15.0) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self.paused:
                    os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                return
        self.process = None
        self.paused = False

    def stop(self) -> None:
        """Stop the process and remove its directory."""
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        _LIVE.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung vCenter)."""
        if self.process is None:
            raise VcsimError("the simulator is not running")
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.process is None:
            raise VcsimError("the simulator is not running")
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def restart(self, *, down_for: float = 0.0, retry_for: float = 10.0) -> None:
        """Stop, then start on the same port with the same inventory and certificate.

        Every session is gone afterwards (a client must log in again) and the inventory is
        rebuilt from scratch: changes made through the API are lost, managed object ids are
        the same.
        """
        if self.workdir is None or not self.port:
            raise VcsimError("the simulator has not been started")
        port = self.port
        self._terminate()
        if down_for > 0:
            time.sleep(down_for)
        deadline = time.monotonic() + retry_for
        while True:
            try:
                self._launch(f"127.0.0.1:{port}")
                return
            except VcsimError as exc:
                # the old socket may linger a moment; anything else is a real failure
                if "address already in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL (the simulator leaves govcsim-* folders in its own TMPDIR, removed by stop())."""
        self._kill()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Vcsim:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    # -- TLS and the /sim endpoints -------------------------------------------------------------

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """A context that verifies the simulator's certificate (None for plain http)."""
        if self.cert_file is None:
            return None
        return ssl.create_default_context(cafile=self.cert_file)

    def _get(
        self, path: str, timeout: float = 30.0, method: str = "GET", body: Optional[bytes] = None
    ) -> Dict[str, Any]:
        req = urllib.request.Request(self.base_url + path, method=method, data=body)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                data: Dict[str, Any] = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace").strip()
            raise VcsimError(f"{method} {path} failed: {exc.code} {detail}") from exc
        except OSError as exc:
            raise VcsimError(f"{method} {path} failed: {exc}") from exc

    def calls(self) -> Dict[str, Any]:
        """Counts since the last reset.

        ``{"calls": {method: n}, "faults": {method: n}, "total": n,
        "query_perf": {"calls", "entities", "metric_ids", "max_metric_ids", "refused"},
        "retrieve": {"objects", "pages"}, "since": iso8601}``.
        """
        return self._get("/sim/calls")

    def call_count(self, method: str) -> int:
        return int(self.calls()["calls"].get(method, 0))

    def reset_calls(self) -> None:
        self._get("/sim/reset")

    def sessions(self) -> List[Dict[str, Any]]:
        """The live sessions: ``[{"key", "user", "login_time", "last_active_time",
        "call_count", "user_agent"}]`` (a plugin that leaks sessions shows here)."""
        return list(self._get("/sim/sessions")["sessions"])

    def terminate_sessions(self) -> List[str]:
        """End every session, as an administrator's TerminateSession would; returns their keys.

        The next call of each client faults NotAuthenticated: it has to log in again.
        """
        return list(self._get("/sim/sessions/terminate", method="POST")["terminated"])

    def refuse_query_perf(self, users: List[str], after: int = 0) -> None:
        """Make QueryPerf fault NoPermission for these users' sessions (``"*"``: everyone's).

        As vCenter answers a user whose role lacks the privilege on the VMs; ``after`` more
        successful calls are let through first. ``refuse_query_perf([])`` ends it.
        """
        body = json.dumps({"users": list(users), "after": int(after)}).encode()
        self._get("/sim/perf/refuse", method="POST", body=body)

    def update(self, moref_type: str, moref_value: str, values: Dict[str, Any]) -> None:
        """Set properties of any managed object by path (the SET. keys only exist for VMs).

        ``sim.update("HostSystem", "host-21", {"summary.quickStats.overallMemoryUsage": 3000,
        "summary.hardware.memorySize": 8 << 30})``. Integers, booleans and strings; a path the
        object does not have raises :class:`VcsimError`.
        """
        body = json.dumps({"type": moref_type, "value": moref_value, "set": values}).encode()
        self._get("/sim/update", method="POST", body=body)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m tests.stack.vcsim --vm 500 --page 100``: run one until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="Run the vCenter simulator in the foreground.")
    for name, default in _INVENTORY_DEFAULTS.items():
        if name == "method_delay":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(
                flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default
            )
        else:
            parser.add_argument(flag, type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    sim = Vcsim(**args).start()
    print(
        json.dumps(
            {
                "url": sim.url,
                "username": sim.username,
                "password": sim.password,
                "cert_file": sim.cert_file,
                "vms": sim.vms,
                "calls": sim.base_url + "/sim/calls",
            }
        ),
        flush=True,
    )
    try:
        while sim.running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
