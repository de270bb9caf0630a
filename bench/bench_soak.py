"""Soak: 20,000 polls of a 500-domain libvirt test-driver node plus the guest source, execd mode.

The plugin runs as Telegraf's inputs.execd runs it (one newline per poll, back to back) on
three sources: libvirt's in-process test driver holding 500 domains (running and paused, a
mix of stats periods, a few without a balloon), the guest source on this machine's own `/`,
and the logs source on a file that grows by a balloon event every 5 polls and is
copytruncated every 1,000. Every stdout line is parsed and checked against the field catalog;
resident memory, open descriptors and threads are read from /proc/<pid> along the way.

Beside it, the naive way: one process per poll (`--once`, as inputs.exec would run it) on the
same config, to show what the resident process saves per poll.

Pass: no invalid line, no source down, resident memory growth after warm-up under 5 MiB,
descriptors and threads flat after warm-up. `--quick`: 300 polls, 100 domains.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO_ROOT, median, parser, table, verdict

from tests.stack.common import child_env
from tests.stack.soak import (
    LogFeeder,
    SoakResult,
    soak,
    soak_config,
    write_inventory,
)

RSS_GROWTH_LIMIT_KIB = 5 * 1024
# A steady leak shows as growth that goes on: over the second half of the polls after
# warm-up, the full soak's 9,000 polls leaking 100 bytes each would add 0.9 MiB.
LATE_GROWTH_LIMIT_KIB = 256
SOURCES = 3


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def once_per_poll(config: Path, polls: int) -> list[float]:
    """The naive way: a fresh process for every poll; wall seconds of each."""
    argv = [sys.executable, "-m", "telegraf_balloon", "--once", "--config", str(config)]
    times = []
    for _ in range(polls):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=child_env(), cwd=str(REPO_ROOT))
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"--once failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return times


def report(result: SoakResult, warmup: int, domains: int, once: list[float]) -> bool:
    rss_growth = result.rss_growth_kib(warmup)
    middle = warmup + (result.polls - warmup) // 2
    late_growth = result.rss_growth_kib(middle)
    fds = result.spread(warmup, "fds")
    threads = result.spread(warmup, "threads")
    first = result.samples[0]
    last = result.samples[-1]
    times = result.poll_seconds
    print(
        f"\n{result.polls:,} polls, {domains} domains + guest + logs, {result.lines:,} lines, "
        f"warm-up {warmup} polls (timings taken on a shared, loaded machine)\n"
    )
    rows = [
        [
            "execd (one process)",
            f"{result.polls:,}",
            f"{median(times) * 1e3:,.1f}",
            f"{percentile(times, 0.99) * 1e3:,.1f}",
            f"{max(times) * 1e3:,.1f}",
            f"{first.rss_kib / 1024:,.1f} -> {last.rss_kib / 1024:,.1f}",
        ],
        [
            "--once per poll (naive)",
            f"{len(once):,}",
            f"{median(once) * 1e3:,.1f}",
            f"{percentile(once, 0.99) * 1e3:,.1f}",
            f"{max(once) * 1e3:,.1f}",
            "(new process each poll)",
        ],
    ]
    print(
        table(
            ["mode", "polls", "p50 ms", "p99 ms", "max ms", "RSS MiB"],
            rows,
            [False, True, True, True, True, False],
        )
    )
    checks = [
        ("invalid output lines", str(len(result.invalid)), not result.invalid),
        ("lines holding the URI's password", str(result.leaks), result.leaks == 0),
        ("polls with a source down", str(result.down), result.down == 0),
        (
            "RSS growth after warm-up",
            f"{rss_growth / 1024:+.2f} MiB (limit 5)",
            rss_growth < RSS_GROWTH_LIMIT_KIB,
        ),
        (
            "RSS growth over the last half",
            f"{late_growth:+,} KiB (limit {LATE_GROWTH_LIMIT_KIB})",
            late_growth < LATE_GROWTH_LIMIT_KIB,
        ),
        ("open descriptors after warm-up", f"{fds[0]}-{fds[1]}", fds[0] == fds[1]),
        ("threads after warm-up", f"{threads[0]}-{threads[1]}", threads[0] == threads[1]),
        (
            "balloon lines per poll",
            ",".join(map(str, sorted(result.balloon_lines_per_poll))),
            len(result.balloon_lines_per_poll) == 1,
        ),
        ("E! lines on stderr", str(sum(1 for s in result.stderr if s.startswith("E! "))), True),
        ("exit code at stdin EOF", str(result.exit_code), result.exit_code == 0),
    ]
    print()
    print(
        table(
            ["check", "value", "verdict"],
            [[name, value, verdict(ok)] for name, value, ok in checks],
            [False, True, False],
        )
    )
    trail = [s for s in result.samples if s.poll >= warmup]
    step = max(1, len(trail) // 8)
    print()
    print(
        table(
            ["after poll", "RSS MiB", "fds", "threads"],
            [
                [f"{s.poll:,}", f"{s.rss_kib / 1024:,.2f}", str(s.fds), str(s.threads)]
                for s in [*trail[::step], trail[-1]]
            ],
            [True, True, True, True],
        )
    )
    for line in result.invalid[:5]:
        print("invalid:", line)
    return all(ok for _, _, ok in checks)


def main() -> int:
    args = parser(__doc__).parse_args()
    polls, domains, warmup, every, naive = (
        (300, 100, 100, 10, 5) if args.quick else (20_000, 500, 2_000, 200, 30)
    )
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        node = write_inventory(work / "node.xml", domains)
        feeder = LogFeeder(work / "events.log")
        config = soak_config(work / "soak.toml", node, "/", work / "events.log")
        once = once_per_poll(config, naive)
        started = time.monotonic()
        result = soak(config, polls, SOURCES, every, on_poll=feeder)
        print(f"soak took {time.monotonic() - started:,.0f} s (pid {os.getpid()})")
    ok = report(result, warmup, domains, once)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
