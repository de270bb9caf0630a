"""The qmp source's pure parts: Proxmox configs, Proxmox's query-balloon replies, and the
bounds on what any peer may send.

Both are written from Proxmox's documentation and published source (tests/fixtures/proxmox/
SOURCE.md): no Proxmox host or Proxmox-patched QEMU runs here. Everything a stock QEMU can
show is tested against real QEMU processes in tests/integration/test_qmp_qemu.py.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import QmpConfig
from telegraf_balloon.log import Log
from telegraf_balloon.sources import proxmox
from telegraf_balloon.sources.qmp.protocol import (
    MAX_EVENTS,
    MAX_EXCHANGE,
    MAX_LINE,
    Dialogue,
    VmFacts,
    VmPoll,
)
from telegraf_balloon.sources.qmp.replies import NOT_REPORTED, ProtocolError
from telegraf_balloon.sources.qmp.source import QmpSource
from tests.fakes.qmp_peer import QmpPeer

FIXTURES = Path(__file__).parent / "fixtures" / "proxmox"
MIB = 1024 * 1024

# file -> (name, memory_mib, balloon_mib, shares, uuid, problems)
CONFIGS: dict[str, tuple[Optional[str], Optional[int], Optional[int], Optional[int], Any, int]] = {
    "101-web.conf": ("web-01", 4096, 1024, 2000, "5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10", 0),
    "102-fixed.conf": ("db-01", 2048, 0, None, "0b7e2c44-3f1d-4b8a-9a6e-6c2d1e0f9a77", 0),
    "103-defaults.conf": (None, None, None, None, None, 0),
    "104-floor-at-max.conf": ("fixed-size", 2048, 2048, None, None, 0),
    "105-malformed.conf": ("broken", None, None, None, None, 3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_proxmox_config(name: str) -> None:
    parsed = proxmox.read_config(str(FIXTURES / name))
    assert parsed is not None
    expected = CONFIGS[name]
    got = (parsed.name, parsed.memory_mib, parsed.balloon_mib, parsed.shares, parsed.uuid)
    assert got == expected[:5]
    assert len(parsed.problems) == expected[5], parsed.problems


def test_proxmox_config_sections_are_not_the_running_vm() -> None:
    """Snapshot, [PENDING] and [special:cloudinit] values never leak into the current ones."""
    web = proxmox.read_config(str(FIXTURES / "101-web.conf"))
    assert web is not None and web.name == "web-01" and web.balloon_mib == 1024
    floor = proxmox.read_config(str(FIXTURES / "104-floor-at-max.conf"))
    assert floor is not None and floor.memory_mib == 2048 and floor.name == "fixed-size"


def test_proxmox_memory_default_and_missing_file(tmp_path: Path) -> None:
    defaults = proxmox.parse_config("boot: order=scsi0\n")
    assert defaults.memory_bytes == 512 * MIB
    assert proxmox.read_config(str(tmp_path / "999.conf")) is None
    assert proxmox.parse_config("").name is None


def test_proxmox_resolve_dir(tmp_path: Path) -> None:
    assert proxmox.resolve_dir("", str(tmp_path)) is None
    assert proxmox.resolve_dir("auto", str(tmp_path)) == str(tmp_path)
    assert proxmox.resolve_dir("auto", str(tmp_path / "absent")) is None
    assert proxmox.resolve_dir("/srv/pve", str(tmp_path)) == "/srv/pve"


# --- Proxmox's query-balloon -------------------------------------------------------------------


class PveQmp(QmpPeer):
    """A QMP server answering as Proxmox's patched QEMU would (a stand-in: no such QEMU here).

    It speaks the protocol as the real QEMU does (greeting, capabilities, one JSON object per
    line, CRLF, ids echoed) and records every command it was sent.
    """

    def __init__(self, path: str, balloon: dict[str, Any], interval: int = 2) -> None:
        self.path = path
        self.balloon = balloon
        self.interval = interval
        super().__init__(path)

    def name(self, message: dict[str, Any]) -> str:
        arguments = message.get("arguments", {})
        return f"{message['execute']} {arguments.get('property', '')}".strip()

    def answer(self, message: dict[str, Any]) -> Any:
        name = self.name(message)
        if name == "query-balloon":
            return self.balloon
        if name == "qom-get guest-stats":
            stats = {"stat-available-memory": 2684354560, "stat-disk-caches": 268435456}
            return {"stats": stats, "last-update": self.balloon.get("last_update", 0)}
        if name == "qom-get guest-stats-polling-interval":
            return self.interval
        if name == "query-name":
            return {"name": "web-01-old"}
        if name == "query-uuid":
            return {"UUID": "5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10"}
        if name == "query-kvm":
            return {"enabled": True, "present": True}
        if name == "query-memory-size-summary":
            return {"base-memory": 4294967296, "plugged-memory": 0}
        if name == "query-memory-devices":
            return []  # QEMU's answer for a VM without memory devices
        return {}


@pytest.fixture()
def pve_replies() -> dict[str, dict[str, Any]]:
    data = json.loads((FIXTURES / "query-balloon-pve.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


@pytest.fixture()
def pve_host(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A Proxmox layout: run/<vmid>.qmp beside a qemu-server/ config directory."""
    run = tmp_path / "run"
    conf = tmp_path / "qemu-server"
    run.mkdir()
    conf.mkdir()
    (conf / "101.conf").write_bytes((FIXTURES / "101-web.conf").read_bytes())
    yield run, conf


