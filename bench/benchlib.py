"""What every benchmark script shares: timing, medians, tables, verdicts and --quick.

Each bench script imports these instead of growing its own copy. ``--quick`` is understood
by every script: a short run that still prints every table, so ``make test`` can run each
one and a broken benchmark fails CI instead of rotting.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the shared --quick flag; the description is doc's first line."""
    p = argparse.ArgumentParser(description=(doc or "").strip().split("\n\n")[0] or None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run that still prints every table (make test runs each bench so)",
    )
    return p


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], scale: float = 1e3, unit: str = "ms") -> str:
    """'median (min-max) unit' of seconds, scaled (ms by default)."""
    return (
        f"{median(values) * scale:,.2f} ({min(values) * scale:,.2f}-"
        f"{max(values) * scale:,.2f}) {unit}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A plain-text table; `right` says which columns are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL  <<<<<<<<<<"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


# -- how much the machine moved while a table was measured --


def _speed_work() -> int:
    d = {}
    for i in range(20_000):
        d[str(i)] = f"{i}i"
    return sum(len(v) for v in d.values())


class SpeedCheck:
    """A fixed pure-Python workload timed between the rounds: how fast the CPU was meanwhile.

    On a shared or virtual machine its spread shows how much the CPU's speed moved while the
    table was measured (the same code, the same work).
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self) -> None:
        self.seconds.append(timed(_speed_work))

    def report(self) -> str:
        if not self.seconds:
            return ""
        low, high = min(self.seconds), max(self.seconds)
        return (
            f"  CPU speed check between rounds (a fixed Python loop): median "
            f"{fmt_ms(median(self.seconds))} ms, {fmt_ms(low)}..{fmt_ms(high)} ms "
            f"({high / low:.2f}x spread)"
        )


class CpuMeter:
    """CPU time of the whole machine, and the part the bench did not use (others' load).

    Ours: this process and its waited-for children (programs it ran to completion), and the
    processes `ours()` names at report time (what the bench started: a daemon, guests),
    called `named` in the report. Whatever else ran on the machine meanwhile competed with
    the measurement.
    """

    def __init__(
        self, ours: Callable[[], Iterable[Optional[int]]] = tuple, named: str = "this bench"
    ) -> None:
        self.ours = ours
        self.named = named
        self.cpus = os.cpu_count() or 1
        self._start = self._read()

    @staticmethod
    def _processes() -> dict[int, tuple[str, int, int]]:
        """pid -> (name, ppid, utime + stime ticks) of every process."""
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
                name = text[text.index("(") + 1 : text.rindex(")")]
                parts = text.rsplit(")", 1)[1].split()
                # after the ")": state, ppid, ...; utime and stime are fields 14 and 15
                out[int(entry)] = (name, int(parts[1]), int(parts[11]) + int(parts[12]))
            except (OSError, ValueError, IndexError):
                continue
        return out

    def _read(self) -> tuple[list[int], dict[int, tuple[str, int, int]], int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        waited = int(parts[13]) + int(parts[14])  # cutime + cstime: children run to completion
        return (values + [0] * 8)[:8], self._processes(), waited

    def restart(self) -> None:
        self._start = self._read()

    def report(self) -> str:
        (cpu0, procs0, waited0), (cpu1, procs1, waited1) = self._start, self._read()
        user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(cpu0, cpu1))
        busy = user + nice + system + irq + softirq
        total = max(1, busy + idle + iowait + steal)
        me = os.getpid()
        ours_pids = {me, *self.ours()}
        ours = waited1 - waited0
        by_name: dict[str, int] = {}
        for pid, (name, ppid, ticks) in procs1.items():
            used = ticks - procs0[pid][2] if pid in procs0 else ticks
            if pid in ours_pids or ppid == me:
                ours += used
            elif used > 0:
                by_name[name] = by_name.get(name, 0) + used
        others = max(0, busy - ours)
        top = sorted(by_name.items(), key=lambda item: -item[1])[:3]
        named = ", ".join(f"{name} {100 * t / total:.0f}%" for name, t in top if t) or "-"
        warning = ""
        if others > 0.1 * total:
            warning = (
                "\n  WARNING: other processes competed for the CPU during this table: its wall "
                "times are inflated; rerun on a quiet machine"
            )
        return (
            f"  machine during this table: {100 * busy / total:.0f}% of {self.cpus} cores busy, "
            f"{100 * others / total:.0f}% by other processes (not {self.named}; "
            f"of those still running: {named}), "
            f"{100 * steal / total:.0f}% stolen by the hypervisor; "
            f"load {os.getloadavg()[0]:.2f}{warning}"
        )


class GcClock:
    """Time spent in the cyclic garbage collector while registered in gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0  # generation-2 collections
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info.get("generation") == 2

    def run(self, fn: Callable[[], object]) -> float:
        """fn()'s wall time; the collector's time is added to self.seconds."""
        gc.callbacks.append(self)
        try:
            return timed(fn)
        finally:
            gc.callbacks.remove(self)


# -- the host's side of reclaim: with host facts, without, and the naive way --

HOST_FACTS_MAX_SHARE = 0.15  # host facts may add at most this share to a poll
HOST_FACTS_MAX_US_PER_VM = 40.0  # and at most this per VM


def smaps_swap(pids: Sequence[int]) -> int:
    """The naive way to a VM's host swap and sharing: read and parse every QEMU's
    /proc/<pid>/smaps_rollup (the kernel walks all of its mappings for it) each poll."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
                text = handle.read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith((b"Swap:", b"Rss:", b"SwapPss:")):
                total += int(line.split()[1])
    return total


def every_file_read(reclaim: object) -> None:
    """Make a source's HostReclaim read every VM's files each poll, as on a host with pages in
    swap, zswap and KSM (on a host with none, each VM's figure there is 0 without a read)."""
    original = reclaim.host_figures  # type: ignore[attr-defined]

    def figures() -> dict[str, object]:
        found: dict[str, object] = original()
        reclaim.swap_in_use = reclaim.zswap_in_use = True  # type: ignore[attr-defined]
        reclaim.ksm_in_use = True  # type: ignore[attr-defined]
        return found

    reclaim.host_figures = figures  # type: ignore[attr-defined]


def host_facts_rounds(
    sources: dict[str, object],
    vms: int,
    base: str,
    pids: Sequence[int],
    repeat: int,
    also_timed: Sequence[tuple[object, str]] = (),
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Poll each source (its `poll(now)` gives a PollResult) once to make first contact and
    once to warm up, then `repeat` interleaved rounds. Returns, per way, its whole poll times,
    its times less the API round trips, and the time spent in the host facts themselves
    (the host's figures and every VM's reads, timed inside the poll). The naive way, "n", is
    the `base` poll plus reading every QEMU's smaps_rollup, timed in the same round.
    `also_timed`: (module, function name) whose calls count as inside too: what the poll
    without host facts does instead (the qmp source's rss read, which a QEMU's read does
    with its other figures), shown beside the host facts' own time."""
    from telegraf_balloon.sources.hostfacts import QemuProcess

    totals: dict[str, list[float]] = {k: [] for k in (*sources, "n")}
    owns: dict[str, list[float]] = {k: [] for k in totals}
    inside: dict[str, list[float]] = {k: [] for k in totals}
    spent = [0.0]
    read = QemuProcess.read

    def timed_read(proc: QemuProcess, *args: object, **kwargs: object) -> None:
        started = time.perf_counter()
        read(proc, *args, **kwargs)  # type: ignore[arg-type]
        spent[0] += time.perf_counter() - started

    for source in sources.values():
        reclaim = getattr(source, "_reclaim", None)
        if reclaim is not None:
            figures = reclaim.host_figures

            def timed_figures(figures: Callable[[], object] = figures) -> object:
                started = time.perf_counter()
                found = figures()
                spent[0] += time.perf_counter() - started
                return found

            reclaim.host_figures = timed_figures

    def poll(key: str) -> tuple[float, float]:
        spent[0] = 0.0
        started = time.perf_counter()
        result = sources[key].poll(time.time())  # type: ignore[attr-defined]
        took = time.perf_counter() - started
        assert result.error is None and len(result.samples) == vms, (key, result.error)
        assert result.api_latency_seconds is not None
        return took, took - float(result.api_latency_seconds)

    def timer(function: Callable[..., object]) -> Callable[..., object]:
        def timed_call(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            found = function(*args, **kwargs)
            spent[0] += time.perf_counter() - started
            return found

        return timed_call

    saved = [(owner, name, getattr(owner, name)) for owner, name in also_timed]
    for owner, name, function in saved:
        setattr(owner, name, timer(function))
    QemuProcess.read = timed_read  # type: ignore[method-assign, assignment]
    try:
        for key in sources:
            poll(key)  # first contact: identity or XML, every QEMU found and resolved
            poll(key)  # warm-up
        for _ in range(repeat):
            for key in sources:
                took, own = poll(key)
                totals[key].append(took)
                owns[key].append(own)
                inside[key].append(spent[0])
                if key == base:
                    naive = timed(lambda: smaps_swap(pids))
                    totals["n"].append(took + naive)
                    owns["n"].append(own + naive)
                    inside["n"].append(naive)
    finally:
        QemuProcess.read = read  # type: ignore[method-assign]
        for owner, name, function in saved:
            setattr(owner, name, function)
    return totals, owns, inside


def ways_table(
    times: dict[str, list[float]],
    names: Sequence[str],
    reference: str,
    count: int,
    per: str,
    versus: str,
) -> str:
    """Each way's median poll, per `per` (domain, VM), and against the `reference` way's
    (its column headed "vs `versus`")."""
    ref = median(times[reference])
    rows = []
    for name in names:
        total = median(times[name])
        rows.append([name, fmt_ms(total), fmt_ms(total / count), f"{total / ref:.2f}x"])
    headers = ["way", "poll ms", f"per {per} ms", f"vs {versus}"]
    return table(headers, rows, [False, True, True, True])


def host_facts_labels(base: str, poll: str) -> dict[str, str]:
    """The four ways of a host facts table: `base` (the key of the poll without host facts,
    `poll` its name), with them as shipped, with every VM's files read, and the naive way."""
    return {
        base: f"{base}. {poll} without host facts",
        "h": "h. with host facts, as shipped on this machine",
        "h1": "h1. with host facts, every VM's files read",
        "n": f"n. {base} + smaps_rollup of every QEMU (the naive way)",
    }


def host_facts_table(
    totals: dict[str, list[float]],
    owns: dict[str, list[float]],
    inside: dict[str, list[float]],
    labels: dict[str, str],
    vms: int,
    base: str,
    full: str,
    naive: str,
) -> tuple[str, list[str]]:
    """The ways side by side, and the verdicts of every way with host facts against the
    targets. `totals`: each way's whole poll; `owns`: the poll less its API round trips (the
    stats fetch, the QMP exchange); `inside`: the time spent in the host facts themselves (or,
    for `naive`, in reading smaps_rollup). What host facts add is that inside time, measured
    where it is spent (with whatever a VM's read does that the poll did before: an upper
    bound); the difference of two polls' medians on a loaded machine moves by more than the
    few microseconds per VM being measured (it is shown beside it). `base` is the poll
    without host facts, `full` reads every VM's files."""
    floor, own_floor = median(totals[base]), median(owns[base])

    def spent(key: str) -> float:
        return median(inside[key])

    rows = []
    for key, label in labels.items():
        added = median(owns[key]) - own_floor
        rows.append(
            [
                label,
                fmt_ms(median(totals[key])),
                fmt_us(median(owns[key]) / vms),
                "-" if key == base else f"{added * 1e6 / vms:+,.1f}",
                "-" if key == base else fmt_us(spent(key) / vms),
                "-" if key == base else f"{spent(key) / floor:.1%}",
            ]
        )
    text = table(
        [
            "way (one poll of every VM)",
            "ms/poll",
            "own µs/VM",
            "own - base",
            "facts µs/VM",
            "of the poll",
        ],
        rows,
        [False, True, True, True, True, True],
    )
    verdicts = []
    for key in labels:
        if key in (base, naive):
            continue
        share, per_vm = spent(key) / floor, spent(key) * 1e6 / vms
        ok = share <= HOST_FACTS_MAX_SHARE and per_vm <= HOST_FACTS_MAX_US_PER_VM
        verdicts.append(
            f"  {key}: host facts add {share:.1%} to the poll and {per_vm:.1f} µs per VM "
            f"(targets <= {HOST_FACTS_MAX_SHARE:.0%} and <= {HOST_FACTS_MAX_US_PER_VM:g} µs)  "
            f"{verdict(ok)}"
        )
    cost = spent(naive) * 1e6 / vms
    ours = spent(full) * 1e6 / vms
    ratio = f"{cost / ours:.1f}x" if ours > 0 else "n/a"
    verdicts.append(
        f"  the naive way (smaps_rollup per VM per poll) costs {cost:.1f} µs per VM, every "
        f"host fact read {ours:.1f}: {ratio} as much"
    )
    if median(inside[base]) > 0:
        verdicts.append(
            f"  (facts µs/VM include what the poll without them also does, "
            f"{median(inside[base]) * 1e6 / vms:.1f} µs per VM there: an upper bound)"
        )
    return text, verdicts
