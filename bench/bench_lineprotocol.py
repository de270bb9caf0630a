"""Line-protocol serialization: ours vs a naive f-string formatter vs ``influx-line-protocol``.

Run: .venv/bin/python bench/bench_lineprotocol.py [--quick]   (always exits 0; PASS/FAIL)
(--quick: fewer calls, best of 3, a batch of 1,000: a short run that prints both tables.)

What is measured, side by side:
- one realistic ``balloon`` line: 6 tags, 25 fields (17 ints, 4 floats, 3 bools, 1 string),
  as the runner writes it every poll for every VM;
  * ours: ``format_line`` with warm caches (VM names repeat on every poll), and with its
    caches cleared before every call (a VM seen for the first time);
  * naive: an f-string formatter written here: no caching, escaping with str.replace chains,
    sorted tags, the same drop rules for None/NaN/inf;
  * ``influx-line-protocol`` (PyPI 0.1.5) if it is installed: a ``Metric`` built and str()ed
    per line, as its README shows (its output is wrong in other ways: see the README's
    dependency notes);
- a batch of 10,000 such lines (10,000 distinct VMs) through ``format_lines``, a naive
  join, and the package's ``MetricCollection``; ours also followed by ``end_batch()``, as the
  runner calls it after each batch;
- VMs coming and going: 20 batches of 10,000 lines, a tenth of the VMs new in each, with
  ``end_batch()`` after each batch (the heads of VMs gone are dropped) and without (every
  head kept, as the previous release did): time per line and the heads held at the end.
Time: ``timeit``, best of REPEATS, in microseconds per line.  Target: at most 15 µs per line
for ours (both tables).  Outputs of ours and naive are checked equal before timing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import platform
import sys
import timeit
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import parser, table, verdict

from telegraf_balloon import lineprotocol
from telegraf_balloon.lineprotocol import format_line, format_lines

TARGET_US = 15.0
REPEATS = 7
LINE_NUMBER = 20_000
BATCH_SIZE = 10_000
BATCH_NUMBER = 1
CHURN_BATCHES = 20
GiB = 1 << 30
MiB = 1 << 20

Point = Tuple[str, Dict[str, str], Dict[str, object], int]


# --- input ------------------------------------------------------------------------------------


def balloon_point(i: int = 0) -> Point:
    """A balloon line as the libvirt source writes it: 6 tags, 25 fields."""
    maximum = (4 + i % 13) * GiB
    actual = (i * 7919 % 61) * maximum // 100
    tags = {
        "host": "kvm-node-07.example.net",
        "guest": f"web-frontend-{i:05d}",
        "hypervisor": "kvm",
        "source": "libvirt",
        "uuid": f"5c9d2f0e-8b4a-4f3e-9c1d-{i:012x}",
        "driver": "virtio_balloon",
    }
    fields: Dict[str, object] = {
        "memory_max_bytes": maximum,
        "memory_current_bytes": maximum - actual,
        "balloon_actual_bytes": actual,
        "balloon_target_bytes": actual + 64 * MiB,
        "balloon_gap_bytes": 64 * MiB,
        "balloon_ratio": actual / maximum,
        "guest_total_bytes": maximum - actual - 113 * MiB,
        "guest_free_bytes": 731 * MiB + i,
        "guest_available_bytes": 1913 * MiB + 4096 * i,
        "guest_disk_caches_bytes": 1022 * MiB,
        "swap_in_bytes_total": 123_456_789 + i,
        "swap_out_bytes_total": 987_654_321 + i,
        "swap_in_bytes_per_second": 1234.5678 + i,
        "swap_out_bytes_per_second": 0.0,
        "major_faults_total": 4242 + i,
        "minor_faults_total": 98_765_432 + i,
        "rss_bytes": maximum - actual + 23 * MiB,
        "stats_age_seconds": 2.000417,
        "stats_period_seconds": 10,
        "inflate_pages_total": 1_048_576 + i,
        "deflate_pages_total": 524_288,
        "feature_stats_vq": True,
        "stuck": False,
        "stale": False,
        "thp_mode": "madvise",
    }
    return "balloon", tags, fields, 1_700_000_000_000_000_000 + i * 10**9


# --- the naive formatter ------------------------------------------------------------------------


def _naive_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def naive_line(
    name: str, tags: Mapping[str, str], fields: Mapping[str, object], time_ns: int
) -> Optional[str]:
    """What one writes in an afternoon: correct for ordinary input, no caching."""
    parts = []
    for fkey, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = f"{value}i"
        elif isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                continue
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{_naive_escape(fkey)}={text}")
    if not parts:
        return None
    measurement = name.replace(",", "\\,").replace(" ", "\\ ")
    tag_text = "".join(
        f",{_naive_escape(k)}={_naive_escape(v)}" for k, v in sorted(tags.items()) if v
    )
    return f"{measurement}{tag_text} {','.join(parts)} {time_ns}"


def naive_lines(points: List[Point]) -> str:
    out = []
    for point in points:
        line = naive_line(*point)
        if line is not None:
            out.append(line)
    return "".join(line + "\n" for line in out)


# --- influx-line-protocol -----------------------------------------------------------------------


def load_package() -> Tuple[Any, Any, str]:
    """(Metric, MetricCollection, version) of influx-line-protocol, or (None, None, why)."""
    try:
        package = importlib.import_module("influx_line_protocol")
    except ImportError:
        return None, None, "not installed (.venv/bin/pip install influx-line-protocol)"
    try:
        version = importlib.metadata.version("influx-line-protocol")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return package.Metric, package.MetricCollection, version


def package_metric(metric_cls: Any, point: Point) -> Any:
    name, tags, fields, time_ns = point
    metric = metric_cls(name)
    metric.with_timestamp(time_ns)
    for key, tag in tags.items():
        metric.add_tag(key, tag)
    for key, value in fields.items():
        metric.add_value(key, value)
    return metric


# --- timing -------------------------------------------------------------------------------------


def best_us(func: Callable[[], object], number: int, per_call: int = 1) -> float:
    """Best of REPEATS runs of `number` calls, in microseconds per line."""
    func()  # warm-up (and warm caches)
    times = timeit.repeat(func, number=number, repeat=REPEATS)
    return min(times) / (number * per_call) * 1e6


def print_table(title: str, rows: List[Tuple[str, Optional[float], str]], ours: float) -> None:
    cells = []
    for label, us, note in rows:
        if us is None:
            cells.append([label, "-", "-", note])
        elif note.startswith("("):  # shown, not held to the target
            cells.append([label, f"{us:.2f}", f"{us / ours:.2f}x", note])
        else:
            cells.append([label, f"{us:.2f}", f"{us / ours:.2f}x", verdict(us <= TARGET_US) + note])
    print(title)
    headers = ["implementation", "µs/line", "vs ours", f"target <= {TARGET_US:g} µs"]
    print(table(headers, cells, [False, True, True, False]))
    print()


def clear_caches() -> None:
    lineprotocol.clear_caches()


def churn_us(batches: List[List[Point]], end_batch: bool) -> Tuple[float, int]:
    """Best of REPEATS passes over `batches` (the first one untimed): µs per line, heads held."""
    best = math.inf
    heads = 0
    for _ in range(REPEATS):
        clear_caches()
        format_lines(batches[0])
        lineprotocol.end_batch()
        started = timeit.default_timer()
        for batch in batches[1:]:
            format_lines(batch)
            if end_batch:
                lineprotocol.end_batch()
        best = min(best, timeit.default_timer() - started)
        heads = lineprotocol.cached_heads()
    clear_caches()
    return best / sum(len(b) for b in batches[1:]) * 1e6, heads


def main() -> int:
    global REPEATS, LINE_NUMBER, BATCH_SIZE, CHURN_BATCHES
    if parser(__doc__).parse_args().quick:
        REPEATS, LINE_NUMBER, BATCH_SIZE, CHURN_BATCHES = 3, 2_000, 1_000, 5
    metric_cls, collection_cls, package_version = load_package()
    point = balloon_point()
    name, tags, fields, time_ns = point
    ours_text = format_line(*point)
    if ours_text != naive_line(*point):
        print(f"E! ours and naive differ:\n  {ours_text}\n  {naive_line(*point)}")
        return 0
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"timeit best of {REPEATS}"
    )
    print(
        f"line: {len(tags)} tags, {len(fields)} fields, {len(ours_text or '')} bytes: "
        f"{(ours_text or '')[:90]}..."
    )
    print()

    # Table 1: one line.
    ours_warm = best_us(lambda: format_line(name, tags, fields, time_ns), LINE_NUMBER)

    def cold() -> object:
        clear_caches()
        return format_line(name, tags, fields, time_ns)

    ours_cold = best_us(cold, LINE_NUMBER // 4)
    naive = best_us(lambda: naive_line(name, tags, fields, time_ns), LINE_NUMBER)
    rows: List[Tuple[str, Optional[float], str]] = [
        ("ours: format_line (warm caches)", ours_warm, ""),
        # A VM's first line only: the target is for the lines of VMs already seen.
        ("ours: format_line (all caches cleared per call)", ours_cold, "(a VM's first line)"),
        ("naive f-string formatter (no cache)", naive, ""),
    ]
    if metric_cls is not None:
        package = best_us(lambda: str(package_metric(metric_cls, point)), LINE_NUMBER)
        rows.append((f"influx-line-protocol {package_version} (Metric)", package, ""))
    else:
        rows.append(("influx-line-protocol", None, package_version))
    print_table("Table 1: one balloon line (6 tags, 25 fields)", rows, ours_warm)

    # Table 2: a batch of 10,000 lines.
    batch = [balloon_point(i) for i in range(BATCH_SIZE)]
    if format_lines(batch) != naive_lines(batch):
        print("E! ours and naive differ on the batch")
        return 0
    ours_batch = best_us(lambda: format_lines(batch), BATCH_NUMBER, BATCH_SIZE)

    def cold_batch() -> object:
        clear_caches()
        return format_lines(batch)

    ours_batch_cold = best_us(cold_batch, BATCH_NUMBER, BATCH_SIZE)
    naive_batch = best_us(lambda: naive_lines(batch), BATCH_NUMBER, BATCH_SIZE)

    def as_the_runner() -> object:
        text = format_lines(batch)
        lineprotocol.end_batch()
        return text

    ours_runner = best_us(as_the_runner, BATCH_NUMBER, BATCH_SIZE)
    rows = [
        ("ours: format_lines (warm caches)", ours_batch, ""),
        ("ours: format_lines + end_batch() (as the runner)", ours_runner, ""),
        ("ours: format_lines (caches cleared per batch)", ours_batch_cold, ""),
        ("naive f-string formatter, joined", naive_batch, ""),
    ]
    if collection_cls is not None:

        def package_batch() -> str:
            collection = collection_cls()
            for p in batch:
                collection.append(package_metric(metric_cls, p))
            return str(collection) + "\n"

        package_b = best_us(package_batch, BATCH_NUMBER, BATCH_SIZE)
        rows.append((f"influx-line-protocol {package_version} (MetricCollection)", package_b, ""))
    else:
        rows.append(("influx-line-protocol", None, package_version))
    print_table(
        f"Table 2: a batch of {BATCH_SIZE:,} lines ({BATCH_SIZE:,} distinct VMs), per line",
        rows,
        ours_batch,
    )
    # Table 3: VMs coming and going: a tenth of each batch's VMs are new.
    new = BATCH_SIZE // 10
    batches = [
        [balloon_point(n * new + i) for i in range(BATCH_SIZE)] for n in range(CHURN_BATCHES + 1)
    ]
    churn, heads = churn_us(batches, end_batch=True)
    kept, kept_heads = churn_us(batches, end_batch=False)
    print(
        f"Table 3: {CHURN_BATCHES} batches of {BATCH_SIZE:,} lines, {new:,} VMs new in each "
        "(as many gone), per line"
    )
    cells = [
        ["ours: format_lines + end_batch() (as the runner)", f"{churn:.2f}", f"{heads:,}"],
        ["ours: format_lines alone (every head kept)", f"{kept:.2f}", f"{kept_heads:,}"],
    ]
    print(table(["implementation", "µs/line", "heads held"], cells, [False, True, True]))
    print()
    worst = max(ours_warm, ours_batch)
    print(
        f"Target (ours, at most {TARGET_US:g} µs per line): {verdict(worst <= TARGET_US)} "
        f"(one line {ours_warm:.2f} µs, batch {ours_batch:.2f} µs/line)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
