"""InfluxDB 1.x line protocol, written so that every line is accepted and round-trips.

Rules (InfluxDB 1.x and Telegraf's parser agree on them):
  measurement[,tag=value...] field=value[,field=value...] timestamp_ns
- measurement: escape comma and space;
- tag keys, tag values, field keys: escape comma, equals sign and space;
- string field values: escape backslash and double quote;
- integers end in ``i`` (int64 range only), floats in full precision, bools true/false.
What line protocol cannot carry is changed, never passed through to break a line:
- newline, carriage return, tab and form feed in names and tag values become a space
  (they end or split a point in Telegraf's parser); in string fields, a space too;
- a backslash directly before an escaped character or at the end of a name or tag value is
  read differently by different parsers: it becomes ``/`` (only that last one of a run);
- empty tag values and tags named ``time`` are dropped;
- None, NaN, infinities, ints outside int64 and fields named ``time`` are dropped;
- a point left with no field produces no line at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Optional, Union

FieldValue = Union[bool, int, float, str]

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_CONTROL = str.maketrans({"\n": " ", "\r": " ", "\t": " ", "\f": " "})
_CACHE_LIMIT = 65536

_measurement_cache: dict[str, str] = {}
_key_cache: dict[str, str] = {}
_tag_value_cache: dict[str, str] = {}
_RUN_PATTERNS: dict[str, re.Pattern[str]] = {}


def _fix_backslashes(text: str, specials: str) -> str:
    """End every backslash run that stands before an escaped character (or the end) in '/'.

    Parsers disagree on a backslash there: InfluxDB's skips the next character, so an odd
    run swallows the escape that follows; others read an even run as escaped backslashes
    and then fail on the end of the value. With no backslash next to an escape or the end,
    every parser reads the same text.
    """
    if "\\" not in text:
        return text
    pattern = _RUN_PATTERNS.get(specials)
    if pattern is None:
        pattern = _RUN_PATTERNS[specials] = re.compile(r"(\\+)(?=[" + re.escape(specials) + r"]|$)")
    return pattern.sub(_end_run, text)


def _end_run(match: re.Match[str]) -> str:
    return match.group(1)[:-1] + "/"


def _escape_measurement(name: str) -> str:
    if not name:
        raise ValueError("empty measurement name")
    text = _fix_backslashes(name.translate(_CONTROL), ", ")
    if text.startswith("#"):
        # A line starting with '#' is a comment to every parser; no escape reads back as '#'.
        raise ValueError(f"measurement name {name!r} starts with '#'")
    return text.replace(",", "\\,").replace(" ", "\\ ")


def _escape_key(text: str) -> str:
    """Tag keys, tag values and field keys share one escape."""
    text = _fix_backslashes(text.translate(_CONTROL), ", =")
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def measurement(name: str) -> str:
    """The escaped measurement name (cached)."""
    cached = _measurement_cache.get(name)
    if cached is None:
        cached = _measurement_cache[name] = _escape_measurement(name)
    return cached


def _cached_escape(cache: dict[str, str], text: str) -> str:
    cached = cache.get(text)
    if cached is None:
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        cached = cache[text] = _escape_key(text)
    return cached


def key(name: str) -> str:
    """An escaped tag key or field key (cached: names come from a small set)."""
    return _cached_escape(_key_cache, name)


def tag_value(value: str) -> str:
    """An escaped tag value. Its own bounded cache: a flood of VM names must not evict keys."""
    return _cached_escape(_tag_value_cache, value)


def string_field(value: str) -> str:
    """A quoted string field value."""
    text = value.translate(_CONTROL)
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if '"' in text:
        text = text.replace('"', '\\"')
    return '"' + text + '"'


def field_value(value: object) -> Optional[str]:
    """The line-protocol form of one field value, or None when it cannot be written."""
    kind = type(value)
    if kind is float:
        return repr(value) if math.isfinite(value) else None  # type: ignore[arg-type]
    if kind is int:
        return f"{value}i" if _INT_MIN <= value <= _INT_MAX else None  # type: ignore[operator]
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return string_field(value)  # type: ignore[arg-type]
    # Subclasses (IntEnum, numpy scalars registered as numbers) and anything else.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        number = int(value)
        return f"{number}i" if _INT_MIN <= number <= _INT_MAX else None
    if isinstance(value, float):
        real = float(value)
        return repr(real) if math.isfinite(real) else None
    if isinstance(value, str):
        return string_field(str(value))
    return None


def format_line(
    name: str,
    tags: Mapping[str, str],
    fields: Mapping[str, object],
    time_ns: int,
) -> Optional[str]:
    """One point as a line (no trailing newline), or None when no field can be written."""
    parts = []
    for fkey, fvalue in fields.items():
        if fvalue is None or fkey == "time" or not fkey:
            continue
        kind = type(fvalue)
        if kind is int:
            if _INT_MIN <= fvalue <= _INT_MAX:  # type: ignore[operator]
                text = f"{fvalue}i"
            else:
                continue
        elif kind is float:
            if fvalue - fvalue != 0.0:  # type: ignore[operator]  # NaN or infinity
                continue
            text = repr(fvalue)
        elif kind is bool:
            text = "true" if fvalue else "false"
        else:
            other = field_value(fvalue)
            if other is None:
                continue
            text = other
        ekey = _key_cache.get(fkey) or key(fkey)
        parts.append(ekey + "=" + text)
    if not parts:
        return None
    head = _measurement_cache.get(name) or measurement(name)
    if tags:
        for tkey in sorted(tags):
            tvalue = tags[tkey]
            if not tvalue or not tkey or tkey == "time":
                continue
            evalue = _tag_value_cache.get(tvalue) or tag_value(tvalue)
            if not evalue:
                continue
            head += "," + (_key_cache.get(tkey) or key(tkey)) + "=" + evalue
    if type(time_ns) is not int:
        raise TypeError(f"timestamp must be int nanoseconds, not {type(time_ns).__name__}")
    return head + " " + ",".join(parts) + " " + str(time_ns)


def format_lines(points: Iterable[tuple[str, Mapping[str, str], Mapping[str, object], int]]) -> str:
    """Many points, each line ended by a newline; points with no field are left out."""
    out = []
    for name, tags, fields, time_ns in points:
        line = format_line(name, tags, fields, time_ns)
        if line is not None:
            out.append(line)
    return "".join(line + "\n" for line in out)
