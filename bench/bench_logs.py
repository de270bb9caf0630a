"""The logs source: one poll over a file that grew by READ_LIMIT bytes, beside a naive reader.

Run: .venv/bin/python bench/bench_logs.py [--quick]   (always exits 0; prints the tables)

What is measured, in the same run on the same file (a syslog-like file of 120-byte lines,
one in 100 carrying a built-in event):
- ours: LogsSource.poll() reading the new READ_LIMIT bytes (8 MiB, the most it reads of one
  file per poll), matching every event, producing the balloon_log points;
- naive: what a first version does: `for line in file:` then `regex.search(line)` for every
  event on every line, over the same bytes.
Both must agree on the counts before anything is timed. The per-poll time is what the
READ_LIMIT bound costs at most per file (the default [agent] timeout is 5 s).

Second table: a glob matching 2,000 files of which 1% grow by a line per poll (a host's
/var/log/libvirt/qemu/*.log: one log per domain it ever ran, few written at a time), over
the same polls and files:
- ours: LogsSource.poll(), keeping at most open_bound() files open (64 at the usual limit)
  and only stat()ing the others (one system call per file and poll; a file that grew is
  opened again);
- every file kept open: the source's former way in its plainest form: a descriptor per
  matched file for as long as it exists, fstat() of it and stat() of its path per poll;
- reopen every file each poll: open(), fstat(), close() of every matched file per poll.
The two others match events line by line (they read one line per grown file: little).
All three must agree on the counts; the descriptors each holds after the polls are shown.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import resource
import tempfile
import time
from pathlib import Path

from benchlib import median, parser, spread, table, timed

from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources.logs.events import BUILTIN_EVENTS
from telegraf_balloon.sources.logs.files import READ_LIMIT
from telegraf_balloon.sources.logs.source import LogsSource


def make_lines(size: int) -> bytes:
    """Whole lines of about 120 bytes up to `size` bytes; every 100th carries an event."""
    events = [
        "vmmemctl: PIN_FAILED",
        "Out of puff! Can't get 256 pages",
        "Failed to extend balloon",
        "Out of memory: Killed process 4242 (java)",
    ]
    out: list[str] = []
    total = number = 0
    while True:
        message = events[number // 100 % 4] if number % 100 == 0 else "nothing to see here"
        line = f"2024-05-01T10:00:00.{number:06d}Z kvm1 kernel: [{number:>8}] {message}"
        line = line.ljust(119) + "\n"
        if total + len(line) > size:
            break
        out.append(line)
        total += len(line)
        number += 1
    return "".join(out).encode()


def ours(path: Path, data: bytes) -> tuple[dict[str, int], float]:
    """The counts of one poll over `data` appended to a followed file, and its seconds."""
    config = load_text(f'[[sources.logs]]\nfiles = ["{path}"]\n', "bench.toml")
    path.write_bytes(b"")
    source = LogsSource(config.logs[0], "h", Log(io.StringIO()))
    source.poll(0.0)
    with path.open("ab") as handle:
        handle.write(data)
    started = time.perf_counter()
    points = source.poll(0.0).points
    seconds = time.perf_counter() - started
    source.close()
    return {tags["event"]: int(fields["count"]) for _, tags, fields in points}, seconds


def naive(path: Path) -> dict[str, int]:
    compiled = [(name, re.compile(regex)) for name, regex in BUILTIN_EVENTS]
    counts: dict[str, int] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            for name, regex in compiled:
                if regex.search(line):
                    counts[name] = counts.get(name, 0) + 1
    return counts


MANY = 2000  # files the glob matches
GROWING = MANY // 100  # of them growing per poll
EVENT_LINE = b"2024-05-01T10:00:00.000000Z qemu: virtio_balloon: Out of puff! Can't get 256\n"


def grow(folder: Path, poll: int) -> None:
    """One poll's growth: GROWING files, a different set each poll, one event line each."""
    for n in range(GROWING):
        with open(folder / f"vm{(poll * GROWING + n * 97) % MANY:05d}.log", "ab") as handle:
            handle.write(EVENT_LINE)


class Follower:
    """The plainest follower of a glob: offsets by path, lines matched one by one."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.offsets: dict[str, int] = {}
        self.regexes = [(name, re.compile(regex)) for name, regex in BUILTIN_EVENTS]

    def count(self, fd: int, path: str, size: int) -> int:
        """Events in what `fd` holds past the path's offset (its size when first seen)."""
        offset = self.offsets.setdefault(path, size)
        if size <= offset:
            return 0
        data = os.pread(fd, size - offset, offset).decode("utf-8", "replace")
        self.offsets[path] = size
        return sum(1 for line in data.splitlines() for _, r in self.regexes if r.search(line))


