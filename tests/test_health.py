"""The health stage (telegraf_balloon/health.py) and the host sums (aggregate.py).

Table-driven: a case is a list of steps, each one poll of one source instance at a given
time with the field dicts of the VMs present, and the fields expected on each VM line
after the stage judged them. Time is injected (`now`); nothing sleeps.

What they hold it to: the README's Health section and Metrics tables (balloon, balloon_host),
and the comments of telegraf_balloon/sample.toml ([health], [[thresholds]]).
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import line_protocol_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import telegraf_balloon
from telegraf_balloon import catalog
from telegraf_balloon.aggregate import host_lines
from telegraf_balloon.config import Config, HealthConfig, ThresholdRule, load_text
from telegraf_balloon.health import GRACE_POLLS, Health
from telegraf_balloon.log import Log
from telegraf_balloon.model import Fields, FieldValue, HostInfo, PollResult, Sample
from telegraf_balloon.runner import Runner

T0 = 1_700_000_000.0  # a realistic epoch: float subtraction there is exact for our steps
MiB = 1 << 20
GiB = 1 << 30
MAX = 1000 * MiB  # memory_max_bytes of most VMs below: 1% of it is 10 MiB
INSTANCE = "qemu:///system"

SAMPLE_TOML = Path(telegraf_balloon.__file__).with_name("sample.toml")


class _Absent:
    """Marks a field that must not be on the line."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()
Expected = Union[FieldValue, _Absent]


@dataclass(frozen=True)
class Step:
    """One poll: at T0 + t, these VMs (key -> fields the source gave), then these checks."""

    t: float
    vms: Mapping[str, Fields]
    expect: Mapping[str, Mapping[str, Expected]] = field(default_factory=dict)
    instance: str = INSTANCE


DEFAULT = HealthConfig()  # stale_after unset: max(60 s, 3 x period)


@dataclass(frozen=True)
class Case:
    id: str
    steps: Sequence[Step]
    health: HealthConfig = DEFAULT
    rules: tuple[ThresholdRule, ...] = ()


def rule(
    name: str,
    warn: Optional[float] = None,
    crit: Optional[float] = None,
    for_seconds: float = 0.0,
    below: bool = False,
    measurement: str = catalog.BALLOON,
) -> ThresholdRule:
    return ThresholdRule(name, measurement, warn, crit, for_seconds, below)


def check_fields(
    where: str, fields: Mapping[str, FieldValue], expect: Mapping[str, Expected]
) -> None:
    for name, want in expect.items():
        if isinstance(want, _Absent):
            assert name not in fields, f"{where}: {name} should be absent, got {fields.get(name)!r}"
            continue
        assert name in fields, f"{where}: {name} missing; line: {fields}"
        got = fields[name]
        if isinstance(want, float) and not isinstance(want, bool):
            assert type(got) is float, f"{where}: {name} = {got!r} is not a float"
            assert got == pytest.approx(want, rel=1e-12), f"{where}: {name} = {got!r} != {want!r}"
        else:
            assert type(got) is type(want), f"{where}: {name} = {got!r}, expected {want!r}"
            assert got == want, f"{where}: {name} = {got!r}, expected {want!r}"


def run_case(case: Case) -> Health:
    health = Health(case.health, case.rules)
    for n, step in enumerate(case.steps):
        items = [(key, dict(fields)) for key, fields in step.vms.items()]
        health.vms(step.instance, items, T0 + step.t)
        lines = dict(items)
        for key, expect in step.expect.items():
            assert key in lines, f"step {n}: bad case, {key} not polled"
            check_fields(f"{case.id} step {n} (t={step.t:g}) {key}", lines[key], expect)
        for key, fields in lines.items():
            problems = catalog.check_point(catalog.BALLOON, {}, dict(fields))
            assert not problems, f"{case.id} step {n} {key}: {problems}"
    return health


def one(t: float, fields: Fields, **expect: Expected) -> Step:
    """A poll of the single VM 'vm' with these expected fields."""
    return Step(t, {"vm": fields}, {"vm": expect})


def vm(
    actual: Optional[int] = None,
    target: Optional[int] = None,
    maximum: Optional[int] = MAX,
    **extra: FieldValue,
) -> Fields:
    fields: Fields = {}
    if maximum is not None:
        fields["memory_max_bytes"] = maximum
    if actual is not None:
        fields["balloon_actual_bytes"] = actual
    if target is not None:
        fields["balloon_target_bytes"] = target
    fields.update(extra)
    return fields


def pct(p: float) -> int:
    """p percent of MAX, in bytes (10 MiB steps: exact ratios)."""
    return round(MAX * p / 100)


# --- ratio and gap ----------------------------------------------------------------------------

RATIO_CASES = [
    Case(
        "ratio-is-actual-over-max",
        [one(0, vm(actual=250 * MiB), balloon_ratio=0.25)],
    ),
    Case(
        "ratio-zero-when-balloon-empty",
        [one(0, vm(actual=0), balloon_ratio=0.0, balloon_gap_bytes=ABSENT)],
    ),
    Case(
        "ratio-absent-without-max",
        [one(0, vm(actual=250 * MiB, maximum=None), balloon_ratio=ABSENT)],
    ),
    Case(
        "ratio-absent-when-max-is-zero",
        [one(0, vm(actual=250 * MiB, maximum=0), balloon_ratio=ABSENT)],
    ),
    Case(
        "ratio-absent-without-actual",
        [one(0, vm(), balloon_ratio=ABSENT, balloon_gap_bytes=ABSENT)],
    ),
    Case(
        "gap-is-target-minus-actual",
        [one(0, vm(actual=100 * MiB, target=300 * MiB), balloon_gap_bytes=200 * MiB)],
    ),
    Case(
        "gap-negative-when-balloon-beyond-target",
        [one(0, vm(actual=300 * MiB, target=100 * MiB), balloon_gap_bytes=-200 * MiB)],
    ),
    Case(
        "gap-absent-without-target",
        [one(0, vm(actual=100 * MiB), balloon_gap_bytes=ABSENT, stuck=ABSENT)],
    ),
    Case(
        "gap-zero-at-target",
        [one(0, vm(actual=100 * MiB, target=100 * MiB), balloon_gap_bytes=0, stuck=False)],
    ),
    Case(
        "no-rules-alert-level-zero-and-no-levels",
        [one(0, vm(actual=900 * MiB), alert_level=0, balloon_ratio_level=ABSENT)],
    ),
]


@pytest.mark.parametrize("case", RATIO_CASES, ids=lambda c: c.id)
def test_ratio_and_gap(case: Case) -> None:
    run_case(case)


# --- rates ------------------------------------------------------------------------------------


def swaps(swap_in: Optional[int] = None, swap_out: Optional[int] = None) -> Fields:
    fields: Fields = {}
    if swap_in is not None:
        fields["swap_in_bytes_total"] = swap_in
    if swap_out is not None:
        fields["swap_out_bytes_total"] = swap_out
    return fields


IN, OUT = "swap_in_bytes_per_second", "swap_out_bytes_per_second"


def rates(swap_in: Expected, swap_out: Expected) -> dict[str, Expected]:
    return {IN: swap_in, OUT: swap_out}


RATE_CASES = [
    Case(
        "first-poll-no-rate-then-delta-over-seconds",
        [
            one(0, swaps(1000, 5000), **rates(ABSENT, ABSENT)),
            one(10, swaps(2000, 5000 + 10 * MiB), **rates(100.0, float(MiB))),
            one(20, swaps(2000, 5000 + 10 * MiB), **rates(0.0, 0.0)),
        ],
    ),
    Case(
        "irregular-interval-uses-the-real-elapsed-time",
        [
            one(0, swaps(0, 0)),
            one(7.5, swaps(750, 1500), **rates(100.0, 200.0)),
            one(8.0, swaps(800, 1500), **rates(100.0, 0.0)),
        ],
    ),
    Case(
        "counter-reset-absent-once-then-back",
        [
            one(0, swaps(5000, 5000)),
            one(10, swaps(6000, 6000), **rates(100.0, 100.0)),
            one(20, swaps(100, 100), **rates(ABSENT, ABSENT)),  # guest rebooted
            one(30, swaps(600, 1100), **rates(50.0, 100.0)),
        ],
    ),
    Case(
        "reset-of-one-counter-keeps-the-other",
        [
            one(0, swaps(5000, 5000)),
            one(10, swaps(10, 6000), **rates(ABSENT, 100.0)),
            one(20, swaps(20, 7000), **rates(1.0, 100.0)),
        ],
    ),
    Case(
        "counter-missing-for-a-poll",
        [
            one(0, swaps(0, 0)),
            one(10, swaps(None, 100), **rates(ABSENT, 10.0)),
            one(20, swaps(1000, 200), **rates(ABSENT, 10.0)),  # no previous value
            one(30, swaps(2000, 300), **rates(100.0, 10.0)),
        ],
    ),
    Case(
        "no-counters-no-rates",
        [one(0, vm(actual=0)), one(10, vm(actual=0), **rates(ABSENT, ABSENT))],
    ),
    Case(
        "same-timestamp-twice-no-rate-no-division-by-zero",
        [
            one(0, swaps(0, 0)),
            one(0, swaps(100, 100), **rates(ABSENT, ABSENT)),
            one(10, swaps(200, 200), **rates(10.0, 10.0)),
        ],
    ),
]


@pytest.mark.parametrize("case", RATE_CASES, ids=lambda c: c.id)
def test_rates(case: Case) -> None:
    run_case(case)


