"""The health stage at 1,000 and 10,000 VMs: time per VM per poll and state memory.

Run: .venv/bin/python bench/bench_health.py [--quick]   (always exits 0; PASS/FAIL per target)
(--quick: 500 and 1,000 VMs, 3 polls: a short run that still prints the table.)

What is measured, side by side with a naive implementation written here:
- the health stage as the runner calls it for one source poll: Health.vms, then (timed
  apart, not part of the target) aggregate.host_lines, then Health.hosts, with the rules of
  the package's own sample.toml compiled in;
- libvirt-like field dicts of ~20 fields (a quarter also carry a balloon target, as vSphere
  and the guest source do, so that the stuck path runs), recreated for every poll as a
  source would; building them is not timed;
- time: one warm-up poll, then the median of several polls, in microseconds per VM;
- memory: tracemalloc, what the stage object holds after 10 polls of 10,000 VMs once the
  input dicts are dropped.
The naive implementation keeps every judged sample of every VM in a per-VM dataclass and
recomputes rates, stuck and threshold clocks from that history on each poll. Its results are
checked equal to the package's before anything is timed.

The churn case: 100,000 VMs pass through one source, 1,000 alive at a time (100 new each
poll, each living 10 polls, one poll in 50 missed by a busy monitor), with their hosts. Beside
the package, the eviction rule of the previous release, copied here (`PreviousHealth`: a VM's
state dropped on the first poll without it). Measured: the health stage's time per VM per poll,
its state after the 100,000 (tracemalloc over the last polls: every VM alive then was born
in them), the VM states it tracks, and the serializer's cached line heads, with `end_batch()`
after each batch as the runner calls it, and without (the previous release's serializer).
"""

from __future__ import annotations

import gc
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

from benchlib import median, parser, table, verdict

import telegraf_balloon
from telegraf_balloon import catalog, lineprotocol
from telegraf_balloon.aggregate import host_lines
from telegraf_balloon.config import HealthConfig, ThresholdRule, load_text
from telegraf_balloon.health import GRACE_POLLS, HOST_BETWEEN, VM_BETWEEN, Health, _State
from telegraf_balloon.model import Fields, FieldValue, HostInfo, Sample

GiB = 1 << 30
MiB = 1 << 20
VMS_PER_HOST = 50
POLL_SECONDS = 10.0
TIMED_POLLS = 7
MEMORY_POLLS = 10
TARGET_US_PER_VM = 5.0
TARGET_STATE_BYTES = 20_000_000
T0 = 1_700_000_000.0
INSTANCE = "qemu+ssh://kvm/system"
CHURN_KEYS = 100_000  # VMs passing through in the churn case
CHURN_LIVE = 1_000  # alive at a time
CHURN_NEW = 100  # new VMs each poll (as many leave)
CHURN_SKIP = 0.02  # the share of VMs missing from a poll (a busy monitor)
CHURN_TRACED = 30  # polls traced at the end of the churn: more than a VM lives plus the grace


# --- input ------------------------------------------------------------------------------------


def make_poll(n: int, tick: int) -> tuple[list[Sample], list[HostInfo]]:
    """What a libvirt-like source hands over for one poll: fresh dicts every time."""
    return make_vms(range(n), tick)


