"""Why not the PyPI package ``influx-line-protocol``: each reason, reproduced on a real InfluxDB.

Run: .venv/bin/python bench/influx_line_protocol_reasons.py [--quick]   (always exits 0)
(--quick is accepted for make test: the full run is already short.)

Starts a throw-away InfluxDB 1.x (tests/stack/influx.py: ``influxd`` in a temporary directory on
a loopback port), then for each of the eight reasons in the README's dependency notes prints
the input, what ``influx-line-protocol`` wrote (or raised) and what InfluxDB did with it, and
the same for our ``format_line``, each written to its own database and read back.  A summary
table follows.  Without the package (``.venv/bin/pip install influx-line-protocol``; it is
not a dependency of the project) only our side is shown; without influxd only the lines.
"""

from __future__ import annotations

import enum
import functools
import importlib
import importlib.metadata
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import parser, table

from telegraf_balloon.lineprotocol import format_line
from tests.stack.influx import InfluxDB, InfluxError, find_influxd, quote_ident

T_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
T_S = 1_700_000_000.0  # the same instant as a float of seconds, as time.time() gives it


class Level(enum.IntEnum):
    OK = 0
    CRITICAL = 2


class Float64(float):
    """Stands in for numpy.float64 (a float subclass) when numpy is not installed."""


def numpy_float(value: float) -> float:
    try:
        numpy = importlib.import_module("numpy")
    except ImportError:
        return Float64(value)
    result: float = numpy.float64(value)
    return result


@dataclass
class Case:
    reason: int
    title: str
    name: Any
    tags: Dict[str, Any]
    fields: Dict[str, Any]
    time: Any = T_NS
    # What a correct serializer gets stored: (tags, fields, time), or None for "nothing".
    want: Optional[Tuple[Dict[str, str], Dict[str, object], int]] = None
    note: str = ""
    refuse_ok: bool = False  # raising an exception is a correct answer to this input


CASES: List[Case] = [
    Case(
        1,
        "floats written with %g: 6 significant digits",
        "reasons",
        {"vm": "web1"},
        {"pi": math.pi, "big": 123456789012.0, "ratio": 0.123456789},
        want=({"vm": "web1"}, {"pi": math.pi, "big": 123456789012.0, "ratio": 0.123456789}, T_NS),
    ),
    Case(
        2,
        "NaN and infinity written as nan/inf",
        "reasons",
        {"vm": "web1"},
        {"ok": 1.5, "rate": math.nan, "ceiling": math.inf},
        want=({"vm": "web1"}, {"ok": 1.5}, T_NS),
        note="a correct writer drops the NaN/inf fields and keeps the rest",
    ),
    Case(
        3,
        "empty tag value written",
        "reasons",
        {"vm": "web1", "cluster": ""},
        {"v": 1},
        want=({"vm": "web1"}, {"v": 1}, T_NS),
    ),
    Case(
        3,
        "None tag value written as 'None'",
        "reasons",
        {"vm": "web1", "uuid": None},
        {"v": 1},
        want=({"vm": "web1"}, {"v": 1}, T_NS),
    ),
    Case(
        4,
        "backslashes in tags doubled",
        "reasons",
        {"vm": "C:\\Win"},
        {"v": 1},
        want=({"vm": "C:\\Win"}, {"v": 1}, T_NS),
    ),
    Case(
        4,
        "tag value ending in a backslash",
        "reasons",
        {"vm": "backup\\"},
        {"v": 1},
        want=({"vm": "backup/"}, {"v": 1}, T_NS),
        note="no line-protocol text reads back as a trailing backslash: ours writes '/'",
    ),
    Case(
        5,
        "newline in a tag value written raw",
        "reasons",
        {"vm": "evil\nvm"},
        {"v": 1},
        want=({"vm": "evil vm"}, {"v": 1}, T_NS),
        note="line protocol cannot carry a newline in a tag: ours writes a space",
    ),
    Case(
        6,
        "a point with no fields",
        "reasons",
        {"vm": "web1"},
        {},
        want=None,
        note="a correct writer writes nothing",
    ),
    Case(
        7,
        "None field value",
        "reasons",
        {"vm": "web1"},
        {"v": 1, "target": None},
        want=({"vm": "web1"}, {"v": 1}, T_NS),
    ),
    Case(
        7,
        "IntEnum field value",
        "reasons",
        {"vm": "web1"},
        {"alert_level": Level.CRITICAL},
        want=({"vm": "web1"}, {"alert_level": 2}, T_NS),
    ),
    Case(
        7,
        "numpy.float64 (float subclass) field value",
        "reasons",
        {"vm": "web1"},
        {"ratio": numpy_float(0.25)},
        want=({"vm": "web1"}, {"ratio": 0.25}, T_NS),
    ),
    Case(
        7,
        "non-string measurement",
        42,
        {"vm": "web1"},
        {"v": 1},
        want=None,
        refuse_ok=True,
        note="both raise AttributeError (both are typed str): no difference here",
    ),
    Case(
        8,
        "integer of 2**63",
        "reasons",
        {"vm": "web1"},
        {"v": 1, "huge": 2**63},
        want=({"vm": "web1"}, {"v": 1}, T_NS),
        note="int64 cannot hold it: a correct writer drops that field",
    ),
    Case(
        8,
        "float timestamp (seconds, as time.time() gives)",
        "reasons",
        {"vm": "web1"},
        {"v": 1},
        time=T_S,
        want=({"vm": "web1"}, {"v": 1}, T_NS),
        refuse_ok=True,
        note="a correct writer stores 2023-11-14T22:13:20Z or refuses the float",
    ),
]


