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
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from pathlib import Path

from benchlib import median, parser, spread, table, timed

from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources import logs
from telegraf_balloon.sources.logs import BUILTIN_EVENTS, LogsSource


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


def main() -> int:
    args = parser(__doc__).parse_args()
    runs = 3 if args.quick else 9
    size = logs.READ_LIMIT
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