def _source(run: Path, conf: Path, stream: io.StringIO) -> QmpSource:
    config = QmpConfig(sockets=(f"{run}/*.qmp",), proxmox_config="auto")
    return QmpSource(config, "pve-1", Log(stream), pve_dir=str(conf))


Replies = dict[str, dict[str, Any]]


@pytest.fixture()
def pve_101(
    pve_host: tuple[Path, Path], pve_replies: Replies
) -> Iterator[tuple[PveQmp, QmpSource]]:
    """VM 101 served as Proxmox's QEMU does (its guest's stats flowing), and a source on the
    node; the stand-in is closed after the test."""
    run, conf = pve_host
    server = PveQmp(str(run / "101.qmp"), pve_replies["stats_flowing"])
    try:
        yield server, _source(run, conf, io.StringIO())
    finally:
        server.close()


def test_pve_query_balloon_saves_the_guest_stats_round_trip(
    pve_101: tuple[PveQmp, QmpSource], pve_replies: Replies
) -> None:
    server, source = pve_101
    now = 1795848265.0
    first = source.poll(now)
    second = source.poll(now + 10)
    assert first.error is None and second.error is None
    # First contact: identity once, and guest-stats (QEMU might be unpatched).
    assert "qom-get guest-stats" in server.commands[0]
    assert "query-name" in server.commands[0]
    # Then: query-balloon carried the guest figures, so no qom-get guest-stats, no identity.
    assert server.commands[1] == [
        "qmp_capabilities",
        "query-balloon",
        "qom-get guest-stats-polling-interval",
    ]
    [sample] = second.samples
    raw = pve_replies["stats_flowing"]
    assert sample.tags == {
        "host": "pve-1",
        "source": "qmp",
        "guest": "web-01",  # the config's name, not QEMU's stale -name
        "hypervisor": "kvm",
        "uuid": "5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10",
        "vmid": "101",
    }
    fields = sample.fields
    assert fields["memory_max_bytes"] == raw["max_mem"]
    assert fields["memory_current_bytes"] == raw["actual"]
    assert fields["balloon_actual_bytes"] == raw["max_mem"] - raw["actual"]
    assert fields["guest_total_bytes"] == raw["total_mem"]
    assert fields["guest_free_bytes"] == raw["free_mem"]
    assert fields["swap_in_bytes_total"] == raw["mem_swapped_in"]
    assert fields["swap_out_bytes_total"] == raw["mem_swapped_out"]
    assert fields["major_faults_total"] == raw["major_page_faults"]
    assert fields["minor_faults_total"] == raw["minor_page_faults"]
    assert fields["stats_age_seconds"] == now + 10 - raw["last_update"]
    assert fields["reservation_bytes"] == 1024 * MIB
    assert fields["stats_period_seconds"] == 2 and fields["stats_disabled"] is False
    assert fields["inflation_blocked"] is False
    # Proxmox's query-balloon has no MemAvailable nor disk caches: those come only with
    # the qom-get this path saves (the first poll had them).
    assert "guest_available_bytes" not in fields
    assert first.samples[0].fields["guest_available_bytes"] == 2684354560
    for name in fields:
        assert catalog.field(catalog.BALLOON, name) is not None, name


