"""Context tags of the libvirt source: Nova's metadata, KubeVirt's domain names, live edits.

The domain XML is written here in the shape OpenStack Nova writes it (its metadata classes:
`<nova:instance>` in the namespace http://openstack.org/xmlns/libvirt/nova/1.1) and in the
shape KubeVirt's virt-launcher gives a domain (`<namespace>_<name>`, a `<kubevirt>` element
in http://kubevirt.io). The source runs on the tests' fake connection (recorded libvirtd
answers); the metadata-change event is fired by the test, where the real daemon's event is
in tests/integration/test_libvirt_context.py.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any, Optional

import libvirt  # the binding is a test dependency: make setup installs it
import line_protocol_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telegraf_balloon import catalog, lineprotocol
from telegraf_balloon.sources.context import MAX_TAG_BYTES, tag_value
from telegraf_balloon.sources.libvirt.context import domain_context
from telegraf_balloon.sources.libvirt.source import LibvirtSource
from tests.fakes.libvirt_conn import FakeConnection
from tests.test_libvirt_source import fake as recorded_host
from tests.test_libvirt_source import remote_source

NOVA = "http://openstack.org/xmlns/libvirt/nova/1.1"
UUID = "5f0c1e33-6a3e-4c8e-9d1b-0d1a2b3c4d5e"
T0 = 1_700_000_000.0
BULK = {"balloon.current": 524288, "balloon.maximum": 1048576, "balloon.last-update": 0}
HOSTILE = (
    "web 01,x=1 \"quoted\" \\back\\ \n\t#hash {b} 'q' <a&b> ;|$ \u2028\u00a0 \u00e9\u4e2d\U0001f600"
)


def nova_instance(
    name: str = "web-01",
    project: str = "shop",
    user: str = "alice",
    flavor: Optional[str] = "m1.small",
    namespace: str = NOVA,
) -> ET.Element:
    """<nova:instance> as Nova writes it (LibvirtConfigGuestMetaNovaInstance.format_dom)."""
    ET.register_namespace("nova", namespace)
    ns = f"{{{namespace}}}"
    instance = ET.Element(f"{ns}instance")
    ET.SubElement(instance, f"{ns}package", version="27.1.0")
    ET.SubElement(instance, f"{ns}name").text = name
    ET.SubElement(instance, f"{ns}creationTime").text = "2024-05-02 09:14:55"
    flavor_el = ET.SubElement(instance, f"{ns}flavor")
    if flavor is not None:
        flavor_el.set("name", flavor)
    for key, value in (("memory", "2048"), ("disk", "20"), ("swap", "0"), ("vcpus", "1")):
        ET.SubElement(flavor_el, f"{ns}{key}").text = value
    owner = ET.SubElement(instance, f"{ns}owner")
    ET.SubElement(owner, f"{ns}user", uuid="8c1e5b9f0a2d4e6f").text = user
    ET.SubElement(owner, f"{ns}project", uuid="3d9a7c1b5e2f4a60").text = project
    ET.SubElement(instance, f"{ns}root", type="image", uuid="0a1b2c3d-0000-4000-8000-000000000000")
    return instance


def domain_xml(name: str, *metadata: ET.Element) -> str:
    dom = ET.Element("domain", type="kvm")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = UUID
    ET.SubElement(dom, "memory", unit="KiB").text = "1048576"
    if metadata:
        holder = ET.SubElement(dom, "metadata")
        holder.extend(metadata)
    devices = ET.SubElement(dom, "devices")
    balloon = ET.SubElement(devices, "memballoon", model="virtio")
    ET.SubElement(balloon, "stats", period="2")
    return ET.tostring(dom, encoding="unicode")


def kubevirt_metadata() -> ET.Element:
    """virt-launcher's <kubevirt> element: uid and grace period, no namespace or name."""
    element = ET.Element("{http://kubevirt.io}kubevirt")
    ET.SubElement(element, "{http://kubevirt.io}uid").text = "f4686d2c-6e8d-4335-b8fd"
    grace = ET.SubElement(element, "{http://kubevirt.io}graceperiod")
    ET.SubElement(grace, "{http://kubevirt.io}deletionGracePeriodSeconds").text = "30"
    return element


def fake(name: str, xml: str) -> FakeConnection:
    """One domain on the recorded host."""
    calls = {"name": name, "UUIDString": UUID, "ID": 1, "XMLDesc": xml}
    return recorded_host((calls, dict(BULK)))


def source(conn: FakeConnection, **overrides: Any) -> tuple[LibvirtSource, io.StringIO]:
    return remote_source(lambda _u, _r: conn, **overrides)


def said(log: io.StringIO) -> list[str]:
    """The log's lines but the I! ones (a remote URI says at start it has no host facts)."""
    return [line for line in log.getvalue().splitlines() if not line.startswith("I! ")]


def tags_of(made: LibvirtSource, now: float = T0) -> dict[str, str]:
    result = made.poll(now)
    assert result.error is None, result.error
    [sample] = result.samples
    return dict(sample.tags)