class KeepOpen(Follower):
    """Every matched file opened once and kept open; per poll and file, fstat() for its
    growth and stat() of its path for a rotation, as tail -F does."""

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.fds: dict[str, tuple[int, tuple[int, int]]] = {}

    def poll(self) -> int:
        events = 0
        for path in glob.glob(self.pattern):
            if path not in self.fds:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                stat = os.fstat(fd)
                self.fds[path] = fd, (stat.st_dev, stat.st_ino)
            fd, inode = self.fds[path]
            events += self.count(fd, path, os.fstat(fd).st_size)
            stat = os.stat(path)
            if (stat.st_dev, stat.st_ino) != inode:  # rotated: the new file from its start
                os.close(fd)
                del self.fds[path]
                self.offsets[path] = 0
        return events

    def close(self) -> None:
        for fd, _ in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Reopener(Follower):
    """Every matched file opened each poll, read where it grew, closed: none kept open."""

    def poll(self) -> int:
        events = 0
        for path in glob.glob(self.pattern):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                events += self.count(fd, path, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        return events


def held(folder: Path) -> int:
    """Descriptors of this process open on files under `folder`."""
    prefix = f"{folder}/"
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
    return count


def many_files(polls: int) -> list[list[str]]:
    """Rows of the second table: per-poll seconds of each follower over the same polls."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for n in range(MANY):
            (folder / f"vm{n:05d}.log").write_bytes(b"2024-05-01 qemu started\n")
        config = load_text(f'[[sources.logs]]\nfiles = ["{folder}/*.log"]\n', "b.toml")
        ours = LogsSource(config.logs[0], "h", Log(io.StringIO()))
        keeper, reopener = KeepOpen(f"{folder}/*.log"), Reopener(f"{folder}/*.log")
        starts = [timed(lambda: ours.poll(0.0)), timed(keeper.poll), timed(reopener.poll)]
        times: list[list[float]] = [[], [], []]
        counts = [0, 0, 0]
        for poll in range(polls):
            grow(folder, poll)
            started = time.perf_counter()
            points = ours.poll(0.0).points
            times[0].append(time.perf_counter() - started)
            counts[0] += sum(int(fields["count"]) for _, _, fields in points)
            for index, follower in ((1, keeper), (2, reopener)):
                started = time.perf_counter()
                counts[index] += follower.poll()
                times[index].append(time.perf_counter() - started)
        both = held(folder)
        keeper.close()
        kept = [held(folder)]
        kept += [both - kept[0], 0]
        ours.close()
        if len(set(counts)) != 1 or counts[0] != polls * GROWING:
            raise SystemExit(f"counts differ: {counts}, expected {polls * GROWING}")
    names = ["ours: LogsSource.poll()", "every file kept open", "reopen every file each poll"]
    return [
        [
            names[i],
            spread(times[i]),
            f"{median(times[i]) / median(times[0]):,.2f}x",
            f"{starts[i] * 1e3:,.1f} ms",
            f"{kept[i]:,}",
        ]
        for i in range(3)
    ]


def raised_nofile(wanted: int) -> tuple[int, int]:
    """Raise the soft descriptor limit towards `wanted` (the every-file-open row needs one
    per file); returns the limits to restore."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, hard


def main() -> int:
    args = parser(__doc__).parse_args()
    runs = 3 if args.quick else 9
    size = READ_LIMIT
    data = make_lines(size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "messages"
        expected, _ = ours(path, data)
        if expected != naive(path) or sum(expected.values()) != len(data) // 120 // 100 + 1:
            print(f"counts differ: ours {expected}, naive {naive(path)}")
            return 0
        mine = [ours(path, data)[1] for _ in range(runs)]
        theirs = [timed(lambda: naive(path)) for _ in range(runs)]
    lines = len(data) // 120
    mib = len(data) / (1 << 20)
    rows = [
        ["ours: LogsSource.poll()", spread(mine), f"{mib / median(mine):,.0f}", "1.00x"],
        [
            "naive: per line, per event",
            spread(theirs),
            f"{mib / median(theirs):,.0f}",
            f"{median(theirs) / median(mine):,.2f}x",
        ],
    ]
    print(f"One poll of a file grown by {mib:.0f} MiB ({lines:,} lines, {runs} runs each)")
    print(table(["reader", "time per poll", "MiB/s", "vs ours"], rows, [False, True, True, True]))
    print(f"counts: {expected}")

    polls = 10 if args.quick else 50
    limits = raised_nofile(MANY + 1024)
    try:
        rows = many_files(polls)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    print()
    print(
        f"A glob matching {MANY:,} files, {GROWING} ({GROWING * 100 // MANY}%) growing by one "
        f"event line per poll ({polls} polls each, the same files and growth)"
    )
    headers = ["follower", "time per poll", "vs ours", "start (first poll)", "descriptors held"]
    print(table(headers, rows, [False, True, True, True, True]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