def test_pve_query_balloon_without_stats_asks_guest_stats_again(
    pve_101: tuple[PveQmp, QmpSource], pve_replies: Replies
) -> None:
    """Stats stop (interval set to 0): query-balloon drops them, qom-get is asked again."""
    server, source = pve_101
    source.poll(1795848265.0)
    source.poll(1795848275.0)
    server.balloon = pve_replies["period_zero"]
    server.interval = 0
    third = source.poll(1795848285.0)
    fourth = source.poll(1795848295.0)
    assert "qom-get guest-stats" in server.commands[2]  # the same exchange, a follow-up
    assert "qom-get guest-stats" in server.commands[3]
    fields = third.samples[0].fields
    assert fields["stats_disabled"] is True
    assert fields["guest_available_bytes"] == 2684354560
    assert fourth.samples[0].fields["memory_current_bytes"] == pve_replies["period_zero"]["actual"]


def test_pve_query_balloon_partial_figures(
    pve_101: tuple[PveQmp, QmpSource], pve_replies: Replies
) -> None:
    """A figure the guest did not send is absent from Proxmox's reply, so absent here."""
    server, source = pve_101
    server.balloon = pve_replies["partial"]
    source.poll(1795848265.0)
    second = source.poll(1795848275.0)
    fields = second.samples[0].fields
    assert fields["guest_free_bytes"] == pve_replies["partial"]["free_mem"]
    for absent in ("swap_in_bytes_total", "major_faults_total", "guest_available_bytes"):
        assert absent not in fields


def test_pve_floor_at_memory_and_missing_config(
    pve_host: tuple[Path, Path], pve_replies: dict[str, dict[str, Any]]
) -> None:
    run, conf = pve_host
    (conf / "104.conf").write_bytes((FIXTURES / "104-floor-at-max.conf").read_bytes())
    balloon = dict(pve_replies["period_zero"], actual=2048 * MIB, max_mem=2048 * MIB)
    servers = [PveQmp(str(run / "104.qmp"), balloon), PveQmp(str(run / "106.qmp"), balloon)]
    try:
        result = _source(run, conf, io.StringIO()).poll(1795848265.0)
    finally:
        for server in servers:
            server.close()
    by_vmid = {s.tags["vmid"]: s for s in result.samples}
    floor = by_vmid["104"]
    assert floor.tags["guest"] == "fixed-size"
    assert floor.fields["reservation_bytes"] == 2048 * MIB
    assert floor.fields["inflation_blocked"] is True  # minimum = memory: it can never inflate
    # No 106.conf (the VM is defined on another node, or the file was removed): QEMU's name.
    assert by_vmid["106"].tags["guest"] == "web-01-old"
    assert "reservation_bytes" not in by_vmid["106"].fields


def test_malformed_config_is_logged_once_and_polled(
    pve_host: tuple[Path, Path], pve_replies: dict[str, dict[str, Any]]
) -> None:
    run, conf = pve_host
    (conf / "105.conf").write_bytes((FIXTURES / "105-malformed.conf").read_bytes())
    server = PveQmp(str(run / "105.qmp"), pve_replies["stats_flowing"])
    stream = io.StringIO()
    try:
        source = _source(run, conf, stream)
        first = source.poll(1795848265.0)
        source.poll(1795848275.0)
    finally:
        server.close()
    lines = [line for line in stream.getvalue().splitlines() if "105.conf" in line]
    assert len(lines) == 1 and lines[0].startswith("W! ") and "line 1" in lines[0]
    assert first.samples[0].tags["guest"] == "broken"
    assert first.samples[0].fields["memory_max_bytes"] == pve_replies["stats_flowing"]["max_mem"]


def _process_files(root: Path, pid: int, start: int, rss_kib: int) -> None:
    """proc/<pid>/stat and status under `root`, as the kernel writes them (fields elided)."""
    folder = root / "proc" / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    after = " ".join(["S"] + ["0"] * 18 + [str(start)] + ["0"] * 30)
    (folder / "stat").write_text(f"{pid} (qemu-system-x86) {after}\n")
    (folder / "status").write_text(f"Name:\tqemu-system-x86\nVmRSS:\t  {rss_kib} kB\n")


