"""The line-protocol serializer: its rules one by one, then properties on hostile input.

Every emitted line is parsed back with ``line_protocol_parser`` (a C parser that follows
InfluxDB's scanner) and compared with :func:`expected_point`, an independent reference for
"the input after the documented replacements" (see telegraf_balloon/lineprotocol.py).

Two limits of line_protocol_parser itself (not of line protocol) keep a few inputs out of the
parser-based properties; the InfluxDB round-trip test (tests/integration) covers them:
NUL characters ("Embedded NUL bytes are not supported") and subnormal floats (C ``strtod``
reports ERANGE for them).

The helpers here (:func:`expected_name`, :func:`expected_point`, the strategies) are reused by
tests/integration/test_influxdb_roundtrip.py.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple

import line_protocol_parser
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from telegraf_balloon import lineprotocol
from telegraf_balloon.lineprotocol import field_value, format_line, format_lines

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# InfluxDB 1.x accepts timestamps in [MinInt64 + 2, MaxInt64 - 1); so does line_protocol_parser.
TIME_MIN = -(2**63) + 2
TIME_MAX = 2**63 - 2

CONTROL = "\n\r\t\f\x00"
# InfluxDB unescapes ',', ' ', '=' and '"' after a backslash in names; the serializer keeps a
# backslash away from all four, in measurements and keys alike.
MEASUREMENT_SPECIALS = ', ="'
KEY_SPECIALS = ', ="'

Point = Tuple[str, Dict[str, str], Dict[str, Any], int]


# --------------------------------------------------------------------------------------------
# Reference: what a consumer should read back, after the documented replacements
# --------------------------------------------------------------------------------------------


def expected_name(text: str, specials: str) -> str:
    """A measurement, tag key, tag value or field key as it should read back.

    Written from the module docstring, independently of the implementation:
    control characters become spaces; a run of backslashes directly before one of
    ``specials`` or at the end has its last backslash replaced by ``/``; other runs stay.
    """
    text = "".join(" " if ch in CONTROL else ch for ch in text)
    out = []
    i = 0
    while i < len(text):
        if text[i] != "\\":
            out.append(text[i])
            i += 1
            continue
        j = i
        while j < len(text) and text[j] == "\\":
            j += 1
        run = j - i
        if j == len(text) or text[j] in specials:
            out.append("\\" * (run - 1) + "/")
        else:
            out.append("\\" * run)
        i = j
    return "".join(out)


def expected_measurement(name: str) -> str:
    return expected_name(name, MEASUREMENT_SPECIALS)


def expected_key(name: str) -> str:
    return expected_name(name, KEY_SPECIALS)


class _Drop:
    """Marker: the field is not written."""


DROP = _Drop()


def expected_value(value: object) -> object:
    """The Python value a parser should return for a field value, or DROP."""
    if value is None:
        return DROP
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        number = int(value)
        return number if INT64_MIN <= number <= INT64_MAX else DROP
    if isinstance(value, float):
        real = float(value)
        return real if math.isfinite(real) else DROP
    if isinstance(value, str):
        return "".join(" " if ch in CONTROL else ch for ch in str(value))
    return DROP


def expected_point(
    name: str, tags: Mapping[str, str], fields: Mapping[str, object], time_ns: int
) -> Optional[Dict[str, Any]]:
    """What line_protocol_parser.parse_line should return for the point, or None (no line)."""
    out_fields: Dict[str, object] = {}
    for fkey, fvalue in fields.items():
        if not fkey or fkey == "time":
            continue
        value = expected_value(fvalue)
        if value is DROP:
            continue
        out_fields[expected_key(fkey)] = value
    if not out_fields:
        return None
    out_tags: Dict[str, str] = {}
    for tkey, tvalue in sorted(tags.items()):
        if tkey and tvalue and tkey != "time":
            # keys that read the same once made writable: the first in sorted order stays
            out_tags.setdefault(expected_key(tkey), expected_key(tvalue))
    return {
        "measurement": expected_measurement(name),
        "tags": out_tags,
        "fields": out_fields,
        "time": time_ns,
    }


def parse(line: str) -> Dict[str, Any]:
    result: Dict[str, Any] = line_protocol_parser.parse_line(line.encode("utf-8"))
    return result


def same_value(got: object, want: object) -> bool:
    """Equal, of the same type, and for floats the same bits (so -0.0 is not 0.0)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        return repr(got) == repr(want)
    return got == want


