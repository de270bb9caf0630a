"""vSphere custom attributes as tags, against the vCenter simulator, pyVmomi as the oracle.

The attributes are defined and set through the ordinary API (the CustomFieldsManager's
AddCustomFieldDef and SetField, as an operator's script or the vSphere client does), then the
plugin's tags are compared with what pyVmomi reads of each VM (`customValue`, and the
manager's `field` list for the names). The simulator counts the calls: the values come with
the paged retrieval the source makes anyway, never a call per VM.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

import line_protocol_parser
import pytest

from telegraf_balloon import catalog, lineprotocol
from telegraf_balloon.config import VsphereConfig, custom_attribute_tag
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from telegraf_balloon.sources.context import MAX_TAG_BYTES, tag_value
from telegraf_balloon.sources.vsphere.source import VsphereSource
from tests.stack.vcsim import Vcsim
from tests.stack.vsphere_setup import all_vms, connect, disconnect, vim

pytestmark = pytest.mark.integration

# 2 clusters of 2 hosts, 4 VMs each, a standalone host with 4: 12 VMs, pages of 5
INVENTORY = {"dc": 1, "cluster": 2, "host": 2, "standalone_host": 1, "vm": 4, "page": 5}
ATTRIBUTES = ("Owner", "Cost Center")
HOSTILE = 'ops team, "night" = on\\call\n#1 \u00e9\u4e2d'


def config_for(sim: Vcsim, attributes: tuple[str, ...]) -> VsphereConfig:
    return VsphereConfig(
        url=sim.url,
        username=sim.username,
        password=sim.password,
        ca_file=sim.cert_file or "",
        page_size=int(sim.inventory["page"]),
        custom_attributes=attributes,
    )


def by_uuid(result: PollResult) -> dict[str, dict[str, str]]:
    assert result.error is None, result.error
    return {s.tags["uuid"]: dict(s.tags) for s in result.samples}


def oracle(si: Any, attributes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Per powered-on VM (by instance UUID), the attribute tags, from pyVmomi's values."""
    fields = si.RetrieveContent().customFieldsManager.field
    names = {f.key: f.name for f in fields}
    out: dict[str, dict[str, str]] = {}
    for vm in all_vms(si):
        if vm.runtime.powerState != "poweredOn" or vm.config.template:
            continue
        tags: dict[str, str] = {}
        for value in vm.customValue:  # the simulator appends: the last value of a key holds
            name = names.get(value.key)
            if name in attributes:
                cleaned, _ = tag_value(value.value)
                if cleaned is not None:
                    tags[custom_attribute_tag(name)] = cleaned
                else:
                    tags.pop(custom_attribute_tag(name), None)
        out[vm.config.instanceUuid] = tags
    return out


def attribute_tags(tags: dict[str, str], attributes: tuple[str, ...]) -> dict[str, str]:
    wanted = {custom_attribute_tag(a) for a in attributes}
    return {k: v for k, v in tags.items() if k in wanted}


def test_custom_attributes_are_tags_read_with_the_vm_pages(
    vcsim_factory: Callable[..., Vcsim],
) -> None:
    sim = vcsim_factory(**INVENTORY)
    si = connect(sim)
    stream = io.StringIO()
    plain = VsphereSource(config_for(sim, ()), Log(stream))
    source = VsphereSource(config_for(sim, ATTRIBUTES), Log(stream))
    try:
        manager = si.RetrieveContent().customFieldsManager
        owner = manager.AddCustomFieldDef(name="Owner", moType=vim.VirtualMachine)
        cost = manager.AddCustomFieldDef(name="Cost Center", moType=vim.VirtualMachine)
        other = manager.AddCustomFieldDef(name="Backup", moType=vim.VirtualMachine)
        vms = sorted(all_vms(si), key=lambda vm: vm.name)
        for i, vm in enumerate(vms):
            if i % 3 != 2:
                manager.SetField(entity=vm, key=owner.key, value=f"team-{i % 4}")
            if i % 2 == 0:
                manager.SetField(entity=vm, key=cost.key, value=f"cc-{i}")
            manager.SetField(entity=vm, key=other.key, value="nightly")  # not asked for
        manager.SetField(entity=vms[1], key=owner.key, value=HOSTILE)
        manager.SetField(entity=vms[3], key=cost.key, value="x" * 3000)

        plain.poll(time.time())
        source.poll(time.time())  # both logged in, their lookups made
        sim.reset_calls()
        without = by_uuid(plain.poll(time.time()))
        calls_without = sim.calls()["calls"]
        sim.reset_calls()
        got = by_uuid(source.poll(time.time()))
        calls_with = sim.calls()["calls"]

        assert all(not attribute_tags(tags, ATTRIBUTES) for tags in without.values())
        expected = oracle(si, ATTRIBUTES)
        assert set(got) == set(expected)
        for key, tags in got.items():
            assert attribute_tags(tags, ATTRIBUTES) == expected[key], tags["guest"]
            assert "backup" not in tags
            line = lineprotocol.format_lines([(catalog.BALLOON, tags, {"x": 1}, 1)])
            parsed = line_protocol_parser.parse_line(line.rstrip("\n"))
            custom = {custom_attribute_tag(a) for a in ATTRIBUTES}
            assert catalog.check_point(catalog.BALLOON, parsed["tags"], {}, custom) == []
        assert sum(1 for tags in got.values() if "owner" in tags) >= 4
        assert sum(1 for tags in got.values() if "cost_center" in tags) >= 4
        cut = [t["cost_center"] for t in got.values() if t.get("cost_center", "").startswith("xx")]
        assert [len(v) for v in cut] == [MAX_TAG_BYTES]
        # The same calls with the attributes as without: the values ride on the VM pages.
        assert calls_with == calls_without, (calls_with, calls_without)

        # An attribute defined since the definitions were read: its VMs' values are tagged
        # at once by a source asked for it, and cost one look at the definitions, once.
        later_log = io.StringIO()
        later = VsphereSource(config_for(sim, (*ATTRIBUTES, "Owner2")), Log(later_log))
        try:
            later.poll(time.time())  # logged in: Owner2 is not defined yet
            assert "no custom attribute 'Owner2'" in later_log.getvalue()
            added = manager.AddCustomFieldDef(name="Owner2", moType=vim.VirtualMachine)
            manager.SetField(entity=vms[0], key=added.key, value="late")
            polled = by_uuid(later.poll(time.time()))
            assert polled[vms[0].config.instanceUuid]["owner2"] == "late"
            assert "custom attributes all found" in later_log.getvalue()
        finally:
            later.close()
        sim.reset_calls()
        source.poll(time.time())  # the new key: one look at the definitions
        once = sim.calls()["calls"]
        sim.reset_calls()
        source.poll(time.time())  # then no more
        assert sim.calls()["calls"] == calls_with
        assert sum(once.values()) == sum(calls_with.values()) + 1, (once, calls_with)
    finally:
        plain.close()
        source.close()
        disconnect(si)
    warnings = [ln for ln in stream.getvalue().splitlines() if ln.startswith("W! ")]
    assert len(warnings) == 1 and "cost_center" in warnings[0], warnings
