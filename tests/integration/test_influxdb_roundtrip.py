"""What format_line writes, a real InfluxDB 1.6.7 stores: names, tags, field types and values.

Hypothesis-generated hostile points (a few hundred, a few POSTs) and explicit hostile cases are
written over HTTP and read back with ``SELECT * FROM /.*/ GROUP BY *`` and ``SHOW FIELD KEYS``;
every point must come back exactly as :func:`tests.test_lineprotocol.expected_point` predicts
(the input after the serializer's documented replacements).  Numbers are decoded from the
JSON text by field type so that -0.0, 1.0 and 2**63-1 come back exact.

Cases whose ids start with ``BUG-`` show known serializer bugs and fail until it is fixed.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from telegraf_balloon.lineprotocol import format_line, format_lines
from tests.stack.influx import InfluxDB, InfluxError, quote_ident
from tests.test_lineprotocol import (
    INT64_MAX,
    INT64_MIN,
    TIME_MAX,
    TIME_MIN,
    Point,
    expected_measurement,
    expected_point,
    points,
    same_value,
)

pytestmark = pytest.mark.integration

INFLUX_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string"}
BASE_TIME = 1_700_000_000_000_000_000
_db_counter = itertools.count()


@dataclass
class Stored:
    """One point as InfluxDB returns it."""

    measurement: str
    tags: Dict[str, str]
    time: int
    fields: Dict[str, object] = field(default_factory=dict)
    types: Dict[str, str] = field(default_factory=dict)


def _decode(value: Any, kind: str) -> object:
    """A field value from JSON decoded with parse_int=str/parse_float=str, by InfluxDB type."""
    if kind == "integer":
        return int(value)
    if kind == "float":
        return float(value)  # "-0" -> -0.0, "1" -> 1.0, "5e-324" -> 5e-324
    return value  # boolean (JSON true/false) and string


def read_back(server: InfluxDB, db: str) -> Tuple[List[Stored], Dict[str, str]]:
    """Every stored point of the database, and the names SHOW MEASUREMENTS lists, each with
    "" or the error InfluxDB gave when asked for its points (InfluxQL cannot name a
    measurement that contains a NUL character, for one).

    Each measurement is read on its own: a ``SELECT * FROM /.*/`` over several measurements
    leaves out those whose field of the same name has another type.
    """
    types: Dict[str, Dict[str, str]] = {}
    for series in server.query(db, "SHOW FIELD KEYS")["results"][0].get("series", []):
        types[series["name"]] = {key: kind for key, kind in series["values"]}
    names = [
        row[0]
        for series in server.query(db, "SHOW MEASUREMENTS")["results"][0].get("series", [])
        for row in series["values"]
    ]
    stored: List[Stored] = []
    listed: Dict[str, str] = {}
    for name in names:
        try:
            text = server.query_text(db, f"SELECT * FROM {quote_ident(name)} GROUP BY *")
        except InfluxError as exc:
            listed[name] = str(exc)
            continue
        listed[name] = ""
        result = json.loads(text, parse_int=str, parse_float=str)["results"][0]
        assert "error" not in result, (name, result)
        kinds = types.get(name, {})
        for series in result.get("series", []):
            tags = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
            columns = series["columns"]
            for row in series["values"]:
                point = Stored(series["name"], tags, int(row[0]))
                for column, value in zip(columns[1:], row[1:]):
                    if value is None:
                        continue
                    kind = kinds.get(column, "?")
                    point.fields[column] = _decode(value, kind)
                    point.types[column] = kind
                stored.append(point)
    return stored, listed


def mismatch(want: Dict[str, Any], got: Optional[Stored]) -> Optional[str]:
    """Why a stored point differs from the expected one, or None when it is exact."""
    if got is None:
        return f"no measurement named {want['measurement']!r} (see the names InfluxDB lists)"
    problems = []
    if got.measurement != want["measurement"]:
        problems.append(f"measurement {got.measurement!r} != {want['measurement']!r}")
    if got.tags != want["tags"]:
        problems.append(f"tags {got.tags!r} != {want['tags']!r}")
    if got.time != want["time"]:
        problems.append(f"time {got.time} != {want['time']}")
    if set(got.fields) != set(want["fields"]):
        problems.append(f"field keys {sorted(got.fields)!r} != {sorted(want['fields'])!r}")
    for key, value in want["fields"].items():
        if key not in got.fields:
            continue
        kind = INFLUX_TYPES[type(value)]
        if got.types[key] != kind:
            problems.append(f"field {key!r} type {got.types[key]} != {kind}")
        elif not same_value(got.fields[key], value):
            problems.append(f"field {key!r} value {got.fields[key]!r} != {value!r}")
    return "; ".join(problems) or None


def fresh_db(server: InfluxDB, label: str) -> str:
    name = f"rt_{label}_{next(_db_counter)}"
    server.create_db(name)
    return name


def check_points(server: InfluxDB, label: str, batch: List[Point]) -> None:
    """Write the batch in one POST to a fresh database and compare what comes back.

    Each point must have its own measurement (so that field types cannot conflict and each
    series holds one point).
    """
    wanted = []
    for point in batch:
        want = expected_point(*point)
        assert want is not None
        wanted.append((point, want))
    assert len({w["measurement"] for _, w in wanted}) == len(wanted), "measurements not unique"
    db = fresh_db(server, label)
    try:
        body = format_lines(batch)
        status, text = server.write(db, body)
        stored, listed = read_back(server, db)
        by_name = {s.measurement: s for s in stored}
        failures = []
        for point, want in wanted:
            got = by_name.get(want["measurement"])
            why = mismatch(want, got)
            if why is not None:
                failures.append(f"  {point!r}\n    line {format_line(*point)!r}\n    {why}")
        report = "\n".join(failures[:8])
        assert status == 204 and not failures, (
            f"write -> {status} {text.strip()}\n"
            f"{len(failures)} of {len(wanted)} points differ:\n{report}\n"
            f"measurements InfluxDB lists: {list(listed)[:40]!r}\n"
            f"unreadable: { ({k: v for k, v in listed.items() if v})!r}"
        )
    finally:
        server.drop_db(db)


# --------------------------------------------------------------------------------------------
# Explicit hostile cases, each in its own database
# --------------------------------------------------------------------------------------------

T0 = BASE_TIME
CASES: List[Tuple[str, Point]] = [
    ("plain", ("balloon", {"vm": "web1"}, {"actual": 1024, "ok": True, "r": 0.5}, T0)),
    ("tag-value-ends-in-backslash", ("m", {"vm": "vm\\"}, {"v": 1}, T0)),
    ("tag-value-ends-in-3-backslashes", ("m", {"vm": "vm\\\\\\"}, {"v": 1}, T0)),
    ("tag-value-ends-in-2-backslashes", ("m", {"vm": "C:\\\\"}, {"v": 1}, T0)),
    ("tag-key-ends-in-2-backslashes", ("m", {"k\\\\": "a"}, {"v": 1}, T0)),
    ("field-key-ends-in-2-backslashes", ("m", {"t": "a"}, {"f\\\\": 1}, T0)),
    ("measurement-ends-in-2-backslashes", ("m\\\\", {"t": "a"}, {"v": 1}, T0)),
    ("odd-run-before-comma", ("m", {"vm": "a\\,b", "k\\,": "x"}, {"f\\,": 1}, T0)),
    ("odd-run-before-space", ("m", {"vm": "a\\ b", "k\\ ": "x"}, {"f\\ ": 1}, T0)),
    ("odd-run-before-equals", ("m", {"vm": "a\\=b", "k\\=": "x"}, {"f\\=": 1}, T0)),
    ("3-run-before-comma", ("m", {"vm": "a\\\\\\,b"}, {"f\\\\\\,g": 1}, T0)),
    ("even-run-before-comma", ("m", {"vm": "a\\\\,b", "k\\\\,": "x"}, {"f\\\\,g": 1}, T0)),
    ("even-run-before-space", ("m", {"vm": "a\\\\ b", "k\\\\ ": "x"}, {"f\\\\ g": 1}, T0)),
    ("even-run-before-equals", ("m", {"vm": "a\\\\=b", "k\\\\=": "x"}, {"f\\\\=g": 1}, T0)),
    ("4-run-before-comma", ("m", {"vm": "a\\\\\\\\,b"}, {"v": 1}, T0)),
    ("backslash-mid-value", ("m", {"vm": "C:\\Win\\x"}, {"path": "C:\\Win\\"}, T0)),
    ("measurement-comma-space", ("bal loon,x", {"t": "a"}, {"v": 1}, T0)),
    ("measurement-equals-and-quote", ('m=x"y', {"t": "a"}, {"v": 1}, T0)),
    ("measurement-odd-run-before-comma", ("m\\,x", {"t": "a"}, {"v": 1}, T0)),
    ("measurement-backslash-equals", ("m\\=x", {"t": "a"}, {"v": 1}, T0)),
    ("measurement-backslash-quote", ('m\\"x', {"t": "a"}, {"v": 1}, T0)),
    ("measurement-even-run-before-comma", ("m\\\\,x", {"t": "a"}, {"v": 1}, T0)),
    ("field-key-backslash-quote", ("m", {"t": "a"}, {'f\\"': 1}, T0)),
    ("unicode", ("mé☃", {"vm": "ünï©ødé 𝄞 مرحبا \u200b", "ключ": "値"}, {"ß": "😀"}, T0)),
    ("leading-hash", ("m", {"vm": "#vm", "#k": "#"}, {"#f": "#s", "g": 1}, T0)),
    ("leading-space", ("\nm", {" vm": " a"}, {" f": " s"}, T0)),
    ("newline-in-tag-value", ("m", {"vm": "a\nb", "cr": "a\r\nb", "tab": "\ta"}, {"v": 1}, T0)),
    ("newline-in-string-field", ("m", {"t": "a"}, {"s": "line1\nline2\r\n\t\f"}, T0)),
    ("only-control-chars", ("m", {"vm": "\n"}, {"s": "\n"}, T0)),
    ("quotes", ("m", {"vm": "\"'q'\""}, {"s": 'say "hi" \\ ok \\"', "e": "\\"}, T0)),
    ("all-specials", ("m", {"vm": ',= "\\#'}, {',= "#': ',= "\\#'}, T0)),
    ("nul-inside", ("m", {"vm": "a\x00b"}, {"f\x00": "s\x00"}, T0)),
    ("nul-leading-measurement", ("\x00m", {"t": "a"}, {"v": 1}, T0)),
    ("nul-leading-field-key", ("m", {"t": "a"}, {"\x00f": 1}, T0)),
    ("tag-keys-collide-after-replacement", ("m", {"a\n": "x", "a ": "y"}, {"v": 1}, T0)),
    ("other-control-chars", ("m\x0b\x01", {"vm": "a\x0b\x1f\x7f\x85\u2028"}, {"v": 1}, T0)),
    (
        "floats",
        (
            "m",
            {},
            {
                "pi": math.pi,
                "big": 123456789012.0,
                "one": 1.0,
                "negzero": -0.0,
                "tiny": 5e-324,
                "min": 2.2250738585072014e-308,
                "max": 1.7976931348623157e308,
                "third": 1 / 3,
                "e16": 1e16,
            },
            T0,
        ),
    ),
    ("ints", ("m", {}, {"lo": INT64_MIN, "hi": INT64_MAX, "zero": 0, "neg": -1}, T0)),
    ("bools", ("m", {}, {"t": True, "f": False}, T0)),
    ("dropped", ("m", {"e": "", "time": "x"}, {"n": None, "nan": math.nan, "v": 1}, T0)),
    ("time-min", ("m", {"t": "a"}, {"v": 1}, TIME_MIN)),
    ("time-max", ("m", {"t": "a"}, {"v": 1}, TIME_MAX)),
    ("time-negative", ("m", {"t": "a"}, {"v": 1}, -1)),
]


@pytest.mark.parametrize("point", [case for _, case in CASES], ids=[label for label, _ in CASES])
def test_explicit_hostile_point_round_trips(
    influxdb: InfluxDB,
    point: Point,
) -> None:
    check_points(influxdb, "case", [point])


def test_hostile_points_in_one_batch(influxdb: InfluxDB) -> None:
    """All the explicit cases that are not known bugs, as one POST (one measurement each)."""
    batch = []
    for i, (label, (name, tags, fields, time_ns)) in enumerate(CASES):
        if not label.startswith("BUG-"):
            batch.append((f"{name}_{i}", tags, fields, time_ns))
    check_points(influxdb, "batch", batch)


def test_field_types_follow_python_types(influxdb: InfluxDB) -> None:
    db = fresh_db(influxdb, "types")
    try:
        line = format_line("m", {}, {"i": 1, "f": 1.0, "b": True, "s": "1", "t": 2**63 - 1}, 1)
        assert influxdb.write(db, f"{line}\n") == (204, "")
        kinds = influxdb.query(db, "SHOW FIELD KEYS")["results"][0]["series"][0]["values"]
        assert dict(kinds) == {
            "i": "integer",
            "f": "float",
            "b": "boolean",
            "s": "string",
            "t": "integer",
        }
    finally:
        influxdb.drop_db(db)


# --------------------------------------------------------------------------------------------
# Hypothesis: a few hundred hostile points, a few POSTs
# --------------------------------------------------------------------------------------------


def writable(point: Point) -> bool:
    want = expected_point(*point)
    return want is not None and want["measurement"] != "" and want["measurement"][0] != "#"


BATCH = st.lists(
    points(
        nul=True,
        subnormals=True,
        time=st.integers(min_value=BASE_TIME, max_value=BASE_TIME + 10**12),
        max_text=6,
        max_tags=3,
        max_fields=4,
    ).filter(writable),
    min_size=25,
    max_size=35,
    unique_by=lambda p: expected_measurement(p[0]),
)


@settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the report names every bad point
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    database=None,
)
@given(BATCH)
def test_generated_points_round_trip(influxdb: InfluxDB, batch: List[Point]) -> None:
    check_points(influxdb, "gen", batch)