def assert_reads_back(line: Optional[str], want: Optional[Dict[str, Any]]) -> None:
    if want is None:
        assert line is None
        return
    assert line is not None, f"no line, expected {want!r}"
    try:
        got = parse(line)
    except line_protocol_parser.LineFormatError as exc:
        raise AssertionError(f"parser rejected {line!r}: {exc}") from exc
    assert got is not None, f"parser read {line!r} as a comment"
    assert got["measurement"] == want["measurement"], line
    assert got["tags"] == want["tags"], line
    assert got["time"] == want["time"], line
    assert set(got["fields"]) == set(want["fields"]), line
    for fkey, fvalue in want["fields"].items():
        assert same_value(got["fields"][fkey], fvalue), (line, fkey, got["fields"][fkey], fvalue)


def roundtrip(
    name: str, tags: Mapping[str, str], fields: Mapping[str, object], time_ns: int = 1
) -> None:
    assert_reads_back(
        format_line(name, tags, fields, time_ns), expected_point(name, tags, fields, time_ns)
    )


# --------------------------------------------------------------------------------------------
# Unit tests: exact output
# --------------------------------------------------------------------------------------------


def test_simple_line() -> None:
    line = format_line("balloon", {"vm": "web1", "hv": "kvm"}, {"actual": 1024, "ok": True}, 17)
    assert line == "balloon,hv=kvm,vm=web1 actual=1024i,ok=true 17"
    roundtrip("balloon", {"vm": "web1", "hv": "kvm"}, {"actual": 1024, "ok": True}, 17)


def test_no_tags() -> None:
    assert format_line("m", {}, {"v": 1.5}, 0) == "m v=1.5 0"


def test_tags_are_sorted_by_key() -> None:
    tags = {"zeta": "1", "alpha": "2", "Mid": "3", "beta": "4", "é": "5"}
    line = format_line("m", tags, {"v": 1}, 1)
    assert line == "m,Mid=3,alpha=2,beta=4,zeta=1,é=5 v=1i 1"
    assert format_line("m", dict(reversed(list(tags.items()))), {"v": 1}, 1) == line


def test_fields_keep_their_order() -> None:
    assert format_line("m", {}, {"b": 1, "a": 2}, 1) == "m b=1i,a=2i 1"


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("a,b", "a\\,b"),
        ("a b", "a\\ b"),
        ("a=b", "a=b"),  # '=' is not special in a measurement
        ('a"b', 'a"b'),
        (" lead", "\\ lead"),
        ("trail ", "trail\\ "),
        ("a#b", "a#b"),
    ],
)
def test_measurement_escaping(name: str, written: str) -> None:
    line = format_line(name, {}, {"v": 1}, 1)
    assert line == f"{written} v=1i 1"
    roundtrip(name, {}, {"v": 1})


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("a,b", "a\\,b"),
        ("a=b", "a\\=b"),
        ("a b", "a\\ b"),
        (",=, ", "\\,\\=\\,\\ "),
        ('"q"', '"q"'),
        ("#x", "#x"),
        ("ünï©ødé ☃", "ünï©ødé\\ ☃"),
    ],
)
def test_tag_key_tag_value_and_field_key_escaping(text: str, written: str) -> None:
    assert format_line("m", {text: "v"}, {"f": 1}, 1) == f"m,{written}=v f=1i 1"
    assert format_line("m", {"t": text}, {"f": 1}, 1) == f"m,t={written} f=1i 1"
    assert format_line("m", {}, {text: 1}, 1) == f"m {written}=1i 1"
    roundtrip("m", {text: "v"}, {"f": 1})
    roundtrip("m", {"t": text}, {"f": 1})
    roundtrip("m", {}, {text: 1})


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", '"plain"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("C:\\Win", '"C:\\\\Win"'),
        ("ends\\", '"ends\\\\"'),
        ('\\"', '"\\\\\\""'),
        ("a,b=c d", '"a,b=c d"'),  # no escaping of , = space inside quotes
        ("", '""'),
        ("#", '"#"'),
    ],
)
def test_string_field_escaping(value: str, written: str) -> None:
    assert format_line("m", {}, {"s": value}, 1) == f"m s={written} 1"
    roundtrip("m", {}, {"s": value})


