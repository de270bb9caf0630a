"""Context tags against a real libvirtd: Nova's metadata, a KubeVirt-named domain, live edits.

Real QEMU domains (TCG, started paused: real QEMU processes that never boot) on the tests'
private libvirtd: one defined with Nova's `<nova:instance>` metadata in the namespace
http://openstack.org/xmlns/libvirt/nova/1.1, written in the shape Nova's own metadata
classes write it, under Nova's domain name `instance-XXXXXXXX`; one named and marked as
KubeVirt's virt-launcher names and marks a domain. The metadata is then edited live, with
`virsh metadata` as an operator would (and as Nova does through virDomainSetMetadata), and
the next poll carries the new names: libvirt's metadata-change event reached the source.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import line_protocol_parser
import pytest

from telegraf_balloon import catalog, lineprotocol
from telegraf_balloon.config import LibvirtConfig
from telegraf_balloon.explain.report import VmReport
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from telegraf_balloon.sources.libvirt.source import LibvirtSource
from tests.stack.common import logged, need_program
from tests.stack.libvirt_daemon import LibvirtStack

pytestmark = pytest.mark.integration

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA_DOMAIN = "instance-0000a3f1"
KUBEVIRT_DOMAIN = "shop_cart-7f9c"
PLAIN_DOMAIN = "ctx-plain"


def nova_metadata(name: str, project: str, user: str = "alice", flavor: str = "m1.small") -> str:
    """<nova:instance> with every element Nova writes, in Nova's order."""
    return (
        f'<nova:instance xmlns:nova="{NOVA_NS}">'
        '<nova:package version="27.1.0"/>'
        f"<nova:name>{name}</nova:name>"
        "<nova:creationTime>2024-05-02 09:14:55</nova:creationTime>"
        f'<nova:flavor name="{flavor}"><nova:memory>128</nova:memory><nova:disk>1</nova:disk>'
        "<nova:swap>0</nova:swap><nova:ephemeral>0</nova:ephemeral><nova:vcpus>1</nova:vcpus>"
        "</nova:flavor>"
        "<nova:owner>"
        f'<nova:user uuid="8c1e5b9f0a2d4e6f8a0b1c2d3e4f5a6b">{user}</nova:user>'
        f'<nova:project uuid="3d9a7c1b5e2f4a608b7c6d5e4f3a2b1c">{project}</nova:project>'
        "</nova:owner>"
        '<nova:root type="image" uuid="0a1b2c3d-0000-4000-8000-000000000000"/>'
        "</nova:instance>"
    )


# virt-launcher's element: the VMI's uid and grace period (no namespace or name)
KUBEVIRT_METADATA = (
    '<kubevirt xmlns="http://kubevirt.io"><uid>f4686d2c-6e8d-4335-b8fd-81bee22f4814</uid>'
    "<graceperiod><deletionGracePeriodSeconds>30</deletionGracePeriodSeconds></graceperiod>"
    "</kubevirt>"
)


@pytest.fixture(scope="module")
def domains(libvirt_stack: LibvirtStack) -> Iterator[LibvirtStack]:
    names = [NOVA_DOMAIN, KUBEVIRT_DOMAIN, PLAIN_DOMAIN]
    libvirt_stack.remove_domains(names)
    libvirt_stack.start_paused(
        names,
        metadata={
            NOVA_DOMAIN: nova_metadata("web-01", "shop"),
            KUBEVIRT_DOMAIN: KUBEVIRT_METADATA,
        },
    )
    try:
        yield libvirt_stack
    finally:
        libvirt_stack.remove_domains(names)


def make_source(stack: LibvirtStack, stream: io.StringIO, **options: Any) -> LibvirtSource:
    settings: dict[str, Any] = {
        "uri": stack.uri,
        "domains": (NOVA_DOMAIN, KUBEVIRT_DOMAIN, PLAIN_DOMAIN),
        "refresh_interval": 3600.0,  # no re-read but on a domain start or a metadata edit
    }
    settings.update(options)
    return LibvirtSource(LibvirtConfig(**settings), Log(stream))