counter = st.integers(min_value=0, max_value=2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=1e-3, max_value=1e6), counter, counter),
        min_size=1,
        max_size=30,
    ),
    st.floats(min_value=0.0, max_value=4e9),
)
def test_rates_never_negative_nan_or_wrong(
    polls: list[tuple[float, int, int]], start: float
) -> None:
    """Arbitrary counters at increasing times: a rate is (delta)/(seconds) or absent."""
    health = Health(HealthConfig())
    now = start
    prev: Optional[tuple[float, int, int]] = None
    for step, swap_in, swap_out in polls:
        later = now + step
        if later <= now:  # too small a step to move a large float
            continue
        now = later
        fields: Fields = {"swap_in_bytes_total": swap_in, "swap_out_bytes_total": swap_out}
        health.vms("i", [("vm", fields)], now)
        for name, value, index in ((IN, swap_in, 1), (OUT, swap_out, 2)):
            if prev is None or value < prev[index]:
                assert name not in fields, (prev, value)
                continue
            rate = fields[name]
            assert isinstance(rate, float)
            assert not math.isnan(rate) and rate >= 0.0 and math.isfinite(rate)
            assert rate == pytest.approx((value - prev[index]) / (now - prev[0]), rel=1e-9)
        prev = (now, swap_in, swap_out)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, allow_nan=False, allow_infinity=False, exclude_min=True),
            st.one_of(counter, st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_rates_never_negative_or_nan_for_any_increasing_times(
    polls: list[tuple[float, Union[int, float]]],
) -> None:
    """Even with absurd time steps and float counters: never negative, never NaN."""
    health = Health(HealthConfig())
    now = 0.0
    for step, value in polls:
        now = now + step if math.isfinite(now + step) else now
        fields: Fields = {"swap_out_bytes_total": value}
        health.vms("i", [("vm", fields)], now)
        rate = fields.get(OUT)
        if rate is not None:
            assert isinstance(rate, float)
            assert not math.isnan(rate) and rate >= 0.0


# --- stuck ------------------------------------------------------------------------------------

STUCK = HealthConfig(stuck_gap_ratio=0.05, stuck_for=300.0)


def gap(p: float, **extra: FieldValue) -> Fields:
    """A VM whose balloon is short of its target by p percent of its memory."""
    fields = vm(actual=pct(10), target=pct(10 + p))
    fields.update(extra)
    return fields


STUCK_CASES = [
    Case(
        "gap-held-for-stuck_for-sets-stuck",
        [
            one(0, gap(10), stuck=False),
            one(100, gap(10), stuck=False),
            one(299, gap(10), stuck=False),
            one(300, gap(10), stuck=True),  # exactly at stuck_for
            one(900, gap(10), stuck=True),
        ],
        STUCK,
    ),
    Case(
        "gap-that-closes-early-never-sets-it-and-restarts-the-clock",
        [
            one(0, gap(10), stuck=False),
            one(200, gap(0), stuck=False),
            one(250, gap(10), stuck=False),
            one(300, gap(10), stuck=False),  # would be stuck without the restart
            one(549, gap(10), stuck=False),
            one(550, gap(10), stuck=True),
        ],
        STUCK,
    ),
    Case(
        "gap-exactly-at-the-ratio-is-not-above-it",
        [one(0, gap(5), stuck=False), one(600, gap(5), stuck=False)],
        STUCK,
    ),
    Case(
        "gap-just-above-the-ratio",
        [one(0, gap(6), stuck=False), one(300, gap(6), stuck=True)],
        STUCK,
    ),
    Case(
        "negative-gap-balloon-beyond-target-is-not-stuck",
        [
            one(0, vm(actual=pct(50), target=pct(10))),
            one(600, vm(actual=pct(50), target=pct(10)), stuck=False),
        ],
        STUCK,
    ),
    Case(
        "stuck-clears-at-once-when-the-gap-closes",
        [
            one(0, gap(10)),
            one(300, gap(10), stuck=True),
            one(310, gap(1), stuck=False),
            one(320, gap(10), stuck=False),
        ],
        STUCK,
    ),
    Case(
        "no-target-no-stuck",
        [
            one(0, vm(actual=pct(10)), stuck=ABSENT),
            one(600, vm(actual=pct(10)), stuck=ABSENT),
        ],
        STUCK,
    ),
    Case(
        "target-without-max-is-never-stuck",  # gap / max cannot be judged
        [
            one(0, vm(actual=0, target=pct(50), maximum=None), stuck=False),
            one(600, vm(actual=0, target=pct(50), maximum=None), stuck=False),
            one(601, vm(actual=0, target=pct(50), maximum=0), stuck=False),
        ],
        STUCK,
    ),
    Case(
        "target-lost-then-back-restarts-the-clock",
        [
            one(0, gap(10), stuck=False),
            one(200, vm(actual=pct(10)), stuck=ABSENT),
            one(300, gap(10), stuck=False),
            one(599, gap(10), stuck=False),
            one(600, gap(10), stuck=True),
        ],
        STUCK,
    ),
    Case(
        "stuck_for-zero-is-immediate",
        [one(0, gap(10), stuck=True), one(1, gap(0), stuck=False)],
        HealthConfig(stuck_gap_ratio=0.05, stuck_for=0.0),
    ),
    Case(
        "ratio-from-config",
        [
            one(0, gap(10), stuck=False),
            one(300, gap(10), stuck=False),  # 10% is not above 20%
            one(310, gap(30), stuck=False),
            one(610, gap(30), stuck=True),
        ],
        HealthConfig(stuck_gap_ratio=0.2, stuck_for=300.0),
    ),
    Case(
        "gap-uses-the-vm-own-memory",
        [
            Step(
                0,
                {
                    "big": vm(actual=0, target=60 * MiB, maximum=1000 * MiB),
                    "small": vm(actual=0, target=60 * MiB, maximum=100 * MiB),
                },
            ),
            Step(
                300,
                {
                    "big": vm(actual=0, target=60 * MiB, maximum=1000 * MiB),
                    "small": vm(actual=0, target=60 * MiB, maximum=100 * MiB),
                },
                {"big": {"stuck": True}, "small": {"stuck": True}},
            ),
            Step(
                600,
                {
                    "big": vm(actual=0, target=40 * MiB, maximum=1000 * MiB),
                    "small": vm(actual=0, target=40 * MiB, maximum=100 * MiB),
                },
                {"big": {"stuck": False}, "small": {"stuck": True}},
            ),
        ],
        STUCK,
    ),
]


@pytest.mark.parametrize("case", STUCK_CASES, ids=lambda c: c.id)
def test_stuck(case: Case) -> None:
    run_case(case)


# --- stale ------------------------------------------------------------------------------------


def aged(age: Optional[float], period: Optional[int] = None, **extra: FieldValue) -> Fields:
    fields = vm(actual=0)
    fields.update(extra)
    if age is not None:
        fields["stats_age_seconds"] = age
    if period is not None:
        fields["stats_period_seconds"] = period
    return fields


def stale_case(name: str, health: HealthConfig, fields: Fields, want: Expected) -> Case:
    return Case(name, [one(0, fields, stale=want)], health)


STALE_CASES = [
    stale_case("default-60s-not-yet", DEFAULT, aged(60.0), False),
    stale_case("default-60s-beyond", DEFAULT, aged(60.5), True),
    stale_case("default-fresh", DEFAULT, aged(2.0, 5), False),
    stale_case("default-small-period-still-60s", DEFAULT, aged(59.0, 10), False),
    stale_case("default-small-period-beyond-60s", DEFAULT, aged(61.0, 10), True),
    stale_case("default-3x-period-not-yet", DEFAULT, aged(90.0, 30), False),
    stale_case("default-3x-period-beyond", DEFAULT, aged(91.0, 30), True),
    stale_case("default-3x-large-period", DEFAULT, aged(299.0, 100), False),
    stale_case("default-period-zero-means-60s", DEFAULT, aged(61.0, 0), True),
    stale_case(
        "configured-overrides-3x-period", HealthConfig(stale_after=120.0), aged(121.0, 100), True
    ),
    stale_case("configured-not-yet", HealthConfig(stale_after=120.0), aged(119.0, 1), False),
    stale_case("configured-below-60s", HealthConfig(stale_after=10.0), aged(11.0), True),
    stale_case("configured-zero", HealthConfig(stale_after=0.0), aged(0.5), True),
    stale_case("configured-zero-fresh", HealthConfig(stale_after=0.0), aged(0.0), False),
    stale_case("source-says-not-stale", DEFAULT, aged(1000.0, stale=False), False),
    stale_case("source-says-stale", DEFAULT, aged(1.0, stale=True), True),
    stale_case("source-says-stale-without-age", DEFAULT, aged(None, stale=True), True),
    stale_case("no-age-no-stale", DEFAULT, aged(None), ABSENT),
    stale_case("no-age-no-stale-even-with-a-period", DEFAULT, aged(None, 10), ABSENT),
]


@pytest.mark.parametrize("case", STALE_CASES, ids=lambda c: c.id)
def test_stale(case: Case) -> None:
    run_case(case)


# --- thresholds -------------------------------------------------------------------------------

Point = tuple[float, Optional[FieldValue], Optional[int]]


def series(
    name: str,
    rules: Union[ThresholdRule, tuple[ThresholdRule, ...]],
    points: Sequence[Point],
    make: Optional[Callable[[FieldValue], Fields]] = None,
    health: HealthConfig = DEFAULT,
) -> Case:
    """One VM polled at (t, value): `<field>_level` must be `level` (None: absent).

    value None leaves the field off the line; alert_level must equal the level (or 0).
    """
    rules = rules if isinstance(rules, tuple) else (rules,)
    watched = rules[0].field

    def fields_of(value: Optional[FieldValue]) -> Fields:
        if value is None:
            return {}
        return make(value) if make else {watched: value}

    steps = [
        one(
            t,
            fields_of(value),
            **{
                watched + "_level": ABSENT if level is None else level,
                "alert_level": level or 0,
            },
        )
        for t, value, level in points
    ]
    return Case(name, steps, health, rules)


def ratio(p: FieldValue) -> Fields:
    """A VM whose balloon holds p (0..1) of its memory: balloon_ratio comes from the stage."""
    assert isinstance(p, float)
    return vm(actual=round(MAX * p))


RATIO_RULE = rule("balloon_ratio", warn=0.2, crit=0.4, for_seconds=600)
AVAIL = "guest_available_bytes"

THRESHOLD_CASES = [
    series(
        "warn-after-for-then-crit-after-its-own-for-then-falls-at-once",
        RATIO_RULE,
        [
            (0, 0.3, 0),
            (300, 0.3, 0),
            (599, 0.3, 0),
            (600, 0.3, 1),  # warn held exactly `for`
            (700, 0.5, 1),  # crit starts its own clock
            (1200, 0.5, 1),
            (1299, 0.5, 1),
            (1300, 0.5, 2),
            (1310, 0.3, 1),  # falls at once to warn: warn held throughout
            (1320, 0.1, 0),  # falls at once to ok
            (1330, 0.5, 0),  # both clocks restart
            (1929, 0.5, 0),
            (1930, 0.5, 2),  # warn and crit held `for` together: straight to 2
            (1940, 0.0, 0),
        ],
        ratio,
    ),
    series(
        "crit-from-the-start-rises-straight-to-crit",
        RATIO_RULE,
        [(0, 0.5, 0), (599, 0.5, 0), (600, 0.5, 2)],
        ratio,
    ),
    series(
        "dip-below-warn-restarts-the-clock",
        RATIO_RULE,
        [(0, 0.3, 0), (500, 0.1, 0), (600, 0.3, 0), (1199, 0.3, 0), (1200, 0.3, 1)],
        ratio,
    ),
    series(
        "dip-from-crit-to-warn-restarts-only-the-crit-clock",
        RATIO_RULE,
        [(0, 0.5, 0), (500, 0.3, 0), (600, 0.5, 1), (1199, 0.5, 1), (1200, 0.5, 2)],
        ratio,
    ),
    series(
        "exactly-at-warn-and-crit-counts",
        rule("balloon_ratio", warn=0.2, crit=0.4),
        [(0, 0.2, 1), (1, 0.4, 2), (2, 0.39, 1), (3, 0.19, 0)],
        ratio,
    ),
    series(
        "for-zero-is-immediate-both-ways",
        rule("balloon_ratio", warn=0.2, crit=0.4),
        [(0, 0.9, 2), (1, 0.0, 0), (2, 0.25, 1)],
        ratio,
    ),
    series(
        "warn-only-rule-never-crit",
        rule("balloon_ratio", warn=0.2, for_seconds=60),
        [(0, 1.0, 0), (60, 1.0, 1), (6000, 1.0, 1), (6001, 0.1, 0)],
        ratio,
    ),
    series(
        "crit-only-rule-never-warn",
        rule("balloon_ratio", crit=0.4, for_seconds=60),
        [(0, 0.3, 0), (10, 0.5, 0), (69, 0.5, 0), (70, 0.5, 2), (80, 0.3, 0), (90, 0.4, 0)],
        ratio,
    ),
    series(
        "below-low-is-bad",
        rule(AVAIL, warn=512 * MiB, crit=128 * MiB, for_seconds=60, below=True),
        [
            (0, GiB, 0),
            (10, 300 * MiB, 0),
            (70, 300 * MiB, 1),
            (80, 100 * MiB, 1),
            (139, 100 * MiB, 1),
            (140, 100 * MiB, 2),
            (150, 128 * MiB, 2),  # exactly at crit counts
            (160, 512 * MiB, 1),  # exactly at warn counts, warn held since t=10
            (170, 512 * MiB + 1, 0),
        ],
    ),
    series(
        "below-crit-only",
        rule(AVAIL, crit=100 * MiB, below=True),
        [(0, 200 * MiB, 0), (1, 100 * MiB, 2), (2, 0, 2)],
    ),
    series(
        "boolean-true-counts-as-one",
        rule("inflation_blocked", warn=1),
        [(0, False, 0), (10, True, 1), (20, False, 0), (30, True, 1)],
    ),
    series(
        "boolean-with-for",
        rule("inflation_blocked", warn=1, for_seconds=60),
        [(0, True, 0), (59, True, 0), (60, True, 1), (61, False, 0)],
    ),
    series(
        "boolean-crit",
        rule("inflation_blocked", crit=1),
        [(0, False, 0), (1, True, 2)],
    ),
    series(
        "boolean-below-fires-when-false",
        rule("driver_loaded", warn=0, below=True),
        [(0, True, 0), (1, False, 1), (2, True, 0)],
    ),
    series(
        "boolean-warn-half",
        rule("inflation_blocked", warn=0.5, crit=1),
        [(0, False, 0), (1, True, 2)],
    ),
    series(
        "absent-field-no-level-and-resets-the-timers",
        RATIO_RULE,
        [
            (0, 0.5, 0),
            (300, None, None),  # no actual: no ratio, no level, clocks stopped
            (600, 0.5, 0),  # would be 2 had the clocks kept running from t=0
            (1199, 0.5, 0),
            (1200, 0.5, 2),
        ],
        ratio,
    ),
    series(
        "rule-on-rate-absent-on-first-poll",
        rule("swap_out_bytes_per_second", warn=MiB, for_seconds=0),
        [(0, 0, None), (10, 20 * MiB, 1), (20, 20 * MiB, 0)],
        lambda total: {"swap_out_bytes_total": total},
    ),
    series(
        "stuck-rule-uses-the-stage-flag",
        rule("stuck", warn=1),
        [(0, 10.0, 0), (299, 10.0, 0), (300, 10.0, 1), (310, 0.0, 0)],
        lambda p: gap(float(p)),
        STUCK,
    ),
    series(
        "stuck-rule-no-level-without-target",
        rule("stuck", warn=1),
        [(0, 0.3, None), (600, 0.3, None)],
        ratio,
        STUCK,
    ),
    series(
        "stale-rule-uses-the-stage-flag",
        rule("stale", warn=1),
        [(0, 5.0, 0), (10, 61.0, 1), (20, 1.0, 0)],
        lambda age: aged(float(age)),
    ),
    series(
        "stale-rule-no-level-without-age",
        rule("stale", warn=1),
        [(0, 0.0, None)],
        lambda _: vm(actual=0),
    ),
]


@pytest.mark.parametrize("case", THRESHOLD_CASES, ids=lambda c: c.id)
def test_thresholds(case: Case) -> None:
    run_case(case)


MULTI_RULES = (
    rule("balloon_ratio", warn=0.2, crit=0.4),
    rule("inflation_blocked", crit=1),
    rule(AVAIL, warn=512 * MiB, below=True),
    rule("swap_out_bytes_per_second", warn=MiB, crit=10 * MiB),
)

MULTI_CASES = [
    Case(
        "alert-level-is-the-max-of-the-levels-on-the-line",
        [
            one(
                0,
                vm(actual=pct(30), inflation_blocked=True, guest_available_bytes=GiB),
                balloon_ratio_level=1,
                inflation_blocked_level=2,
                guest_available_bytes_level=0,
                swap_out_bytes_per_second_level=ABSENT,
                alert_level=2,
            ),
            one(
                1,
                vm(actual=pct(30), inflation_blocked=False, guest_available_bytes=GiB),
                balloon_ratio_level=1,
                inflation_blocked_level=0,
                alert_level=1,
            ),
            one(
                2,
                vm(actual=pct(1), guest_available_bytes=GiB),
                balloon_ratio_level=0,
                inflation_blocked_level=ABSENT,
                alert_level=0,
            ),
            one(
                3,
                vm(actual=pct(1), guest_available_bytes=100 * MiB),
                guest_available_bytes_level=1,
                alert_level=1,
            ),
        ],
        rules=MULTI_RULES,
    ),
    Case(
        "alert-level-zero-when-no-rule-field-is-on-the-line",
        [one(0, {"guest_free_bytes": 1}, alert_level=0, balloon_ratio_level=ABSENT)],
        rules=MULTI_RULES,
    ),
    Case(
        "host-rules-leave-vm-lines-alone",
        [one(0, vm(actual=pct(90)), alert_level=0, balloon_ratio_level=ABSENT)],
        rules=(rule("memory_max_bytes", warn=1, measurement=catalog.HOST),),
    ),
    Case(
        "each-vm-has-its-own-clocks",
        [
            Step(0, {"a": ratio(0.3), "b": ratio(0.0)}),
            Step(300, {"a": ratio(0.3), "b": ratio(0.3)}),
            Step(
                600,
                {"a": ratio(0.3), "b": ratio(0.3)},
                {"a": {"balloon_ratio_level": 1}, "b": {"balloon_ratio_level": 0}},
            ),
            Step(
                900,
                {"a": ratio(0.3), "b": ratio(0.3)},
                {"a": {"balloon_ratio_level": 1}, "b": {"balloon_ratio_level": 1}},
            ),
        ],
        rules=(RATIO_RULE,),
    ),
]


@pytest.mark.parametrize("case", MULTI_CASES, ids=lambda c: c.id)
def test_several_rules(case: Case) -> None:
    run_case(case)


def test_two_rules_on_one_field_alert_level_matches_the_levels_on_the_line() -> None:
    """alert_level is the highest <field>_level on the line (README, Health).

    config.load_text accepts two rules on one field (say an immediate warn at 50% next to
    the sample's 20%/40% for 10m); both write balloon_ratio_level, so the line must carry
    the higher of the two, not the last one's (that said 0 next to alert_level=1).
    """
    config = load(
        """
        [[thresholds]]
        field = "balloon_ratio"
        warn = 0.5
        [[thresholds]]
        field = "balloon_ratio"
        warn = 0.2
        crit = 0.4
        for = "10m"
        """
    )
    health = Health(config.health, config.thresholds)
    for t, value, level in ((0, 0.6, 1), (300, 0.3, 0), (600, 0.6, 1), (1200, 0.6, 2)):
        fields = ratio(value)
        health.vms(INSTANCE, [("vm", fields)], T0 + t)
        assert fields["balloon_ratio_level"] == level, (t, fields)
        assert fields["alert_level"] == level, (t, fields)


# --- state ------------------------------------------------------------------------------------
#
# A VM missing from a poll (a busy QMP monitor, a late libvirt slice) keeps its state for up
# to GRACE_POLLS polls of its source; missing from one more, it is freed. Across a skipped
# poll a rate is the growth over the real time between the polls that saw the VM, and a
# `since` clock runs on: nothing showed the condition clear.

GRACE = GRACE_POLLS
EVERY = 60.0  # seconds between polls in the cases below


def skipping(
    name: str,
    skipped: Sequence[float],
    level_from: float,
    fresh: Sequence[float] = (0.0,),
    until: float = 1200.0,
) -> Case:
    """VM `a` at 30% ballooned, swapping out 100 B/s, polled every minute but at `skipped`.

    `b` keeps the source answering when `a` is missing. Expected on each line of `a`:
    balloon_ratio_level 1 from `level_from` on (RATIO_RULE: 10 minutes), a rate but at `fresh`
    (a first sighting: no baseline).
    """
    steps = []
    t = 0.0
    while t <= until:
        if t in skipped:
            steps.append(Step(t, {"b": ratio(0.0)}))
        else:
            level = 1 if t >= level_from else 0
            rate: Expected = ABSENT if t in fresh else 100.0
            steps.append(
                Step(
                    t,
                    {"a": ratio(0.3) | swaps(0, int(100 * t)), "b": ratio(0.0)},
                    {"a": {"balloon_ratio_level": level, OUT: rate}},
                )
            )
        t += EVERY
    return Case(name, steps, rules=(RATIO_RULE,))


STATE_CASES = [
    skipping("never-skipped-level-at-10-minutes", (), level_from=600),
    skipping("skipped-once-level-still-at-10-minutes-rate-across-the-gap", (300,), 600),
    skipping("skipped-twice-level-still-at-10-minutes", (300, 360), 600),
    skipping("skipped-every-other-poll-level-still-at-10-minutes", (60, 180, 300, 420, 540), 600),
    skipping("skipped-at-the-due-poll-level-on-the-next-line", (600,), 660),
    skipping(
        "skipped-for-the-whole-grace-still-kept", tuple(300 + EVERY * i for i in range(GRACE)), 600
    ),
    skipping(
        "skipped-beyond-the-grace-forgotten-clocks-and-rates-restart",
        tuple(300 + EVERY * i for i in range(GRACE + 1)),
        level_from=300 + EVERY * (GRACE + 1) + 600,
        fresh=(0.0, 300 + EVERY * (GRACE + 1)),
        until=1800.0,
    ),
    Case(
        "a-clear-seen-after-a-skip-restarts-the-clock",
        [
            one(0, ratio(0.3), balloon_ratio_level=0),
            Step(60, {}),
            one(120, ratio(0.1), balloon_ratio_level=0),
            one(180, ratio(0.3), balloon_ratio_level=0),
            Step(240, {}),
            one(779, ratio(0.3), balloon_ratio_level=0),
            one(780, ratio(0.3), balloon_ratio_level=1),
        ],
        rules=(RATIO_RULE,),
    ),
    Case(
        "a-missing-field-on-a-line-is-no-skip-it-clears",
        [
            one(0, ratio(0.3), balloon_ratio_level=0),
            one(60, vm(), balloon_ratio_level=ABSENT),
            one(600, ratio(0.3), balloon_ratio_level=0),
            one(1200, ratio(0.3), balloon_ratio_level=1),
        ],
        rules=(RATIO_RULE,),
    ),
    Case(
        "stuck-clock-runs-on-across-a-skipped-poll",
        [
            one(0, gap(10), stuck=False),
            Step(100, {}),
            Step(200, {}),
            one(299, gap(10), stuck=False),
            one(300, gap(10), stuck=True),
        ],
        STUCK,
    ),
    Case(
        "stuck-clock-restarts-for-a-vm-back-after-the-grace",
        [
            one(0, gap(10), stuck=False),
            *(Step(10 + i, {}) for i in range(GRACE + 1)),
            one(300, gap(10), stuck=False),
            one(599, gap(10), stuck=False),
            one(600, gap(10), stuck=True),
        ],
        STUCK,
    ),
    Case(
        "same-key-in-two-instances-keeps-separate-state",
        [
            Step(0, {"vm": swaps(0, 0)}, instance="a"),
            Step(0, {"vm": swaps(0, 50_000)}, instance="b"),
            Step(10, {"vm": swaps(0, 1000)}, {"vm": {OUT: 100.0}}, instance="a"),
            Step(10, {"vm": swaps(0, 50_500)}, {"vm": {OUT: 50.0}}, instance="b"),
            # b's VM leaves for longer than the grace; a's must not be forgotten
            *(Step(20 + i, {}, instance="b") for i in range(GRACE + 1)),
            Step(30, {"vm": swaps(0, 3000)}, {"vm": {OUT: 100.0}}, instance="a"),
            Step(30, {"vm": swaps(0, 50_600)}, {"vm": {OUT: ABSENT}}, instance="b"),
        ],
    ),
    Case(
        "same-key-in-two-instances-separate-threshold-clocks",
        [
            Step(0, {"vm": ratio(0.3)}, instance="a"),
            Step(300, {"vm": ratio(0.3)}, instance="b"),
            Step(600, {"vm": ratio(0.3)}, {"vm": {"balloon_ratio_level": 1}}, instance="a"),
            Step(600, {"vm": ratio(0.3)}, {"vm": {"balloon_ratio_level": 0}}, instance="b"),
            Step(900, {"vm": ratio(0.3)}, {"vm": {"balloon_ratio_level": 1}}, instance="b"),
        ],
        rules=(RATIO_RULE,),
    ),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: c.id)
def test_state(case: Case) -> None:
    run_case(case)


def test_tracked_frees_a_vm_missing_beyond_the_grace() -> None:
    health = Health(HealthConfig(), (RATIO_RULE,))
    health.vms("a", [("1", ratio(0.3)), ("2", ratio(0.3))], T0)
    health.vms("b", [("1", ratio(0.3))], T0)
    assert health.tracked() == 3
    for n in range(GRACE):  # a's VM 1 and b's VM 1 missing, within the grace: kept
        health.vms("a", [("2", ratio(0.3))], T0 + 10 * (n + 1))
        health.vms("b", [], T0 + 10 * (n + 1))
        assert health.tracked() == 3
    health.vms("a", [("2", ratio(0.3))], T0 + 100)
    assert health.tracked() == 2  # a's VM 1: one poll beyond the grace
    health.vms("b", [], T0 + 100)
    assert health.tracked() == 1
    for n in range(GRACE + 1):
        health.vms("a", [], T0 + 200 + n)
    assert health.tracked() == 0


def test_a_poll_the_source_did_not_answer_counts_toward_the_grace() -> None:
    """Health.missed: the runner's word for a source that did not answer (VMs and hosts)."""
    rules = (
        RATIO_RULE,
        rule("reclaimed_ratio", warn=0.2, for_seconds=600, measurement="balloon_host"),
    )
    health = Health(HealthConfig(), rules)
    health.vms("a", [("vm", ratio(0.3) | swaps(0, 0))], T0)
    health.hosts("a", [("kvm1", {"reclaimed_ratio": 0.3})], T0)
    for n in range(GRACE):
        health.missed("a")
        assert health.tracked() == 2, n
    line = ratio(0.3) | swaps(0, 60_000)
    health.vms("a", [("vm", line)], T0 + 600)  # back within the grace: on time, rate across
    host: Fields = {"reclaimed_ratio": 0.3}
    health.hosts("a", [("kvm1", host)], T0 + 600)
    assert line["balloon_ratio_level"] == 1 and line[OUT] == 100.0
    assert host["reclaimed_ratio_level"] == 1
    for _ in range(GRACE + 1):
        health.missed("a")
    assert health.tracked() == 0  # an outage longer than the grace frees everything
    line = ratio(0.3) | swaps(0, 90_000)
    health.vms("a", [("vm", line)], T0 + 1200)
    assert line["balloon_ratio_level"] == 0 and OUT not in line
    health.missed("never-polled")  # no state, nothing to count: no error


def test_explain_reads_the_state_of_a_vm_within_its_grace() -> None:
    health = Health(STUCK, (RATIO_RULE,))
    health.vms(INSTANCE, [("vm", gap(10))], T0)
    health.vms(INSTANCE, [], T0 + 100)
    assert health.stuck_held(INSTANCE, "vm", T0 + 200) == 200.0
    (standing,) = health.vm_rules_now(INSTANCE, "vm", T0 + 200)
    assert standing.raw == 0 and standing.level == 0
    assert health.stuck_held("other", "vm", T0) == 0.0


def libvirt_like(i: int, rng: random.Random, tick: int = 0) -> Fields:
    maximum = (1 + i % 8) * GiB
    actual = rng.randrange(0, maximum // 2)
    return {
        "memory_max_bytes": maximum,
        "memory_current_bytes": maximum - actual,
        "balloon_actual_bytes": actual,
        "guest_available_bytes": rng.randrange(0, maximum),
        "swap_in_bytes_total": i * 1000 + tick * 100,
        "swap_out_bytes_total": i * 1000 + tick * 1000 + rng.randrange(1000),
        "stats_age_seconds": float(rng.randrange(0, 120)),
        "stats_period_seconds": 10,
        "inflation_blocked": i % 97 == 0,
    }


def test_state_is_bounded_by_the_vms_seen_within_the_grace() -> None:
    """10,000 VMs, then 12 polls with a random half: state only for VMs seen lately."""
    rng = random.Random(20240501)
    config = load_text(SAMPLE_TOML.read_text(encoding="utf-8"), str(SAMPLE_TOML), environ={})
    health = Health(config.health, config.thresholds)
    sizes = {"big": 10_000, "small": 300}
    everyone = {inst: [f"{inst}-{i}" for i in range(n)] for inst, n in sizes.items()}
    last_seen: dict[tuple[str, str], int] = {}
    now = T0
    for inst, keys in everyone.items():
        health.vms(inst, [(k, libvirt_like(i, rng)) for i, k in enumerate(keys)], now)
        last_seen.update(((inst, k), 0) for k in keys)
    assert health.tracked() == sum(sizes.values())
    for tick in range(1, 13):
        now += 10.0
        chance = 0.5 if tick < 8 else 0.1  # then most VMs miss more polls than the grace
        for inst, keys in everyone.items():
            present = {k for k in keys if rng.random() < chance}
            items = [(k, libvirt_like(i, rng, tick)) for i, k in enumerate(keys) if k in present]
            health.vms(inst, items, now)
            for key, fields in items:
                seen = last_seen.get((inst, key))
                # Back within the grace: a rate across the gap; beyond it: afresh, no rate.
                assert (OUT in fields) == (seen is not None and tick - seen <= GRACE + 1), key
                last_seen[inst, key] = tick
        for ident in [i for i, seen in last_seen.items() if tick - seen > GRACE]:
            del last_seen[ident]
        assert health.tracked() == len(last_seen)


# --- state: a property over random poll sequences ---------------------------------------------
#
# What "held continuously" means across skipped polls, as health.py defines it: a condition
# holds at a poll that saw the VM and showed it; it has held continuously since the first
# poll of a run of such polls in which no poll that saw the VM showed it clear and no two
# were further apart than GRACE missed polls (beyond that the state is freed). A level rises
# on the first line at least `for` after that first poll, and is on every line after.

SEEN, SKIPPED, DOWN = "seen", "skipped", "down"  # the VM on the line; missing; source down

poll_steps = st.lists(
    st.tuples(
        st.sampled_from([SEEN, SEEN, SEEN, SKIPPED, DOWN]),
        st.sampled_from([0.1, 0.2, 0.3, 0.4, 0.5]),  # balloon_ratio: warn 0.2, crit 0.4
        st.sampled_from([0.0, 0.05, 0.1]),  # gap / max: stuck beyond 0.05
        st.integers(0, 10**6),  # swap-out bytes since the previous poll
    ),
    min_size=1,
    max_size=40,
)


def held_since(polls: Sequence[tuple[str, bool]], k: int) -> Optional[int]:
    """The first poll of the run the condition has held continuously in up to poll k.

    `polls`: (presence, condition) per poll. None when it does not hold at k.
    """
    presence, holds = polls[k]
    if presence != SEEN or not holds:
        return None
    since, missed = k, 0
    for j in range(k - 1, -1, -1):
        presence, holds = polls[j]
        if presence != SEEN:
            missed += 1
            continue
        if missed > GRACE or not holds:
            break
        since, missed = j, 0
    return since


@settings(max_examples=300, deadline=None)
@given(
    steps=poll_steps,
    interval=st.sampled_from([1.0, 10.0, 30.0, 60.0]),
    for_polls=st.sampled_from([0.0, 1.0, 2.5, 5.0, 10.0]),
)
def test_levels_rise_for_after_the_condition_began_holding_across_skipped_polls(
    steps: list[tuple[str, float, float, int]], interval: float, for_polls: float
) -> None:
    for_seconds = for_polls * interval
    stuck_for = 3 * interval
    config = HealthConfig(stuck_gap_ratio=0.05, stuck_for=stuck_for)
    health = Health(config, (rule("balloon_ratio", warn=0.2, crit=0.4, for_seconds=for_seconds),))
    times = [T0 + k * interval for k in range(len(steps))]
    counter = 0
    seen_at: list[Optional[dict[str, FieldValue]]] = []
    for k, (presence, value, gap_ratio, growth) in enumerate(steps):
        counter += growth
        fields = vm(actual=pct(value * 100), target=pct(value * 100 + gap_ratio * 100))
        fields["swap_out_bytes_total"] = counter
        if presence == SEEN:
            health.vms(INSTANCE, [("vm", fields), ("other", vm())], times[k])
            seen_at.append(fields)
        elif presence == SKIPPED:
            health.vms(INSTANCE, [("other", vm())], times[k])
            seen_at.append(None)
        else:
            health.missed(INSTANCE)
            seen_at.append(None)

    warn = [(p, v >= 0.2) for p, v, _, _ in steps]
    crit = [(p, v >= 0.4) for p, v, _, _ in steps]
    stuck = [(p, g > 0.05) for p, _, g, _ in steps]
    previous: Optional[int] = None  # the last poll that saw the VM, while its state is kept
    for k, line in enumerate(seen_at):
        if line is None:
            continue
        now = times[k]
        expected = 0
        for level, polls in ((1, warn), (2, crit)):
            since = held_since(polls, k)
            # Never earlier than `for` after the poll the condition began holding at, and on
            # every line once `for` has passed (at most one interval after it truly began).
            if since is not None and now - times[since] >= for_seconds:
                expected = level
        assert line["balloon_ratio_level"] == expected, (k, steps)
        since = held_since(stuck, k)
        assert line["stuck"] is (since is not None and now - times[since] >= stuck_for), k
        # A rate across skipped polls is the growth over the real time since the VM was seen.
        if previous is not None and k - previous - 1 > GRACE:
            previous = None  # its state was freed: no baseline
        if previous is None:
            assert OUT not in line, k
        else:
            grown = sum(g for _, _, _, g in steps[previous + 1 : k + 1])
            assert line[OUT] == pytest.approx(grown / (now - times[previous]), rel=1e-12), k
        previous = k


def test_the_definition_of_held_continuously() -> None:
    """The test's own model, on hand-made sequences (GRACE missed polls are no break)."""
    s, x, d = SEEN, SKIPPED, DOWN
    assert held_since([(s, True), (x, False), (s, True)], 2) == 0  # an absence is no clear
    assert held_since([(s, True), (s, False), (s, True)], 2) == 2  # a clear seen is
    assert held_since([(s, True), *[(d, True)] * GRACE, (s, True)], GRACE + 1) == 0
    assert held_since([(s, True), *[(x, True)] * (GRACE + 1), (s, True)], GRACE + 2) == GRACE + 2
    assert held_since([(s, True), (x, True)], 1) is None  # no line, no level


# --- host lines -------------------------------------------------------------------------------

vm_fields = st.fixed_dictionaries(
    {},
    optional={
        "memory_max_bytes": st.integers(0, 2**40),
        "balloon_actual_bytes": st.integers(0, 2**39),
        "balloon_target_bytes": st.integers(0, 2**39),
        "stuck": st.booleans(),
        "stale": st.booleans(),
        "inflation_blocked": st.booleans(),
        "swap_out_bytes_total": st.integers(0, 2**40),
        "thp_mode": st.sampled_from(["always", "madvise", "never"]),
    },
)
host_names = st.sampled_from(["kvm1", "kvm2", "kvm3"])


def expected_sums(vms: Sequence[Fields]) -> dict[str, FieldValue]:
    def total(name: str) -> int:
        return sum(int(v.get(name, 0)) for v in vms)

    out: dict[str, FieldValue] = {
        "vms_total": len(vms),
        "vms_ballooned": sum(1 for v in vms if int(v.get("balloon_actual_bytes", 0)) > 0),
        "vms_stuck": sum(1 for v in vms if v.get("stuck") is True),
        "vms_stale": sum(1 for v in vms if v.get("stale") is True),
        "vms_blocked": sum(1 for v in vms if v.get("inflation_blocked") is True),
        "memory_max_bytes": total("memory_max_bytes"),
        "balloon_actual_bytes": total("balloon_actual_bytes"),
    }
    if vms and all("balloon_target_bytes" in v for v in vms):
        out["balloon_target_bytes"] = total("balloon_target_bytes")
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(host_names, vm_fields), max_size=40),
    st.lists(host_names, min_size=1, max_size=3, unique=True),
    st.integers(1, 2**42),
)
def test_host_sums_equal_the_vm_lines(
    vms: list[tuple[str, Fields]], described: list[str], memory: int
) -> None:
    samples = [
        Sample(f"vm{i}", {"host": host, "guest": f"vm{i}", "source": "libvirt"}, fields)
        for i, (host, fields) in enumerate(vms)
    ]
    infos = [
        HostInfo({"host": h, "hypervisor": "kvm", "source": "libvirt"}, memory, 7)
        for h in described
    ]
    lines = host_lines(samples, infos)
    seen = {host for host, _ in vms}  # a described host with no VM gets no line
    assert [tags["host"] for tags, _ in lines] == [h for h in described if h in seen]
    for tags, fields in lines:
        mine = [f for h, f in vms if h == tags["host"]]
        want = expected_sums(mine)
        got = {k: v for k, v in fields.items() if k in want or k == "balloon_target_bytes"}
        assert got == want
        assert fields["host_memory_bytes"] == memory
        assert fields["host_free_bytes"] == 7
        promised, ballooned = want["memory_max_bytes"], want["balloon_actual_bytes"]
        assert isinstance(promised, int) and isinstance(ballooned, int)
        assert fields["overcommit_ratio"] == pytest.approx(promised / memory)
        assert fields["reclaimed_ratio"] == pytest.approx(ballooned / memory)
        assert not catalog.check_point(catalog.HOST, tags, dict(fields))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(host_names, vm_fields), max_size=30))