def make_vms(indexes: Iterable[int], tick: int) -> tuple[list[Sample], list[HostInfo]]:
    """VMs `indexes` at poll `tick`, and the hosts they run on (50 VMs a host)."""
    samples: list[Sample] = []
    for i in indexes:
        maximum = (2 + i % 15) * GiB
        actual = (i * 7919 % 64) * maximum // 100  # 0..63% of the VM's memory
        current = maximum - actual
        fields: Fields = {
            "memory_max_bytes": maximum,
            "memory_current_bytes": current,
            "balloon_actual_bytes": actual,
            "guest_total_bytes": current - 64 * MiB,
            "guest_free_bytes": (i % 9 + 1) * 100 * MiB,
            "guest_available_bytes": (i % 9 + 3) * 100 * MiB,
            "guest_disk_caches_bytes": (i % 5 + 1) * 150 * MiB,
            "swap_in_bytes_total": i * 4096 + tick * (i % 3) * MiB,
            "swap_out_bytes_total": i * 8192 + tick * (i % 23) * MiB,
            "major_faults_total": i * 11 + tick * 3,
            "minor_faults_total": i * 1013 + tick * 997,
            "rss_bytes": current + 120 * MiB,
            "stats_age_seconds": float((i + tick) % 13 if i % 41 else 90 + tick),
            "stats_period_seconds": 10 if i % 17 else 0,
            "stats_disabled": i % 17 == 0,
            "inflation_blocked": i % 97 == 0,
            "reservation_bytes": GiB,
            "limit_bytes": maximum + GiB,
        }
        if i % 4 == 0:
            fields["balloon_target_bytes"] = actual + (maximum // 10 if i % 8 == 0 else 0)
        host = f"kvm{i // VMS_PER_HOST:04d}"
        tags = {"host": host, "guest": f"vm{i:05d}", "hypervisor": "kvm", "source": "libvirt"}
        samples.append(Sample(f"{i:08x}-5eed-4000-8000-{i:012x}", tags, fields))
    names = sorted({s.tags["host"] for s in samples})
    hosts = [
        HostInfo({"host": h, "hypervisor": "kvm", "source": "libvirt"}, 512 * GiB) for h in names
    ]
    return samples, hosts


# --- the naive stage --------------------------------------------------------------------------


@dataclass
class Judged:
    """One judged line kept for ever."""

    time: float
    fields: dict[str, FieldValue]


@dataclass
class History:
    """Everything ever seen of one VM (or host)."""

    samples: list[Judged] = field(default_factory=list)


def raw_level(rule: ThresholdRule, value: Optional[FieldValue]) -> Optional[int]:
    if value is None or isinstance(value, str):
        return None
    number = float(value)
    if rule.below:
        crit = rule.crit is not None and number <= rule.crit
        warn = rule.warn is not None and number <= rule.warn
    else:
        crit = rule.crit is not None and number >= rule.crit
        warn = rule.warn is not None and number >= rule.warn
    return 2 if crit else 1 if warn or crit else 0


def held_since(history: list[Judged], rule: ThresholdRule, at_least: int) -> Optional[float]:
    """The earliest time from which every sample up to now had raw level >= at_least."""
    since: Optional[float] = None
    for judged in reversed(history):
        level = raw_level(rule, judged.fields.get(rule.field))
        if level is None or level < at_least:
            break
        since = judged.time
    return since


class NaiveHealth:
    """Straightforward: a dataclass of full history per VM, everything recomputed per poll."""

    def __init__(self, config: HealthConfig, rules: tuple[ThresholdRule, ...]) -> None:
        self.config = config
        self.vm_rules = [r for r in rules if r.measurement == catalog.BALLOON]
        self.host_rules = [r for r in rules if r.measurement == catalog.HOST]
        self.vms_seen: dict[tuple[str, str], History] = {}
        self.hosts_seen: dict[tuple[str, str], History] = {}

    def levels(
        self, rules: list[ThresholdRule], history: list[Judged], fields: Fields, now: float
    ) -> int:
        highest = 0
        for rule in rules:
            if raw_level(rule, fields.get(rule.field)) is None:
                continue
            level = 0
            for at_least in (1, 2):
                since = held_since(history, rule, at_least)
                if since is not None and now - since >= rule.for_seconds:
                    level = at_least
            fields[rule.field + catalog.LEVEL_SUFFIX] = level
            highest = max(highest, level)
        return highest

    def vms(self, instance: str, items: list[tuple[str, Fields]], now: float) -> None:
        cfg = self.config
        present: set[tuple[str, str]] = set()
        for key, fields in items:
            ident = (instance, key)
            present.add(ident)
            state = self.vms_seen.setdefault(ident, History())
            history = state.samples
            previous = history[-1] if history else None
            maximum = fields.get("memory_max_bytes")
            actual = fields.get("balloon_actual_bytes")
            target = fields.get("balloon_target_bytes")
            if isinstance(actual, int) and isinstance(maximum, int) and maximum:
                fields["balloon_ratio"] = actual / maximum
            if isinstance(target, int) and isinstance(actual, int):
                fields["balloon_gap_bytes"] = target - actual
                if isinstance(maximum, int) and maximum:
                    over = (target - actual) / maximum > cfg.stuck_gap_ratio
                    since = now if over else None
                    for judged in reversed(history):
                        g = judged.fields.get("balloon_gap_bytes")
                        m = judged.fields.get("memory_max_bytes")
                        if not over or not isinstance(g, int) or not isinstance(m, int) or not m:
                            break
                        if g / m <= cfg.stuck_gap_ratio:
                            break
                        since = judged.time
                    fields["stuck"] = since is not None and now - since >= cfg.stuck_for
                else:
                    fields["stuck"] = False
            if previous is not None and now > previous.time:
                for total, rate in (
                    ("swap_in_bytes_total", "swap_in_bytes_per_second"),
                    ("swap_out_bytes_total", "swap_out_bytes_per_second"),
                ):
                    new, old = fields.get(total), previous.fields.get(total)
                    if isinstance(new, int) and isinstance(old, int) and new >= old:
                        fields[rate] = (new - old) / (now - previous.time)
            age = fields.get("stats_age_seconds")
            if isinstance(age, float) and "stale" not in fields:
                limit = cfg.stale_after
                if limit is None:
                    period = fields.get("stats_period_seconds") or 0
                    limit = max(60.0, 3.0 * float(period))
                fields["stale"] = age > limit
            history.append(Judged(now, dict(fields)))
            fields["alert_level"] = self.levels(self.vm_rules, history, fields, now)
        for ident in [k for k in self.vms_seen if k[0] == instance and k not in present]:
            del self.vms_seen[ident]

    def hosts(self, instance: str, items: list[tuple[str, Fields]], now: float) -> None:
        present: set[tuple[str, str]] = set()
        for key, fields in items:
            ident = (instance, key)
            present.add(ident)
            history = self.hosts_seen.setdefault(ident, History()).samples
            history.append(Judged(now, dict(fields)))
            fields["alert_level"] = self.levels(self.host_rules, history, fields, now)
        for ident in [k for k in self.hosts_seen if k[0] == instance and k not in present]:
            del self.hosts_seen[ident]


# --- the previous release's eviction rule ------------------------------------------------------


class PreviousHealth(Health):
    """The package's judgement of each VM (Health.judge_vm, judge_host) with the previous
    release's eviction rule, copied as it was.

    Each poll built a new dict of the VMs it reported: a VM missing from one poll lost its
    clocks and rate baselines.
    """

    def __init__(self, config: HealthConfig, thresholds: tuple[ThresholdRule, ...] = ()) -> None:
        super().__init__(config, thresholds)
        self._old_vms: dict[str, dict[str, _State]] = {}
        self._old_hosts: dict[str, dict[str, _State]] = {}

    def tracked(self) -> int:
        tables = [*self._old_vms.values(), *self._old_hosts.values()]
        return sum(len(table) for table in tables)

    def vms(self, instance: str, items: Iterable[tuple[str, Fields]], now: float) -> None:
        between = len(VM_BETWEEN)
        old = self._old_vms.get(instance, {})
        new: dict[str, _State] = {}
        for key, fields in items:
            state = old.pop(key, None) or new.get(key) or _State(between)
            new[key] = state
            self.judge_vm(fields, state, now)
        self._old_vms[instance] = new

    def hosts(self, instance: str, items: list[tuple[str, Fields]], now: float) -> None:
        between = len(HOST_BETWEEN)
        old = self._old_hosts.get(instance, {})
        new: dict[str, _State] = {}
        for key, fields in items:
            state = old.pop(key, None) or new.get(key) or _State(between)
            new[key] = state
            self.judge_host(fields, state, now)
        self._old_hosts[instance] = new


# --- measuring --------------------------------------------------------------------------------


class Stage(Protocol):
    def vms(self, instance: str, items: list[tuple[str, Fields]], now: float) -> None: ...

    def hosts(self, instance: str, items: list[tuple[str, Fields]], now: float) -> None: ...


def run_stage(
    stage: Stage, samples: list[Sample], hosts: list[HostInfo], now: float
) -> tuple[float, float]:
    """What the runner does with one source poll: (health stage seconds, host_lines seconds)."""
    items = [(s.key, s.fields) for s in samples]
    started = time.perf_counter()
    stage.vms(INSTANCE, items, now)
    judged = time.perf_counter()
    lines = host_lines(samples, hosts)
    summed = time.perf_counter()
    host_items = [(tags["host"], fields) for tags, fields in lines]
    resumed = time.perf_counter()
    stage.hosts(INSTANCE, host_items, now)
    done = time.perf_counter()
    return (judged - started) + (done - resumed), summed - judged


def rules() -> tuple[HealthConfig, tuple[ThresholdRule, ...]]:
    path = Path(telegraf_balloon.__file__).with_name("sample.toml")
    config = load_text(path.read_text(encoding="utf-8"), str(path), environ={})
    return config.health, config.thresholds


@dataclass
class Speed:
    """Microseconds per VM per poll: median and best of the timed polls."""

    stage: float
    stage_best: float
    host_lines: float


def microseconds_per_vm(stage: Stage, n: int) -> Speed:
    """Warm-up poll, then TIMED_POLLS polls; building the input is not timed."""
    stage_times: list[float] = []
    sum_times: list[float] = []
    for tick in range(TIMED_POLLS + 1):
        samples, hosts = make_poll(n, tick)
        gc.collect()
        judged, summed = run_stage(stage, samples, hosts, T0 + tick * POLL_SECONDS)
        if tick:
            stage_times.append(judged)
            sum_times.append(summed)
    scale = 1e6 / n
    return Speed(
        median(stage_times) * scale,
        min(stage_times) * scale,
        median(sum_times) * scale,
    )


def state_bytes(stage: Stage, n: int) -> int:
    """What the stage holds after MEMORY_POLLS polls of n VMs, input dicts dropped."""
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for tick in range(MEMORY_POLLS):
            samples, hosts = make_poll(n, tick)
            run_stage(stage, samples, hosts, T0 + tick * POLL_SECONDS)
            del samples, hosts
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()


def check_same(n: int, polls: int) -> int:
    """The naive stage and the package's give the same lines; the number of lines compared."""
    config, thresholds = rules()
    ours, naive = Health(config, thresholds), NaiveHealth(config, thresholds)
    compared = 0
    for tick in range(polls):
        # Long enough between polls for the sample's 5- and 10-minute rules to fire.
        now = T0 + tick * 150.0
        a_samples, a_hosts = make_poll(n, tick)
        b_samples, b_hosts = make_poll(n, tick)
        run_stage(ours, a_samples, a_hosts, now)
        run_stage(naive, b_samples, b_hosts, now)
        for a, b in zip(a_samples, b_samples):
            if a.fields != b.fields:
                raise AssertionError(f"naive differs at poll {tick}: {a.fields} != {b.fields}")
            compared += 1
    return compared


@dataclass
class Churn:
    """What one stage did with VMs passing through."""

    us_per_vm: float  # median over the polls of the stage's time per VM
    us_best: float
    state_bytes: int  # held after the churn (tracemalloc over the last polls)
    tracked: int  # VM and host states held after the churn
    no_rate: int  # lines without a swap rate: first sightings, and baselines lost
    polls: int
    lines: int


def churn_indexes(tick: int, live: int, new: int, rng: random.Random) -> list[int]:
    """The VMs of poll `tick`: `live` from tick * new on, less those a busy monitor hides."""
    first = tick * new
    return [i for i in range(first, first + live) if rng.random() >= CHURN_SKIP]


def churn_health(stage: Stage, keys: int, live: int, new: int) -> Churn:
    """Pass `keys` VMs through the stage, `live` at a time, `new` new each poll."""
    rng = random.Random(20240501)
    polls = (keys - live) // new + 1
    traced_from = max(1, polls - CHURN_TRACED)
    per_vm: list[float] = []
    no_rate = lines = 0
    baseline = 0
    try:
        for tick in range(polls):
            samples, hosts = make_vms(churn_indexes(tick, live, new, rng), tick)
            if tick == traced_from:
                gc.collect()
                tracemalloc.start()
                baseline = tracemalloc.get_traced_memory()[0]
            gc.collect()
            judged, _ = run_stage(stage, samples, hosts, T0 + tick * POLL_SECONDS)
            if tick:
                per_vm.append(judged / len(samples))
            lines += len(samples)
            no_rate += sum(1 for s in samples if "swap_out_bytes_per_second" not in s.fields)
            del samples, hosts
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    tracked = stage.tracked()  # type: ignore[attr-defined]
    return Churn(median(per_vm) * 1e6, min(per_vm) * 1e6, held, tracked, no_rate, polls, lines)


def deep_bytes(*containers: object) -> int:
    """sys.getsizeof of containers and everything in them, each object once."""
    seen: set[int] = set()
    total = 0
    todo = list(containers)
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (tuple, list)):
            todo.extend(item)
    return total


