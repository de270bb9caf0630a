"""What Telegraf's outputs make of the plugin's lines, for tests (Telegraf cannot run here).

Written here from the rules of Telegraf's own source, not copied from it:

* :func:`graphite_lines`: ``outputs.graphite`` without tag support (plugins/serializers/graphite):
  the first template whose filter (a glob, or the exact name) matches the measurement wins,
  else the default template (``template``, or a one-part entry of ``templates``); each part
  names a tag (left out when the line lacks it; dots in its value become ``_``), or is
  ``measurement``, ``field`` or ``tags`` (every tag the template does not name, sorted by key,
  values joined by dots); ``prefix`` goes first. The field is put in (a field named ``value``
  leaves its part out), then the path is sanitised: ``/``, ``@`` and ``*`` become ``-``, a
  backslash is dropped and ``..`` becomes ``.`` in one left-to-right pass, and any character
  outside ``[a-zA-Z0-9-:._=]`` and letters becomes ``_``. Strings are not written; booleans are
  1 and 0; floats in the shortest form that reads back, without an exponent; seconds.
* :func:`prometheus_samples`: ``outputs.prometheus_client`` (plugins/outputs/prometheus_client,
  plugins/serializers/prometheus): the name is ``<measurement>_<field>``; tags become labels,
  and with ``string_as_label`` (Telegraf's default: true) so does every string field;
  ``metric_version = 2`` writes booleans as 1 and 0, ``metric_version = 1`` (the default)
  leaves booleans out; strings are never a sample.
* :func:`scraped`: what Prometheus stores of a sample it scrapes from a target: ``job`` and
  ``instance`` are the target's, and a label of the sample with either name is kept as
  ``exported_job`` / ``exported_instance`` (``honor_labels: false``, the default).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional

__all__ = [
    "GraphiteOutput",
    "Line",
    "graphite_lines",
    "prometheus_samples",
    "scraped",
]

Line = Mapping[str, Any]  # {"measurement", "tags", "fields", "time"}: line_protocol_parser's shape

_HYPHENS = str.maketrans({"/": "-", "@": "-", "*": "-"})


def _strict_sanitize(path: str) -> str:
    path = path.translate(_HYPHENS)
    out: list[str] = []
    i = 0
    while i < len(path):  # one pass, as Go's strings.Replacer does: "\" -> "", ".." -> "."
        if path[i] == "\\":
            i += 1
        elif path.startswith("..", i):
            out.append(".")
            i += 2
        else:
            out.append(path[i])
            i += 1
    return "".join(c if _allowed(c) else "_" for c in "".join(out))


def _allowed(char: str) -> bool:
    return char.isalpha() or char in "-:._=" or ("0" <= char <= "9")


def _graphite_value(value: object) -> Optional[str]:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return format(Decimal(repr(value)).normalize(), "f")
    return None  # strings: Graphite has none


@dataclass(frozen=True)
class GraphiteOutput:
    """The settings of one [[outputs.graphite]] block that shape its paths."""

    prefix: str = ""
    template: str = "host.tags.measurement.field"
    templates: tuple[str, ...] = ()

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> GraphiteOutput:
        """From the parsed TOML of an [[outputs.graphite]] block."""
        return cls(
            str(block.get("prefix", "")),
            str(block.get("template", "") or "host.tags.measurement.field"),
            tuple(block.get("templates", ())),
        )

    def _pick(self, measurement: str) -> str:
        default = self.template
        filtered: list[tuple[str, str]] = []
        for entry in self.templates:
            parts = entry.split()
            if len(parts) == 1:
                default = parts[0]
            elif len(parts) == 2:
                filtered.append((parts[0], parts[1]))
            else:
                raise ValueError(f"invalid template format: {entry!r}")
        for pattern, template in filtered:
            if fnmatch.fnmatchcase(measurement, pattern):
                return template
        return default

    def bucket(self, measurement: str, tags: Mapping[str, str]) -> str:
        """The path with FIELDNAME where the field goes (before the field and sanitising)."""
        left = dict(tags)
        out: list[str] = []
        for part in self._pick(measurement).split("."):
            if part == "measurement":
                out.append(measurement)
            elif part == "tags":
                out.append("TAGS")
            elif part == "field":
                out.append("FIELDNAME")
            elif part in left:
                out.append(left.pop(part).replace(".", "_"))
        for i, part in enumerate(out):
            if part == "TAGS":
                out[i] = ".".join(left[k].replace(".", "_") for k in sorted(left))
                break
        if not out:
            return ""
        return ".".join(([self.prefix] if self.prefix else []) + out)


def graphite_lines(lines: Iterable[Line], output: GraphiteOutput) -> list[tuple[str, str, int]]:
    """(path, value, seconds) for every field Graphite would receive."""
    written: list[tuple[str, str, int]] = []
    for line in lines:
        bucket = output.bucket(line["measurement"], line["tags"])
        if not bucket:
            continue
        for name, value in line["fields"].items():
            text = _graphite_value(value)
            if text is None:
                continue
            if name == "value":
                path = bucket.replace(".FIELDNAME", "").replace("FIELDNAME.", "")
            else:
                path = bucket.replace("FIELDNAME", name, 1)
            written.append((_strict_sanitize(path), text, int(line["time"]) // 1_000_000_000))
    return written


_BAD_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    name = _BAD_NAME.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


def _label_name(name: str) -> str:
    name = _BAD_LABEL.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


Labels = tuple[tuple[str, str], ...]


def prometheus_samples(
    lines: Iterable[Line], *, metric_version: int = 1, string_as_label: bool = True
) -> dict[tuple[str, Labels], float]:
    """(metric name, sorted labels) -> value, the last line of each series winning."""
    out: dict[tuple[str, Labels], float] = {}
    for line in lines:
        labels = {_label_name(k): v for k, v in line["tags"].items()}
        if string_as_label:
            for name, value in line["fields"].items():
                if isinstance(value, str):
                    labels.setdefault(_label_name(name), value)
        key = tuple(sorted(labels.items()))
        for name, value in line["fields"].items():
            if isinstance(value, str):
                continue
            if isinstance(value, bool):
                if metric_version != 2:
                    continue
                number = 1.0 if value else 0.0
            else:
                number = float(value)
            out[(_metric_name(f"{line['measurement']}_{name}"), key)] = number
    return out


def scraped(labels: Labels, job: str, instance: str) -> dict[str, str]:
    """The labels Prometheus stores for a sample scraped from target `instance` of `job`."""
    stored = dict(labels)
    for name, value in (("job", job), ("instance", instance)):
        if name in stored:
            stored["exported_" + name] = stored.pop(name)
        stored[name] = value
    return stored
