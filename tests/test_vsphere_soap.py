"""The vSphere hot path without a server: requests, and replies captured from the simulator.

The replies in tests/fixtures/vsphere/ are the simulator's own (SOURCE.md there says how
scripts/capture_vsphere_fixtures.py made them); the end-to-end behaviour against the running
simulator is in tests/integration/test_vsphere.py. Only the source's plain modules are imported
here: these tests run without pyVmomi (test_the_plain_modules_import_no_pyvmomi checks it).
"""

from __future__ import annotations

import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telegraf_balloon.model import Fields
from telegraf_balloon.sources.vsphere import fields as F
from telegraf_balloon.sources.vsphere import inventory as I
from telegraf_balloon.sources.vsphere import perf as P
from telegraf_balloon.sources.vsphere import soap as S

FIXTURES = Path(__file__).parent / "fixtures" / "vsphere"
MIB = 1024 * 1024


def _objects(name: str, chunk: int = S.CHUNK) -> tuple[list[tuple[str, str, S.Props]], list[str]]:
    data = (FIXTURES / name).read_bytes()
    stream = io.BytesIO(data)
    token: list[str] = []
    items = list(
        S.parse_objects(S.Stream(lambda n: stream.read(min(n, chunk)), S.OBJECT_REPLY), token)
    )
    return items, token


def test_pages_give_every_vm_once_and_a_token_until_the_last() -> None:
    first, token1 = _objects("retrieve-page1.xml")
    second, token2 = _objects("retrieve-page2.xml")
    assert token1 == ["1"]  # the simulator numbers its page tokens
    assert token2 == []
    moids = [m for _, m, _ in first + second]
    assert moids == ["vm-48", "vm-51", "vm-54", "vm-57"]
    assert {k for k, _, _ in first + second} == {"VirtualMachine"}


def test_configured_vm_fields_in_bytes() -> None:
    items, _ = _objects("retrieve-page2.xml")
    props = {m: p for _, m, p in items}["vm-54"]
    assert props["runtime.host"] == ("HostSystem", "host-42")
    assert props["config.instanceUuid"]
    assert F.vm_fields(props) == {
        "memory_max_bytes": 4096 * MIB,
        "balloon_actual_bytes": 1024 * MIB,
        "memory_current_bytes": 3072 * MIB,
        "host_swapped_bytes": 12 * MIB,
        "compressed_bytes": 2048 * 1024,  # compressedMemory is KB
        "granted_bytes": 4000 * MIB,
        "consumed_bytes": 3000 * MIB,
        "active_bytes": 800 * MIB,
        "shared_bytes": 100 * MIB,
        "overhead_bytes": 30 * MIB,
        "reservation_bytes": 512 * MIB,
        "limit_bytes": 3072 * MIB,
        "inflation_blocked": False,
        "tools_running": True,
        "tools_status": "need_upgrade",
    }


def test_tools_of_a_vm_as_the_simulator_makes_it() -> None:
    """Tools not running and no version status: running false, the status absent."""
    items, _ = _objects("retrieve-page1.xml")
    fields = F.vm_fields(items[0][2])
    assert fields["tools_running"] is False
    assert "tools_status" not in fields


@pytest.mark.parametrize(
    ("running", "version", "expected"),
    [
        ("guestToolsRunning", "guestToolsCurrent",
         {"tools_running": True, "tools_status": "current"}),
        ("guestToolsExecutingScripts", "guestToolsUnmanaged",
         {"tools_running": True, "tools_status": "unmanaged"}),
        ("guestToolsNotRunning", "guestToolsNotInstalled",
         {"tools_running": False, "tools_status": "not_installed"}),
        ("guestToolsNotRunning", "guestToolsSupportedOld",
         {"tools_running": False, "tools_status": "supported_old"}),
        # a status newer than the table: snake-cased the same way; junk: absent
        ("", "guestToolsSomethingNew", {"tools_status": "something_new"}),
        ("running", "guestTools", {}),
        ("guestToolsrunning", "<b>guestToolsCurrent</b>", {}),
    ],
)  # fmt: skip
def test_tools_fields(running: str, version: str, expected: dict[str, object]) -> None:
    props = {"guest.toolsRunningStatus": running, "guest.toolsVersionStatus2": version}
    got = {k: v for k, v in F.vm_fields(props).items() if k.startswith("tools_")}
    assert got == expected


def test_unlimited_limit_is_absent() -> None:
    items, _ = _objects("retrieve-page1.xml")
    props = items[0][2]
    assert props["config.memoryAllocation.limit"] == "-1"
    assert "limit_bytes" not in F.vm_fields(props)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=700))
def test_parse_does_not_depend_on_chunking(chunk: int) -> None:
    assert _objects("retrieve-page2.xml", chunk) == _objects("retrieve-page2.xml")