def churn_serializer(keys: int, live: int, new: int, end_batch: bool) -> tuple[int, int, float]:
    """The VMs' lines through format_lines: (heads held, bytes held, µs per line)."""
    rng = random.Random(20240501)
    lineprotocol.clear_caches()
    polls = (keys - live) // new + 1
    seconds = 0.0
    lines = 0
    for tick in range(polls):
        points = []
        for i in churn_indexes(tick, live, new, rng):
            tags = {
                "host": f"kvm{i // VMS_PER_HOST:04d}",
                "guest": f"vm{i:05d}",
                "hypervisor": "kvm",
                "source": "libvirt",
                "uuid": f"{i:08x}-5eed-4000-8000-{i:012x}",
            }
            points.append((catalog.BALLOON, tags, {"balloon_actual_bytes": i}, 1))
        started = time.perf_counter()
        lineprotocol.format_lines(points)
        if end_batch:
            lineprotocol.end_batch()
        seconds += time.perf_counter() - started
        lines += len(points)
    held = deep_bytes(
        lineprotocol._head_cache, lineprotocol._head_older, lineprotocol._tag_value_cache
    )
    heads = lineprotocol.cached_heads()
    lineprotocol.clear_caches()
    return heads, held, seconds / lines * 1e6


def print_churn(keys: int, live: int, new: int) -> None:
    config, thresholds = rules()
    # The live VMs and those gone within the grace, and the hosts they run on.
    bound = (live + new * GRACE_POLLS) * (VMS_PER_HOST + 1) // VMS_PER_HOST + 2
    ours = churn_health(Health(config, thresholds), keys, live, new)
    before = churn_health(PreviousHealth(config, thresholds), keys, live, new)
    heads, head_bytes, head_us = churn_serializer(keys, live, new, end_batch=True)
    old_heads, old_head_bytes, old_head_us = churn_serializer(keys, live, new, end_batch=False)
    print()
    print(
        f"churn: {keys:,} VMs pass through, {live:,} alive at a time, {new} new each poll "
        f"({ours.polls:,} polls, {ours.lines:,} VM lines), {CHURN_SKIP:.0%} of VMs missing "
        f"from each poll; state traced over the last {CHURN_TRACED} polls"
    )
    rows = [
        [
            "health µs per VM per poll",
            f"{ours.us_per_vm:.2f} ({ours.us_best:.2f})",
            f"{before.us_per_vm:.2f} ({before.us_best:.2f})",
            f"<= {TARGET_US_PER_VM:g}",
            verdict(ours.us_per_vm <= TARGET_US_PER_VM),
        ],
        [
            "health state after the churn",
            f"{ours.state_bytes / 1e3:,.0f} kB",
            f"{before.state_bytes / 1e3:,.0f} kB",
            "live VMs only",
            verdict(ours.tracked <= bound),
        ],
        [
            "VM and host states held",
            f"{ours.tracked:,}",
            f"{before.tracked:,}",
            f"<= {bound:,}",
            "(live + within the grace)",
        ],
        [
            "lines without a swap rate",
            f"{ours.no_rate:,}",
            f"{before.no_rate:,}",
            "-",
            "first sightings (+ baselines lost)",
        ],
        [
            "serializer heads held",
            f"{heads:,} ({head_bytes / 1e6:.2f} MB)",
            f"{old_heads:,} ({old_head_bytes / 1e6:.2f} MB)",
            "live VMs only",
            verdict(heads <= 4 * live + lineprotocol._HEAD_SLACK),
        ],
        [
            "serializer µs per line",
            f"{head_us:.2f}",
            f"{old_head_us:.2f}",
            "-",
            "(5 tags, 1 field)",
        ],
    ]
    print(
        table(
            ["", "package", "previous release", "target", "result"],
            rows,
            [False, True, True, True, False],
        )
    )
    print(
        f"health state per held VM: {ours.state_bytes / max(1, ours.tracked):.0f} bytes "
        f"(previous: {before.state_bytes / max(1, before.tracked):.0f}); the previous "
        f"serializer kept the head of every VM seen until {lineprotocol._CACHE_LIMIT:,} "
        "then dropped them all"
    )


