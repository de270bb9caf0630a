"""InfluxDB 1.x line protocol, written so that every line is accepted and round-trips.

Rules (InfluxDB 1.x and Telegraf's parser agree on them):
  measurement[,tag=value...] field=value[,field=value...] timestamp_ns
- measurement: escape comma and space;
- tag keys, tag values, field keys: escape comma, equals sign and space;
- string field values: escape backslash and double quote;
- integers end in ``i`` (int64 range only), floats in full precision, bools true/false;
- tags sorted by key.
What line protocol cannot carry is changed, never passed through to break a line:
- newline, carriage return, tab, form feed and NUL in names and tag values become a space
  (they end or split a point in Telegraf's parser, and InfluxDB drops a leading NUL); in
  string fields, a space too;
- a backslash directly before a comma, space, equals sign or double quote, or at the end of
  a name or tag value, is read differently by different parsers (InfluxDB unescapes all
  four even in measurements): the last backslash of such a run becomes ``/``;
- empty tag values and tags named ``time`` are dropped, and of two tag keys that read the
  same once made writable, only the first in sorted order is written;
- None, NaN, infinities, ints outside int64 and fields named ``time`` are dropped;
- a point left with no field produces no line at all; in a batch, a point that cannot be
  written (a name that is no string, a timestamp outside InfluxDB's range) is left out.
The escaped head of a line (measurement and tags) is cached: a VM's is the same every poll.
The cache keeps the heads of the VMs still written: the runner calls end_batch() after each
batch, and once the cache holds more heads than twice the lines of a batch (plus a little),
it starts a new generation; heads written again move over, the others are dropped a batch
later. VMs passing through (monitors coming and going) cost memory only while they are written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Optional, Union

FieldValue = Union[bool, int, float, str]

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_CONTROL = str.maketrans({"\n": " ", "\r": " ", "\t": " ", "\f": " ", "\x00": " "})
# InfluxDB unescapes '=' and '"' as well in names: a backslash before them is ambiguous too.
_AMBIGUOUS = ', ="'
_TIME_MIN = -(2**63) + 2  # InfluxDB's own bounds for a timestamp
_TIME_MAX = 2**63 - 2
_CACHE_LIMIT = 65536  # for callers that never end a batch, and names that are not VMs'
_HEAD_SLACK = 256  # heads beyond twice a batch's lines before a new generation starts

_measurement_cache: dict[str, str] = {}
_key_cache: dict[str, str] = {}
_tag_value_cache: dict[str, str] = {}
_RUN_PATTERNS: dict[str, re.Pattern[str]] = {}
_field_prefix_cache: dict[str, str] = {}
_head_cache: dict[tuple[object, ...], str] = {}  # this generation's heads
_head_older: dict[tuple[object, ...], str] = {}  # the previous generation's, until a batch ends
_batch_lines = 0  # lines formatted by format_lines since the last end_batch()
# A character that a tag value's escape changes (see _escape_key): without one, it is itself.
_PLAIN_TAG = re.compile("[\\\\,= \n\r\t\f\x00]")


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
    text = _fix_backslashes(name.translate(_CONTROL), _AMBIGUOUS)
    if text.startswith("#"):
        # A line starting with '#' is a comment to every parser; no escape reads back as '#'.
        raise ValueError(f"measurement name {name!r} starts with '#'")
    return text.replace(",", "\\,").replace(" ", "\\ ")


def _escape_key(text: str) -> str:
    """Tag keys, tag values and field keys share one escape."""
    text = _fix_backslashes(text.translate(_CONTROL), _AMBIGUOUS)
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def measurement(name: str) -> str:
    """The escaped measurement name (cached)."""
    cached = _measurement_cache.get(name)
    if cached is None:
        if len(_measurement_cache) > _CACHE_LIMIT:
            _measurement_cache.clear()
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
    """An escaped tag value. Its own bounded cache: a flood of VM names must not evict keys.

    A value with nothing to escape (most VM names, every UUID) is itself, and is not cached:
    a line head holds it already, and a copy per VM would double what 40,000 VMs' names cost.
    """
    if _PLAIN_TAG.search(value) is None:
        return value
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


def _field_prefix(name: str) -> str:
    """'escaped_key=' for a field name; '' for names that must not be written."""
    cached = _field_prefix_cache.get(name)
    if cached is None:
        if len(_field_prefix_cache) > _CACHE_LIMIT:
            _field_prefix_cache.clear()
        cached = "" if not name or name == "time" else key(name) + "="
        _field_prefix_cache[name] = cached
    return cached


def _head(name: str, tags: Mapping[str, str]) -> str:
    """'measurement,tag=value,...' with tags sorted and escaped; a key written once."""
    if not isinstance(name, str):
        raise TypeError(f"measurement must be a string, not {type(name).__name__}")
    head = measurement(name)
    written: set[str] = set()
    for tkey in sorted(tags):
        tvalue = tags[tkey]
        if not isinstance(tvalue, str):
            tvalue = str(tvalue)
        if not tvalue or not tkey or tkey == "time":
            continue
        ekey = key(tkey)
        if ekey in written:  # two keys that read the same once made writable
            continue
        written.add(ekey)
        head += "," + ekey + "=" + tag_value(tvalue)
    return head


def format_line(
    name: str,
    tags: Mapping[str, str],
    fields: Mapping[str, object],
    time_ns: int,
) -> Optional[str]:
    """One point as a line (no trailing newline), or None when no field can be written."""
    if type(time_ns) is not int:
        raise TypeError(f"timestamp must be int nanoseconds, not {type(time_ns).__name__}")
    if not _TIME_MIN <= time_ns <= _TIME_MAX:
        raise ValueError(f"timestamp {time_ns} is outside InfluxDB's range")
    parts: list[str] = []
    append = parts.append
    prefixes = _field_prefix_cache
    for fkey, fvalue in fields.items():
        prefix = prefixes.get(fkey)
        if not prefix:  # not seen yet, or a name never written ("", "time")
            if prefix is None:
                prefix = _field_prefix(fkey)
            if not prefix:
                continue
        kind = type(fvalue)
        if kind is int:
            if _INT_MIN <= fvalue <= _INT_MAX:  # type: ignore[operator]
                append(f"{prefix}{fvalue}i")
        elif kind is float:
            if fvalue - fvalue == 0.0:  # type: ignore[operator]  # not NaN nor infinite
                append(prefix + repr(fvalue))
        elif kind is bool:
            append(prefix + ("true" if fvalue else "false"))
        elif fvalue is not None:
            other = field_value(fvalue)
            if other is not None:
                append(prefix + other)
    if not parts:
        return None
    # The head of a VM's line is the same poll after poll: escape and sort its tags once.
    # Keyed by one flat tuple (name, keys..., values...), not by (name, *items): a tuple per tag
    # would cost five times the memory, for every VM written.
    head_key: tuple[object, ...] = (name, *tags, *tags.values())
    head = _head_cache.get(head_key)
    if head is None:
        head = _new_head(head_key, name, tags)
    return f"{head} {','.join(parts)} {time_ns}"


def _new_head(head_key: tuple[object, ...], name: str, tags: Mapping[str, str]) -> str:
    """A head not in this generation: moved over from the previous one, or made."""
    head = _head_older.pop(head_key, None)
    if head is None:
        if len(_head_cache) > _CACHE_LIMIT:
            _head_cache.clear()
        head = _head(name, tags)
    _head_cache[head_key] = head
    return head


def end_batch() -> None:
    """One batch is written: drop the heads of lines no longer written (call once a batch).

    Cheap when the VMs stay: a new generation starts only once the cache holds more heads
    than twice the batch's lines plus _HEAD_SLACK, that is after as many VMs came and went
    as are written; the next batch moves the heads still written over, one dict lookup each.
    """
    global _head_cache, _head_older, _batch_lines
    _head_older = {}
    if len(_head_cache) > 2 * _batch_lines + _HEAD_SLACK:
        _head_older, _head_cache = _head_cache, {}
        _tag_value_cache.clear()  # escaped names of VMs gone; those still here are in heads
    _batch_lines = 0


def clear_caches() -> None:
    """Forget every cached escape (for benchmarks of a first poll)."""
    global _batch_lines
    for cache in (_measurement_cache, _key_cache, _tag_value_cache, _field_prefix_cache):
        cache.clear()
    _head_cache.clear()
    _head_older.clear()
    _batch_lines = 0


def cached_heads() -> int:
    """Line heads held now, both generations (for tests and benchmarks)."""
    return len(_head_cache) + len(_head_older)


def format_lines(points: Iterable[tuple[str, Mapping[str, str], Mapping[str, object], int]]) -> str:
    """Many points, each line ended by a newline.

    Points with no field are left out, and so is a point that cannot be written at all
    (a name that is no string, a timestamp out of range): one bad point never costs the batch.
    """
    global _batch_lines
    out = []
    for name, tags, fields, time_ns in points:
        try:
            line = format_line(name, tags, fields, time_ns)
        except (TypeError, ValueError):
            continue
        if line is not None:
            out.append(line)
            out.append("\n")
    _batch_lines += len(out) >> 1
    return "".join(out)