@pytest.mark.parametrize("char", list(CONTROL))
def test_control_characters_become_spaces_everywhere(char: str) -> None:
    text = f"a{char}b"
    line = format_line(text, {text: text}, {text: text}, 1)
    assert line == 'a\\ b,a\\ b=a\\ b a\\ b="a b" 1'
    assert "\n" not in line and "\r" not in line
    roundtrip(text, {text: text}, {text: text})


def test_control_characters_at_the_edges() -> None:
    line = format_line("\nm", {"t": "\r\n"}, {"f": "\t"}, 1)
    assert line == '\\ m,t=\\ \\  f=" " 1'
    roundtrip("\nm", {"t": "\r\n"}, {"f": "\t"})


# Backslash runs in a tag value (same rule for tag keys and field keys; the measurement's
# specials are only comma and space).  Written form and what a parser reads back.
BACKSLASH_CASES = [
    ("a\\b", "a\\b", "a\\b"),  # not before a special: kept
    ("a\\\\b", "a\\\\b", "a\\\\b"),
    ("\\\\\\\\x", "\\\\\\\\x", "\\\\\\\\x"),
    ("\\", "/", "/"),  # at the end: the last backslash of the run becomes '/'
    ("a\\", "a/", "a/"),
    ("a\\\\", "a\\/", "a\\/"),
    ("a\\\\\\", "a\\\\/", "a\\\\/"),
    ("C:\\Win\\", "C:\\Win/", "C:\\Win/"),
    ("a\\,b", "a/\\,b", "a/,b"),  # before an escaped character: the same
    ("a\\ b", "a/\\ b", "a/ b"),
    ("a\\=b", "a/\\=b", "a/=b"),
    ("a\\\\,b", "a\\/\\,b", "a\\/,b"),
    ("a\\\\ b", "a\\/\\ b", "a\\/ b"),
    ("a\\\\=b", "a\\/\\=b", "a\\/=b"),
    ("a\\\\\\,b", "a\\\\/\\,b", "a\\\\/,b"),
    ("a\\\\\\\\,b", "a\\\\\\/\\,b", "a\\\\\\/,b"),
    ("a\\\nb", "a/\\ b", "a/ b"),  # the control character is replaced first
    ("\\,\\", "/\\,/", "/,/"),
]


@pytest.mark.parametrize(("value", "written", "read"), BACKSLASH_CASES)
def test_backslash_runs_in_tag_values(value: str, written: str, read: str) -> None:
    assert expected_key(value) == read
    assert format_line("m", {"t": value}, {"f": 1}, 1) == f"m,t={written} f=1i 1"
    assert parse(f"m,t={written} f=1i 1")["tags"] == {"t": read}
    assert format_line("m", {value: "v"}, {"f": 1}, 1) == f"m,{written}=v f=1i 1"
    assert format_line("m", {}, {value: 1}, 1) == f"m {written}=1i 1"
    roundtrip("m", {"t": value, value: "v"}, {value: 1})


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("m\\", "m/"),
        ("m\\\\", "m\\/"),
        ("m\\,x", "m/\\,x"),
        ("m\\ x", "m/\\ x"),
        ("m\\\\,x", "m\\/\\,x"),
        ("m\\x", "m\\x"),
        ("m\\=x", "m/=x"),  # InfluxDB unescapes '\\=' even in a measurement: no backslash there
    ],
)
def test_backslash_runs_in_measurements(name: str, written: str) -> None:
    assert format_line(name, {"t": "v"}, {"f": 1}, 1) == f"{written},t=v f=1i 1"
    assert format_line(name, {}, {"f": 1}, 1) == f"{written} f=1i 1"
    roundtrip(name, {"t": "v"}, {"f": 1})
    roundtrip(name, {}, {"f": 1})