def test_queryperf_reply() -> None:
    data = (FIXTURES / "queryperf.xml").read_bytes()
    stream = io.BytesIO(data)
    got = list(S.parse_perf(S.Stream(stream.read, S.PERF_REPLY)))
    assert [(m, v) for m, _, v in got] == [
        ("vm-54", {70: 12 * 1024, 90: 1024 * 1024, 94: 2 * 1024 * 1024, 105: 2048}),
        ("vm-51", {90: 0}),
    ]
    stamps = {s for _, s, _ in got}
    assert len(stamps) == 1 and stamps.pop() % S.REALTIME_INTERVAL == 0


@pytest.mark.parametrize(
    ("name", "fault", "text"),
    [
        ("fault-not-authenticated.xml", "NotAuthenticated", ""),
        ("fault-invalid-token.xml", "InvalidArgument", "A specified parameter was not correct"),
    ],
)
def test_faults(name: str, fault: str, text: str) -> None:
    with pytest.raises(S.VsphereFault) as caught:
        _objects(name)
    assert caught.value.fault == fault
    assert text in str(caught.value)


def test_counter_fields_take_actual_and_target_from_one_sample() -> None:
    props: S.Props = {"summary.quickStats.swappedMemory": "0"}
    fields: dict[str, object] = {"memory_max_bytes": 4096 * MIB, "balloon_actual_bytes": 1 * MIB}
    values = {F.VMMEMCTL: 1000, F.VMMEMCTLTARGET: 2000, F.SWAPPED: 5, F.COMPRESSED: 7}
    F.counter_fields(values, props, fields)  # type: ignore[arg-type]
    assert fields["balloon_actual_bytes"] == 1000 * 1024
    assert fields["balloon_target_bytes"] == 2000 * 1024
    assert fields["memory_current_bytes"] == 4096 * MIB - 1000 * 1024
    assert "host_swapped_bytes" not in fields  # quickStats had it: theirs stands
    assert fields["compressed_bytes"] == 7 * 1024  # quickStats lacked it: the counter's


@pytest.mark.parametrize(
    ("memory", "reservation", "blocked"),
    [("4096", "4096", True), ("4096", "8192", True), ("4096", "4095", False), ("4096", "0", False)],
)
def test_reservation_at_memory_blocks_inflation(
    memory: str, reservation: str, blocked: bool
) -> None:
    props = {"config.hardware.memoryMB": memory, "config.memoryAllocation.reservation": reservation}
    assert F.vm_fields(props)["inflation_blocked"] is blocked


def test_hostile_values_are_skipped_not_fatal() -> None:
    props = {
        "config.hardware.memoryMB": "lots",
        "summary.quickStats.balloonedMemory": "-5x",
        "summary.quickStats.grantedMemory": "-1",
        "config.memoryAllocation.reservation": "",
    }
    fields = F.vm_fields(props)
    assert "memory_max_bytes" not in fields and "balloon_actual_bytes" not in fields
    assert "granted_bytes" not in fields and "reservation_bytes" not in fields
    assert fields["inflation_blocked"] is False


def test_requests_escape_what_they_quote() -> None:
    hostile = 'vm-1"&<x>'
    body = S.query_perf_request("PerfMgr", [(hostile, [1, 2])])
    root = ET.fromstring(body)
    entity = root.find(".//{urn:vim25}entity")
    assert entity is not None and entity.text == hostile
    body = S.continue_request("propertyCollector", hostile)
    assert ET.fromstring(body).find(".//{urn:vim25}token").text == hostile  # type: ignore[union-attr]
    body = S.retrieve_request("pc", "session[x]&", [("VirtualMachine", F.VM_PATHS)], 7)
    paths = [e.text for e in ET.fromstring(body).iter("{urn:vim25}pathSet")]
    assert paths == list(F.VM_PATHS)
    assert ET.fromstring(body).find(".//{urn:vim25}maxObjects").text == "7"  # type: ignore[union-attr]


def test_one_retrieval_over_several_views() -> None:
    """One agent's part of a vCenter: its subtrees' views in one paged retrieval."""
    body = S.retrieve_request("pc", ["session[a]", "session[b]"], [("VirtualMachine", ["name"])], 9)
    root = ET.fromstring(body)
    views = [e.text for e in root.iter("{urn:vim25}obj")]
    assert views == ["session[a]", "session[b]"]
    assert len(list(root.iter("{urn:vim25}objectSet"))) == 2
    assert len(list(root.iter("{urn:vim25}propSet"))) == 1
    one = S.retrieve_request("pc", "session[a]", [("VirtualMachine", ["name"])], 9)
    assert one == S.retrieve_request("pc", ["session[a]"], [("VirtualMachine", ["name"])], 9)


def _queries(draw_counts: list[int]) -> list[tuple[str, list[int]]]:
    return [(f"vm-{i}", list(range(n))) for i, n in enumerate(draw_counts)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4), max_size=300), st.integers(0, 300))