def tags_by_guest(result: PollResult) -> dict[str, dict[str, str]]:
    assert result.error is None, result.error
    return {s.tags["guest"]: dict(s.tags) for s in result.samples}


def test_nova_and_kubevirt_names_are_tags_only_when_asked_for(domains: LibvirtStack) -> None:
    stream = io.StringIO()
    off = make_source(domains, stream)
    on = make_source(domains, stream, context_tags=("openstack", "kubevirt"))
    try:
        plain = tags_by_guest(off.poll(time.time()))
        tagged = tags_by_guest(on.poll(time.time()))
    finally:
        off.close()
        on.close()
    context = set(catalog.BALLOON_CONTEXT_TAGS)
    assert all(not set(tags) & context for tags in plain.values())
    nova = tagged[NOVA_DOMAIN]
    assert {k: nova[k] for k in ("instance_name", "project", "user", "flavor")} == {
        "instance_name": "web-01",
        "project": "shop",
        "user": "alice",
        "flavor": "m1.small",
    }
    assert "namespace" not in nova  # "instance-0000a3f1" has no KubeVirt shape
    kubevirt = tagged[KUBEVIRT_DOMAIN]
    assert (kubevirt["namespace"], kubevirt["vm"]) == ("shop", "cart-7f9c")
    assert not set(tagged[PLAIN_DOMAIN]) & context
    for tags in tagged.values():
        text = lineprotocol.format_lines([(catalog.BALLOON, tags, {"x": 1}, 1)])
        parsed = line_protocol_parser.parse_line(text.rstrip("\n"))
        assert parsed["tags"] == tags
        assert catalog.check_point(catalog.BALLOON, parsed["tags"], {}) == []
    assert logged(stream.getvalue()) == []
    report = VmReport("libvirt", domains.uri, nova["host"], nova, {}, [], guest=NOVA_DOMAIN)
    assert report.label == "instance-0000a3f1 (web-01)"


def _virsh_metadata(stack: LibvirtStack, domain: str, xml: str) -> None:
    """`virsh metadata --live`: how an operator edits a running domain's metadata."""
    virsh = need_program("virsh")
    command = [virsh, "-c", stack.uri, "metadata", domain, "--live", "--uri", NOVA_NS]
    command += ["--key", "nova", "--set", xml]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_live_metadata_edit_changes_the_tags_at_the_next_poll(domains: LibvirtStack) -> None:
    stream = io.StringIO()
    source = make_source(domains, stream, context_tags=("openstack",))
    try:
        before = tags_by_guest(source.poll(time.time()))[NOVA_DOMAIN]
        assert (before["instance_name"], before["project"]) == ("web-01", "shop")
        # virsh takes the element without its prefix: --key gives it one
        edited = nova_metadata("web-01-renamed", "billing").replace("nova:", "")
        edited = edited.replace(f' xmlns:nova="{NOVA_NS}"', "")
        _virsh_metadata(domains, NOVA_DOMAIN, edited)
        deadline = time.monotonic() + 10  # the event crosses the daemon's socket
        after = before
        while time.monotonic() < deadline:
            after = tags_by_guest(source.poll(time.time()))[NOVA_DOMAIN]
            if after["project"] == "billing":
                break
            time.sleep(0.2)
        assert (after["instance_name"], after["project"]) == ("web-01-renamed", "billing")
        assert after["user"] == "alice"
        assert logged(stream.getvalue()) == []  # the event was registered, not refused
    finally:
        source.close()
        _virsh_metadata(
            domains,
            NOVA_DOMAIN,
            nova_metadata("web-01", "shop")
            .replace("nova:", "")
            .replace(f' xmlns:nova="{NOVA_NS}"', ""),
        )