def written(tags: dict[str, str]) -> dict[str, Any]:
    """The tags as a line-protocol consumer reads them back."""
    text = lineprotocol.format_lines([(catalog.BALLOON, tags, {"x": 1}, 1)])
    assert text.count("\n") == 1, text
    parsed = line_protocol_parser.parse_line(text.rstrip("\n"))
    assert catalog.check_point(catalog.BALLOON, parsed["tags"], {}) == []
    tags_back: dict[str, Any] = parsed["tags"]
    return tags_back


# -- the XML --


def test_nova_metadata_gives_the_names_operators_search_by() -> None:
    xml = domain_xml("instance-0000a3f1", nova_instance())
    context = domain_context(xml, "instance-0000a3f1", ("openstack",))
    assert context.tags == {
        "instance_name": "web-01",
        "project": "shop",
        "user": "alice",
        "flavor": "m1.small",
    }
    assert context.problems == [] and context.cut == []


def test_older_instances_in_nova_namespace_1_0_are_read_too() -> None:
    old = "http://openstack.org/xmlns/libvirt/nova/1.0"
    xml = domain_xml("instance-00000001", nova_instance(name="legacy", namespace=old))
    assert domain_context(xml, "instance-00000001", ("openstack",)).tags["instance_name"] == (
        "legacy"
    )


def test_only_the_contexts_asked_for() -> None:
    xml = domain_xml("prod_web", nova_instance(), kubevirt_metadata())
    assert set(domain_context(xml, "prod_web", ("kubevirt",)).tags) == {"namespace", "vm"}
    assert set(domain_context(xml, "prod_web", ("openstack",)).tags) == {
        "instance_name",
        "project",
        "user",
        "flavor",
    }
    assert domain_context(xml, "prod_web", ()).tags == {}


@pytest.mark.parametrize(
    ("name", "metadata", "expected"),
    [
        ("shop_web-01", True, {"namespace": "shop", "vm": "web-01"}),
        ("shop_web_01.v2", True, {"namespace": "shop", "vm": "web_01.v2"}),  # first _ splits
        ("lonely", True, {"namespace": "default", "vm": "lonely"}),  # as KubeVirt reads it
        ("shop_web-01", False, {"namespace": "shop", "vm": "web-01"}),  # the name's shape
        ("Shop_Web", False, {}),  # upper case: no Kubernetes name
        ("web_", False, {}),
        ("a_b_c", False, {}),  # "b_c" is no Kubernetes name
        ("plain-domain", False, {}),
    ],
)
def test_kubevirt_namespace_and_vm_from_the_virt_launcher_domain_name(
    name: str, metadata: bool, expected: dict[str, str]
) -> None:
    xml = domain_xml(name, kubevirt_metadata()) if metadata else domain_xml(name)
    assert domain_context(xml, name, ("kubevirt",)).tags == expected


def test_metadata_not_of_nova_s_shape_is_said_and_left_out() -> None:
    instance = nova_instance(flavor=None)
    name = instance.find(f"{{{NOVA}}}name")
    assert name is not None
    name.text = None
    ET.SubElement(name, "b").text = "bold"  # markup where Nova writes text
    context = domain_context(domain_xml("instance-1", instance), "instance-1", ("openstack",))
    assert "instance_name" not in context.tags and "flavor" not in context.tags
    assert context.tags["project"] == "shop"
    assert context.problems == [
        "<nova:name> holds elements, not a name",
        "<nova:flavor> has no name attribute",
    ]


def test_an_instance_without_owner_or_flavor_has_those_tags_absent() -> None:
    instance = nova_instance()
    for tag in ("owner", "flavor"):
        element = instance.find(f"{{{NOVA}}}{tag}")
        assert element is not None
        instance.remove(element)
    context = domain_context(domain_xml("instance-2", instance), "instance-2", ("openstack",))
    assert context.tags == {"instance_name": "web-01"} and context.problems == []


def test_values_are_made_tag_values_and_cut_at_the_bound() -> None:
    assert tag_value(" a\n\tb\x07c  ") == ("a b c", False)
    assert tag_value("\n\u2028 ") == (None, False)
    long = "é" * MAX_TAG_BYTES  # two bytes each
    value, cut = tag_value(long)
    assert cut and value is not None and len(value.encode()) == MAX_TAG_BYTES
    value, cut = tag_value("x" * MAX_TAG_BYTES)
    assert not cut and value == "x" * MAX_TAG_BYTES
    value, cut = tag_value("😀" * 300)  # a cut never splits a character
    assert cut and value == "😀" * 256


# -- the source --


def test_context_tags_are_off_unless_asked_for() -> None:
    xml = domain_xml("instance-0000a3f1", nova_instance())
    made, _ = source(fake("instance-0000a3f1", xml))
    assert not set(tags_of(made)) & set(catalog.BALLOON_CONTEXT_TAGS)


def test_the_source_tags_a_nova_instance() -> None:
    xml = domain_xml("instance-0000a3f1", nova_instance())
    made, log = source(fake("instance-0000a3f1", xml), context_tags=("openstack",))
    tags = tags_of(made)
    assert tags["guest"] == "instance-0000a3f1"
    assert (tags["instance_name"], tags["project"], tags["user"], tags["flavor"]) == (
        "web-01",
        "shop",
        "alice",
        "m1.small",
    )
    assert said(log) == []


