"""The SOAP of the hot path: the requests written here, their replies parsed while they stream.

Three requests (RetrievePropertiesEx over a container view, its continuation, and a realtime
QueryPerf) and their replies: each ``ObjectContent`` becomes ``(type, moid, {path: value})``
and each ``PerfEntityMetric`` ``(moid, sample time, {counter id: value})`` as soon as its end
tag arrives, then is dropped. Those in vCenter's usual flat shape are read from their text
(quick.py) and the XML parser sees a placeholder; the rest, and the document around them, go
through the parser. A SOAP fault in a reply raises :class:`VsphereFault`. (The request of
named objects, not a view, is the custom attributes' of VMs new since their last refresh.)

Nothing here sends anything or knows pyVmomi: the session module posts these bodies on
pyVmomi's connection, and the unit tests feed these parsers replies captured from the
simulator (tests/fixtures/vsphere/).
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple, Optional
from xml.sax.saxutils import escape

from . import quick
from .quick import Blocks

REALTIME_INTERVAL = 20  # seconds: vCenter's realtime performance sample
CHUNK = 64 * 1024  # bytes read from a reply at a time

_NS = "urn:vim25"
_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_T_OBJECTS = f"{{{_NS}}}objects"
_T_OBJ = f"{{{_NS}}}obj"
_T_PROPSET = f"{{{_NS}}}propSet"
_T_NAME = f"{{{_NS}}}name"
_T_VAL = f"{{{_NS}}}val"
_T_TOKEN = f"{{{_NS}}}token"
_T_RETURNVAL = f"{{{_NS}}}returnval"
_T_ENTITY = f"{{{_NS}}}entity"
_T_SAMPLEINFO = f"{{{_NS}}}sampleInfo"
_T_TIMESTAMP = f"{{{_NS}}}timestamp"
_T_VALUE = f"{{{_NS}}}value"
_T_ID = f"{{{_NS}}}id"
_T_COUNTER = f"{{{_NS}}}counterId"
_T_KEY = f"{{{_NS}}}key"
_T_FAULT = f"{{{_SOAP}}}Fault"
_XSI_TYPE = f"{{{_XSI}}}type"


Props = quick.Props


class Reply(NamedTuple):
    """One kind of reply: the elements its parser is handed (everything else streams past),
    and the element read from its text where it has the usual shape (None: all by the tree)."""

    wanted: frozenset[str]
    blocks: Optional[Blocks]


OBJECT_REPLY = Reply(frozenset((_T_OBJECTS, _T_TOKEN, _T_FAULT)), quick.OBJECTS)
PERF_REPLY = Reply(frozenset((_T_RETURNVAL, _T_FAULT)), quick.METRICS)


class VsphereFault(Exception):
    """A SOAP fault from the server: its type name (NotAuthenticated, ...) and message."""

    def __init__(self, fault: str, message: str) -> None:
        self.fault = fault
        super().__init__(f"{fault}: {message}" if message else fault)


# -- requests -----------------------------------------------------------------------------------

_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{_SOAP}" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    f'xmlns:xsi="{_XSI}"><soapenv:Body>{{body}}</soapenv:Body></soapenv:Envelope>'
)


def _mor(tag: str, kind: str, moid: str) -> str:
    return f'<{tag} type="{escape(kind)}">{escape(moid)}</{tag}>'


def _prop_set(kind: str, paths: Sequence[str]) -> str:
    """A PropertySpec: `paths` of the objects of type `kind` (put in as given)."""
    return (
        f"<propSet><type>{kind}</type><all>false</all>"
        + "".join(f"<pathSet>{escape(p)}</pathSet>" for p in paths)
        + "</propSet>"
    )


def _retrieve(collector: str, props: str, objects: str, page_size: int) -> bytes:
    """RetrievePropertiesEx of one PropertyFilterSpec, `page_size` objects a page."""
    body = (
        f'<RetrievePropertiesEx xmlns="{_NS}">'
        f"{_mor('_this', 'PropertyCollector', collector)}"
        f"<specSet>{props}{objects}</specSet>"
        f"<options><maxObjects>{page_size}</maxObjects></options></RetrievePropertiesEx>"
    )
    return _ENVELOPE.format(body=body).encode("utf-8")


def retrieve_request(
    collector: str,
    views: str | Sequence[str],
    specs: Sequence[tuple[str, Sequence[str]]],
    page_size: int,
) -> bytes:
    """RetrievePropertiesEx over one container view or several (each object once, as the
    property collector answers): property paths per type, `page_size` objects a page."""
    props = "".join(_prop_set(kind, paths) for kind, paths in specs)
    objects = "".join(
        f"<objectSet>{_mor('obj', 'ContainerView', view)}<skip>true</skip>"
        '<selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type>'
        "<path>view</path><skip>false</skip></selectSet></objectSet>"
        for view in ([views] if isinstance(views, str) else views)
    )
    return _retrieve(collector, props, objects, page_size)


def objects_request(
    collector: str, kind: str, moids: Sequence[str], paths: Sequence[str], page_size: int
) -> bytes:
    """RetrievePropertiesEx of named objects (no view): `paths` of each of `moids`."""
    objects = "".join(
        f"<objectSet>{_mor('obj', kind, moid)}<skip>false</skip></objectSet>" for moid in moids
    )
    return _retrieve(collector, _prop_set(escape(kind), paths), objects, page_size)


def continue_request(collector: str, token: str) -> bytes:
    body = (
        f'<ContinueRetrievePropertiesEx xmlns="{_NS}">'
        f"{_mor('_this', 'PropertyCollector', collector)}"
        f"<token>{escape(token)}</token></ContinueRetrievePropertiesEx>"
    )
    return _ENVELOPE.format(body=body).encode("utf-8")


def query_perf_request(perf_manager: str, queries: Iterable[tuple[str, Sequence[int]]]) -> bytes:
    """QueryPerf: the latest realtime sample (maxSample 1) of the given counters per VM."""
    specs = "".join(
        f"<querySpec>{_mor('entity', 'VirtualMachine', moid)}<maxSample>1</maxSample>"
        + "".join(
            f"<metricId><counterId>{c}</counterId><instance></instance></metricId>" for c in ids
        )
        + f"<intervalId>{REALTIME_INTERVAL}</intervalId></querySpec>"
        for moid, ids in queries
    )
    body = (
        f'<QueryPerf xmlns="{_NS}">{_mor("_this", "PerformanceManager", perf_manager)}'
        f"{specs}</QueryPerf>"
    )
    return _ENVELOPE.format(body=body).encode("utf-8")


# -- replies, parsed while they stream in -------------------------------------------------------


_QUICK_NS = "urn:telegraf-balloon:quick"
_QUICK = f"{{{_QUICK_NS}}}n"  # a placeholder's attribute: the key of what was read in its place
_PLACEHOLDER = b'<%s xmlns:q="' + _QUICK_NS.encode() + b'" q:n="%d"/>'
_HEAD = 512  # bytes of a reply kept to read its XML declaration
_DECLARED = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)")


def _plain_utf8(head: bytes) -> bool:
    """Whether a reply starting with `head` is UTF-8 without a DTD, as the text parsers read
    it: no declaration, or one naming UTF-8, complete within the head."""
    if b"<!DOCTYPE" in head:
        return False
    head = head.removeprefix(b"\xef\xbb\xbf")
    if not head.startswith(b"<?xml"):
        return True
    end = head.find(b"?>")
    if end < 0:
        return False
    declared = _DECLARED.match(head, 0, end)
    return declared is None or declared.group(1).lower() == b"utf-8"


class Stream:
    """Feeds a reply to an XMLPullParser in chunks; yields each finished element of interest.

    Each run of adjacent elements of `reply.blocks` that the text parser reads is replaced in
    the parser's input by one empty placeholder of the same name: the consumer gets the
    placeholder, and :meth:`take` gives what was read. An element the text parser declines
    is fed as it came.
    """

    def __init__(self, read: Callable[[int], bytes], reply: Reply) -> None:
        self._read = read
        self._wanted = reply.wanted
        self._blocks = reply.blocks
        # the placeholder's element name: the blocks' own (b"<objects>" -> b"objects")
        self._name = reply.blocks.start[1:].rstrip(b">") if reply.blocks else b""
        self._parser: Any = ET.XMLPullParser(events=("end",))
        self._head = b""
        self._plain: Optional[bool] = None  # decided at the first block
        self._read_here: dict[str, list[Any]] = {}
        self._runs = 0
        self.taken = 0  # elements of the reply read by the text parser

    def take(self, elem: ET.Element) -> Optional[list[Any]]:
        """What the text parser read in place of `elem`; None for an element of the tree."""
        key = elem.get(_QUICK)
        if key is None:
            return None
        items = self._read_here.pop(key, [])
        self.taken += len(items)
        return items

    def __iter__(self) -> Iterator[ET.Element]:
        parser, wanted, blocks = self._parser, self._wanted, self._blocks
        rest = b""
        while True:
            chunk = self._read(CHUNK)
            if blocks is None:
                if chunk:
                    parser.feed(chunk)
            else:
                if len(self._head) < _HEAD:
                    self._head += chunk[: _HEAD - len(self._head)]
                rest = self._split(rest + chunk if rest else chunk, blocks, not chunk)
            if not chunk:
                parser.close()
            for _, elem in parser.read_events():
                if elem.tag in wanted:
                    yield elem
            if not chunk:
                self._read_here.clear()  # placeholders a comment or CDATA held: no elements
                return

    def _split(self, data: bytes, blocks: Blocks, final: bool) -> bytes:
        """Feed `data` to the parser, each run of blocks read here replaced by a placeholder;
        return the tail still to come (a block begun, or what may begin a start tag)."""
        feed = self._parser.feed
        start, end, parse = blocks
        run: list[Any] = []
        at = 0
        while True:
            begin = data.find(start, at)
            stop = data.find(end, begin) if begin >= 0 else -1
            if stop < 0 or begin > at:
                run = self._placeholder(run)
            if stop < 0:
                if final:
                    keep = len(data)
                elif begin >= 0:
                    keep = begin  # a block begun: wait for its end
                else:
                    keep = max(at, len(data) - len(start) + 1)  # may begin a start tag
                if keep > at:
                    feed(data[at:keep])
                return data[keep:]
            stop += len(end)
            if begin > at:
                feed(data[at:begin])
            item = self._parse(data[begin:stop], parse)
            if item is None:
                run = self._placeholder(run)
                feed(data[begin:stop])
            else:
                run.append(item)
            at = stop

    def _placeholder(self, run: list[Any]) -> list[Any]:
        """Feed the placeholder of the blocks read since the last one (none: nothing); return
        the list for the next run."""
        if not run:
            return run
        self._runs += 1
        self._read_here[str(self._runs)] = run
        self._parser.feed(_PLACEHOLDER % (self._name, self._runs))
        return []

    def _parse(self, block: bytes, parse: Callable[[str], Optional[Any]]) -> Optional[Any]:
        if self._plain is None:
            self._plain = _plain_utf8(self._head)
        if not self._plain:
            return None
        try:
            return parse(block.decode("utf-8"))
        except UnicodeDecodeError:
            return None


# <soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>...</faultstring>
#   <detail><NotAuthenticatedFault xsi:type="NotAuthenticated">...</detail></soapenv:Fault>
def parse_fault(elem: ET.Element) -> VsphereFault:
    message = (elem.findtext("faultstring") or "").strip()
    name = "ServerFault"
    detail = elem.find("detail")
    if detail is not None and len(detail):
        first = detail[0]
        name = first.get(_XSI_TYPE) or first.tag.rsplit("}", 1)[-1].removesuffix("Fault")
        name = name.rsplit(":", 1)[-1]
    return VsphereFault(name, " ".join(message.split()))


def _value(val: ET.Element) -> Any:
    kind = val.get("type")
    if kind is not None:  # a ManagedObjectReference
        return (kind, val.text or "")
    text = val.text
    if (text is None or text.isspace()) and len(val):
        return _keyed_values(val)
    return text or ""


# <val xsi:type="ArrayOfCustomFieldValue"><CustomFieldValue xsi:type="CustomFieldStringValue">
#   <key>101</key><value>alice</value></CustomFieldValue>...</val>
def _keyed_values(val: ET.Element) -> dict[str, str]:
    """An array of key/value objects (customValue, the only such property asked for) as
    {key: value}; a key given twice keeps its last value."""
    out: dict[str, str] = {}
    for item in val:
        key = item.findtext(_T_KEY)
        if key is not None:
            out[key.strip()] = item.findtext(_T_VALUE) or ""
    return out


def parse_objects(elems: Stream, token: list[str]) -> Iterator[tuple[str, str, Props]]:
    """(type, moid, {path: value}) per ObjectContent; the continuation token into `token`."""
    for elem in elems:
        tag = elem.tag
        if tag == _T_OBJECTS:
            items = elems.take(elem)
            if items is None:
                items = [_object(elem)]
            elem.clear()
            yield from items
        elif tag == _T_TOKEN:
            token.append(elem.text or "")
        elif tag == _T_FAULT:
            raise parse_fault(elem)


def _object(elem: ET.Element) -> tuple[str, str, Props]:
    kind = moid = ""
    props: Props = {}
    for child in elem:
        ctag = child.tag
        if ctag == _T_PROPSET:
            name = child.findtext(_T_NAME)
            val = child.find(_T_VAL)
            if name is not None and val is not None:
                props[name] = _value(val)
        elif ctag == _T_OBJ:
            kind, moid = child.get("type", ""), child.text or ""
    return kind, moid, props


def parse_perf(elems: Stream) -> Iterator[tuple[str, float, dict[int, int]]]:
    """(VM moid, sample time, {counter id: latest value}) per PerfEntityMetric."""
    last_text, last_stamp = "", 0.0
    for elem in elems:
        if elem.tag == _T_FAULT:
            raise parse_fault(elem)
        items = elems.take(elem)
        if items is None:
            metric = _metric(elem)
            items = [metric] if metric is not None else []
        elem.clear()
        for entity, text, values in items:
            if text != last_text:  # every VM of a reply usually has the same sample time
                last_text, last_stamp = text, _iso_seconds(text)
            yield entity, last_stamp, values


def _metric(elem: ET.Element) -> Optional[tuple[str, str, dict[int, int]]]:
    """(entity, the last sample's timestamp text, {counter: latest value >= 0}); None
    without an entity."""
    entity = elem.findtext(_T_ENTITY)
    if entity is None:
        return None
    infos = elem.findall(_T_SAMPLEINFO)
    text = (infos[-1].findtext(_T_TIMESTAMP) or "") if infos else ""
    values: dict[int, int] = {}
    for series in elem.iterfind(_T_VALUE):
        ident = series.find(_T_ID)  # a plain child lookup stays in C (a path would not)
        counter = ident.findtext(_T_COUNTER) if ident is not None else None
        points = series.findall(_T_VALUE)
        if counter is None or not points:
            continue
        with contextlib.suppress(ValueError):
            number = int((points[-1].text or "").strip())
            if number >= 0:  # -1: no data for this sample
                values[int(counter)] = number
    return entity, text, values


def _iso_seconds(text: str) -> float:
    """vCenter's xsd:dateTime (2026-11-28T10:00:20Z, maybe with fraction/offset) -> epoch s."""
    text = text.strip()
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def http_date(value: Optional[str]) -> Optional[float]:
    """An HTTP Date header (Sat, 28 Nov 2026 10:00:31 GMT) -> epoch s; None when absent or bad."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def error_text(exc: BaseException) -> str:
    """One line saying what went wrong in an exchange, for a log line or the collector's error."""
    text = getattr(exc, "msg", None) or str(exc).strip() or type(exc).__name__
    if isinstance(exc, socket.timeout):
        text = "timed out"
    return " ".join(str(text).split())
