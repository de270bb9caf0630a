"""The judgement: ratios, rates, stuck, stale and threshold levels, with state across polls.

Fed plain samples from any source; knows nothing of where they came from. State is kept
per source instance and VM (or host) key. A VM missing from a poll of its source (a busy
monitor, a late slice, the source down) keeps its state for up to GRACE_POLLS polls, so its
`for` clocks, `stuck` clock and rate baselines carry across a skipped poll; missing from one
poll more, it is freed. Memory is bounded by the VMs seen in the last GRACE_POLLS + 1 polls.

Across a skipped poll nothing is assumed: a rate is the counter's growth over the real
time between the two polls that saw it (every rate, ratio and growth between two polls comes
from one table, VM_BETWEEN and HOST_BETWEEN); a `since` clock runs on, since no poll showed the
condition clear (an absence is evidence neither way), and the level still needs a poll
that shows the condition to rise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from . import catalog
from .config import HealthConfig, ThresholdRule
from .model import Fields

_WARN, _CRIT = 1, 2

# Consecutive polls of its source a VM (or host) may be missing from and keep its state.
# Counted in polls, not seconds: the plugin does not know Telegraf's interval, and a poll
# the source did not answer counts too (Health.missed), so a long outage frees everything.
# Three polls cover a QMP monitor held for a Proxmox status call or backup start, or a
# libvirt slice that missed its deadline twice in a row, while any `for` window keeps a
# sighting at least every four polls: a level never rests on one old sighting alone.
GRACE_POLLS = 3


class _Rule:
    """A [[thresholds]] rule compiled for the hot loop."""

    __slots__ = ("below", "crit", "field", "for_seconds", "level_key", "shared", "warn")

    def __init__(self, rule: ThresholdRule) -> None:
        self.field = rule.field
        self.level_key = rule.field + catalog.LEVEL_SUFFIX
        self.for_seconds = rule.for_seconds
        self.below = rule.below
        # Compare on negated values when low is bad, so one comparison serves both.
        sign = -1.0 if rule.below else 1.0
        self.warn = None if rule.warn is None else sign * rule.warn
        self.crit = None if rule.crit is None else sign * rule.crit
        self.shared = False  # another rule watches the same field


def _compile(thresholds: tuple[ThresholdRule, ...], measurement: str) -> list[_Rule]:
    rules = [_Rule(r) for r in thresholds if r.measurement == measurement]
    for rule in rules:
        rule.shared = sum(1 for other in rules if other.field == rule.field) > 1
    return rules


@dataclass(frozen=True)
class RuleState:
    """Where one [[thresholds]] rule stands for one line after the last poll (for --explain).

    `raw` is the level the condition reaches now; `level` the one it has reached after
    holding for the rule's `for` (what `<field>_level` says); `held` how long the warn
    condition has held, in seconds.
    """

    field: str
    warn: Optional[float]
    crit: Optional[float]
    for_seconds: float
    raw: int
    level: int
    held: float


class _State:
    """What one VM (or host) needs remembered from earlier polls."""

    __slots__ = (
        "last_time",
        "previous",
        "seen",
        "since",
        "stuck_since",
        "vmem_since",
    )

    def __init__(self, between: int) -> None:
        self.seen = 0  # the number of the last poll of its table that reported it
        self.last_time: Optional[float] = None
        # the value of each BETWEEN entry's field at the previous poll (None: not on it)
        self.previous: list[Optional[float]] = [None] * between
        self.stuck_since: Optional[float] = None
        self.vmem_since: Optional[float] = None  # virtio-mem off its request since
        # Per rule i, since when its warn (i) and crit (rules + i) condition has held; None
        # while no rule's condition holds, as for most VMs: their state stays small.
        self.since: Optional[list[Optional[float]]] = None


class _Table:
    """The state of the VMs (or the hosts) of one source instance, and its poll count."""

    __slots__ = ("grace", "polls", "states")

    def __init__(self, grace: int) -> None:
        self.grace = grace
        self.polls = 0
        self.states: dict[str, _State] = {}

    def sweep(self, present: int) -> None:
        """Free what has been missing for more than `grace` polls (`present` were seen now)."""
        states = self.states
        if len(states) <= present:
            return
        oldest = self.polls - self.grace  # seen at this poll or later: kept
        for key in [key for key, state in states.items() if state.seen < oldest]:
            del states[key]


# -- between two polls ------------------------------------------------------------------------
# Every field the stage computes from how another one moved between two polls of the same VM
# (or host), in one table per line, like the catalog: a new rate or ratio is a row here.
RATE = "rate"  # a counter's growth per second; a counter that fell was reset: no value then
CHANGE = "change"  # a level's change per second, signed: it may fall
NEW = "new"  # a counter's growth since the previous poll; after a reset, all it holds is new


@dataclass(frozen=True)
class Between:
    """`result` from how `total` moved since the previous poll that had it.

    Absent on the first poll, when the previous poll lacked `total` (a missing figure is no
    baseline), and, per second, when no time passed. Across polls the VM missed (within the
    grace) the change is over the real time between the two polls that saw it. A RATE of a
    `_seconds_total` is a share of wall time: `cap` 1 (the source reads its files a little
    after the poll's own time, so two reads may span a little more than the polls do).
    """

    total: str
    result: str
    kind: str = RATE
    cap: Optional[float] = None


VM_BETWEEN: tuple[Between, ...] = (
    Between("swap_in_bytes_total", "swap_in_bytes_per_second"),
    Between("swap_out_bytes_total", "swap_out_bytes_per_second"),
    Between("host_swapped_bytes", "host_swapped_bytes_per_second", CHANGE),
    Between("host_memory_stall_seconds_total", "host_memory_stall_ratio", cap=1.0),
    Between("guest_memory_stall_seconds_total", "guest_memory_stall_ratio", cap=1.0),
)

# A rule on a `_total` would fire for ever once it is nonzero; a rule on the growth fires on
# new errors.
HOST_BETWEEN: tuple[Between, ...] = (
    Between("ecc_corrected_total", "ecc_corrected_new", NEW),
    Between("ecc_uncorrected_total", "ecc_uncorrected_new", NEW),
    Between("host_swap_in_bytes_total", "host_swap_in_bytes_per_second"),
    Between("host_swap_out_bytes_total", "host_swap_out_bytes_per_second"),
    Between("host_memory_stall_seconds_total", "host_memory_stall_ratio", cap=1.0),
    Between("host_memory_stall_full_seconds_total", "host_memory_stall_full_ratio", cap=1.0),
)

_Compiled = tuple[tuple[int, str, str, str, Optional[float]], ...]


def _compile_between(table: tuple[Between, ...]) -> _Compiled:
    return tuple((i, b.total, b.result, b.kind, b.cap) for i, b in enumerate(table))


def _between(table: _Compiled, fields: Fields, state: _State, now: float) -> None:
    """Add each table row's result the line's fields allow; remember this poll's values."""
    last = state.last_time
    elapsed = now - last if last is not None and now > last else 0.0
    state.last_time = now
    previous = state.previous
    get = fields.get
    for i, total, result, kind, cap in table:
        value = get(total)
        before = previous[i]
        if value is None:
            if before is not None:
                previous[i] = None
            continue
        if value.__class__ is bool or value.__class__ is str:
            previous[i] = None
            continue
        previous[i] = value  # type: ignore[assignment]
        if before is None:
            continue
        if kind == NEW:
            fields[result] = value - before if value >= before else value  # type: ignore[operator]
        elif not elapsed:
            continue
        elif kind == CHANGE:
            fields[result] = (value - before) / elapsed  # type: ignore[operator]
        elif value >= before:  # type: ignore[operator]
            rate = (value - before) / elapsed  # type: ignore[operator]
            fields[result] = cap if cap is not None and rate > cap else rate


def _held(
    since: Optional[float], holds: bool, now: float, hold_for: float
) -> tuple[Optional[float], bool]:
    """A condition's clock after this poll, and whether it has held for `hold_for`: started
    when the condition begins, stopped (None) when it does not hold."""
    if not holds:
        return None, False
    if since is None:
        since = now
    return since, now - since >= hold_for


def _levels(rules: list[_Rule], fields: Fields, state: _State, now: float) -> int:
    """Add `<field>_level` for every rule whose field is on the line; return the highest."""
    highest = 0
    count = len(rules)
    since = state.since
    for i, rule in enumerate(rules):
        value = fields.get(rule.field)
        if value is None or type(value) is str:
            if since is not None:
                since[i] = since[count + i] = None
            continue
        number = -float(value) if rule.below else float(value)
        raw = (
            _CRIT
            if rule.crit is not None and number >= rule.crit
            else _WARN
            if rule.warn is not None and number >= rule.warn
            else 0
        )
        # A level rises only once its condition has held `for`; it falls at once.
        level = 0
        if raw >= _WARN:
            if since is None:
                since = state.since = [None] * (2 * count)
            held = since[i]
            if held is None:
                held = since[i] = now
            if now - held >= rule.for_seconds:
                level = _WARN
            if raw == _CRIT:
                held = since[count + i]
                if held is None:
                    held = since[count + i] = now
                if now - held >= rule.for_seconds:
                    level = _CRIT
            else:
                since[count + i] = None
        elif since is not None:
            since[i] = since[count + i] = None
        # Several rules may watch one field (warn after 10 min, crit at once): the highest wins.
        if rule.shared:
            level = max(level, int(fields.get(rule.level_key, 0)))
        fields[rule.level_key] = level
        if level > highest:
            highest = level
    if since is not None and since.count(None) == 2 * count:
        state.since = None  # every condition clear again
    return highest


def _rule_states(rules: list[_Rule], state: Optional[_State], now: float) -> list[RuleState]:
    """Read back what _levels remembered: a condition holds now iff its `since` is set."""
    out: list[RuleState] = []
    since = state.since if state is not None else None
    for i, rule in enumerate(rules):
        warn_since = since[i] if since is not None else None
        crit_since = since[len(rules) + i] if since is not None else None
        raw = _CRIT if crit_since is not None else _WARN if warn_since is not None else 0
        level = 0
        if crit_since is not None and now - crit_since >= rule.for_seconds:
            level = _CRIT
        elif warn_since is not None and now - warn_since >= rule.for_seconds:
            level = _WARN
        sign = -1.0 if rule.below else 1.0
        out.append(
            RuleState(
                rule.field,
                None if rule.warn is None else sign * rule.warn,
                None if rule.crit is None else sign * rule.crit,
                rule.for_seconds,
                raw,
                level,
                0.0 if warn_since is None else now - warn_since,
            )
        )
    return out


class VmPass:
    """One source poll's VMs, judged as they come; `finish` frees the state of VMs missing
    for longer than the grace."""

    __slots__ = ("_between", "_judge", "_now", "_poll", "_states", "_table", "present")

    def __init__(self, health: Health, table: _Table, now: float) -> None:
        self._judge = health.judge_vm
        self._table = table
        self._states = table.states
        self._poll = table.polls
        self._between = len(VM_BETWEEN)
        self._now = now
        self.present = 0

    def __call__(self, key: str, fields: Fields) -> None:
        """Judge one VM's fields in place."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State(self._between)
        if state.seen != self._poll:
            state.seen = self._poll
            self.present += 1
        self._judge(fields, state, self._now)

    def finish(self) -> None:
        self._table.sweep(self.present)


class Health:
    """One stage between the sources and the serializer; call once per source poll."""

    def __init__(
        self,
        config: HealthConfig,
        thresholds: tuple[ThresholdRule, ...] = (),
        grace_polls: int = GRACE_POLLS,
    ) -> None:
        self.config = config
        self.vm_rules = _compile(thresholds, catalog.BALLOON)
        self.host_rules = _compile(thresholds, catalog.HOST)
        self._vm_between = _compile_between(VM_BETWEEN)
        self._host_between = _compile_between(HOST_BETWEEN)
        self.grace = grace_polls
        self._vms: dict[str, _Table] = {}
        self._hosts: dict[str, _Table] = {}

    def tracked(self) -> int:
        """VMs and hosts with state, those within their grace included (tests, benchmarks)."""
        tables = [*self._vms.values(), *self._hosts.values()]
        return sum(len(table.states) for table in tables)

    def _table(self, tables: dict[str, _Table], instance: str) -> _Table:
        table = tables.get(instance)
        if table is None:
            table = tables[instance] = _Table(self.grace)
        return table

    def _state(self, tables: dict[str, _Table], instance: str, key: str) -> Optional[_State]:
        table = tables.get(instance)
        return None if table is None else table.states.get(key)

    def vm_rules_now(self, instance: str, key: str, now: float) -> list[RuleState]:
        """Every balloon rule's standing for one VM after the last poll of its source."""
        return _rule_states(self.vm_rules, self._state(self._vms, instance, key), now)

    def host_rules_now(self, instance: str, key: str, now: float) -> list[RuleState]:
        """Every balloon_host rule's standing for one host after the last poll of its source."""
        return _rule_states(self.host_rules, self._state(self._hosts, instance, key), now)

    def stuck_held(self, instance: str, key: str, now: float) -> float:
        """Seconds the gap has been beyond stuck_gap_ratio for one VM (0 when it is not)."""
        state = self._state(self._vms, instance, key)
        since = None if state is None else state.stuck_since
        return 0.0 if since is None else now - since

    def vmem_stuck_held(self, instance: str, key: str, now: float) -> float:
        """Seconds virtio-mem has been more than a block off its request (0 when it is not)."""
        state = self._state(self._vms, instance, key)
        since = None if state is None else state.vmem_since
        return 0.0 if since is None else now - since

    def missed(self, instance: str) -> None:
        """A poll of `instance` that did not answer: every VM and host of it missed a poll."""
        for tables in (self._vms, self._hosts):
            table = tables.get(instance)
            if table is not None:
                table.polls += 1
                table.sweep(0)

    def vms(self, instance: str, items: Iterable[tuple[str, Fields]], now: float) -> None:
        """Judge every VM of one source poll in place; state of VMs long missing is freed."""
        judged = self.vm_pass(instance, now)
        for key, fields in items:
            judged(key, fields)
        judged.finish()

    def vm_pass(self, instance: str, now: float) -> VmPass:
        """The VMs of one source poll, judged one at a time (call `finish` after the last):
        the Runner judges each VM as it writes its line, so no poll's judged lines all exist
        at once."""
        table = self._table(self._vms, instance)
        table.polls += 1
        return VmPass(self, table, now)

    def judge_vm(self, fields: Fields, state: _State, now: float) -> None:
        """One VM's judgement at one poll, against what `state` remembers of it."""
        cfg = self.config
        get = fields.get
        maximum = get("memory_max_bytes")
        actual = get("balloon_actual_bytes")
        target = get("balloon_target_bytes")
        if actual is not None and maximum:
            # Most balloons are empty: one 0.0 for all of them, not a float per VM.
            fields["balloon_ratio"] = actual / maximum if actual else 0.0  # type: ignore[operator]
        if target is not None and actual is not None:
            gap = target - actual  # type: ignore[operator]
            fields["balloon_gap_bytes"] = gap
            # Stuck: the balloon holds less than asked, by more than the ratio, for long.
            off = bool(maximum) and gap / maximum > cfg.stuck_gap_ratio  # type: ignore[operator]
            state.stuck_since, fields["stuck"] = _held(state.stuck_since, off, now, cfg.stuck_for)
        else:
            state.stuck_since = None

        # virtio-mem stuck: plugged more than a block off requested for stuck_for (an
        # unplug the guest cannot do, or a plug it did not take); the same grace as stuck.
        vmem_gap = get("vmem_gap_bytes")
        if vmem_gap is not None:
            off = abs(vmem_gap) > (get("vmem_block_bytes") or 0)  # type: ignore[operator, arg-type]
            state.vmem_since, fields["vmem_stuck"] = _held(
                state.vmem_since, off, now, cfg.stuck_for
            )
        else:
            state.vmem_since = None

        _between(self._vm_between, fields, state, now)

        age = get("stats_age_seconds")
        if age is not None and "stale" not in fields:
            limit = cfg.stale_after
            if limit is None:
                period = get("stats_period_seconds") or 0
                limit = max(60.0, 3.0 * period)  # type: ignore[operator]
            fields["stale"] = age > limit  # type: ignore[operator]

        rules = self.vm_rules
        fields["alert_level"] = _levels(rules, fields, state, now) if rules else 0

    def hosts(self, instance: str, items: list[tuple[str, Fields]], now: float) -> None:
        """Threshold levels for the host lines of one source poll (call it with [] too)."""
        between = len(HOST_BETWEEN)
        table = self._table(self._hosts, instance)
        table.polls = poll = table.polls + 1
        states = table.states
        present = 0
        for key, fields in items:
            state = states.get(key)
            if state is None:
                state = states[key] = _State(between)
            if state.seen != poll:
                state.seen = poll
                present += 1
            self.judge_host(fields, state, now)
        table.sweep(present)

    def judge_host(self, fields: Fields, state: _State, now: float) -> None:
        """One host line's judgement at one poll: what moved since the last, and levels."""
        _between(self._host_between, fields, state, now)
        rules = self.host_rules
        fields["alert_level"] = _levels(rules, fields, state, now) if rules else 0
