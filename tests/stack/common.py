"""The test harness's toolkit: what every stack module and many tests need, written once.

* finding programs (:func:`which`, :func:`require_program`, :func:`need_program`) and what a
  test does when a real component cannot start (:func:`unavailable`: a skip locally, a
  failure under ``CI=true``);
* :class:`StackError`, raised by the stack modules when a component cannot be built, started
  or observed;
* :func:`free_port`, :func:`tail` of a log file for error messages, :func:`wait_for` a
  condition with a deadline, :func:`stop_process` (SIGTERM, then SIGKILL), :func:`pid_alive`,
  :func:`memtotal`;
* :data:`REPO` and :func:`child_env`: the environment of the plugin run as a child process.

Standard library only at import (pytest is imported when a test gives up), so benches can use
the stack modules too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

REPO = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A component of the stack could not be built, started or observed."""


def in_ci() -> bool:
    """True when CI=true: a component that cannot start is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere, always with the reason."""
    import pytest

    if in_ci():
        pytest.fail(f"component unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def which(name: str) -> Optional[str]:
    """Path of a program on PATH or in the system's bin directories; None when absent."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def require_program(name: str) -> str:
    """Path of a program, or StackError (for the stack modules, which know no pytest)."""
    path = which(name)
    if path is None:
        raise StackError(f"{name} is not installed (scripts/install-system-deps.sh installs it)")
    return path


def need_program(name: str) -> str:
    """Path of a program, or unavailable() (for tests and fixtures)."""
    path = which(name)
    if path is None:
        unavailable(
            f"{name} is not installed (make test installs it: scripts/install-system-deps.sh)"
        )
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free when asked: bind it soon, retry on a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while the process runs: False once it is gone or a zombie (exited, not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()
        return state[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float, group: bool = False) -> None:
    """SIGTERM the process (with `group`, its whole process group), wait up to `timeout`
    seconds, then SIGKILL and wait as long again; nothing when it has exited already."""
    kill = os.killpg if group else os.kill
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            kill(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)


def memtotal() -> int:
    """This machine's physical memory in bytes (MemTotal of /proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise StackError("no MemTotal in /proc/meminfo")


def tail(
    path: Optional[Path],
    lines: int = 40,
    max_bytes: int = 256 * 1024,
    noise: Optional[re.Pattern[str]] = None,
) -> str:
    """The last `lines` lines of a log file for an error message, lines matching `noise` left
    out; a note instead when there is no file or it cannot be read."""
    if path is None:
        return "(no file)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError as e:
        return f"({path}: {e.strerror})"
    text = data.decode("utf-8", "replace").replace("\r", "")
    kept = [line for line in text.splitlines() if not (noise and noise.search(line))]
    return "\n".join(kept[-lines:]) or "(empty)"


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.5,
    fail: Callable[[str], BaseException] = AssertionError,
) -> Any:
    """The first truthy result of `check`, asked every `interval` seconds; after `timeout`
    seconds, ``fail(message)`` is raised (an AssertionError unless said otherwise). An
    exception `check` raises ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def child_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """This environment for the plugin as a child process: without what would hide block
    buffering, with the repository first on PYTHONPATH, `extra` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONUNBUFFERED")}
    env.pop("PYTHONDEVMODE", None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def logged(text: str) -> list[str]:
    """The lines of a source's log but those it writes once at start about this machine:
    the host figures it will not give, a QEMU with no cgroup of its own (as the tests'
    QEMUs are, on a host without cgroup v2 or without a VM scope per QEMU)."""
    start = ("will not give", "no cgroup of its own")
    return [ln for ln in text.splitlines() if not any(s in ln for s in start)]