def test_host_counts_follow_the_judged_vm_lines(vms: list[tuple[str, Fields]]) -> None:
    """Run as the runner does: health.vms first, then the sums see the stage's flags."""
    health = Health(HealthConfig(stuck_for=0.0, stale_after=30.0))
    samples = [
        Sample(f"vm{i}", {"host": host}, dict(fields, stats_age_seconds=float(i * 7 % 60)))
        for i, (host, fields) in enumerate(vms)
    ]
    for s in samples:
        s.fields.pop("stuck", None)  # the stage decides
        s.fields.pop("stale", None)
    health.vms(INSTANCE, [(s.key, s.fields) for s in samples], T0)
    infos = [HostInfo({"host": h}, 64 * GiB) for h in ("kvm1", "kvm2", "kvm3")]
    for tags, fields in host_lines(samples, infos):
        mine = [s.fields for s in samples if s.tags["host"] == tags["host"]]
        assert fields["vms_stuck"] == sum(1 for f in mine if f.get("stuck") is True)
        assert fields["vms_stale"] == sum(1 for f in mine if f.get("stale") is True)
        assert fields["vms_total"] == len(mine)


def host_vm(host: str, maximum: int, actual: int, target: Optional[int] = None) -> Sample:
    return Sample(host + str(maximum + actual), {"host": host}, vm(actual, target, maximum))