@pytest.mark.parametrize(
    ("tags", "name"),
    [
        ({"vm": "C:\\\\"}, "m"),  # tag value ending in an even backslash run
        ({"vm": "a\\\\", "z": "b"}, "m"),  # ... followed by another tag
        ({"vm\\\\": "a"}, "m"),  # tag key ending in an even run
        ({}, "m\\\\"),  # measurement ending in an even run, no tags
        ({"vm": "a"}, "m\\\\"),  # ... with tags (once read as measurement 'm\,vm=a')
    ],
)
def test_trailing_even_backslash_run_is_accepted(tags: Dict[str, str], name: str) -> None:
    """Regression: line_protocol_parser and InfluxDB 1.6.7 read any backslash directly before
    the separator that ends a measurement, tag key or tag value as escaping it, so
    ``m,vm=C:\\\\ f=1i 1`` was rejected ("invalid tag format") and a VM named ``C:\\\\`` lost
    every point while the docstring said even runs read back as written."""
    line = format_line(name, tags, {"f": 1}, 1)
    assert line is not None
    try:
        got = parse(line)
    except line_protocol_parser.LineFormatError as exc:
        raise AssertionError(f"parser rejected {line!r}: {exc}") from exc
    assert got["measurement"].rstrip("\\/") == name.rstrip("\\"), line
    assert {k.rstrip("\\/"): v.rstrip("\\/") for k, v in got["tags"].items()} == {
        k.rstrip("\\"): v.rstrip("\\") for k, v in tags.items()
    }, line


def test_bug_tag_keys_that_collide_after_replacement_give_an_accepted_line() -> None:
    """KNOWN BUG. Two tag keys that differ only by a control character vs a space become the
    same escaped key, and the line is rejected by every parser ("duplicate tags" in InfluxDB
    1.6.7).  Tag keys come from code, so this is minor, but "every line is accepted" fails."""
    line = format_line("m", {"a\n": "x", "a ": "y"}, {"f": 1}, 1)
    assert line is not None
    try:
        got = parse(line)
    except line_protocol_parser.LineFormatError as exc:
        raise AssertionError(f"parser rejected {line!r}: {exc}") from exc
    assert got["tags"] in ({"a ": "x"}, {"a ": "y"})


# -- Drop rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, math.nan, -math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1, 2**100, object()],
    ids=["None", "nan", "-nan", "inf", "-inf", "2**63", "-2**63-1", "2**100", "object"],
)
def test_unwritable_field_values_are_dropped(value: object) -> None:
    assert format_line("m", {"t": "a"}, {"bad": value, "good": 1}, 1) == "m,t=a good=1i 1"
    assert format_line("m", {"t": "a"}, {"bad": value}, 1) is None
    assert field_value(value) is None


def test_other_types_are_dropped() -> None:
    from decimal import Decimal
    from fractions import Fraction

    for value in (Decimal("1.5"), Fraction(1, 3), [1], {"a": 1}, b"bytes", 1j):
        assert format_line("m", {}, {"x": value, "v": 1}, 1) == "m v=1i 1", value


def test_int64_bounds_are_kept() -> None:
    line = format_line("m", {}, {"lo": INT64_MIN, "hi": INT64_MAX}, 1)
    assert line == f"m lo={INT64_MIN}i,hi={INT64_MAX}i 1"
    roundtrip("m", {}, {"lo": INT64_MIN, "hi": INT64_MAX})


def test_field_named_time_or_empty_is_dropped() -> None:
    assert format_line("m", {}, {"time": 5, "": 6, "v": 1}, 1) == "m v=1i 1"
    assert format_line("m", {}, {"time": 5}, 1) is None
    assert format_line("m", {}, {"Time": 5}, 1) == "m Time=5i 1"  # only the exact name