def test_qemu_process_is_read_under_host_root(
    pve_host: tuple[Path, Path], pve_replies: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The QEMU process's start time and resident memory come from host_root's proc, like
    every other host figure: here a tree for the stand-in's process (this one, the socket's
    peer), whose start time changes as a restarted QEMU's would."""
    run, conf = pve_host
    root = tmp_path / "host"
    _process_files(root, os.getpid(), start=1000, rss_kib=4321)
    server = PveQmp(str(run / "101.qmp"), pve_replies["stats_flowing"])
    config = QmpConfig(sockets=(f"{run}/*.qmp",), proxmox_config="auto", host_root=str(root))
    source = QmpSource(config, "pve-1", Log(io.StringIO()), pve_dir=str(conf))
    try:
        first = source.poll(1795848265.0)
        source.poll(1795848275.0)
        _process_files(root, os.getpid(), start=2000, rss_kib=4321)
        source.poll(1795848285.0)
    finally:
        server.close()
    assert first.samples[0].fields["rss_bytes"] == 4321 * 1024
    asked = ["query-name" in commands for commands in server.commands]
    assert asked == [True, False, True]  # the identity again after the "restart" only


def test_not_reported_marker() -> None:
    assert NOT_REPORTED == 18446744073709551615
    path = os.path.join("/", "nonexistent")
    assert QmpSource(QmpConfig(sockets=(path,)), "h", Log(io.StringIO())).poll(0.0).samples == []


def test_proxmox_example_config_loads() -> None:
    from telegraf_balloon.config import load

    loaded = load(str(Path(__file__).parent.parent / "examples" / "proxmox.toml"), {})
    assert loaded.qmp == (QmpConfig(set_stats_period=2),)
    assert {r.field for r in loaded.thresholds} >= {"balloon_ratio", "inflation_blocked"}


# --- what a peer may send: bounded, and one VM's fault --------------------------------------


def _dialogue() -> Dialogue:
    poll = VmPoll("/run/qemu-server/150.qmp", 0)
    dialogue = Dialogue(poll, lambda p, pid: VmFacts((pid, 0), 0.0))
    out = dialogue.feed(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
    assert out.startswith(b'{"execute":"qmp_capabilities","id":0}\n')
    return dialogue


def test_a_reply_line_that_never_ends_is_cut_at_max_line() -> None:
    dialogue = _dialogue()
    dialogue.feed(b'{"return": "')
    chunk = b"a" * 65536
    with pytest.raises(ProtocolError, match="longer than"):
        for _ in range(MAX_LINE // len(chunk) + 1):
            dialogue.feed(chunk)
    assert len(dialogue.buffer) <= MAX_LINE + len(chunk)


def test_endless_events_are_cut_at_max_events() -> None:
    dialogue = _dialogue()
    event = b'{"event": "BALLOON_CHANGE", "data": {"actual": 1}}\r\n'
    dialogue.feed(event * MAX_EVENTS)  # many, but not endless: still listening
    with pytest.raises(ProtocolError, match="events"):
        dialogue.feed(event)


def test_a_peer_sends_at_most_max_exchange_bytes() -> None:
    dialogue = _dialogue()
    blank = b" " * 65535 + b"\n"  # blank lines: no line too long, no event, no reply
    with pytest.raises(ProtocolError, match="bytes in one exchange"):
        for _ in range(MAX_EXCHANGE // len(blank) + 1):
            dialogue.feed(blank)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'{"return": ' + b"[" * 50000 + b"]" * 50000 + b', "id": 0}', "nested too deeply"),
        (b'{"return": {}, "id": [0]}', "id"),
        (b'{"return": {}, "id": true}', "id"),  # True == 1 == a pending id: still not ours
        (b'{"return": {}, "id": 0.0}', "id"),
        (b'{"return": {}, "id": 99}', "id"),
        (b"\xff\xfe not utf-8", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"return": {}, "id": 0, "error": {"class": 7}}', "not a QMP error"),
    ],
)
def test_malformed_lines_are_protocol_errors(line: bytes, fragment: str) -> None:
    dialogue = _dialogue()
    with pytest.raises(ProtocolError, match=fragment):
        dialogue.feed(line + b"\r\n")


def test_no_socket_no_host_line(tmp_path: Path) -> None:
    """A qmp source that sees no VM writes no balloon_host line (there is one per host and
    source poll that saw a VM there), but reports itself up with vms=0."""
    from tests.stack.execd import run_cli

    config = tmp_path / "qmp.toml"
    config.write_text(
        f'[agent]\nhostname = "pve-1"\n[[sources.qmp]]\nsockets = ["{tmp_path}/run/*.qmp"]\n'
        f'proxmox_config = ""\nhost_root = "{tmp_path}"\n'
    )
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1024 kB\nMemFree: 512 kB\n")
    done = run_cli("--once", "--config", str(config), timeout=30)
    assert done.returncode == 0, done.stderr
    measurements = [line.split(",", 1)[0] for line in done.stdout.splitlines()]
    assert measurements == [catalog.COLLECTOR], done.stdout
    assert "up=true" in done.stdout and "vms=0i" in done.stdout
    assert (
        QmpSource(QmpConfig(sockets=(f"{tmp_path}/run/*.qmp",)), "pve-1", Log(io.StringIO()))
        .poll(0.0)
        .hosts
        == []
    )  # not even read: nothing to sum it with