# --- the two writers --------------------------------------------------------------------------


def package_line(metric_cls: Any, case: Case) -> str:
    metric = metric_cls(case.name)
    metric.with_timestamp(case.time)
    for key, value in case.tags.items():
        metric.add_tag(key, value)
    for key, value in case.fields.items():
        metric.add_value(key, value)
    return str(metric)


def our_line(case: Case) -> Optional[str]:
    return format_line(case.name, case.tags, case.fields, case.time)


# --- InfluxDB ---------------------------------------------------------------------------------

Row = Tuple[str, Dict[str, str], Dict[str, object], int]


def read_rows(server: InfluxDB, db: str) -> List[Row]:
    names = [
        row[0]
        for series in server.query(db, "SHOW MEASUREMENTS")["results"][0].get("series", [])
        for row in series["values"]
    ]
    rows: List[Row] = []
    for name in names:
        text = server.query_text(db, f"SELECT * FROM {quote_ident(name)} GROUP BY *")
        result = json.loads(text)["results"][0]
        for series in result.get("series", []):
            tags = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
            columns = series["columns"]
            for values in series.get("values", []):
                fields = {c: v for c, v in zip(columns[1:], values[1:]) if v is not None}
                rows.append((series["name"], tags, fields, int(values[0])))
    return rows


def same(stored: object, wanted: object) -> bool:
    if isinstance(wanted, float) and isinstance(stored, (int, float)):
        return float(stored) == wanted  # JSON carries 1.0 as 1
    return stored == wanted


