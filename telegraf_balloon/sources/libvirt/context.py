"""The context tags of a domain, from the domain XML the source reads when the domain changes.

OpenStack Nova writes into every instance's domain XML (the shape of Nova's own
LibvirtConfigGuestMetaNova* classes):

    <metadata>
      <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:package version="27.1.0"/>
        <nova:name>web-01</nova:name>                       -> instance_name
        <nova:creationTime>2024-05-02 09:14:55</nova:creationTime>
        <nova:flavor name="m1.small">...</nova:flavor>       -> flavor
        <nova:owner>
          <nova:user uuid="...">alice</nova:user>            -> user
          <nova:project uuid="...">shop</nova:project>       -> project
        </nova:owner>
        <nova:root type="image" uuid="..."/>
      </nova:instance>
    </metadata>

(namespace 1.0 on instances created before Nova added 1.1; both are read).

KubeVirt's virt-launcher names a domain `<namespace>_<name>` and writes
`<metadata><kubevirt xmlns="http://kubevirt.io">` with the VMI's uid, grace period and
migration state: no namespace or name. So the metadata marks a KubeVirt domain, and its
name gives both (split at the first `_`: neither a Kubernetes namespace nor an object name
may hold one; a name without `_` is in the namespace "default", as KubeVirt reads it). A
domain without that element is taken for KubeVirt's only when its name has the shape:
a DNS label (the namespace), `_`, a DNS subdomain (the name).

Everything here is text in, tags out: no libvirt binding.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Collection
from typing import Optional

from ...model import Tags
from ..context import tag_value

NOVA_NAMESPACES = (
    "http://openstack.org/xmlns/libvirt/nova/1.1",
    "http://openstack.org/xmlns/libvirt/nova/1.0",
)
KUBEVIRT_NAMESPACE = "http://kubevirt.io"
# The metadata namespaces whose edits change a context tag (the metadata-change event says
# which namespace it was).
WATCHED_NAMESPACES = frozenset((*NOVA_NAMESPACES, KUBEVIRT_NAMESPACE))

_K8S_NAMESPACE = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_K8S_NAME = r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?"
_KUBEVIRT_NAME = re.compile(rf"({_K8S_NAMESPACE})_({_K8S_NAME})")


class Context:
    """A domain's context tags and what could not be read, for one `W! ` line."""

    __slots__ = ("cut", "problems", "tags")

    def __init__(self) -> None:
        self.tags: Tags = {}
        self.cut: list[str] = []  # tags whose value was cut at the size bound
        self.problems: list[str] = []  # metadata not of the documented shape

    def put(self, tag: str, raw: Optional[str]) -> None:
        value, cut = tag_value(raw or "")
        if value is not None:
            self.tags[tag] = value
        if cut:
            self.cut.append(tag)


def domain_context(text: str, name: str, wanted: Collection[str]) -> Context:
    """The context tags `wanted` ("openstack", "kubevirt") of a domain from its XML.

    `name` is libvirt's name of the domain. The XML is parsed only when it carries one of
    the metadata namespaces. Raises ET.ParseError on text that is not XML.
    """
    context = Context()
    openstack = "openstack" in wanted and "openstack.org/xmlns/libvirt/nova/" in text
    kubevirt = "kubevirt" in wanted
    metadata: Optional[ET.Element] = None
    if openstack or (kubevirt and KUBEVIRT_NAMESPACE in text):
        metadata = ET.fromstring(text).find("metadata")
    if openstack and metadata is not None:
        _nova(metadata, context)
    if kubevirt:
        _kubevirt(metadata, name, context)
    return context


def _nova(metadata: ET.Element, context: Context) -> None:
    for namespace in NOVA_NAMESPACES:
        instance = metadata.find(f"{{{namespace}}}instance")
        if instance is not None:
            break
    else:
        return
    ns = f"{{{namespace}}}"
    context.put("instance_name", _text(instance.find(f"{ns}name"), "nova:name", context))
    flavor = instance.find(f"{ns}flavor")
    if flavor is not None:
        if flavor.get("name") is None:
            context.problems.append("<nova:flavor> has no name attribute")
        context.put("flavor", flavor.get("name"))
    owner = instance.find(f"{ns}owner")
    if owner is not None:
        context.put("user", _text(owner.find(f"{ns}user"), "nova:owner/nova:user", context))
        context.put(
            "project", _text(owner.find(f"{ns}project"), "nova:owner/nova:project", context)
        )


def _text(element: Optional[ET.Element], what: str, context: Context) -> Optional[str]:
    """An element's text, where it holds text only (Nova writes plain text there)."""
    if element is None:
        return None
    if len(element):
        context.problems.append(f"<{what}> holds elements, not a name")
        return None
    return element.text


def _kubevirt(metadata: Optional[ET.Element], name: str, context: Context) -> None:
    if metadata is not None and metadata.find(f"{{{KUBEVIRT_NAMESPACE}}}kubevirt") is not None:
        namespace, sep, vm = name.partition("_")
        if not sep:
            namespace, vm = "default", name
        context.put("namespace", namespace)
        context.put("vm", vm)
        return
    match = _KUBEVIRT_NAME.fullmatch(name)
    if match is not None:
        context.put("namespace", match.group(1))
        context.put("vm", match.group(2))
