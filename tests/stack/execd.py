"""Telegraf's `inputs.execd`, played by the tests as Telegraf drives an execd plugin.

Telegraf cannot be installed in the test environment, so :class:`Execd` does its part: it starts
``[sys.executable, "-m", "telegraf_balloon", *args]`` with stdin, stdout and stderr pipes and
an environment; :meth:`Execd.tick` is ``signal = "STDIN"`` (one ``b"\\n"``, 1 s write
deadline); :meth:`Execd.signal` is ``signal = "SIGHUP"`` and friends; :meth:`Execd.shutdown`
is Telegraf's stop (close stdin, 5 s, SIGTERM, 5 s, SIGKILL).

One reader thread collects stdout and stderr lines with their arrival times and holds the
plugin to Telegraf's rules as it goes: every stdout line must parse as line protocol (with
``line_protocol_parser``, and agree with the field catalog), every stderr line must carry a
level prefix. Anything else is recorded in :attr:`Execd.problems`, which
:meth:`Execd.assert_clean` (and every ``wait_*`` helper) turns into a test failure.

A *batch* is the set of lines that share one timestamp: every line of one poll carries the
poll's timestamp.

Faults on Telegraf's side and the sources': ``secrets=`` makes any line holding a configured
password a problem; :meth:`Execd.pause_stdout` stalls the reader (the child's write waits on
a full pipe) before :meth:`Execd.close_stdout`; :class:`Lease` makes a regular file's open()
block, as a kernel file behind a busy lock does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import selectors
import shutil
import signal as signals
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import line_protocol_parser

from telegraf_balloon import catalog
from tests.stack.common import REPO as REPO  # re-exported: older imports take it here
from tests.stack.common import child_env as child_env  # likewise
from tests.stack.common import unavailable

# The captured Firecracker 6.18 guest, vendored in tests/fixtures. It stores the two sysfs
# symlinks as plain files holding the link target (copy_guest_root relinks them).
FIRECRACKER_ROOTS = (
    REPO / "tests" / "fixtures" / "guest" / "firecracker-6.18-virtio-balloon" / "root",
)


def firecracker_root() -> Path:
    """The captured Firecracker guest tree; FileNotFoundError when neither copy exists."""
    for root in FIRECRACKER_ROOTS:
        if (root / "proc" / "meminfo").is_file():
            return root
    raise FileNotFoundError(f"fixture not found: {' or '.join(map(str, FIRECRACKER_ROOTS))}")


LEVEL_PREFIXES = ("E! ", "W! ", "I! ", "D! ")
STDERR_LINE_MAX = 64 * 1024  # Telegraf's bufio.Scanner limit for stderr lines

WRITE_DEADLINE = 1.0  # Telegraf's stdin write deadline
STOP_GRACE = 5.0  # Telegraf waits this long after closing stdin, and again after SIGTERM

T = TypeVar("T")


# --- guest roots ------------------------------------------------------------------------------

# sysfs symlinks ("../../drivers/virtio_balloon") that a copy without symlink support turned
# into small files holding the link target.
_FLATTENED_LINK = re.compile(r"(?:\.\./)+[\w.:-]+(?:/[\w.:-]+)*")


def copy_guest_root(dest: Path, source: Optional[Path] = None, relink: bool = True) -> Path:
    """Copy a captured guest tree (proc/, sys/) to `dest`, symlinks included; `dest` returned.

    The Firecracker capture stores its two sysfs symlinks (``devices/virtio0/driver``,
    ``drivers/virtio_balloon/virtio0``) as plain files holding the link target; with `relink`
    they become symlinks again, as real sysfs has them. Everything is made writable so tests
    can alter the tree.
    """
    if source is None:
        source = firecracker_root()
    shutil.copytree(source, dest, symlinks=True)
    for folder, _dirs, files in os.walk(dest):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            os.chmod(path, 0o644)
            if relink and os.path.relpath(path, dest).startswith("sys" + os.sep):
                with open(path, "rb") as handle:
                    head = handle.read(256)
                text = head.decode("ascii", "replace").strip()
                if _FLATTENED_LINK.fullmatch(text):
                    os.unlink(path)
                    os.symlink(text, path)
    return dest


def hang_file(path: Path) -> None:
    """Replace `path` with a FIFO that has no writer: opening it blocks, like a hung /proc read."""
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)


class Lease:
    """A write lease on a regular file: another process's open() of it blocks until release.

    The kernel makes such an open wait for the lease holder (at most
    /proc/sys/fs/lease-break-time, 45 s by default): a regular file whose read hangs, as a
    debugfs file behind a busy driver lock does, with nothing but the kernel involved. The
    holder is this process; the SIGIO the kernel sends it on each lease break is ignored.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Optional[int] = None
        self.held = False
        signals.signal(signals.SIGIO, signals.SIG_IGN)  # default action: terminate
        self.take()

    def take(self, timeout: float = 5.0) -> None:
        """Hold the lease (again); waits while another process still has the file open."""
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
                self.held = True
                return
            except BlockingIOError:  # EAGAIN: someone has it open right now
                if time.monotonic() > end:
                    raise
                time.sleep(0.01)
            except OSError as exc:  # EINVAL: a filesystem without leases
                unavailable(f"no file leases on the filesystem of {self.path}: {exc}")

    def release(self) -> None:
        """Let blocked and later opens through (the lease can be taken again)."""
        if self.fd is not None and self.held:
            self.held = False
            with contextlib.suppress(OSError):  # the kernel broke it already (lease-break-time)
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def run_cli(
    *args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """The plugin as a command (`--once`, `--explain`, ...); every stderr line must carry a
    Telegraf level prefix."""
    done = subprocess.run(
        [sys.executable, "-m", "telegraf_balloon", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(env),
        cwd=str(REPO),
        timeout=timeout,
    )
    for line in done.stderr.splitlines():
        assert line.startswith(LEVEL_PREFIXES), f"stderr line without a level prefix: {line!r}"
    return done


Start = Callable[..., "Execd"]


@contextlib.contextmanager
def supervised(*always_secret: str) -> Iterator[Start]:
    """``start(args, env=None, secrets=())`` runs the plugin under the harness (`always_secret`
    added to every child's secrets); when the block ends every child is killed, then each is
    checked (:meth:`Execd.assert_clean`). A test module's ``start`` fixture wraps it."""
    children: list[Execd] = []

    def start(
        args: Sequence[str], env: Optional[Mapping[str, str]] = None, secrets: Sequence[str] = ()
    ) -> Execd:
        child = Execd(list(args), env=env, secrets=(*always_secret, *secrets))
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
    for child in children:
        child.assert_clean()


# --- what was read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One stderr line (or an unparsed stdout line) and when it arrived (time.monotonic())."""

    at: float
    text: str


@dataclass(frozen=True)
class Metric:
    """One parsed stdout line."""

    at: float
    text: str
    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]
    time_ns: int


@dataclass
class Batch:
    """The lines of one poll: they share one timestamp."""

    time_ns: int
    metrics: list[Metric] = field(default_factory=list)

    @property
    def at(self) -> float:
        """Arrival of the batch's first line."""
        return self.metrics[0].at

    def of(self, measurement: str) -> list[Metric]:
        return [m for m in self.metrics if m.measurement == measurement]

    def collector(self, instance: str) -> Metric:
        """The balloon_collector line of the source `instance`."""
        found = [m for m in self.of(catalog.COLLECTOR) if m.tags.get("instance") == instance]
        if len(found) != 1:
            raise AssertionError(
                f"expected one balloon_collector line for {instance!r}, got {len(found)}: "
                + "\n".join(m.text for m in self.metrics)
            )
        return found[0]


class ExecdProblem(AssertionError):
    """The plugin broke one of Telegraf's rules (unparsable stdout, unprefixed stderr...)."""


# --- the harness ------------------------------------------------------------------------------


class Execd:
    """One child process driven as Telegraf's execd input drives it.

    `env` adds variables to this process's environment (Telegraf's `environment` option).
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Path] = None,
        check_catalog: bool = True,
        secrets: Sequence[str] = (),
    ) -> None:
        self.argv = [sys.executable, "-m", "telegraf_balloon", *args]
        self.check_catalog = check_catalog
        # Configured passwords: any stdout or stderr line holding one is a problem.
        self.secrets = tuple(s for s in secrets if s)
        self.metrics: list[Metric] = []
        self.stderr: list[Line] = []
        self.problems: list[str] = []
        self._cond = threading.Condition()
        self._close_stdout = False
        self.stdout_closed = False
        self._pause_stdout = False
        self.stdout_paused = False
        self.stdin_closed_at: Optional[float] = None
        self.exit_code: Optional[int] = None
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(env),
            cwd=str(cwd or REPO),
            bufsize=0,
        )
        self._reader = threading.Thread(target=self._read, name="execd-reader", daemon=True)
        self._reader.start()

    # -- context manager: never leave a child behind --

    def __enter__(self) -> Execd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        """SIGKILL the child if it still runs, and wait for the reader to finish."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()

    # -- reading --

    def _read(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        selector = selectors.DefaultSelector()
        pending = {"stdout": b"", "stderr": b""}
        selector.register(self.proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(self.proc.stderr, selectors.EVENT_READ, "stderr")
        while selector.get_map():
            if self._pause_stdout and not self.stdout_paused and not self.stdout_closed:
                selector.unregister(self.proc.stdout)  # the pipe fills; the child's write waits
                with self._cond:
                    self.stdout_paused = True
                    self._cond.notify_all()
                continue
            if self._close_stdout and not self.stdout_closed:
                if not self.stdout_paused:
                    selector.unregister(self.proc.stdout)
                self.proc.stdout.close()  # the read end: the child's writes now fail (EPIPE)
                with self._cond:
                    self.stdout_closed = True
                    self._cond.notify_all()
                continue
            for key, _ in selector.select(timeout=0.02):
                name = str(key.data)
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:
                    chunk = b""
                now = time.monotonic()
                if not chunk:
                    selector.unregister(key.fileobj)
                    if pending[name]:
                        self._problem(f"{name}: unterminated last line {pending[name][:200]!r}")
                        pending[name] = b""
                    continue
                data = pending[name] + chunk
                *lines, pending[name] = data.split(b"\n")
                with self._cond:
                    for raw in lines:
                        if name == "stdout":
                            self._stdout_line(now, raw)
                        else:
                            self._stderr_line(now, raw)
                    self._cond.notify_all()
        selector.close()
        with self._cond:
            self._cond.notify_all()

    def _problem(self, text: str) -> None:
        with self._cond:
            self.problems.append(text)
            self._cond.notify_all()

    def _leaks(self, name: str, raw: bytes) -> None:
        for secret in self.secrets:
            if secret.encode("utf-8") in raw:
                self.problems.append(f"{name}: a configured secret was written: {raw[:300]!r}")

    def _stdout_line(self, at: float, raw: bytes) -> None:
        self._leaks("stdout", raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.problems.append(f"stdout: not UTF-8: {raw[:200]!r}")
            return
        try:
            parsed = line_protocol_parser.parse_line(text)
        except Exception as exc:
            self.problems.append(f"stdout: not line protocol ({exc}): {text[:300]!r}")
            return
        if not isinstance(parsed, dict) or not isinstance(parsed.get("time"), int):
            self.problems.append(f"stdout: line without a timestamp: {text[:300]!r}")
            return
        metric = Metric(
            at, text, parsed["measurement"], parsed["tags"], parsed["fields"], parsed["time"]
        )
        if self.check_catalog:
            for problem in catalog.check_point(metric.measurement, metric.tags, metric.fields):
                self.problems.append(f"stdout: {problem}: {text[:300]!r}")
        self.metrics.append(metric)

    def _stderr_line(self, at: float, raw: bytes) -> None:
        self._leaks("stderr", raw)
        text = raw.decode("utf-8", "replace")
        if len(raw) > STDERR_LINE_MAX:
            self.problems.append(f"stderr: line longer than 64 KiB: {text[:200]!r}")
        elif not text.startswith(LEVEL_PREFIXES):
            self.problems.append(f"stderr: line without a level prefix: {text[:300]!r}")
        self.stderr.append(Line(at, text))

    # -- Telegraf's side: triggers, signals, stop --

    def write(self, data: bytes, deadline: float = WRITE_DEADLINE) -> bool:
        """Write `data` to the child's stdin within `deadline` seconds; False when it could not."""
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            return False
        fd = stdin.fileno()
        os.set_blocking(fd, False)
        end = time.monotonic() + deadline
        view = memoryview(data)
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_WRITE)
        try:
            while view:
                remaining = end - time.monotonic()
                if remaining <= 0 or not selector.select(timeout=remaining):
                    return False
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    continue
                except (BrokenPipeError, OSError):
                    return False
                view = view[written:]
        finally:
            selector.close()
        return True

    def tick(self) -> bool:
        """Telegraf's `signal = "STDIN"`: one newline, 1 s write deadline."""
        return self.write(b"\n")

    def signal(self, sig: int) -> None:
        """Telegraf's `signal = "SIGHUP"` (or SIGUSR1, SIGUSR2)."""
        self.proc.send_signal(sig)

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
            self.stdin_closed_at = time.monotonic()

    def pause_stdout(self, timeout: float = 2.0) -> None:
        """Stop reading the child's stdout (a stalled reader): its writes block on a full pipe."""
        with self._cond:
            self._pause_stdout = True
            if not self._cond.wait_for(lambda: self.stdout_paused, timeout=timeout):
                raise AssertionError("harness: stdout was not paused")

    def stdout_queued(self) -> int:
        """Bytes the child wrote that nobody has read yet (FIONREAD on the pipe)."""
        assert self.proc.stdout is not None
        buf = fcntl.ioctl(self.proc.stdout.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder)

    def close_stdout(self, timeout: float = 2.0) -> None:
        """Close the read end of the child's stdout (Telegraf gone, or its reader died)."""
        with self._cond:
            self._close_stdout = True
            if not self._cond.wait_for(lambda: self.stdout_closed, timeout=timeout):
                raise AssertionError("harness: stdout was not closed")

    def wait_exit(self, timeout: float) -> Optional[int]:
        """The exit code, or None when the child still runs after `timeout` seconds."""
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=5)
        return self.exit_code

    def shutdown(self) -> tuple[int, float]:
        """Telegraf's stop: close stdin, 5 s, SIGTERM, 5 s, SIGKILL.

        Returns (exit code, seconds from closing stdin to exit).
        """
        self.close_stdin()
        assert self.stdin_closed_at is not None
        started = self.stdin_closed_at
        return self._finish(started)

    def stop_with(self, sig: int) -> tuple[int, float]:
        """Send `sig` with stdin left open, then escalate as Telegraf does.

        Returns (exit code, seconds from the signal to exit).
        """
        started = time.monotonic()
        self.signal(sig)
        return self._finish(started)

    def _finish(self, started: float) -> tuple[int, float]:
        code = self.wait_exit(STOP_GRACE)
        if code is None:
            self.proc.send_signal(signals.SIGTERM)
            code = self.wait_exit(STOP_GRACE)
        if code is None:
            self.proc.kill()
            code = self.wait_exit(STOP_GRACE)
        assert code is not None
        return code, time.monotonic() - started

    # -- waiting for output --

    def _wait(self, what: str, found: Callable[[], Optional[T]], timeout: float) -> T:
        with self._cond:
            end = time.monotonic() + timeout
            while True:
                self._raise_problems()
                value = found()
                if value is not None:
                    return value
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                if not self._reader.is_alive() and self.proc.poll() is not None:
                    break  # nothing more will come
                self._cond.wait(timeout=min(remaining, 0.05))
        raise AssertionError(
            f"harness: timed out after {timeout:g}s waiting for {what}; "
            f"exit code {self.proc.poll()}\n{self.transcript()}"
        )

    def batches(self) -> list[Batch]:
        """Every batch so far, in arrival order."""
        with self._cond:
            out: dict[int, Batch] = {}
            for metric in self.metrics:
                out.setdefault(metric.time_ns, Batch(metric.time_ns)).metrics.append(metric)
            return list(out.values())

    def wait_batches(self, count: int, timeout: float, lines: Optional[int] = None) -> list[Batch]:
        """Every batch, once `count` arrived (the `count`-th with at least `lines` lines)."""

        def enough() -> Optional[list[Batch]]:
            batches = self.batches()
            if len(batches) < count:
                return None
            if lines is not None and len(batches[count - 1].metrics) < lines:
                return None
            return batches

        return self._wait(f"{count} batch(es)", enough, timeout)

    def wait_stderr(self, pattern: str, timeout: float) -> Line:
        """The first stderr line matching the regular expression `pattern`."""
        regex = re.compile(pattern)

        def match() -> Optional[Line]:
            return next((line for line in self.stderr if regex.search(line.text)), None)

        return self._wait(f"a stderr line matching {pattern!r}", match, timeout)

    def wait_ready(self, timeout: float = 10.0) -> Line:
        """Wait for the start-up `I! ` line: from then on signals trigger polls."""
        return self.wait_stderr(r"^I! telegraf-balloon .* started", timeout)

    def settle(self, seconds: float) -> list[Batch]:
        """Let `seconds` pass, then return every batch so far."""
        time.sleep(seconds)
        with self._cond:
            self._raise_problems()
        return self.batches()

    def stderr_lines(self, prefix: str = "") -> list[str]:
        with self._cond:
            return [line.text for line in self.stderr if line.text.startswith(prefix)]

    # -- verdicts --

    def _raise_problems(self) -> None:
        if self.problems:
            raise ExecdProblem("\n".join(self.problems) + "\n" + self.transcript())

    def assert_clean(self) -> None:
        """Fail on any broken rule seen so far."""
        with self._cond:
            self._raise_problems()

    def transcript(self, limit: int = 60) -> str:
        """The last lines of stdout and stderr, for failure messages."""
        out = [f"  stdout: {m.text[:240]}" for m in self.metrics[-limit:]]
        out += [f"  stderr: {line.text[:240]}" for line in self.stderr[-limit:]]
        return "\n".join(out) if out else "  (no output)"
