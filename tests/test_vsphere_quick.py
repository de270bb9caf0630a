"""The replies' usual elements read from their text (sources/vsphere/quick.py), against the tree.

The oracle is the same Stream with no text parser (``Reply(wanted, None)``): every element
then goes through ElementTree, as before the text parsers existed. Each test parses one reply
both ways and asserts the same items, and, where the reply has the usual shape, that the text
parsers did read it (so a test cannot pass by everything falling back to the tree).
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telegraf_balloon.sources.vsphere import quick as Q
from telegraf_balloon.sources.vsphere import soap as S

FIXTURES = Path(__file__).parent / "fixtures" / "vsphere"
TREE_OBJECTS = S.Reply(S.OBJECT_REPLY.wanted, None)
TREE_PERF = S.Reply(S.PERF_REPLY.wanted, None)

HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
)
TAIL = "</soapenv:Body></soapenv:Envelope>"


def _stream(data: bytes, reply: S.Reply, chunk: int) -> S.Stream:
    body = io.BytesIO(data)
    return S.Stream(lambda n: body.read(min(n, chunk)), reply)


def _read(
    data: bytes, reply: S.Reply, parse: Callable[[S.Stream], Iterator[Any]], chunk: int
) -> tuple[Any, int]:
    """What `parse` gives of a reply (or its fault, or that it is not well-formed), and how
    many elements were read as text."""
    stream = _stream(data, reply, chunk)
    try:
        items: Any = list(parse(stream))
    except S.VsphereFault as fault:
        items = ("fault", fault.fault, str(fault))
    except ET.ParseError:
        items = "not well-formed"
    return items, stream.taken


def objects(data: bytes, reply: S.Reply, chunk: int = S.CHUNK) -> tuple[Any, int]:
    """((items, token), how many read as text) of a RetrievePropertiesEx reply."""
    token: list[str] = []
    items, taken = _read(data, reply, lambda stream: S.parse_objects(stream, token), chunk)
    return (items, token), taken


def metrics(data: bytes, reply: S.Reply, chunk: int = S.CHUNK) -> tuple[Any, int]:
    return _read(data, reply, S.parse_perf, chunk)


def _both(
    read: Callable[[bytes, S.Reply, int], tuple[Any, int]], data: bytes, reply: S.Reply, chunk: int
) -> int:
    """Assert the reply reads the same with the text parsers and by the tree alone; return
    how many elements the text parsers read."""
    quick, taken = read(data, reply, chunk)
    tree, none = read(data, S.Reply(reply.wanted, None), chunk)
    assert none == 0
    assert quick == tree
    return taken


def both_objects(data: bytes, chunk: int = S.CHUNK) -> int:
    return _both(objects, data, S.OBJECT_REPLY, chunk)


def both_metrics(data: bytes, chunk: int = S.CHUNK) -> int:
    return _both(metrics, data, S.PERF_REPLY, chunk)


# -- the simulator's own replies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("retrieve-page1.xml", 2),
        ("retrieve-page2.xml", 2),
        ("retrieve-inventory.xml", 2),
        ("fault-invalid-token.xml", 0),
        ("fault-not-authenticated.xml", 0),
    ],
)
def test_captured_replies_read_as_the_tree_reads_them(name: str, count: int) -> None:
    data = (FIXTURES / name).read_bytes()
    assert both_objects(data) == count
    assert data.count(b"<objects>") == count


def test_captured_queryperf_read_as_the_tree_reads_it() -> None:
    data = (FIXTURES / "queryperf.xml").read_bytes()
    assert both_metrics(data) == 2


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["retrieve-page2.xml", "retrieve-inventory.xml"]), st.integers(1, 900))
def test_any_chunking_gives_the_same(name: str, chunk: int) -> None:
    data = (FIXTURES / name).read_bytes()
    assert both_objects(data, chunk) == data.count(b"<objects>")
    perf = (FIXTURES / "queryperf.xml").read_bytes()
    assert both_metrics(perf, chunk) == 2


# -- replies written here: vCenter's shape, and what it must decline ---------------------------

# Characters a name or value may hold: markup and references, white space a parser
# normalises, and beyond ASCII.
TEXT = st.text(alphabet=st.sampled_from([*"ab z09-_.:/<>&\"'\r\n\t;#é€𝄞\x7f"]), max_size=12)


@st.composite
def value(draw: Any) -> str:
    """One <val> as a server could write it."""
    kind = draw(st.sampled_from(["plain", "plain", "ref", "array", "empty", "odd"]))
    text = draw(TEXT)
    if kind == "plain":
        attrs = draw(
            st.sampled_from(
                [
                    ' xsi:type="xsd:string"',
                    ' xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"'
                    ' XMLSchema-instance:type="xsd:int"',
                    "",
                    " xsi:type='xsd:string'",  # single quotes: declined
                    '  xsi:type="xsd:string" ',  # other spacing: declined
                    ' xmlns="urn:other"',  # another default namespace: not vim25's val
                ]
            )
        )
        return f"<val{attrs}>{escape(text)}</val>"
    if kind == "ref":
        order = draw(st.booleans())
        ref = f"type={quoteattr(draw(TEXT))}"
        xsi = 'xsi:type="ManagedObjectReference"'
        return (f"<val {ref} {xsi}>" if order else f"<val {xsi} {ref}>") + escape(text) + "</val>"
    if kind == "array":
        items = "".join(
            f'<CustomFieldValue xsi:type="CustomFieldStringValue"><key>{k}</key>'
            f"<value>{escape(draw(TEXT))}</value></CustomFieldValue>"
            for k in draw(st.lists(st.sampled_from(["101", " 102 ", "103"]), max_size=3))
        )
        return f'<val xsi:type="ArrayOfCustomFieldValue">{items}</val>'
    if kind == "empty":
        empty: str = draw(st.sampled_from(['<val xsi:type="xsd:string"/>', "<val></val>"]))
        return empty
    odd: str = draw(
        st.sampled_from(
            [
                f"<val><![CDATA[{text.replace(']]>', '')}]]></val>",
                f"<val>{escape(text)}<!-- a comment --></val>",
                f"<val>&#{ord(text[0]) if text else 65};</val>",
                "<val>\n  12\n</val>",
            ]
        )
    )
    return odd


@st.composite
def object_content(draw: Any) -> str:
    props = "".join(
        draw(
            st.sampled_from(
                [
                    f"<propSet><name>{escape(name)}</name>{val}</propSet>",
                    f"<propSet>\n  <name>{escape(name)}</name>{val}</propSet>",  # spacing
                    f"<propSet><name>{escape(name)}</name></propSet>",  # no val
                    f"<propSet>{val}<name>{escape(name)}</name></propSet>",  # other order
                ]
            )
        )
        for name, val in draw(st.lists(st.tuples(TEXT, value()), max_size=5))
    )
    obj = draw(
        st.sampled_from(
            [
                f"<obj type={quoteattr(draw(TEXT))}>{escape(draw(TEXT))}</obj>",
                '<obj xsi:type="ManagedObjectReference" type="VirtualMachine">'
                f"vm-{escape(draw(TEXT))}</obj>",
                "",  # no obj
            ]
        )
    )
    missing = draw(st.sampled_from(["", "<missingSet><path>config</path></missingSet>"]))
    first = draw(st.booleans())
    return (
        f"<objects>{obj}{props}{missing}</objects>" if first else f"<objects>{props}{obj}</objects>"
    )


def retrieve_reply(items: list[str], token: Optional[str], around: str = "") -> bytes:
    token_xml = f"<token>{token}</token>" if token is not None else ""
    return (
        HEAD
        + f'<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>{token_xml}'
        + around.join(items)
        + "</returnval></RetrievePropertiesExResponse>"
        + TAIL
    ).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(object_content(), max_size=6),
    st.sampled_from(["", "\n", "<!-- between -->", " "]),
    st.integers(1, 300),
)
def test_any_object_reads_as_the_tree_reads_it(items: list[str], around: str, chunk: int) -> None:
    both_objects(retrieve_reply(items, "7", around), chunk)


def test_the_usual_shape_is_read_as_text_and_the_rest_by_the_tree() -> None:
    usual = (
        '<objects><obj type="VirtualMachine">vm-1</obj>'
        '<propSet><name>name</name><val xsi:type="xsd:string">web &amp; db</val></propSet>'
        "</objects>"
    )
    plain = usual.replace(" &amp; ", "-")
    ref = (
        '<objects><obj type="VirtualMachine">vm-2</obj><propSet><name>runtime.host</name>'
        '<val type="HostSystem" xsi:type="ManagedObjectReference">host-9</val></propSet>'
        "</objects>"
    )
    data = retrieve_reply([plain, usual, ref], None)
    assert both_objects(data) == 2  # the '&amp;' one went through the tree
    (items, _), _ = objects(data, S.OBJECT_REPLY)
    assert items == [
        ("VirtualMachine", "vm-1", {"name": "web-db"}),
        ("VirtualMachine", "vm-1", {"name": "web & db"}),
        ("VirtualMachine", "vm-2", {"runtime.host": ("HostSystem", "host-9")}),
    ]


def test_custom_values_are_read_as_text() -> None:
    """customValue, on the VM pages every 5 minutes: a key twice keeps its last value; an
    empty array is an empty value, as the tree gives it."""
    array = '<propSet><name>customValue</name><val xsi:type="ArrayOfCustomFieldValue">{}</val>'
    values = "".join(
        f'<CustomFieldValue xsi:type="CustomFieldStringValue"><key>{k}</key>'
        f"<value>{v}</value></CustomFieldValue>"
        for k, v in (("101", "alice"), (" 102 ", "ops"), ("101", "bob"))
    )
    head = '<objects><obj type="VirtualMachine">vm-4</obj>'
    full = head + array.format(values) + "</propSet></objects>"
    empty = head + array.format("") + "</propSet></objects>"
    assert both_objects(retrieve_reply([full, empty], None)) == 2
    assert Q.object_content(full) == (
        "VirtualMachine",
        "vm-4",
        {"customValue": {"101": "bob", "102": "ops"}},
    )
    assert Q.object_content(empty) == ("VirtualMachine", "vm-4", {"customValue": ""})


def test_a_value_in_another_namespace_is_not_vim25s() -> None:
    """`xmlns="..."` on a val moves it out of urn:vim25: the tree does not see a val there."""
    other = (
        '<objects><obj type="VirtualMachine">vm-3</obj><propSet><name>name</name>'
        '<val xmlns="urn:other" xsi:type="xsd:string">x</val></propSet>'
        '<propSet><name>config.template</name><val xsi:type="xsd:boolean">false</val></propSet>'
        "</objects>"
    )
    data = retrieve_reply([other], None)
    assert both_objects(data) == 0
    (items, _), _ = objects(data, S.OBJECT_REPLY)
    assert items == [("VirtualMachine", "vm-3", {"config.template": "false"})]


def test_an_object_in_a_comment_is_no_object() -> None:
    plain = '<objects><obj type="VirtualMachine">vm-1</obj></objects>'
    data = retrieve_reply([plain, f"<!--{plain}-->", f"<![CDATA[{plain}]]>"], None)
    quick, taken = objects(data, S.OBJECT_REPLY)
    assert quick == objects(data, TREE_OBJECTS)[0]
    assert quick[0] == [("VirtualMachine", "vm-1", {})]
    assert taken == 1


def test_a_comment_cannot_end_inside_a_block_read_as_text() -> None:
    """Text read here has no '>': a comment begun before a block cannot end inside it."""
    tricky = (
        '<objects ><obj type="a"><!-- <objects><obj type="x">y--></obj>'
        "<propSet><name>n</name><val>v</val></propSet></objects>"
    )
    data = retrieve_reply([tricky], None)
    assert both_objects(data) == 0
    assert objects(data, S.OBJECT_REPLY)[0][0] == [("a", "", {"n": "v"})]


def test_an_object_outside_vim25_is_not_read() -> None:
    """The placeholder stands where the element stood: its namespace is the parser's."""
    plain = '<objects><obj type="VirtualMachine">vm-1</obj></objects>'
    data = retrieve_reply([f'<other xmlns="urn:other">{plain}</other>', plain], None)
    quick, taken = objects(data, S.OBJECT_REPLY)
    assert quick == objects(data, TREE_OBJECTS)[0]
    assert quick[0] == [("VirtualMachine", "vm-1", {})]
    assert taken == 1  # the other one was read as text, and its placeholder not taken