def test_empty_tag_values_empty_tag_keys_and_time_tags_are_dropped() -> None:
    tags = {"empty": "", "": "nokey", "time": "t", "ok": "1"}
    assert format_line("m", tags, {"v": 1}, 1) == "m,ok=1 v=1i 1"
    assert format_line("m", {"a": ""}, {"v": 1}, 1) == "m v=1i 1"


def test_a_point_with_no_field_gives_no_line() -> None:
    assert format_line("m", {"t": "a"}, {}, 1) is None
    assert format_line("m", {"t": "a"}, {"a": None, "b": math.nan, "time": 1}, 1) is None
    # No line at all, so even an unwritable measurement name is not an error then.
    assert format_line("#m", {}, {}, 1) is None


def test_format_lines_skips_points_without_fields() -> None:
    points: List[Point] = [
        ("m", {"t": "a"}, {"v": 1}, 1),
        ("m", {"t": "b"}, {"v": None}, 2),
        ("n", {}, {"s": "x\ny"}, 3),
    ]
    assert format_lines(points) == 'm,t=a v=1i 1\nn s="x y" 3\n'
    assert format_lines([]) == ""
    assert format_lines(iter(points[1:2])) == ""


# -- Types ------------------------------------------------------------------------------------


class Level(enum.IntEnum):
    OK = 0
    WARN = 1
    HUGE = 2**63


class Flags(enum.IntFlag):
    A = 1
    B = 2


class MyInt(int):
    def __str__(self) -> str:  # a subclass that formats itself oddly
        return "not-a-number"

    __repr__ = __str__


class MyFloat(float):
    def __repr__(self) -> str:
        return "myfloat"


class MyStr(str):
    pass


def test_bool_is_not_an_int() -> None:
    assert format_line("m", {}, {"t": True, "f": False}, 1) == "m t=true,f=false 1"
    assert field_value(True) == "true"
    assert field_value(False) == "false"
    roundtrip("m", {}, {"t": True, "f": False})


def test_int_subclasses_are_written_as_plain_ints() -> None:
    line = format_line("m", {}, {"lvl": Level.WARN, "flags": Flags.A | Flags.B, "n": MyInt(7)}, 1)
    assert line == "m lvl=1i,flags=3i,n=7i 1"
    assert format_line("m", {}, {"big": Level.HUGE, "v": 1}, 1) == "m v=1i 1"


def test_float_and_str_subclasses() -> None:
    assert format_line("m", {}, {"x": MyFloat(0.1), "s": MyStr('a"b')}, 1) == 'm x=0.1,s="a\\"b" 1'
    assert format_line("m", {}, {"x": MyFloat("nan"), "v": 1}, 1) == "m v=1i 1"


@pytest.mark.parametrize(
    "value",
    [
        3.141592653589793,
        123456789012.0,
        0.1,
        1e-7,
        1e16,
        1e300,
        -1e-300,
        sys.float_info.max,
        sys.float_info.min,
        -0.0,
        0.0,
        1.0,
        2.0**53 + 2,
        1 / 3,
    ],
)
def test_floats_keep_full_precision(value: float) -> None:
    assert format_line("m", {}, {"x": value}, 1) == f"m x={value!r} 1"
    roundtrip("m", {}, {"x": value})


def test_subnormal_floats_are_written_exactly() -> None:
    # line_protocol_parser (strtod) refuses subnormals; InfluxDB accepts them (integration).
    assert format_line("m", {}, {"x": 5e-324}, 1) == "m x=5e-324 1"
    assert float("5e-324") == 5e-324


def test_integral_floats_stay_floats() -> None:
    got = parse(format_line("m", {}, {"x": 2.0, "y": 1e16}, 1) or "")
    assert type(got["fields"]["x"]) is float
    assert type(got["fields"]["y"]) is float


# -- Names that cannot be written, timestamps -------------------------------------------------


@pytest.mark.parametrize("name", ["#m", "#", "#\nm", "#,x"])
def test_measurement_starting_with_hash_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="#"):
        format_line(name, {}, {"v": 1}, 1)