# --- a VM's identity: read once all three replies are in, whatever their order --------------

IDENTITY_REPLIES: dict[str, Any] = {
    "query-name": {"name": "web-01"},
    "query-uuid": {"UUID": "5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10"},
    "query-kvm": {"enabled": True, "present": True},
    "query-balloon": {"actual": 2048 * MIB},
}
IDENTITY = {"query-name", "query-uuid", "query-kvm"}


def _sent(data: bytes) -> dict[str, int]:
    """The commands in bytes the dialogue wrote, by their name in log lines, with their ids."""
    out = {}
    for line in data.splitlines():
        message = json.loads(line)
        prop = message.get("arguments", {}).get("property", "")
        out[f"{message['execute']} {prop}".strip()] = message["id"]
    return out


GREETING = b'{"QMP": {"version": {}, "capabilities": []}}\r\n'


def _greeted(facts: VmFacts) -> tuple[Dialogue, dict[str, int]]:
    """A VM's dialogue past the greeting and qmp_capabilities, with the ids of what it sent."""
    dialogue = Dialogue(VmPoll("/run/qemu-server/101.qmp", 0), lambda p, pid: facts)
    ids = _sent(dialogue.feed(GREETING))
    dialogue.feed(b'{"return": {}, "id": %d}\r\n' % ids["qmp_capabilities"])
    return dialogue, ids


def _answer(dialogue: Dialogue, ids: dict[str, int], name: str) -> None:
    reply = {"return": IDENTITY_REPLIES[name], "id": ids[name]}
    dialogue.feed(json.dumps(reply).encode() + b"\r\n")


@pytest.mark.parametrize("order", list(itertools.permutations(IDENTITY_REPLIES)))
def test_identity_is_read_when_its_three_replies_are_in(order: tuple[str, ...]) -> None:
    """query-name, query-uuid and query-kvm answered in any order, query-balloon's reply
    anywhere among them: the identity counts as read after the last of the three, not before,
    and is not asked again while the QEMU process runs."""
    facts = VmFacts((4242, 1), 0.0)
    dialogue, ids = _greeted(facts)
    assert set(ids) >= IDENTITY
    answered: set[str] = set()
    for name in order:
        _answer(dialogue, ids, name)
        answered.add(name)
        assert facts.identity_read is (answered >= IDENTITY), sorted(answered)
    assert (facts.name, facts.uuid, facts.hypervisor) == (
        "web-01",
        "5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10",
        "kvm",
    )
    _, again = _greeted(facts)
    assert not IDENTITY & set(again)


@pytest.mark.parametrize("order", list(itertools.permutations(sorted(IDENTITY), 2)))
def test_a_poll_cut_before_the_third_identity_reply_asks_again(order: tuple[str, ...]) -> None:
    """Two of the three identity replies in, then the poll ends (a timeout, a lost VM): the
    identity is not read, and the next poll asks all three again."""
    facts = VmFacts((4242, 1), 0.0)
    dialogue, ids = _greeted(facts)
    for name in order:
        _answer(dialogue, ids, name)
    assert not facts.identity_read
    _, again = _greeted(facts)
    assert set(again) >= IDENTITY


def test_identity_read_with_an_identity_command_refused() -> None:
    """A refused identity command (an error reply) answers it all the same: the identity is
    read once the other two are in, with what they said."""
    facts = VmFacts((4242, 1), 0.0)
    dialogue, ids = _greeted(facts)
    refused = {"class": "CommandNotFound", "desc": "The command query-uuid has not been found"}
    replies: dict[str, dict[str, Any]] = {
        "query-kvm": {"return": {"enabled": False}},
        "query-uuid": {"error": refused},
        "query-name": {"return": {}},
    }
    for name, reply in replies.items():
        assert not facts.identity_read
        dialogue.feed(json.dumps({**reply, "id": ids[name]}).encode() + b"\r\n")
    assert facts.identity_read
    assert (facts.name, facts.uuid, facts.hypervisor) == (None, None, "qemu")