def single_host(samples: list[Sample], info: HostInfo) -> Fields:
    lines = host_lines(samples, [info])
    assert len(lines) == 1
    return lines[0][1]


def test_host_ratios() -> None:
    fields = single_host(
        [host_vm("k", 16 * GiB, 4 * GiB), host_vm("k", 48 * GiB, 0)],
        HostInfo({"host": "k"}, 32 * GiB, 3 * GiB),
    )
    check_fields(
        "host",
        fields,
        {
            "memory_max_bytes": 64 * GiB,
            "balloon_actual_bytes": 4 * GiB,
            "host_memory_bytes": 32 * GiB,
            "host_free_bytes": 3 * GiB,
            "overcommit_ratio": 2.0,
            "reclaimed_ratio": 0.125,
            "vms_total": 2,
            "vms_ballooned": 1,
            "balloon_target_bytes": ABSENT,
        },
    )


def test_host_target_sum_only_when_every_vm_has_one() -> None:
    info = HostInfo({"host": "k"}, 32 * GiB)
    both = single_host([host_vm("k", GiB, 0, 100), host_vm("k", GiB, 0, 50)], info)
    assert both["balloon_target_bytes"] == 150
    some = single_host([host_vm("k", GiB, 0, 100), host_vm("k", GiB, 0)], info)
    assert "balloon_target_bytes" not in some