def main() -> int:
    global TIMED_POLLS, MEMORY_POLLS
    args = parser(__doc__).parse_args()
    config, thresholds = rules()
    sizes: tuple[int, ...] = (1_000, 10_000)
    if args.quick:
        TIMED_POLLS, MEMORY_POLLS, sizes = 3, 3, (500, 1_000)
    big = sizes[-1]
    compared = check_same(min(1000, big), 8)
    speed: dict[tuple[str, int], Speed] = {}
    for n in sizes:
        speed["package", n] = microseconds_per_vm(Health(config, thresholds), n)
        speed["naive", n] = microseconds_per_vm(NaiveHealth(config, thresholds), n)
    memory = {
        "package": state_bytes(Health(config, thresholds), big),
        "naive": state_bytes(NaiveHealth(config, thresholds), big),
    }

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"health stage (Health.vms + Health.hosts), {len(thresholds)} sample.toml rules, "
        f"~20 fields per VM, {VMS_PER_HOST} VMs per host; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {load:.2f}"
    )
    print(
        f"time: median of {TIMED_POLLS} polls after 1 warm-up (best poll in brackets); "
        f"memory: tracemalloc after {MEMORY_POLLS} polls; naive checked equal on "
        f"{compared} lines first"
    )
    print()
    header = f"{'':32}{'package':>20}{'naive':>20}{'target':>12}  result"
    print(header)
    print("-" * len(header))

    def cell(value: float, best: float, unit: str) -> str:
        return f"{value:.2f} {unit} ({best:.2f})"

    for n in sizes:
        ours, naive = speed["package", n], speed["naive", n]
        print(
            f"{f'µs per VM per poll, {n:,} VMs':32}"
            f"{cell(ours.stage, ours.stage_best, 'µs'):>20}"
            f"{cell(naive.stage, naive.stage_best, 'µs'):>20}"
            f"{f'<= {TARGET_US_PER_VM:g} µs':>12}  {verdict(ours.stage <= TARGET_US_PER_VM)}"
        )
    ours_mb, naive_mb = memory["package"] / 1e6, memory["naive"] / 1e6
    ok = memory["package"] < TARGET_STATE_BYTES
    print(
        f"{f'state memory, {big:,} VMs':32}{f'{ours_mb:.2f} MB':>20}{f'{naive_mb:.2f} MB':>20}"
        f"{f'< {TARGET_STATE_BYTES / 1e6:g} MB':>12}  {verdict(ok)}"
    )
    for n in sizes:
        summing = speed["package", n].host_lines
        print(
            f"{f'(host_lines, {n:,} VMs)':32}{f'{summing:.2f} µs':>20}"
            f"{'(same code)':>20}{'-':>12}  not in the target"
        )
    print()
    print(
        f"package state: {memory['package'] / big:.0f} bytes per VM, the same after any "
        f"number of polls; naive: {memory['naive'] / big / MEMORY_POLLS:.0f} bytes per VM "
        f"per poll, growing without bound"
    )
    if args.quick:
        print_churn(10_000, 200, 100)
    else:
        print_churn(CHURN_KEYS, CHURN_LIVE, CHURN_NEW)
    return 0


if __name__ == "__main__":
    sys.exit(main())
