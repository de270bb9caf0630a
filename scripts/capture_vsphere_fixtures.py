#!/usr/bin/env python3
"""Capture the SOAP replies the vSphere unit tests read, from the tests' vCenter simulator.

    python scripts/capture_vsphere_fixtures.py [--out tests/fixtures/vsphere]

Starts govmomi's simulator (tests/stack/vcsim.py: 1 datacenter, 1 cluster of 2 hosts plus a
standalone host, 2 VMs each, pages of 2), sets one VM's memory figures through the ordinary
API (ReconfigVM_Task), then sends the vSphere source's own requests (its soap module) on a
pyVmomi session and writes each reply body byte for byte, with SOURCE.md beside them saying
how each was made. tests/integration/test_vsphere_fixtures.py runs this again and checks that
the committed replies are what the simulator answers today.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the tests' stack is not installed with the package

from telegraf_balloon.sources.vsphere import fields, inventory, soap  # noqa: E402
from tests.stack import vcsim, vsphere_setup  # noqa: E402

OUT = REPO_ROOT / "tests" / "fixtures" / "vsphere"
INVENTORY: dict[str, Any] = {
    "dc": 1,
    "cluster": 1,
    "host": 2,
    "standalone_host": 1,
    "vm": 2,
    "page": 2,
}
PAGE = 2  # the source's page_size in the VM retrieval
INVENTORY_PAGE = 100  # maxObjects of the inventory retrieval (the simulator still pages at 2)
VALUED = "DC0_C0_RP0_VM0"  # the VM given figures of its own
OTHER = "DC0_H0_VM1"  # a VM left as the simulator made it
VALUES: dict[str, Any] = {
    "memory_mb": 4096,
    "ballooned_mb": 1024,
    "swapped_mb": 12,
    "compressed_kb": 2048,
    "vmmemctltarget_kb": 2 * 1024 * 1024,
    "reservation_mb": 512,
    "limit_mb": 3072,
    "granted_mb": 4000,
    "consumed_mb": 3000,
    "active_mb": 800,
    "shared_mb": 100,
    "overhead_mb": 30,
    "tools_running_status": "guestToolsRunning",
    "tools_version_status": "guestToolsNeedUpgrade",
}
UNKNOWN_COOKIE = 'vmware_soap_session="00000000-0000-0000-0000-000000000000"'


class Poster:
    """POSTs a SOAP body on a pyVmomi session's connection, as the source does."""

    def __init__(self, si: Any) -> None:
        self.stub = si._stub

    def __call__(self, body: bytes, cookie: Optional[str] = None) -> tuple[int, bytes]:
        stub = self.stub
        conn = stub.GetConnection()
        headers = {
            "Cookie": stub.cookie if cookie is None else cookie,
            "SOAPAction": stub.versionId,
            "Content-Type": "text/xml; charset=UTF-8",
        }
        conn.request("POST", stub.path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        stub.ReturnConnection(conn)
        return resp.status, data


def token_of(reply: bytes) -> str:
    """The continuation token of a RetrievePropertiesEx reply ('' on its last page)."""
    token: list[str] = []
    for _ in soap.parse_objects(soap.Stream(io.BytesIO(reply).read, soap.OBJECT_REPLY), token):
        pass
    return token[0] if token else ""


def capture(out: Path) -> list[tuple[str, int, str]]:
    """Write every reply into `out`; (file, HTTP status, how it was made) per reply."""
    setup, vim = vsphere_setup, vsphere_setup.vim
    sim = vcsim.Vcsim(**INVENTORY).start()
    made: list[tuple[str, int, str]] = []

    def keep(name: str, reply: tuple[int, bytes], how: str) -> bytes:
        status, data = reply
        (out / name).write_bytes(data)
        made.append((name, status, how))
        return data

    si = setup.connect(sim)
    try:
        setup.configure_vm(setup.vm_by_name(si, VALUED), **VALUES)
        valued, other = (setup.vm_by_name(si, name)._moId for name in (VALUED, OTHER))
        content = si.RetrieveContent()
        collector = content.propertyCollector._moId
        post = Poster(si)
        with setup.container_view(content, [vim.VirtualMachine]) as view:
            specs = [("VirtualMachine", fields.VM_PATHS)]
            vms = soap.retrieve_request(collector, view._moId, specs, PAGE)
            first = keep(
                "retrieve-page1.xml",
                post(vms),
                f"RetrievePropertiesEx of the VMs (VM_PATHS), maxObjects {PAGE}: the first page, "
                "with a token",
            )
            again = soap.continue_request(collector, token_of(first))
            keep(
                "retrieve-page2.xml",
                post(again),
                "ContinueRetrievePropertiesEx with that token: the last page, without one",
            )
            keep(
                "fault-invalid-token.xml",
                post(again),
                "the same token used a second time: InvalidArgument",
            )
            keep(
                "fault-not-authenticated.xml",
                post(vms, cookie=UNKNOWN_COOKIE),
                "the first request again with a session cookie the server does not know: "
                "NotAuthenticated",
            )
        types = [getattr(vim, kind) for kind in inventory.INVENTORY_TYPES]
        with setup.container_view(content, types) as view:
            above = inventory.inventory_specs()
            keep(
                "retrieve-inventory.xml",
                post(soap.retrieve_request(collector, view._moId, above, INVENTORY_PAGE)),
                "RetrievePropertiesEx of the inventory above the VMs (folders, datacenter, "
                f"compute resources, hosts), maxObjects {INVENTORY_PAGE}: the first page",
            )
        ids = setup.counter_ids(si)
        four = (fields.VMMEMCTL, fields.VMMEMCTLTARGET, fields.SWAPPED, fields.COMPRESSED)
        queries = [(valued, [ids[n] for n in four]), (other, [ids[fields.VMMEMCTL]])]
        keep(
            "queryperf.xml",
            post(soap.query_perf_request(content.perfManager._moId, queries)),
            f"QueryPerf of {VALUED} ({valued}: {', '.join(four)}) and {OTHER} ({other}: "
            f"{fields.VMMEMCTL} only)",
        )
    finally:
        setup.disconnect(si)
        sim.stop()
    return made


def note(made: Sequence[tuple[str, int, str]]) -> str:
    """SOURCE.md: the command, the simulator's version and how each reply was made."""
    versions = vcsim.launcher_versions()
    client = importlib.metadata.version("pyvmomi")
    values = ", ".join(f"{k} {v}" for k, v in VALUES.items())
    inventory = ", ".join(f"{k} {v}" for k, v in INVENTORY.items())
    lines = [
        "# Where these replies come from",
        "",
        "Written by `python scripts/capture_vsphere_fixtures.py` (run it again rather than edit",
        "them): each file is the whole HTTP response body, byte for byte, that the tests' vCenter",
        "simulator (tests/stack/vcsim.py: our launcher tests/vcsim/main.go over govmomi's",
        "simulator library) sent to the vSphere source's own SOAP requests",
        "(`telegraf_balloon.sources.vsphere.soap`), on a session pyVmomi logged in.",
        "",
        f"- simulator: govmomi {versions['govmomi']}, {versions['go']}, "
        f"main.go sha256 {versions['main.go sha256']}; pyVmomi {client}",
        f"- inventory: {inventory}: 1 datacenter, 1 cluster of 2 hosts plus a standalone host, "
        "2 VMs each, pages of 2",
        f"- `{VALUED}` set through ReconfigVM_Task (configure_vm): {values}; the other VMs are "
        "as the simulator makes them",
        "- the QueryPerf sample's timestamp is the capture's time; every other byte comes out the "
        "same on each run (tests/integration/test_vsphere_fixtures.py checks it)",
        "",
    ]
    lines += [f"- `{name}` (HTTP {status}): {how}." for name, status, how in made]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    args = parser.parse_args(argv)
    reason = vcsim.launcher_available()
    if reason is not None:
        print(f"capture_vsphere_fixtures: the simulator cannot be built: {reason}", file=sys.stderr)
        return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    made = capture(out)
    (out / "SOURCE.md").write_text(note(made))
    for name, status, _ in made:
        print(f"{out / name}: HTTP {status}, {(out / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