def judge(case: Case, rows: List[Row]) -> str:
    if case.want is None:
        return "OK" if not rows else "WRONG: something was stored"
    tags, fields, time_ns = case.want
    if len(rows) != 1:
        return f"WRONG: {len(rows)} points stored"
    name, got_tags, got_fields, got_time = rows[0]
    problems = []
    if name != case.name:
        problems.append(f"measurement {name!r}")
    if got_tags != tags:
        problems.append(f"tags {got_tags!r}")
    if set(got_fields) != set(fields) or not all(same(got_fields[k], v) for k, v in fields.items()):
        problems.append(f"fields {got_fields!r}")
    if got_time != time_ns:
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(got_time // 10**9))
        fraction = f"{got_time % 10**9:09d}".rstrip("0")
        problems.append(f"time {got_time} = {moment}{'.' + fraction if fraction else ''}Z")
    return "OK" if not problems else "WRONG: " + "; ".join(problems)


@dataclass
class Outcome:
    line: Optional[str] = None
    error: str = ""
    status: Optional[int] = None
    response: str = ""
    rows: List[Row] = field(default_factory=list)
    verdict: str = ""
    short: str = ""


def run(server: Optional[InfluxDB], db: str, case: Case, produce: Any) -> Outcome:
    outcome = Outcome()
    try:
        outcome.line = produce(case)
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
        if case.refuse_ok:
            outcome.verdict = f"REFUSED ({type(exc).__name__}), fine here"
            outcome.short = f"refused ({type(exc).__name__})"
        else:
            outcome.verdict = f"EXCEPTION ({type(exc).__name__}): nothing written"
            outcome.short = f"EXCEPTION ({type(exc).__name__})"
        return outcome
    if outcome.line is None:
        outcome.verdict = "OK (no line)" if case.want is None else "WRONG: no line"
        outcome.short = outcome.verdict
        return outcome
    if server is None:
        outcome.verdict = outcome.short = "(not checked: no influxd)"
        return outcome
    server.create_db(db)
    try:
        outcome.status, text = server.write(db, outcome.line + "\n")
        outcome.response = text.strip()
        outcome.rows = read_rows(server, db)
    finally:
        server.drop_db(db)
    verdict = judge(case, outcome.rows)
    short = verdict.split(":")[0]
    if outcome.status != 204:
        rejected = f"REJECTED ({outcome.status})"
        verdict = rejected + ("" if not outcome.rows else f", {verdict}")
        short = rejected + ("" if not outcome.rows else ", and a wrong point stored")
    outcome.verdict = verdict
    outcome.short = short + (" value stored" if short == "WRONG" else "")
    return outcome


def show(label: str, outcome: Outcome) -> None:
    if outcome.error:
        print(f"    {label} raised {outcome.error}")
    elif outcome.line is None:
        print(f"    {label} wrote no line")
    else:
        print(f"    {label} wrote {outcome.line!r}")
        if outcome.status is not None:
            response = f" {outcome.response}" if outcome.response else ""
            print(f"      InfluxDB: {outcome.status}{response}")
            for name, tags, fields, stamp in outcome.rows:
                print(f"      stored: {name!r} tags={tags!r} fields={fields!r} time={stamp}")
            if not outcome.rows:
                print("      stored: nothing")
    print(f"      => {outcome.verdict}")


def main() -> int:
    parser(__doc__).parse_args()
    try:
        package = importlib.import_module("influx_line_protocol")
        metric_cls: Any = package.Metric
        try:
            version = importlib.metadata.version("influx-line-protocol")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        print(f"influx-line-protocol {version} is installed: both sides are shown.")
    except ImportError:
        metric_cls = None
        print(
            "influx-line-protocol is not installed (.venv/bin/pip install influx-line-protocol):"
            " only our serializer is shown."
        )

    server: Optional[InfluxDB] = None
    if find_influxd() is None:
        print("influxd is not installed: lines are shown, not checked against InfluxDB.")
    else:
        try:
            server = InfluxDB().start()
            print(f"InfluxDB ({server.binary}) started at {server.url}, data in {server.tmpdir}.")
        except InfluxError as exc:
            print(f"influxd could not be started, lines are not checked:\n{exc}")
            server = None
    print()

    summary = []
    try:
        for index, case in enumerate(CASES):
            print(f"[{case.reason}] {case.title}")
            shown_time = case.time if isinstance(case.time, int) else f"{case.time!r} (float)"
            print(
                f"    input: measurement={case.name!r} tags={case.tags!r} "
                f"fields={case.fields!r} time={shown_time}"
            )
            if case.note:
                print(f"    note: {case.note}")
            pkg: Optional[Outcome] = None
            if metric_cls is not None:
                produce = functools.partial(package_line, metric_cls)
                pkg = run(server, f"pkg_{index}", case, produce)
                show("influx-line-protocol", pkg)
            ours = run(server, f"ours_{index}", case, our_line)
            show("ours", ours)
            print()
            summary.append((case, pkg, ours))
    finally:
        if server is not None:
            server.stop()

    print("Summary")
    rows = [
        [f"[{case.reason}] {case.title}", "-" if pkg is None else pkg.short, ours.short]
        for case, pkg, ours in summary
    ]
    print(table(["reason", "influx-line-protocol", "ours"], rows, [False, False, False]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