def test_host_without_physical_memory_has_no_ratios() -> None:
    unknown = single_host([host_vm("k", GiB, 10)], HostInfo({"host": "k"}))
    assert "host_memory_bytes" not in unknown and "host_free_bytes" not in unknown
    assert "overcommit_ratio" not in unknown and "reclaimed_ratio" not in unknown
    zero = single_host([host_vm("k", GiB, 10)], HostInfo({"host": "k"}, 0))
    assert "overcommit_ratio" not in zero and "reclaimed_ratio" not in zero


def test_host_with_no_vms_has_no_line() -> None:
    """One line per host per source poll that saw a VM there: another source on the same
    machine that sees its VMs speaks for it, and sums count the machine once."""
    info = HostInfo({"host": "k"}, GiB, GiB // 2)
    info.ecc_uncorrected_total = 3  # host facts alone make no line either
    assert host_lines([host_vm("other", GiB, 1)], [info]) == []
    assert host_lines([], [info]) == []


def test_no_host_line_without_host_info() -> None:
    assert host_lines([host_vm("k", GiB, 10)], []) == []
    assert host_lines([], []) == []


def poll_host(health: Health, t: float, reclaimed: float) -> Fields:
    """One source poll of one host with 64 GiB physical and VMs holding `reclaimed` of it."""
    samples = [host_vm("kvm1", 32 * GiB, round(64 * GiB * reclaimed / 2)) for _ in range(2)]
    health.vms(INSTANCE, [(f"vm{i}", s.fields) for i, s in enumerate(samples)], T0 + t)
    lines = host_lines(samples, [HostInfo({"host": "kvm1"}, 64 * GiB)])
    health.hosts(INSTANCE, [(tags["host"], fields) for tags, fields in lines], T0 + t)
    return lines[0][1]


def test_host_threshold_rises_after_for_only() -> None:
    rules = (
        rule("reclaimed_ratio", warn=0.2, for_seconds=600, measurement=catalog.HOST),
        rule("balloon_ratio", warn=0.01),  # a VM rule: no level on the host line
    )
    health = Health(HealthConfig(), rules)
    expected = [(0, 0.25, 0), (300, 0.25, 0), (599, 0.25, 0), (600, 0.25, 1), (900, 0.3, 1)]
    expected += [(910, 0.1, 0), (920, 0.25, 0), (1520, 0.25, 1)]
    for t, reclaimed, level in expected:
        fields = poll_host(health, t, reclaimed)
        assert fields["reclaimed_ratio"] == pytest.approx(reclaimed)
        assert fields["reclaimed_ratio_level"] == level, t
        assert fields["alert_level"] == level
        assert "balloon_ratio_level" not in fields
    assert health.tracked() == 2 + 1  # two VMs and one host


def test_host_alert_level_zero_without_host_rules() -> None:
    health = Health(HealthConfig(), (rule("balloon_ratio", warn=0.01),))
    fields = poll_host(health, 0, 0.5)
    assert fields["alert_level"] == 0
    assert not [k for k in fields if k.endswith("_level") and k != "alert_level"]


def poll_ecc(
    health: Health, t: float, corrected: Optional[int], uncorrected: Optional[int]
) -> Fields:
    """One source poll of one host (one VM on it) whose EDAC counters read these totals
    (None: no EDAC)."""
    info = HostInfo({"host": "kvm1"}, 64 * GiB, None, corrected, uncorrected)
    lines = host_lines([host_vm("kvm1", GiB, 0)], [info])
    health.hosts(INSTANCE, [(tags["host"], fields) for tags, fields in lines], T0 + t)
    return lines[0][1]


def test_ecc_new_errors_are_the_growth_since_the_previous_poll() -> None:
    health = Health(HealthConfig(), SAMPLE.thresholds)
    first = poll_ecc(health, 0, 5, 2)
    # no baseline yet: errors counted before the plugin started are not "new"
    assert "ecc_uncorrected_new" not in first and "ecc_corrected_new" not in first
    assert first["ecc_uncorrected_total"] == 2 and first["alert_level"] == 0
    assert "ecc_uncorrected_new_level" not in first
    steady = poll_ecc(health, 10, 5, 2)
    assert (steady["ecc_corrected_new"], steady["ecc_uncorrected_new"]) == (0, 0)
    assert steady["ecc_uncorrected_new_level"] == 0 and steady["alert_level"] == 0
    moved = poll_ecc(health, 20, 9, 3)
    assert (moved["ecc_corrected_new"], moved["ecc_uncorrected_new"]) == (4, 1)
    assert moved["ecc_uncorrected_new_level"] == 2 and moved["alert_level"] == 2
    # the shipped rule watches new uncorrected errors only: it falls once none are new
    quiet = poll_ecc(health, 30, 12, 3)
    assert (quiet["ecc_corrected_new"], quiet["ecc_uncorrected_new"]) == (3, 0)
    assert quiet["alert_level"] == 0
    # a counter that went down was reset: what it holds now is new since the last poll
    reset = poll_ecc(health, 40, 1, 2)
    assert (reset["ecc_corrected_new"], reset["ecc_uncorrected_new"]) == (1, 2)
    assert reset["alert_level"] == 2
    for fields in (first, steady, moved, quiet, reset):
        assert catalog.check_point(catalog.HOST, {"host": "kvm1"}, dict(fields)) == []


def test_ecc_new_absent_without_edac() -> None:
    health = Health(HealthConfig(), SAMPLE.thresholds)
    for t in (0, 10):
        fields = poll_ecc(health, t, None, None)
        assert not [name for name in fields if name.startswith("ecc_")]
        assert fields["alert_level"] == 0


# --- thresholds from TOML ---------------------------------------------------------------------


def load(toml: str) -> Config:
    return load_text('[[sources.guest]]\nroot = "/"\n' + toml, "test.toml", environ={})


def sample_config() -> Config:
    return load_text(SAMPLE_TOML.read_text(encoding="utf-8"), str(SAMPLE_TOML), environ={})


def test_sample_config_rules_are_what_its_comments_say() -> None:
    config = sample_config()
    assert config.health == HealthConfig(stuck_gap_ratio=0.05, stuck_for=300.0, stale_after=None)
    assert config.thresholds == (
        rule("balloon_ratio", warn=0.2, crit=0.4, for_seconds=600),
        rule("stuck", warn=1),
        rule("vmem_stuck", warn=1),
        rule("stale", warn=1),
        rule("swap_out_bytes_per_second", warn=MiB, crit=10 * MiB, for_seconds=300),
        rule("reclaimed_ratio", warn=0.2, for_seconds=600, measurement=catalog.HOST),
        rule("ecc_uncorrected_new", crit=1, measurement=catalog.HOST),
        rule("guest_agent_latency_seconds", warn=0.5, for_seconds=300),
        rule("host_swapped_bytes_per_second", crit=1),
        rule("host_swap_out_bytes_per_second", crit=1, measurement=catalog.HOST),
        rule("host_memory_stall_ratio", warn=0.1, crit=0.4, for_seconds=120),
        rule("guest_memory_stall_ratio", warn=0.1, crit=0.4, for_seconds=120),
    )


SAMPLE = sample_config()


def sample_case(name: str, steps: Sequence[Step]) -> Case:
    return Case(name, steps, SAMPLE.health, SAMPLE.thresholds)


SAMPLE_CASES = [
    # 45% is beyond crit (40%) from the start: both the warn and the crit condition have
    # held since t=0, so nothing rises before 10 min, and then straight to critical.
    sample_case(
        "vm-at-45-percent",
        [
            one(0, ratio(0.45), balloon_ratio_level=0, alert_level=0),
            one(540, ratio(0.45), balloon_ratio_level=0, alert_level=0),  # 9 min: still 0
            one(599, ratio(0.45), balloon_ratio_level=0),
            one(600, ratio(0.45), balloon_ratio_level=2, alert_level=2),
            one(610, ratio(0.30), balloon_ratio_level=1, alert_level=1),
            one(620, ratio(0.10), balloon_ratio_level=0, alert_level=0),
        ],
    ),
    sample_case(
        "vm-at-30-then-45-percent",
        [
            one(0, ratio(0.30), balloon_ratio_level=0),
            one(600, ratio(0.30), balloon_ratio_level=1),
            one(660, ratio(0.45), balloon_ratio_level=1),  # crit's own 10 min start now
            one(1259, ratio(0.45), balloon_ratio_level=1),
            one(1260, ratio(0.45), balloon_ratio_level=2),
        ],
    ),
    sample_case(
        "stuck-after-5-min-warns-at-once",  # the stuck rule has no `for` of its own
        [
            one(0, gap(10), stuck=False, stuck_level=0, alert_level=0),
            one(299, gap(10), stuck=False, stuck_level=0),
            one(300, gap(10), stuck=True, stuck_level=1, alert_level=1),
            one(310, gap(0), stuck=False, stuck_level=0, alert_level=0),
        ],
    ),
    sample_case(
        "stale-warns-at-once",
        [
            one(0, aged(5.0, 10), stale=False, stale_level=0, alert_level=0),
            one(10, aged(61.0, 10), stale=True, stale_level=1, alert_level=1),
            one(20, aged(61.0, 30), stale=False, stale_level=0),  # period 30: limit 90 s
        ],
    ),
    sample_case(
        "libvirt-vm-without-target-or-age-has-no-stuck-or-stale-level",
        [one(0, vm(actual=0), stuck_level=ABSENT, stale_level=ABSENT, alert_level=0)],
    ),
    sample_case(
        "swap-out-2-then-20-mib-per-second",
        [
            one(0, swaps(0, 0), swap_out_bytes_per_second_level=ABSENT),
            one(10, swaps(0, 20 * MiB), **{OUT: 2.0 * MiB, OUT + "_level": 0}),
            one(300, swaps(0, 600 * MiB), **{OUT: 2.0 * MiB, OUT + "_level": 0}),
            one(310, swaps(0, 620 * MiB), **{OUT: 2.0 * MiB, OUT + "_level": 1}),
            one(320, swaps(0, 820 * MiB), **{OUT: 20.0 * MiB, OUT + "_level": 1}),
            one(619, swaps(0, 6800 * MiB), **{OUT + "_level": 1}),
            one(620, swaps(0, 6820 * MiB), **{OUT: 20.0 * MiB, OUT + "_level": 2}),
            one(630, swaps(0, 6820 * MiB), **{OUT: 0.0, OUT + "_level": 0}),
            one(640, swaps(0, 10), **{OUT: ABSENT, OUT + "_level": ABSENT}),  # reboot
            one(650, swaps(0, 200 * MiB + 10), **{OUT: 20.0 * MiB, OUT + "_level": 0}),
        ],
    ),
    sample_case(
        "exactly-1-mib-per-second-counts",
        [
            one(0, swaps(0, 0)),
            one(300, swaps(0, 300 * MiB), **{OUT: float(MiB), OUT + "_level": 0}),
            one(600, swaps(0, 600 * MiB), **{OUT: float(MiB), OUT + "_level": 1}),
        ],
    ),
]


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=lambda c: c.id)
def test_sample_config_rules(case: Case) -> None:
    run_case(case)


