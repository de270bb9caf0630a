"""vSphere custom attributes as tags, against the vCenter simulator, pyVmomi as the oracle.

The attributes are defined and set through the ordinary API (the CustomFieldsManager's
AddCustomFieldDef and SetField, as an operator's script or the vSphere client does), then the
plugin's tags are compared with what pyVmomi reads of each VM (`customValue`, and the
manager's `field` list for the names). The simulator counts the calls: the values ride on
the VM pages the source retrieves anyway, every VALUES_REFRESH_SECONDS; a VM that appears in
between costs one call for all such VMs of the poll; nothing is asked per VM.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

import line_protocol_parser
import pytest

from telegraf_balloon import catalog, lineprotocol
from telegraf_balloon.config import custom_attribute_tag
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from telegraf_balloon.sources.context import MAX_TAG_BYTES, tag_value
from telegraf_balloon.sources.vsphere.attributes import VALUES_REFRESH_SECONDS
from telegraf_balloon.sources.vsphere.source import VsphereSource
from tests.stack.clock import Clock
from tests.stack.vcsim import Vcsim
from tests.stack.vsphere_setup import all_vms, connect, disconnect, vim, wait_task

pytestmark = pytest.mark.integration

# 2 clusters of 2 hosts, 4 VMs each, a standalone host with 4: 12 VMs, pages of 5
INVENTORY = {"dc": 1, "cluster": 2, "host": 2, "standalone_host": 1, "vm": 4, "page": 5}
ATTRIBUTES = ("Owner", "Cost Center")
CUSTOM = {custom_attribute_tag(a) for a in ATTRIBUTES}
HOSTILE = 'ops team, "night" = on\\call\n#1 \u00e9\u4e2d'


def make_source(sim: Vcsim, attributes: tuple[str, ...], log: io.StringIO) -> VsphereSource:
    return VsphereSource(
        sim.source_config(custom_attributes=attributes), Log(log), clock=Clock(1000.0)
    )


def later(source: VsphereSource, seconds: float) -> None:
    clock = source._attributes._clock if source._attributes is not None else None
    assert isinstance(clock, Clock)
    clock.now += seconds


def by_uuid(result: PollResult) -> dict[str, dict[str, str]]:
    assert result.error is None, result.error
    return {s.tags["uuid"]: dict(s.tags) for s in result.samples}


def oracle(si: Any, attributes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Per powered-on VM (by instance UUID), the attribute tags, from pyVmomi's values."""
    names = {f.key: f.name for f in si.RetrieveContent().customFieldsManager.field}
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
        out[vm.config.instanceUuid] = tags
    return out


def attribute_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k in CUSTOM}


def test_custom_attributes_are_tags_read_with_the_vm_pages(
    vcsim_factory: Callable[..., Vcsim],
) -> None:
    sim = vcsim_factory(**INVENTORY)
    si = connect(sim)
    stream = io.StringIO()
    plain = make_source(sim, (), stream)
    source = make_source(sim, ATTRIBUTES, stream)
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
        arriving = vms[5]  # powered off now: it appears later, between two value refreshes
        wait_task(arriving.PowerOffVM_Task())

        sim.reset_calls()
        without = by_uuid(plain.poll(time.time()))  # logs in
        calls_without = sim.calls()["calls"]
        sim.reset_calls()
        got = by_uuid(source.poll(time.time()))  # logs in, reads the definitions, the values
        calls_first = sim.calls()["calls"]

        assert all(not attribute_tags(tags) for tags in without.values())
        expected = oracle(si, ATTRIBUTES)
        assert set(got) == set(expected)
        for key, tags in got.items():
            assert attribute_tags(tags) == expected[key], tags["guest"]
            assert "backup" not in tags
            line = lineprotocol.format_lines([(catalog.BALLOON, tags, {"x": 1}, 1)])
            parsed = line_protocol_parser.parse_line(line.rstrip("\n"))
            assert catalog.check_point(catalog.BALLOON, parsed["tags"], {}, CUSTOM) == []
        assert sum(1 for tags in got.values() if "owner" in tags) >= 4
        assert sum(1 for tags in got.values() if "cost_center" in tags) >= 4
        [cut] = [t["cost_center"] for t in got.values() if t.get("cost_center", "")[:2] == "xx"]
        assert len(cut) == MAX_TAG_BYTES
        # The values rode on the VM pages: no call more than the plain poll's, but the
        # attribute definitions (pyVmomi reads the manager's field list: one Fetch).
        extra = {k: n - calls_without.get(k, 0) for k, n in calls_first.items()}
        assert {k: n for k, n in extra.items() if n} == {"Fetch": 1}, extra

        # Steady state: exactly the plain poll's calls, the tags from what the source keeps.
        sim.reset_calls()
        plain.poll(time.time())
        plain_steady = sim.calls()["calls"]
        sim.reset_calls()
        steady = by_uuid(source.poll(time.time()))
        assert sim.calls()["calls"] == plain_steady
        assert {k: attribute_tags(t) for k, t in steady.items()} == {
            k: attribute_tags(t) for k, t in got.items()
        }

        # A VM that appears between two refreshes is tagged at once: one call for the new VMs.
        manager.SetField(entity=arriving, key=owner.key, value="late-comer")
        wait_task(arriving.PowerOnVM_Task())
        sim.reset_calls()
        arrived = by_uuid(source.poll(time.time()))
        calls = sim.calls()["calls"]
        assert calls["RetrievePropertiesEx"] == plain_steady["RetrievePropertiesEx"] + 1
        assert arrived[arriving.config.instanceUuid]["owner"] == "late-comer"

        # An edited value shows at the next refresh of the values.
        manager.SetField(entity=vms[0], key=owner.key, value="new-owner")
        first = vms[0].config.instanceUuid
        assert by_uuid(source.poll(time.time()))[first]["owner"] == "team-0"
        later(source, VALUES_REFRESH_SECONDS)
        assert by_uuid(source.poll(time.time()))[first]["owner"] == "new-owner"
    finally:
        plain.close()
        source.close()
        disconnect(si)
    warnings = [ln for ln in stream.getvalue().splitlines() if ln.startswith("W! ")]
    assert len(warnings) == 1 and "cost_center" in warnings[0], warnings


def test_an_attribute_defined_later_and_one_never_defined(
    vcsim_factory: Callable[..., Vcsim],
) -> None:
    sim = vcsim_factory(dc=1, cluster=1, host=1, standalone_host=0, vm=3, page=2)
    si = connect(sim)
    log = io.StringIO()
    source = make_source(sim, ("Owner", "Never"), log)
    try:
        assert all("owner" not in t for t in by_uuid(source.poll(time.time())).values())
        assert "no custom attribute 'Owner', 'Never' for VMs (defined: none)" in log.getvalue()
        manager = si.RetrieveContent().customFieldsManager
        owner = manager.AddCustomFieldDef(name="Owner", moType=vim.VirtualMachine)
        vm = sorted(all_vms(si), key=lambda v: v.name)[0]
        manager.SetField(entity=vm, key=owner.key, value="alice")
        later(source, VALUES_REFRESH_SECONDS)  # the values' refresh finds a key defined since
        source.poll(time.time())
        assert by_uuid(source.poll(time.time()))[vm.config.instanceUuid]["owner"] == "alice"
        assert "no custom attribute 'Never' for VMs (defined: 'Owner')" in log.getvalue()
    finally:
        source.close()
        disconnect(si)