@pytest.mark.parametrize(
    ("declaration", "read"),
    [
        ('<?xml version="1.0" encoding="UTF-8"?>', True),
        ("<?xml version='1.0' encoding='utf-8'?>", True),
        ('<?xml version="1.0" encoding="utf8"?>', False),  # a name Expat does not know
        ('<?xml version="1.0"?>', True),
        ("", True),
        ('<?xml version="1.0" encoding="ISO-8859-1"?>', False),
        ('<?xml version="1.0"?><!DOCTYPE soapenv:Envelope [<!ATTLIST val type CDATA "X">]>', False),
    ],
)
def test_only_plain_utf8_is_read_as_text(declaration: str, read: bool) -> None:
    # In Latin-1, the two bytes of UTF-8's é are two letters: read as UTF-8 they would be one.
    latin = "8859" in declaration
    name = "caf\u00c3\u00a9" if latin else "caf\u00e9"
    body = retrieve_reply(
        [
            '<objects><obj type="VirtualMachine">vm-1</obj><propSet><name>name</name>'
            f'<val xsi:type="xsd:string">{name}</val></propSet></objects>'
        ],
        None,
    ).decode()
    data = (declaration + body[body.index("\n") + 1 :]).encode("latin-1" if latin else "utf-8")
    assert both_objects(data) == (1 if read else 0)
    if "utf8" in declaration:
        assert objects(data, S.OBJECT_REPLY)[0][0] == "not well-formed"
        return
    [(_, _, props)] = objects(data, S.OBJECT_REPLY)[0][0]
    assert props["name"] == (("X", name) if "ATTLIST" in declaration else name)