def test_batches_respect_the_limit_and_keep_every_vm_once(counts: list[int], limit: int) -> None:
    queries = _queries(counts)
    batches = list(P.batches(queries, limit))
    assert [q for b in batches for q in b] == queries
    for batch in batches:
        metrics = sum(max(1, len(ids)) for _, ids in batch)
        # a batch over the limit can only be a single VM asking more than the limit alone
        assert not limit or metrics <= limit or len(batch) == 1


def test_batches_bound_the_reply_size() -> None:
    queries = [(f"vm-{i}", [1, 2, 3, 4]) for i in range(20_000)]
    batches = list(P.batches(queries, 0))  # 0: the server sets no metric limit
    assert len(batches) > 1
    assert all(sum(8 + 8 * len(ids) for _, ids in b) <= P.REPLY_ELEMENTS for b in batches)


def _inventory(entities: list[tuple[str, str, str, str]]) -> I.Inventory:
    inv = I.Inventory()
    for kind, moid, name, parent in entities:
        props: S.Props = {"name": name}
        if parent:
            props["parent"] = ("Folder", parent)
        inv.add(kind, moid, props)
    inv.resolve()
    return inv


def test_inventory_tags_and_paths() -> None:
    inv = _inventory(
        [
            ("Datacenter", "dc-1", "DC0", "group-d1"),
            ("Folder", "f-host", "host", "dc-1"),
            ("Folder", "f-vm", "vm", "dc-1"),
            ("Folder", "f-prod", "prod", "f-vm"),
            ("ClusterComputeResource", "c-1", "C0", "f-host"),
            ("ComputeResource", "cr-2", "esx9", "f-host"),
            ("HostSystem", "h-1", "esx1", "c-1"),
            ("HostSystem", "h-2", "esx9", "cr-2"),
        ]
    )
    assert (inv.hosts["h-1"].cluster, inv.hosts["h-1"].datacenter) == ("C0", "DC0")
    assert (inv.hosts["h-2"].cluster, inv.hosts["h-2"].datacenter) == ("", "DC0")
    assert inv.path("f-prod") == "/DC0/vm/prod"


def test_inventory_parent_loop_ends() -> None:
    inv = _inventory(
        [("Folder", "a", "a", "b"), ("Folder", "b", "b", "a"), ("HostSystem", "h", "h", "a")]
    )
    assert inv.hosts["h"].datacenter == ""
    assert inv.path("a").count("/") == 64


def test_counter_fields_with_the_shared_presence_sets() -> None:
    # what a poll keeps per VM instead of its properties: which quickStats the reply carried
    fields: Fields = {"memory_max_bytes": 4096 * MIB}
    values = {F.SWAPPED: 5, F.COMPRESSED: 7, F.VMMEMCTL: 1024}
    F.counter_fields(values, F.QUICK_PRESENT[True, False], fields)
    assert "host_swapped_bytes" not in fields  # quickStats had it
    assert fields["compressed_bytes"] == 7 * 1024  # quickStats lacked it: the counter's
    assert fields["memory_current_bytes"] == 4095 * MIB
    assert F.QUICK_PRESENT[False, False] == frozenset()
    assert F.QUICK_PRESENT[True, True] == {F.SWAPPED_QS, F.COMPRESSED_QS}


@pytest.mark.parametrize(
    ("header", "epoch"),
    [
        ("Sat, 05 Dec 2026 17:00:20 GMT", 1796490020.0),
        ("Sat, 05 Dec 2026 17:00:20 -0000", 1796490020.0),  # no zone given: UTC, not local
        ("Sat, 05 Dec 2026 18:00:20 +0100", 1796490020.0),
        (None, None),
        ("", None),
        ("yesterday", None),
        ("Sat, 99 Foo 2026 17:00:20 GMT", None),
    ],
)
def test_reply_date_the_sample_ages_are_measured_on(
    header: str | None, epoch: float | None
) -> None:
    assert S.http_date(header) == epoch


def test_the_plain_modules_import_no_pyvmomi() -> None:
    """soap, fields, inventory and perf load with pyVmomi unimportable; the source says why not."""
    code = """
import sys
sys.modules["pyVmomi"] = sys.modules["pyVim"] = None  # import of either raises ImportError
from telegraf_balloon.sources.vsphere import fields, inventory, perf, soap
try:
    from telegraf_balloon.sources.vsphere import VsphereSource
except ImportError as exc:
    print("ImportError:", exc)
print(sorted(m for m in sys.modules if m.startswith(("pyVmomi", "pyVim")) and sys.modules[m]))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    refused, loaded = done.stdout.splitlines()
    assert refused.startswith("ImportError:") and "pyVim" in refused
    assert loaded == "[]"
