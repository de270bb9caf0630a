"""The usual shape of vCenter's bulk replies, read without building a tree.

Nearly every byte of a poll's replies is one of two elements, in the same flat shape each time:

    <objects><obj type="VirtualMachine">vm-42</obj>
      <propSet><name>summary.quickStats.balloonedMemory</name><val xsi:type="xsd:int">0</val>
      </propSet>...</objects>                      (RetrievePropertiesEx: one per object)
    <returnval xsi:type="PerfEntityMetric"><entity type="VirtualMachine">vm-42</entity>
      <sampleInfo>...</sampleInfo><value xsi:type="PerfMetricIntSeries"><id><counterId>90
      </counterId><instance></instance></id><value>0</value></value>...</returnval>
                                                   (QueryPerf: one per VM)

(written here on several lines; a reply has no white space between the tags). Building an
ElementTree of them costs more than half of a poll's CPU: about 65 elements per VM, each made,
handed to Python as an event and dropped. The parsers here read one such element from its text
with regular expressions instead, and give the same values the tree would.

They only accept what they can read exactly: text with nothing to unescape (no ``&``), no
carriage return (a parser would change it), no control character (a parser would refuse it),
no ``>`` (servers escape it); attributes in double quotes, one space apart, none redeclaring
the default namespace; no white space between the tags, no comment, no CDATA; every ``<`` of
the element accounted for. Anything else (an entity reference, another server's spacing, a
property of another kind) makes them answer None, and the stream hands those bytes to the XML
parser as before (soap.Stream). The stream puts a placeholder in the parser's input in place
of each run of elements read here, so the parser still checks where they stand: the
document's shape, its namespaces and its faults stay the parser's to judge, and an element
inside a comment or CDATA section (which no '>' in the text can end early) yields nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

# property path -> str, (type, moid) for a reference, {key: value} for custom values
Props = dict[str, Any]

# Text a parser would hand over unchanged: no markup, reference, CR or control character; and
# no '>' (servers write &gt;), so no block can end a comment or CDATA section begun before it.
_TEXT = r"[^<>&\r\x00-\x08\x0b\x0c\x0e-\x1f]*"
# Attributes as vCenter writes them: double quotes, one space before each. (An element that
# redeclares the default namespace, `xmlns="..."`, would leave urn:vim25: such a block is
# declined as a whole.)
_ATTRS = r'(?: [A-Za-z_:][A-Za-z0-9_:.-]*="[^"<>&\t\n\r]*")*'
_NEW_DEFAULT = ' xmlns="'
_INT = r"-?[0-9]+"
_TYPE = re.compile(r' type="([^"]*)"')  # the reference's type; xsi:type has a prefix


class Blocks(NamedTuple):
    """An element read here: its start and end as bytes, and its parser (None: not readable
    here). The element never contains its own end tag."""

    start: bytes
    end: bytes
    parse: Callable[[str], Optional[Any]]


def _uncaptured(pattern: str) -> str:
    """The pattern with its groups made non-capturing (to repeat it inside another)."""
    return re.sub(r"\((?!\?)", "(?:", pattern)


# -- RetrievePropertiesEx: ObjectContent --------------------------------------------------------

_OBJ = re.compile(rf"<objects><obj({_ATTRS})>({_TEXT})</obj>")
# customValue, the only array asked for: <CustomFieldValue xsi:type="CustomFieldStringValue">
_KEYED = (
    rf"<CustomFieldValue{_ATTRS}><key>({_TEXT})</key><value>({_TEXT})</value></CustomFieldValue>"
)
_PROP = re.compile(
    rf"<propSet><name>({_TEXT})</name><val({_ATTRS})>"
    rf"(?:({_TEXT})|((?:{_uncaptured(_KEYED)})+))</val></propSet>"
)
_KEYEDS = re.compile(_KEYED)
_OBJ_MARKUP = 4  # '<' in <objects><obj ...>...</obj> and </objects>
_PROP_MARKUP = 6  # '<' in one <propSet>...</propSet>
_KEYED_MARKUP = 6  # '<' in one <CustomFieldValue>...</CustomFieldValue>


def object_content(block: str) -> Optional[tuple[str, str, Props]]:
    """(type, moid, {path: value}) of one ``<objects>`` element, as soap.parse_objects gives
    it; None unless every property is a plain value, a reference or custom values."""
    head = _OBJ.match(block)
    if head is None or _NEW_DEFAULT in block:
        return None
    found = _PROP.findall(block, head.end())
    props: Props = {}
    markup = _OBJ_MARKUP + _PROP_MARKUP * len(found)
    for name, attrs, text, keyed in found:
        if ' type="' in attrs:  # a ManagedObjectReference
            kind = _TYPE.search(attrs)
            props[name] = (kind.group(1), text) if kind else text
        elif keyed:
            pairs = _KEYEDS.findall(keyed)
            markup += _KEYED_MARKUP * len(pairs)
            props[name] = {key.strip(): value for key, value in pairs}  # the last of a key
        else:
            props[name] = text
    # Every '<' of the element belongs to the head, its end or one property read above: what
    # lies between them is no markup (and there is none in a reply).
    if block.count("<") != markup:
        return None
    kind = _TYPE.search(head.group(1))
    return (kind.group(1) if kind else ""), head.group(2), props


# -- QueryPerf: PerfEntityMetric ----------------------------------------------------------------

_SAMPLE = rf"<sampleInfo><timestamp>({_TEXT})</timestamp><interval>{_INT}</interval></sampleInfo>"
_SERIES = (
    rf"<value{_ATTRS}><id><counterId>({_INT})</counterId>(?:<instance>{_TEXT}</instance>"
    rf"|<instance/>)</id>((?:<value>{_INT}</value>)+)</value>"
)
_METRIC = re.compile(
    rf"<returnval{_ATTRS}><entity{_ATTRS}>({_TEXT})</entity>"
    rf"((?:{_uncaptured(_SAMPLE)})*)((?:{_uncaptured(_SERIES)})*)</returnval>"
)
_SAMPLES = re.compile(_SAMPLE)
_SERIESES = re.compile(_SERIES)
_LAST_POINT = len("<value>")


def entity_metric(block: str) -> Optional[tuple[str, str, dict[int, int]]]:
    """(VM moid, the last sample's timestamp text, {counter id: latest value >= 0}) of one
    QueryPerf ``<returnval>``, as soap.parse_perf reads it; None unless it is int series."""
    whole = _METRIC.fullmatch(block)
    if whole is None or _NEW_DEFAULT in block:
        return None
    samples = whole.group(2)
    stamp = _SAMPLES.findall(samples)[-1] if samples else ""
    values: dict[int, int] = {}
    for counter, points in _SERIESES.findall(whole.group(3)):
        number = int(points[points.rindex("<value>") + _LAST_POINT : -len("</value>")])
        if number >= 0:  # -1: no data for this sample
            values[int(counter)] = number
    return whole.group(1), stamp, values


OBJECTS = Blocks(b"<objects>", b"</objects>", object_content)
METRICS = Blocks(b"<returnval", b"</returnval>", entity_metric)
