"""Context tags: their config keys, the catalog, vSphere's customValue in a reply, --explain.

The sources' own tests: tests/test_libvirt_context.py, tests/test_proxmox_context.py and the
integration tests against libvirtd, QEMU and the vCenter simulator.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import ConfigError, custom_attribute_tag, custom_tags, load_text
from telegraf_balloon.explain.render import to_json, to_text
from telegraf_balloon.explain.report import Report, SourceReport, VmReport
from telegraf_balloon.sources.vsphere import soap as S

VSPHERE = '[[sources.vsphere]]\nurl = "https://vc.example.com/sdk"\n'


# -- config --


def test_context_tags_are_off_by_default_and_named_per_source() -> None:
    loaded = load_text(
        '[[sources.libvirt]]\ncontext_tags = ["kubevirt", "openstack", "kubevirt"]\n'
        '[[sources.qmp]]\ncontext_tags = ["proxmox"]\n'
        + VSPHERE
        + 'custom_attributes = ["Owner", "Cost Center"]\n',
        "t.toml",
        {},
    )
    assert loaded.libvirt[0].context_tags == ("kubevirt", "openstack")
    assert loaded.qmp[0].context_tags == ("proxmox",)
    assert loaded.vsphere[0].custom_attributes == ("Owner", "Cost Center")
    assert custom_tags(loaded) == {"owner", "cost_center"}
    plain = load_text("[[sources.libvirt]]\n[[sources.qmp]]\n" + VSPHERE, "t.toml", {})
    assert plain.libvirt[0].context_tags == () and plain.qmp[0].context_tags == ()
    assert plain.vsphere[0].custom_attributes == ()


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('[[sources.libvirt]]\ncontext_tags = ["proxmox"]\n', "context_tags", "unknown context"),
        ('[[sources.qmp]]\ncontext_tags = ["openstack"]\n', "context_tags", "(known: proxmox)"),
        ('[[sources.libvirt]]\ncontext_tags = "openstack"\n', "context_tags", "list of strings"),
        (VSPHERE + 'custom_attributes = ["Host"]\n', "custom_attributes", "the tag 'host'"),
        (VSPHERE + 'custom_attributes = ["Project"]\n', "custom_attributes", "the tag 'project'"),
        (VSPHERE + 'custom_attributes = ["time"]\n', "custom_attributes", "'time'"),
        (VSPHERE + 'custom_attributes = ["?!"]\n', "custom_attributes", "gives no tag name"),
        (
            VSPHERE + 'custom_attributes = ["Cost Center", "cost-center"]\n',
            "custom_attributes",
            "would both be the tag 'cost_center'",
        ),
    ],
)
def test_bad_context_config_is_an_error_naming_the_key(text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "t.toml", {})
    assert caught.value.key.endswith(key) and says in caught.value.message, caught.value


def test_attribute_names_become_tag_keys() -> None:
    assert custom_attribute_tag("Owner") == "owner"
    assert custom_attribute_tag(" Cost Center (EUR) ") == "cost_center__eur_"
    assert custom_attribute_tag("Büro") == "b_ro"


# -- the catalog --


def test_catalog_knows_the_context_tags_and_the_configured_attributes() -> None:
    tags = {"host": "h", "guest": "g", "project": "shop", "pve_tags": "a;b"}
    assert catalog.check_point(catalog.BALLOON, tags, {}) == []
    assert catalog.check_point(catalog.BALLOON, {"owner": "alice"}, {}) == [
        "balloon: unknown tag 'owner'"
    ]
    assert catalog.check_point(catalog.BALLOON, {"owner": "alice"}, {}, {"owner"}) == []
    assert catalog.check_point(catalog.HOST, {"project": "shop"}, {}) == [
        "balloon_host: unknown tag 'project'"
    ]
    names = {tag for kinds in catalog.CONTEXT_TAGS.values() for t in kinds.values() for tag in t}
    assert names == {"instance_name", "project", "user", "flavor", "namespace", "vm"} | {
        "pve_tags",
        "pool",
    }
    assert "Opt-in context tags" in catalog.markdown_tables()


# -- vSphere: customValue in a RetrievePropertiesEx reply --

_REPLY = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>
<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects>
<obj type="VirtualMachine">vm-42</obj>
<propSet><name>name</name><val xsi:type="xsd:string">web-01</val></propSet>
<propSet><name>customValue</name><val xsi:type="ArrayOfCustomFieldValue">{values}</val></propSet>
</objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"""
_VALUE = (
    '<CustomFieldValue xsi:type="CustomFieldStringValue"><key>{key}</key>'
    "<value>{value}</value></CustomFieldValue>"
)


def _parse(values: str) -> dict[str, Any]:
    data = _REPLY.format(values=values).encode()
    stream = io.BytesIO(data)
    [(_, moid, props)] = list(S.parse_objects(S.Stream(stream.read, S.OBJECT_REPLY), []))
    assert moid == "vm-42" and props["name"] == "web-01"
    return props


def test_custom_values_parse_as_key_to_value() -> None:
    values = _VALUE.format(key=101, value="alice") + _VALUE.format(key=102, value="a &amp; b")
    assert _parse(values)["customValue"] == {"101": "alice", "102": "a & b"}
    spaced = "\n  " + _VALUE.format(key=7, value="") + "\n  " + _VALUE.format(key=7, value="x")
    assert _parse(spaced)["customValue"] == {"7": "x"}  # the last value of a key holds
    assert _parse("")["customValue"] == ""  # none set: an empty array


# -- --explain --


def _report(tags: dict[str, str], guest: str) -> Report:
    vm = VmReport("libvirt", "qemu:///system", "kvm1", tags, {}, [], guest=guest)
    source = SourceReport("libvirt", "qemu:///system", True, None, [], [], vms=[vm])
    return Report([source], polls=1, watched=0.0)


@pytest.mark.parametrize(
    ("tags", "guest", "label"),
    [
        ({"instance_name": "web-01"}, "instance-0000a3f1", "instance-0000a3f1 (web-01)"),
        ({"namespace": "shop", "vm": "cart"}, "shop_cart", "shop_cart (shop/cart)"),
        ({"instance_name": "same"}, "same", "same"),
        ({}, "plain", "plain"),
    ],
)
def test_explain_shows_the_display_name_beside_the_domain_name(
    tags: dict[str, str], guest: str, label: str
) -> None:
    report = _report({"host": "kvm1", "guest": guest, **tags}, guest)
    assert report.sources[0].vms[0].label == label
    assert f"  {label}  " in to_text(report, show_all=True)
    shown = None if label == guest else label[len(guest) + 2 : -1]
    assert '"display_name": ' + ("null" if shown is None else f'"{shown}"') in to_json(report)


def test_the_request_of_named_vms_asks_each_of_them_once() -> None:
    """The custom attributes of VMs new since the values' last refresh: one request for all."""
    body = S.objects_request(
        "propertyCollector", "VirtualMachine", ["vm-1", "vm-<2>"], ["customValue"], 100
    )
    root = ET.fromstring(body)
    ns = {"v": "urn:vim25"}
    request = root.find(".//v:RetrievePropertiesEx", ns)
    assert request is not None
    objects = request.findall("v:specSet/v:objectSet/v:obj", ns)
    assert [(o.get("type"), o.text) for o in objects] == [
        ("VirtualMachine", "vm-1"),
        ("VirtualMachine", "vm-<2>"),
    ]
    assert [p.text for p in request.findall("v:specSet/v:propSet/v:pathSet", ns)] == ["customValue"]
    assert request.findtext("v:options/v:maxObjects", namespaces=ns) == "100"
