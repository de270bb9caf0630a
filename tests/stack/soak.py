"""A long run of the plugin in execd mode, light enough for 20,000 polls of 500 domains.

:class:`tests.stack.execd.Execd` keeps every parsed line; a soak cannot. :func:`soak` plays
Telegraf the same way (one newline per poll, stdout and stderr read apart) but keeps only
counts: polls, lines, invalid lines (each parsed with ``line_protocol_parser`` and checked
against the field catalog), poll times, and samples of the child's resident memory, open
file descriptors and threads from ``/proc/<pid>``. ``bench/bench_soak.py`` runs it at full
length; ``tests/integration/test_soak.py`` runs a short one in ``make test``.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import line_protocol_parser

from telegraf_balloon import catalog
from tests.stack.common import REPO, child_env
from tests.stack.node_xml import DomainSpec, write_node_xml

BATCH_TIMEOUT = 60.0  # one poll may take this long before the soak gives up
# Put in the libvirt URI of the soak's config: no stdout or stderr line may hold it.
SECRET = "soak-canary-Pa55w0rd"


@dataclass(frozen=True)
class ProcSample:
    """The child as /proc saw it after poll `poll`."""

    poll: int
    rss_kib: int
    fds: int
    threads: int


def proc_sample(pid: int, poll: int) -> ProcSample:
    """Resident memory, open descriptors and threads of `pid`, from /proc."""
    rss = threads = 0
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(poll, rss, fds, threads)


@dataclass
class SoakResult:
    """What a soak saw: per-poll wall times, /proc samples, output checks."""

    polls: int = 0
    lines: int = 0
    invalid: list[str] = field(default_factory=list)
    leaks: int = 0  # lines holding SECRET
    down: int = 0  # balloon_collector lines with up=false
    poll_seconds: list[float] = field(default_factory=list)
    samples: list[ProcSample] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    exit_code: Optional[int] = None
    balloon_lines_per_poll: set[int] = field(default_factory=set)

    def after(self, warmup: int) -> list[ProcSample]:
        """The samples taken once `warmup` polls were done."""
        return [s for s in self.samples if s.poll >= warmup]

    def rss_growth_kib(self, warmup: int) -> int:
        """Resident memory at the end minus right after warm-up (KiB)."""
        later = self.after(warmup)
        return later[-1].rss_kib - later[0].rss_kib if later else 0

    def spread(self, warmup: int, attr: str) -> tuple[int, int]:
        values = [int(getattr(s, attr)) for s in self.after(warmup)]
        return (min(values), max(values)) if values else (0, 0)


def write_inventory(path: Path, domains: int) -> Path:
    """A test-driver node file: `domains` running domains, a mix of periods and balloons."""
    specs = []
    for i in range(domains):
        memory = 1048576 * (1 + i % 4)
        specs.append(
            DomainSpec(
                f"soak-{i:04d}",
                memory_kib=memory,
                current_kib=memory - 4096 * (i % 7),
                stats_period=(0, 5, 10)[i % 3],
                memballoon="none" if i % 50 == 49 else "virtio",
                state="paused" if i % 25 == 24 else "running",
            )
        )
    write_node_xml(path, specs, host_memory_kib=512 * 1024 * 1024)
    return path


class _Lines:
    """Splits a pipe into lines without Python's buffered readers (their copies add up)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""
        self.eof = False

    def feed(self) -> list[bytes]:
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.eof = True
            return []
        data = self.pending + chunk
        *lines, self.pending = data.split(b"\n")
        return lines


def soak(
    config: Path,
    polls: int,
    sources: int,
    sample_every: int,
    extra_args: Sequence[str] = (),
    on_poll: Optional[Callable[[int], None]] = None,
) -> SoakResult:
    """Run the plugin on `config` for `polls` back-to-back polls; `sources` collector lines end
    each batch. `on_poll(i)` runs before poll i is triggered (to grow a log file, say)."""
    argv = [sys.executable, "-m", "telegraf_balloon", "--config", str(config), *extra_args]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=str(REPO),
        bufsize=0,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    result = SoakResult()
    stderr_lines: list[str] = []

    def drain_stderr() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    reader = threading.Thread(target=drain_stderr, name="soak-stderr", daemon=True)
    reader.start()
    out = _Lines(proc.stdout.fileno())
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    parse = line_protocol_parser.parse_line
    secret = SECRET.encode()
    check = catalog.check_point
    try:
        for i in range(1, polls + 1):
            if on_poll is not None:
                on_poll(i)
            started = time.perf_counter()
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            collectors = balloons = 0
            end = time.monotonic() + BATCH_TIMEOUT
            while collectors < sources:
                if not selector.select(timeout=max(0.0, end - time.monotonic())):
                    raise TimeoutError(f"poll {i}: no complete batch in {BATCH_TIMEOUT:g}s")
                lines = out.feed()
                if out.eof:
                    raise EOFError(f"poll {i}: the plugin closed stdout (exit {proc.poll()})")
                for raw in lines:
                    result.lines += 1
                    if secret in raw:
                        result.leaks += 1
                    text = raw.decode("utf-8", "replace")
                    try:
                        point = parse(text)
                    except Exception as exc:
                        result.invalid.append(f"poll {i}: {exc}: {text[:200]!r}")
                        continue
                    measurement = point["measurement"]
                    problems = check(measurement, point["tags"], point["fields"])
                    if problems:
                        result.invalid.append(f"poll {i}: {problems}: {text[:200]!r}")
                    if measurement == catalog.COLLECTOR:
                        collectors += 1
                        if point["fields"].get("up") is not True:
                            result.down += 1
                    elif measurement == catalog.BALLOON:
                        balloons += 1
            result.poll_seconds.append(time.perf_counter() - started)
            result.balloon_lines_per_poll.add(balloons)
            result.polls = i
            if i % sample_every == 0 or i == 1:
                result.samples.append(proc_sample(proc.pid, i))
    finally:
        selector.close()
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        try:
            result.exit_code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            result.exit_code = proc.wait()
        reader.join(timeout=5)
        result.stderr = stderr_lines
        result.leaks += sum(1 for line in stderr_lines if SECRET in line)
    return result


def soak_config(
    path: Path, node_xml: Path, guest_root: str, log_file: Optional[Path] = None
) -> Path:
    """The soak's config: the guest source on `guest_root`, libvirt on the node file."""
    body = (
        '[agent]\ntimeout = "10s"\n\n'
        f'[[sources.guest]]\nroot = "{guest_root}"\n\n'
        f'[[sources.libvirt]]\nuri = "test://watcher:{SECRET}@{node_xml.resolve()}"\n'
    )
    if log_file is not None:
        body += f'\n[[sources.logs]]\nfiles = ["{log_file}"]\n'
    body += '\n[[thresholds]]\nfield = "balloon_ratio"\nwarn = 0.2\ncrit = 0.4\nfor = "10m"\n'
    path.write_text(body, encoding="utf-8")
    return path


class LogFeeder:
    """Grows a log file by one balloon event every `every` polls, copytruncates it now and then."""

    def __init__(self, path: Path, every: int = 5, truncate_every: int = 1000) -> None:
        self.path = path
        self.every = every
        self.truncate_every = truncate_every
        self.written = 0
        path.write_bytes(b"")

    def __call__(self, poll: int) -> None:
        if poll % self.truncate_every == 0:
            with open(self.path, "r+b") as handle:
                handle.truncate(0)
        if poll % self.every == 0:
            with open(self.path, "ab") as handle:
                handle.write(b"kernel: virtio_balloon virtio0: Out of puff! Can't get 1 pages\n")
            self.written += 1