def test_sample_config_host_rule() -> None:
    health = Health(SAMPLE.health, SAMPLE.thresholds)
    assert [poll_host(health, t, 0.25)["reclaimed_ratio_level"] for t in (0, 599, 600)] == [0, 0, 1]
    assert poll_host(health, 610, 0.1)["reclaimed_ratio_level"] == 0


TOML_CASES = [
    Case(
        "toml-below-rule-with-compound-duration",
        [
            one(0, {AVAIL: 100 * MiB}, guest_available_bytes_level=0),
            one(89, {AVAIL: 100 * MiB}, guest_available_bytes_level=0),
            one(90, {AVAIL: 100 * MiB}, guest_available_bytes_level=2),
            one(91, {AVAIL: 200 * MiB}, guest_available_bytes_level=1),
            one(92, {AVAIL: 2 * GiB}, guest_available_bytes_level=0),
        ],
        rules=load(
            f"""
            [[thresholds]]
            field = "guest_available_bytes"
            below = true
            warn = {256 * MiB}
            crit = {128 * MiB}
            for = "1m30s"
            """
        ).thresholds,
    ),
    Case(
        "toml-crit-only-boolean-and-warn-only",
        [
            one(
                0,
                vm(actual=pct(50), inflation_blocked=True),
                inflation_blocked_level=2,
                balloon_ratio_level=1,
                alert_level=2,
            ),
            one(
                1,
                vm(actual=pct(99), inflation_blocked=False),
                inflation_blocked_level=0,
                balloon_ratio_level=1,
                alert_level=1,
            ),
        ],
        rules=load(
            """
            [[thresholds]]
            field = "inflation_blocked"
            crit = 1
            [[thresholds]]
            field = "balloon_ratio"
            warn = 0.5
            """
        ).thresholds,
    ),
    Case(
        "toml-health-section",
        [
            one(0, gap(2), stuck=False),
            one(60, gap(2), stuck=True),
            one(61, aged(10.5), stale=True),
        ],
        load(
            """
            [health]
            stuck_gap_ratio = 0.01
            stuck_for = "1m"
            stale_after = "10s"
            """
        ).health,
    ),
]