def test_hash_elsewhere_is_fine() -> None:
    line = format_line("m#", {"#t": "#v"}, {"#f": "#s"}, 1)
    assert line == 'm#,#t=#v #f="#s" 1'
    roundtrip("m#", {"#t": "#v"}, {"#f": "#s"})
    roundtrip(" #m", {}, {"v": 1})  # a leading escaped space is not a comment


def test_empty_measurement_is_refused() -> None:
    with pytest.raises(ValueError):
        format_line("", {}, {"v": 1}, 1)


@pytest.mark.parametrize("bad", [1.5, 1e18, True, "1", None, Level.OK])
def test_timestamp_must_be_an_int(bad: Any) -> None:
    with pytest.raises(TypeError):
        format_line("m", {}, {"v": 1}, bad)


def test_timestamp_bounds() -> None:
    roundtrip("m", {}, {"v": 1}, TIME_MIN)
    roundtrip("m", {}, {"v": 1}, TIME_MAX)
    roundtrip("m", {}, {"v": 1}, 0)
    roundtrip("m", {}, {"v": 1}, -1)


# -- Caches -----------------------------------------------------------------------------------


def _clear_caches() -> None:
    lineprotocol.clear_caches()


def test_cached_output_equals_fresh_output(monkeypatch: pytest.MonkeyPatch) -> None:
    point: Point = ("m x", {"vm": "a b\\", "k=": "v,"}, {"f,": 1, "g": "s"}, 5)
    first = format_line(*point)
    assert format_line(*point) == first
    _clear_caches()
    assert format_line(*point) == first
    monkeypatch.setattr(lineprotocol, "_CACHE_LIMIT", 2)
    names = [f"vm{i} x" for i in range(10)]
    for name in names * 2:
        assert format_line("m", {"vm": name}, {"v": 1}, 1) == f"m,vm={name[:-2]}\\ x v=1i 1"
    assert len(lineprotocol._tag_value_cache) <= 3


def test_measurement_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_caches()
    monkeypatch.setattr(lineprotocol, "_CACHE_LIMIT", 2)
    for i in range(10):
        assert format_line(f"m{i}", {}, {"v": 1}, 1) == f"m{i} v=1i 1"
    assert len(lineprotocol._measurement_cache) <= 3


def vm_point(i: int) -> Point:
    tags = {"host": "kvm1", "guest": f"vm {i}", "uuid": f"{i:08x}-0000", "source": "qmp"}
    return ("balloon", tags, {"balloon_actual_bytes": i, "stuck": False}, 1)


def test_heads_of_vms_passing_through_are_dropped_after_they_are_no_longer_written() -> None:
    """50 VMs written at a time, 10 new per batch, 20,000 in all: the heads stay few."""
    _clear_caches()
    live, churn, slack = 50, 10, lineprotocol._HEAD_SLACK
    most = 0
    for batch in range(2_000):
        first = batch * churn
        text = format_lines([vm_point(i) for i in range(first, first + live)])
        assert text.count("\n") == live
        lineprotocol.end_batch()
        most = max(most, lineprotocol.cached_heads())
        assert lineprotocol.cached_heads() <= 4 * live + slack, batch
        assert len(lineprotocol._tag_value_cache) <= 4 * (4 * live + slack), batch
    assert most > 2 * live  # the cache did keep heads across batches


def test_heads_still_written_move_to_the_new_generation_unmade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_caches()
    made: list[str] = []
    real = lineprotocol._head

    def counting(name: str, tags: Mapping[str, str]) -> str:
        made.append(tags["guest"])
        return real(name, tags)

    monkeypatch.setattr(lineprotocol, "_head", counting)
    staying = [vm_point(i) for i in range(100)]
    expected = format_lines(staying)
    lineprotocol.end_batch()
    generations = 0
    for batch in range(20):  # 100 staying, 100 new ones each batch: new generations start
        passing = [vm_point(1000 + 100 * batch + i) for i in range(100)]
        made.clear()
        text = format_lines(staying + passing)
        assert text.startswith(expected)
        assert sorted(made) == sorted(tags["guest"] for _, tags, _, _ in passing), batch
        lineprotocol.end_batch()
        generations += not lineprotocol._head_cache
    assert generations >= 2
    assert lineprotocol.cached_heads() <= 4 * 200 + lineprotocol._HEAD_SLACK