# -- QueryPerf ---------------------------------------------------------------------------------


@st.composite
def entity_metric(draw: Any) -> str:
    entity = draw(
        st.sampled_from(
            [
                f'<entity type="VirtualMachine">vm-{escape(draw(TEXT))}</entity>',
                "",  # none: no metric
            ]
        )
    )
    samples = "".join(
        f"<sampleInfo><timestamp>2026-12-05T17:{m:02d}:20Z</timestamp>"
        f"<interval>20</interval></sampleInfo>"
        for m in draw(st.lists(st.integers(0, 59), max_size=2))
    )
    series = ""
    for _ in range(draw(st.integers(0, 3))):
        counter = draw(st.sampled_from(["90", "94", " 70 ", "x"]))
        instance = draw(
            st.sampled_from(["<instance></instance>", "<instance/>", "<instance>*</instance>"])
        )
        points = "".join(
            f"<value>{v}</value>"
            for v in draw(
                st.lists(st.sampled_from(["0", "-1", "12288", " 5", "1.5", ""]), max_size=3)
            )
        )
        series += (
            f'<value xsi:type="PerfMetricIntSeries"><id><counterId>{counter}</counterId>'
            f"{instance}</id>{points}</value>"
        )
    return f'<returnval xsi:type="PerfEntityMetric">{entity}{samples}{series}</returnval>'


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entity_metric(), max_size=5), st.integers(1, 300))
def test_any_metric_reads_as_the_tree_reads_it(items: list[str], chunk: int) -> None:
    data = (
        HEAD
        + '<QueryPerfResponse xmlns="urn:vim25">'
        + "".join(items)
        + "</QueryPerfResponse>"
        + TAIL
    ).encode()
    both_metrics(data, chunk)


def test_usual_metric_is_read_as_text() -> None:
    usual = (
        '<returnval xsi:type="PerfEntityMetric"><entity type="VirtualMachine">vm-7</entity>'
        "<sampleInfo><timestamp>2026-12-05T17:57:20Z</timestamp><interval>20</interval>"
        '</sampleInfo><value xsi:type="PerfMetricIntSeries"><id><counterId>90</counterId>'
        "<instance></instance></id><value>-1</value><value>4096</value></value>"
        '<value xsi:type="PerfMetricIntSeries"><id><counterId>94</counterId><instance/></id>'
        "<value>-1</value></value></returnval>"
    )
    data = (
        HEAD + f'<QueryPerfResponse xmlns="urn:vim25">{usual}</QueryPerfResponse>' + TAIL
    ).encode()
    assert both_metrics(data) == 1
    [(moid, stamp, values)] = metrics(data, S.PERF_REPLY)[0]
    assert (moid, values) == ("vm-7", {90: 4096})
    assert stamp == S._iso_seconds("2026-12-05T17:57:20Z") > 0
    assert Q.entity_metric(usual) == ("vm-7", "2026-12-05T17:57:20Z", {90: 4096})