@pytest.mark.parametrize("case", TOML_CASES, ids=lambda c: c.id)
def test_rules_from_toml(case: Case) -> None:
    run_case(case)


def test_toml_host_rule_goes_to_host_lines() -> None:
    config = load(
        """
        [[thresholds]]
        measurement = "balloon_host"
        field = "reclaimed_ratio"
        warn = 0.2
        for = "10m"
        """
    )
    health = Health(config.health, config.thresholds)
    assert health.host_rules and not health.vm_rules
    levels = [poll_host(health, t, 0.3)["reclaimed_ratio_level"] for t in (0, 599.9, 600)]
    assert levels == [0, 0, 1]


# --- a source added later ---------------------------------------------------------------------


class ToySource:
    """A new kind of source: the health stage must judge it with no change of its own."""

    kind = "toy"

    def __init__(self, instance: str, gap_bytes: int = 2 * GiB) -> None:
        self.instance = instance
        self.gap_bytes = gap_bytes
        self.polls = 0
        self.present = True
        self.down = False
        self.lock = threading.Lock()

    def poll(self, now: float) -> PollResult:
        with self.lock:
            self.polls += 1
            n = self.polls
        if self.down:
            return PollResult(error="connection refused")
        if not self.present:
            return PollResult(hosts=[HostInfo({"host": "toyhost", "source": "toy"}, 16 * GiB)])
        fields: Fields = {
            "memory_max_bytes": 8 * GiB,
            "balloon_actual_bytes": GiB,
            "balloon_target_bytes": GiB + self.gap_bytes,
            "swap_out_bytes_total": n * 10 * MiB,
        }
        tags = {"host": "toyhost", "guest": "toy vm,1", "hypervisor": "test", "source": "toy"}
        return PollResult(
            samples=[Sample("toy-1", tags, fields)],
            hosts=[HostInfo({"host": "toyhost", "source": "toy"}, 16 * GiB, 4 * GiB)],
            api_latency_seconds=0.001,
        )

    def close(self) -> None:
        pass


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def parsed_poll(runner: Runner, out: io.BytesIO) -> list[dict[str, Any]]:
    start = out.tell()
    assert runner.poll()
    out.seek(start)
    text = out.read().decode()
    lines = [line_protocol_parser.parse_line(line) for line in text.splitlines()]
    for line in lines:
        assert not catalog.check_point(line["measurement"], line["tags"], line["fields"]), line
    return lines


def by_measurement(lines: list[dict[str, Any]], measurement: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["measurement"] == measurement]


class ToyRun:
    """The real runner over toy sources, on a clock the test sets (from T0)."""

    def __init__(self, sources: list[ToySource]) -> None:
        self.clock = FakeClock(T0)
        self.out = io.BytesIO()
        config = Config(path="toy", health=SAMPLE.health, thresholds=SAMPLE.thresholds)
        self.runner = Runner(
            config, sources, out=self.out, log=Log(io.StringIO()), hostname="h", clock=self.clock
        )

    def at(self, t: float) -> list[dict[str, Any]]:
        """One poll `t` seconds after T0: its lines, parsed."""
        self.clock.t = T0 + t
        return parsed_poll(self.runner, self.out)

    def vms_at(self, t: float) -> list[dict[str, Any]]:
        """One poll `t` seconds after T0: its balloon lines."""
        return by_measurement(self.at(t), catalog.BALLOON)


@contextlib.contextmanager
def toy_run(*sources: ToySource) -> Iterator[ToyRun]:
    run = ToyRun(list(sources))
    try:
        yield run
    finally:
        run.runner.close()


def test_a_new_source_kind_gets_rates_stuck_and_levels_through_the_runner() -> None:
    with toy_run(ToySource("toy://one")) as run:
        seen: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
        for t in (0.0, 10.0, 299.0, 300.0, 310.0, 600.0):
            lines = run.at(t)
            (vm_line,) = by_measurement(lines, catalog.BALLOON)
            (host_line,) = by_measurement(lines, catalog.HOST)
            (collector,) = by_measurement(lines, catalog.COLLECTOR)
            assert vm_line["time"] == host_line["time"] == int((T0 + t) * 1e9)
            assert vm_line["tags"]["source"] == collector["tags"]["source"] == "toy"
            assert collector["fields"]["up"] is True and collector["fields"]["vms"] == 1
            seen.append((t, vm_line["fields"], host_line["fields"]))
    by_t = {t: (v, h) for t, v, h in seen}
    v0, h0 = by_t[0.0]
    assert v0["balloon_ratio"] == 0.125 and v0["balloon_gap_bytes"] == 2 * GiB
    assert v0["stuck"] is False and v0["stuck_level"] == 0 and v0["alert_level"] == 0
    assert OUT not in v0 and OUT + "_level" not in v0
    assert h0["vms_total"] == 1 and h0["vms_stuck"] == 0 and h0["reclaimed_ratio"] == 1 / 16
    assert h0["reclaimed_ratio_level"] == 0 and h0["alert_level"] == 0
    v10, _ = by_t[10.0]
    assert v10[OUT] == float(MiB) and v10[OUT + "_level"] == 0  # at warn, but not for 5 min
    assert by_t[299.0][0]["stuck"] is False
    v300, h300 = by_t[300.0]
    assert v300["stuck"] is True and v300["stuck_level"] == 1 and v300["alert_level"] == 1
    assert h300["vms_stuck"] == 1 and h300["balloon_target_bytes"] == 3 * GiB
    assert by_t[600.0][1]["reclaimed_ratio_level"] == 0  # 6.25% < 20%