def test_end_batch_keeps_every_head_while_the_vms_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_caches()
    points = [vm_point(i) for i in range(5_000)]
    first = format_lines(points)
    lineprotocol.end_batch()
    monkeypatch.setattr(lineprotocol, "_head", lambda *a: pytest.fail("a head made again"))
    for _ in range(5):
        assert format_lines(points) == first
        lineprotocol.end_batch()
        assert lineprotocol.cached_heads() == 5_000


# --------------------------------------------------------------------------------------------
# Properties on hostile input
# --------------------------------------------------------------------------------------------

HOSTILE_CHARS = ",= \"'\\#\n\r\t\f\x0b\u2028\u0085=é☃𝄞"


def hostile_text(
    min_size: int = 0, max_size: int = 10, nul: bool = False
) -> st.SearchStrategy[str]:
    """Text heavy in the characters that matter, plus any other Unicode character."""
    anything = st.characters(codec="utf-8", exclude_characters=None if nul else "\x00")
    runs = st.sampled_from(["\\\\", "\\\\\\", "\\,", "\\ ", "\\=", "\\\n", "\\\\,"])
    piece = st.one_of(st.sampled_from(list(HOSTILE_CHARS)), anything, runs)
    return st.lists(piece, min_size=min_size, max_size=max_size).map("".join)


def int_values() -> st.SearchStrategy[int]:
    edges = [INT64_MIN, INT64_MAX, INT64_MIN - 1, INT64_MAX + 1, 2**64, -(2**64), 0, -1]
    return st.one_of(
        st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
        st.integers(),
        st.sampled_from(edges),
        st.integers(min_value=-(2**80), max_value=2**80),
    )


def float_values(subnormals: bool = True) -> st.SearchStrategy[float]:
    specials = [math.nan, math.inf, -math.inf, -0.0, 0.0, sys.float_info.max, sys.float_info.min]
    if subnormals:
        specials.append(5e-324)
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=subnormals),
        st.sampled_from(specials),
    )


def field_values(subnormals: bool = True, nul: bool = False) -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.booleans(),
        int_values(),
        int_values().map(MyInt),
        st.sampled_from([Level.OK, Level.WARN, Level.HUGE, Flags.A | Flags.B]),
        float_values(subnormals),
        hostile_text(max_size=12, nul=nul),
    )


def unique_after_replacement(
    keys: st.SearchStrategy[str], values: st.SearchStrategy[Any], max_size: int
) -> st.SearchStrategy[Dict[str, Any]]:
    """A dict whose keys stay distinct after the documented replacements.

    Keys that collide only after replacement are a separate (known) problem, tested by
    test_bug_tag_keys_that_collide_after_replacement_give_an_accepted_line.
    """
    pairs = st.lists(
        st.tuples(keys, values), max_size=max_size, unique_by=lambda kv: expected_key(kv[0])
    )
    return pairs.map(dict)


def points(
    nul: bool = False,
    subnormals: bool = True,
    name: Optional[st.SearchStrategy[str]] = None,
    time: Optional[st.SearchStrategy[int]] = None,
    max_text: int = 10,
    max_tags: int = 5,
    max_fields: int = 6,
) -> st.SearchStrategy[Point]:
    """Hostile points: names, tag keys and values, field keys and values of every kind."""
    text = hostile_text(max_size=max_text, nul=nul)
    tag_keys = st.one_of(text, st.sampled_from(["time", "", "vm"]))
    field_keys = st.one_of(text, st.sampled_from(["time", "", "v"]))
    return st.tuples(
        name if name is not None else text,
        unique_after_replacement(tag_keys, text, max_tags),
        unique_after_replacement(field_keys, field_values(subnormals, nul), max_fields),
        time if time is not None else st.integers(min_value=TIME_MIN, max_value=TIME_MAX),
    )


PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _would_refuse(name: str) -> bool:
    written = expected_measurement(name)
    return written == "" or written.startswith("#")


@PROPERTY_SETTINGS
@given(points(nul=False, subnormals=False))
@example(("m", {"vm": "C:\\\\"}, {"v": 1}, 1))
@example(("m\\", {"a\\": "b\\,c"}, {"d\\\\=": 'e"\\'}, 1))
def test_every_line_parses_and_round_trips(point: Point) -> None:
    name, tags, fields, time_ns = point
    want = expected_point(name, tags, fields, time_ns)
    if want is not None and _would_refuse(name):
        with pytest.raises(ValueError):
            format_line(name, tags, fields, time_ns)
        return
    line = format_line(name, tags, fields, time_ns)
    if line is not None:
        assert "\n" not in line and "\r" not in line
        assert not line.startswith("#")
    assert_reads_back(line, want)


@PROPERTY_SETTINGS
@given(points(nul=True, subnormals=True), st.randoms(use_true_random=False))
def test_output_does_not_depend_on_tag_order_or_caches(point: Point, rnd: Any) -> None:
    name, tags, fields, time_ns = point
    assume(not _would_refuse(name))
    line = format_line(name, tags, fields, time_ns)
    items = list(tags.items())
    rnd.shuffle(items)
    _clear_caches()
    assert format_line(name, dict(items), fields, time_ns) == line


@PROPERTY_SETTINGS
@given(st.lists(points(nul=True), max_size=8))
def test_format_lines_is_format_line_joined(batch: List[Point]) -> None:
    batch = [p for p in batch if not _would_refuse(p[0])]
    lines = [format_line(*p) for p in batch]
    assert format_lines(batch) == "".join(f"{line}\n" for line in lines if line is not None)


@PROPERTY_SETTINGS
@given(field_values(subnormals=True, nul=True))
def test_field_value_agrees_with_format_line(value: object) -> None:
    text = field_value(value)
    line = format_line("m", {}, {"v": value}, 1)
    if expected_value(value) is DROP:
        assert text is None and line is None
    else:
        assert line == f"m v={text} 1"


@PROPERTY_SETTINGS
@given(int_values())
def test_ints_are_written_iff_in_int64(value: int) -> None:
    line = format_line("m", {}, {"v": value}, 1)
    if INT64_MIN <= value <= INT64_MAX:
        assert line == f"m v={value}i 1"
        assert parse(line)["fields"]["v"] == value
    else:
        assert line is None


@PROPERTY_SETTINGS
@given(float_values(subnormals=False))
def test_floats_round_trip_bit_for_bit(value: float) -> None:
    line = format_line("m", {}, {"v": value}, 1)
    if not math.isfinite(value):
        assert line is None
        return
    assert line is not None
    assert same_value(parse(line)["fields"]["v"], value)


@PROPERTY_SETTINGS
@given(hostile_text(max_size=30))
def test_hostile_vm_names_as_tag_values(vm: str) -> None:
    """The realistic attack surface: whoever creates a VM chooses its name."""
    tags = {"vm": vm, "hypervisor": "kvm"}
    fields: Dict[str, object] = {"actual_bytes": 1, "name": vm}
    roundtrip("balloon", tags, fields)


def _escapers() -> Dict[str, Callable[[str], str]]:
    return {"measurement": lineprotocol.measurement, "key": lineprotocol.key}


@PROPERTY_SETTINGS
@given(hostile_text(min_size=1, max_size=12, nul=True))
def test_escaped_names_have_no_unescaped_separator(text: str) -> None:
    """After escaping, every comma/space (and '=' in keys) is preceded by a backslash."""
    for kind, escape in _escapers().items():
        if kind == "measurement" and _would_refuse(text):
            continue
        written = escape(text)
        specials = ", " if kind == "measurement" else ", ="  # what is escaped, not avoided
        for i, ch in enumerate(written):
            if ch in specials:
                assert i > 0 and written[i - 1] == "\\", (kind, text, written)
        assert not any(ch in CONTROL for ch in written)