def test_a_metadata_edit_is_read_at_the_next_poll_through_the_event() -> None:
    xml = domain_xml("instance-0000a3f1", nova_instance())
    conn = fake("instance-0000a3f1", xml)
    made, _ = source(conn, context_tags=("openstack",))
    assert tags_of(made)["project"] == "shop"
    [(event, _, _)] = conn.event_callbacks.values()
    assert event == libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE
    dom = conn.domain("instance-0000a3f1")
    reads = dom.xml_reads
    assert tags_of(made, T0 + 10)["project"] == "shop" and dom.xml_reads == reads  # no re-read
    dom.answers["XMLDesc"] = domain_xml("instance-0000a3f1", nova_instance(project="billing"))
    conn.emit(event, dom, libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None)  # not ours: ignored
    assert tags_of(made, T0 + 20)["project"] == "shop"
    conn.emit(event, dom, libvirt.VIR_DOMAIN_METADATA_ELEMENT, NOVA)
    assert tags_of(made, T0 + 30)["project"] == "billing"
    assert dom.xml_reads == reads + 1


def test_without_the_event_an_edit_shows_at_the_refresh() -> None:
    xml = domain_xml("instance-0000a3f1", nova_instance())
    conn = fake("instance-0000a3f1", xml)
    conn.fail("domainEventRegisterAny", libvirt.VIR_ERR_NO_SUPPORT)
    made, log = source(conn, context_tags=("openstack",), refresh_interval=300.0)
    assert tags_of(made)["project"] == "shop"
    assert log.getvalue().startswith("I! ") and "refresh_interval" in log.getvalue()
    dom = conn.domain("instance-0000a3f1")
    dom.answers["XMLDesc"] = domain_xml("instance-0000a3f1", nova_instance(project="billing"))
    assert tags_of(made, T0 + 10)["project"] == "shop"
    assert tags_of(made, T0 + 300)["project"] == "billing"


def test_a_reconnect_reads_the_metadata_again() -> None:
    """An edit made while no connection listened is not left for the refresh."""
    xml = domain_xml("instance-0000a3f1", nova_instance())
    conn = fake("instance-0000a3f1", xml)
    made, _ = source(conn, context_tags=("openstack",))
    tags_of(made)
    conn.alive = False  # the daemon restarted
    conn.domain("instance-0000a3f1").answers["XMLDesc"] = domain_xml(
        "instance-0000a3f1", nova_instance(name="renamed")
    )
    made.poll(T0 + 5)
    conn.alive = True
    assert tags_of(made, T0 + 10)["instance_name"] == "renamed"
    assert len(conn.event_callbacks) == 1  # the old registration went with its connection


def test_a_hostile_name_and_an_oversized_value_make_one_warning_and_valid_lines() -> None:
    instance = nova_instance(name=HOSTILE, project="p" * 5000, user=HOSTILE * 200)
    xml = domain_xml("instance-0000a3f1", instance)
    conn = fake("instance-0000a3f1", xml)
    made, log = source(conn, context_tags=("openstack", "kubevirt"), refresh_interval=1.0)
    for poll in range(4):  # the XML is read again on every poll (refresh 1 s): still one W!
        tags = tags_of(made, T0 + 2 * poll)
    back = written(tags)
    # the serializer ends a backslash before a space in '/' (lineprotocol.py says why)
    assert back["instance_name"] == tags["instance_name"].replace("\\ ", "/ ")
    assert "\n" not in tags["instance_name"] and "\u2028" not in tags["instance_name"]
    assert len(tags["project"].encode()) == MAX_TAG_BYTES
    assert len(back["user"].encode()) <= MAX_TAG_BYTES
    lines = said(log)
    assert len(lines) == 1 and lines[0].startswith("W! "), lines
    assert "project, user" in lines[0] and str(MAX_TAG_BYTES) in lines[0]


# What XML 1.0 can carry: no surrogates, no C0 controls but tab and newlines, no U+FFFE/FFFF.
_XML_CHARS = st.characters(
    codec="utf-8",
    exclude_characters="".join(chr(c) for c in range(32) if c not in (9, 10, 13)) + "\ufffe\uffff",
)


@settings(max_examples=200, deadline=None)
@given(st.text(_XML_CHARS, max_size=1500), st.text(_XML_CHARS, max_size=40))
def test_any_name_nova_can_hold_makes_a_valid_line(name: str, project: str) -> None:
    xml = domain_xml("instance-0000a3f1", nova_instance(name=name, project=project))
    made, log = source(fake("instance-0000a3f1", xml), context_tags=("openstack",))
    tags = tags_of(made)
    back = written(tags)
    for tag in ("instance_name", "project"):
        assert (tag in tags) == (tag in back)
        if tag in tags:
            assert len(tags[tag].encode()) <= MAX_TAG_BYTES
    for line in said(log):
        assert line.startswith("W! ") and "cut" in line