def test_a_new_source_kind_vm_that_leaves_is_forgotten_after_the_grace() -> None:
    toy = ToySource("toy://one")
    with toy_run(toy) as run:
        for t in (0.0, 300.0):
            (vm_line,) = run.vms_at(t)
        assert vm_line["fields"]["stuck"] is True
        toy.present = False
        for n in range(GRACE + 1):
            lines = run.at(310 + n)
            assert by_measurement(lines, catalog.BALLOON) == []
            assert by_measurement(lines, catalog.HOST) == []  # no VM there: no host line
            # the VM and its host keep their state within the grace, and are freed after it
            assert run.runner.health.tracked() == (2 if n < GRACE else 0), n
        toy.present = True
        (vm_line,) = run.vms_at(320)
        assert vm_line["fields"]["stuck"] is False and OUT not in vm_line["fields"]


def test_a_vm_missing_from_one_poll_keeps_its_stuck_clock_through_the_runner() -> None:
    toy = ToySource("toy://one")
    with toy_run(toy) as run:
        run.at(0)
        toy.present = False
        run.at(150)
        toy.present = True
        (vm_line,) = run.vms_at(300)
        assert vm_line["fields"]["stuck"] is True  # on time: 5 min after it was first seen
        assert vm_line["fields"][OUT] == 2 * 10 * MiB / 300  # two polls' growth over 300 s


def test_a_source_down_for_a_few_polls_keeps_its_state_a_long_outage_frees_it() -> None:
    """The runner does not judge a source that did not answer; it tells the stage it missed."""
    toy = ToySource("toy://one")
    with toy_run(toy) as run:
        run.at(0)
        toy.down = True
        for n in range(GRACE):
            run.clock.t = T0 + 60 * (n + 1)
            assert not run.runner.poll()
            assert run.runner.health.tracked() == 2  # the VM and its host
        toy.down = False
        (vm_line,) = run.vms_at(300)
        assert vm_line["fields"]["stuck"] is True  # the outage did not restart its clock
        assert OUT in vm_line["fields"]
        toy.down = True
        for n in range(GRACE + 1):
            run.clock.t = T0 + 400 + n
            assert not run.runner.poll()
        assert run.runner.health.tracked() == 0
        toy.down = False
        (vm_line,) = run.vms_at(700)
        assert vm_line["fields"]["stuck"] is False and OUT not in vm_line["fields"]


def assert_stuck_and_fine(stuck: ToySource, fine: ToySource, times: Sequence[float]) -> None:
    """Polled side by side at `times`: one VM stuck, the other not, both with their rates."""
    with toy_run(stuck, fine) as run:
        for t in times:
            lines = run.vms_at(t)
        assert len(lines) == 2
        flags = sorted(line["fields"]["stuck"] for line in lines)
        assert flags == [False, True]
        assert all(OUT in line["fields"] for line in lines)


def test_two_sources_of_one_new_kind_keep_separate_state() -> None:
    # the same VM key "toy-1" in both instances
    assert_stuck_and_fine(ToySource("toy://stuck"), ToySource("toy://fine", gap_bytes=0), (0, 300))


def test_two_kinds_with_the_same_instance_string_keep_separate_state() -> None:
    """State is per (kind, instance): a new kind may reuse another kind's instance string."""
    toy, other = ToySource("shared"), ToySource("shared", gap_bytes=0)
    other.kind = "toy2"
    assert_stuck_and_fine(toy, other, (0, 299, 300))


# --- between two polls: the host's reclaim (one table with the swap rates and ECC growth) ----

SWAPPED, STALL, GUEST_STALL = (
    "host_swapped_bytes_per_second",
    "host_memory_stall_ratio",
    "guest_memory_stall_ratio",
)

RECLAIM_CASES = [
    Case(
        "host-swap-change-is-signed-per-second",
        [
            one(0, {"host_swapped_bytes": 100 * MiB}, **{SWAPPED: ABSENT}),
            one(10, {"host_swapped_bytes": 150 * MiB}, **{SWAPPED: 5.0 * MiB}),
            one(20, {"host_swapped_bytes": 150 * MiB}, **{SWAPPED: 0.0}),
            # the host swaps it back in (or the VM restarted): a fall, not a reset
            one(30, {"host_swapped_bytes": 120 * MiB}, **{SWAPPED: -3.0 * MiB}),
            one(40, {}, **{SWAPPED: ABSENT}),  # its QEMU not found this poll: no baseline
            one(50, {"host_swapped_bytes": 0}, **{SWAPPED: ABSENT}),
        ],
    ),
    Case(
        "stall-ratio-is-a-share-of-wall-time-capped-at-1",
        [
            one(0, {"host_memory_stall_seconds_total": 1.0}, **{STALL: ABSENT}),
            one(10, {"host_memory_stall_seconds_total": 3.5}, **{STALL: 0.25}),
            # a read a little after the poll's own time: more stall than wall time
            one(20, {"host_memory_stall_seconds_total": 13.6}, **{STALL: 1.0}),
            one(30, {"host_memory_stall_seconds_total": 0.5}, **{STALL: ABSENT}),  # reset
            one(40, {"host_memory_stall_seconds_total": 1.5}, **{STALL: 0.1}),
        ],
    ),
    Case(
        "guest-stall-ratio-and-its-rule",
        [
            one(0, {"guest_memory_stall_seconds_total": 0.0}, alert_level=0),
            one(10, {"guest_memory_stall_seconds_total": 2.0}, **{GUEST_STALL: 0.2}),
            one(20, {"guest_memory_stall_seconds_total": 7.0}, **{GUEST_STALL: 0.5}),
        ],
        rules=(rule(GUEST_STALL, warn=0.1, crit=0.4),),
    ),
    Case(
        # Missing for two polls (a busy monitor), within the grace: the ratio spans the real
        # time between the two polls that saw the VM, not one poll interval.
        "stall-ratio-across-skipped-polls-uses-the-real-elapsed-time",
        [
            one(0, {"host_memory_stall_seconds_total": 0.0}),
            Step(10, {"other": {}}),
            Step(20, {"other": {}}),
            one(30, {"host_memory_stall_seconds_total": 3.0}, **{STALL: 0.1}),
        ],
    ),
]


@pytest.mark.parametrize("case", RECLAIM_CASES, ids=lambda c: c.id)
def test_host_reclaim_between_polls(case: Case) -> None:
    run_case(case)


def test_host_swap_rule_is_critical_while_the_swap_grows_and_clears_at_once() -> None:
    steps = [
        one(0, {"host_swapped_bytes": 0}, alert_level=0),
        one(10, {"host_swapped_bytes": 4096}, **{SWAPPED + "_level": 2}, alert_level=2),
        one(20, {"host_swapped_bytes": 4096}, **{SWAPPED + "_level": 0}, alert_level=0),
    ]
    run_case(Case("host-swap-rule", steps, rules=(rule(SWAPPED, crit=1),)))


def test_host_line_rates_and_ratios_share_the_table() -> None:
    """The host's pswpin/pswpout rates and its stall ratios, beside the ECC growth."""
    health = Health(
        HealthConfig(), (rule("host_swap_out_bytes_per_second", crit=1, measurement=catalog.HOST),)
    )
    polls = [
        (0.0, {"host_swap_out_bytes_total": 0, "host_swap_in_bytes_total": 0,
               "host_memory_stall_seconds_total": 1.0, "host_memory_stall_full_seconds_total": 0.5,
               "ecc_corrected_total": 3}),
        (10.0, {"host_swap_out_bytes_total": 10 * MiB, "host_swap_in_bytes_total": MiB,
                "host_memory_stall_seconds_total": 2.0, "host_memory_stall_full_seconds_total": 1.0,
                "ecc_corrected_total": 5}),
    ]  # fmt: skip
    lines: list[Fields] = []
    for t, figures in polls:
        fields: Fields = dict(figures)
        health.hosts(INSTANCE, [("kvm1", fields)], T0 + t)
        lines.append(fields)
    first, second = lines
    assert not {"host_swap_out_bytes_per_second", "host_memory_stall_ratio"} & set(first)
    assert second["host_swap_out_bytes_per_second"] == float(MiB)
    assert second["host_swap_in_bytes_per_second"] == MiB / 10
    assert second["host_memory_stall_ratio"] == pytest.approx(0.1)
    assert second["host_memory_stall_full_ratio"] == pytest.approx(0.05)
    assert second["ecc_corrected_new"] == 2
    assert second["host_swap_out_bytes_per_second_level"] == 2 and second["alert_level"] == 2
    for fields in lines:
        assert catalog.check_point(catalog.HOST, {}, dict(fields)) == []


def test_every_between_row_is_in_the_catalog() -> None:
    """Each row reads a field of its line and writes one the catalog has, computed here."""
    from telegraf_balloon.health import CHANGE, HOST_BETWEEN, NEW, RATE, VM_BETWEEN

    for measurement, table in ((catalog.BALLOON, VM_BETWEEN), (catalog.HOST, HOST_BETWEEN)):
        for row in table:
            total = catalog.field(measurement, row.total)
            result = catalog.field(measurement, row.result)
            assert total is not None and result is not None, row
            assert catalog.HEALTH in result.sources and catalog.HEALTH not in total.sources, row
            assert row.kind in (RATE, CHANGE, NEW), row
            assert result.type is (int if row.kind == NEW else float), row
            assert (row.cap == 1.0) == (result.unit == "ratio"), row
