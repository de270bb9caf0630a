"""The QEMU guest agent on Proxmox's <vmid>.qga socket, without QEMU: the Proxmox config's
`agent:` key, the ping's dialogue fed what a socket may carry (an earlier client's leftovers,
answers split anywhere, answers that are not qemu-ga's), and the exchange loop against
sockets that answer, stay silent, or are full.

The socket servers here are stand-ins for faults a real QEMU cannot be made to show on
demand (an earlier client's answer arriving after we connect, a queue already full); the
real agent socket of a real QEMU, with a stand-in agent in its guest, is tested in
tests/integration/test_integration_service.py.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telegraf_balloon.config import ConfigError, QmpConfig, load_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources.proxmox import parse_config
from telegraf_balloon.sources.qmp.agent import (
    MAX_LINE,
    MAX_STALE,
    PING,
    SENTINEL,
    AgentDialogue,
    AgentPing,
)
from telegraf_balloon.sources.qmp.exchange import exchange
from telegraf_balloon.sources.qmp.protocol import VmFacts, VmPoll
from telegraf_balloon.sources.qmp.replies import ProtocolError
from telegraf_balloon.sources.qmp.source import QmpSource

# --- the Proxmox config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "enabled", "problems"),
    [
        ("agent: 1", True, 0),
        ("agent: enabled=1,fstrim_cloned_disks=1", True, 0),
        ("agent: 1,type=isa", True, 0),
        ("agent: 0", False, 0),
        ("agent: enabled=0,type=virtio", False, 0),
        ("agent: yes", False, 1),
        ("name: web", False, 0),  # no agent key: Proxmox's default is off
    ],
)
def test_proxmox_agent_key(line: str, enabled: bool, problems: int) -> None:
    config = parse_config(f"memory: 1024\n{line}\n\n[snapshot]\nagent: 1\n")
    assert config.agent is enabled
    assert len(config.problems) == problems


def test_agent_ping_is_on_by_default_and_can_be_turned_off() -> None:
    assert QmpConfig().agent_ping is True
    off = load_text("[[sources.qmp]]\nagent_ping = false\n", "t.toml")
    assert off.qmp[0].agent_ping is False
    with pytest.raises(ConfigError, match="agent_ping"):
        load_text('[[sources.qmp]]\nagent_ping = "yes"\n', "t.toml")


# --- the dialogue -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dialogue() -> tuple[AgentDialogue, AgentPing, Clock]:
    clock = Clock()
    ping = AgentPing("/run/101.qmp", "/run/101.qga")
    return AgentDialogue(ping, clock), ping, clock


def sync_answer(ident: int) -> bytes:
    return SENTINEL + json.dumps({"return": ident}).encode() + b"\n"


def test_opening_flushes_then_syncs_with_an_id_of_its_own() -> None:
    talk, _, _ = dialogue()
    opening = talk.opening()
    assert opening.startswith(SENTINEL) and opening.endswith(b"\n")
    sync = json.loads(opening[1:])
    assert sync == {"execute": "guest-sync-delimited", "arguments": {"id": talk.ident}}
    assert 0 <= talk.ident < 2**31  # an int any JSON reader takes


def test_an_earlier_clients_leftovers_are_dropped() -> None:
    """Before our sentinel: an earlier client's answers, its own sync's sentinel and answer
    (another id), an error for our flush byte. Only then ours; then the ping's answer."""
    talk, ping, clock = dialogue()
    talk.opening()
    clock.now += 0.004
    stale = (
        b'{"return": {}}\n'
        + sync_answer(talk.ident + 1)
        + b'{"error": {"class": "GenericError", "desc": "Invalid JSON syntax"}}\n'
    )
    assert talk.feed(stale) == b""
    assert not talk.greeted
    assert talk.feed(sync_answer(talk.ident)) == PING
    assert talk.greeted and not talk.done
    clock.now += 0.006
    assert talk.feed(b'{"return": {}}\n') == b""
    assert talk.done and ping.latency == pytest.approx(0.010)


def test_an_error_answer_to_the_ping_is_an_answer() -> None:
    """An agent whose allow list refuses guest-ping still answered: it is there."""
    talk, ping, _ = dialogue()
    talk.opening()
    talk.feed(sync_answer(talk.ident))
    talk.feed(b'{"error": {"class": "CommandNotFound", "desc": "disabled"}}\n')
    assert ping.latency is not None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_answers_split_anywhere_give_the_same_result(cuts: list[int]) -> None:
    talk, ping, _ = dialogue()
    talk.opening()
    stream = b'{"return": 7}\n\xff{"ret' + b'urn": 9}\n' + sync_answer(talk.ident)
    stream += b'{"return": {}}\n{"trailing": "not ours"}\n'
    sent = b""
    at = 0
    for cut in cuts:
        sent += talk.feed(stream[at : at + cut])
        at += cut
    sent += talk.feed(stream[at:])
    assert sent == PING
    assert ping.latency is not None


@pytest.mark.parametrize(
    "after_sync",
    [b"not json\n", b"[1, 2]\n", b'{"event": "x"}\n', b'"just a string"\n'],
)
def test_after_the_sync_anything_but_an_answer_is_a_protocol_error(after_sync: bytes) -> None:
    talk, _, _ = dialogue()
    talk.opening()
    talk.feed(sync_answer(talk.ident))
    with pytest.raises(ProtocolError):
        talk.feed(after_sync)


def test_what_a_peer_makes_us_keep_is_bounded() -> None:
    talk, _, _ = dialogue()
    talk.opening()
    chunk = b"x" * 65536
    with pytest.raises(ProtocolError, match="no guest-sync answer"):
        for _ in range(MAX_STALE // len(chunk) + 2):
            talk.feed(chunk)
    talk, _, _ = dialogue()
    talk.opening()
    talk.feed(sync_answer(talk.ident))
    with pytest.raises(ProtocolError, match="longer than"):
        talk.feed(b"{" * (MAX_LINE + 1))


# --- the exchange against sockets ---------------------------------------------------------------


class AgentSocket:
    """A unix socket server standing in for QEMU's agent socket: each connection is answered
    as `mode` says: "answer" (as qemu-ga: sync, then ping, after an earlier client's stale
    answer), "silent" (the guest does not answer) or "held" (nothing is accepted)."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.mode = mode
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(0 if mode == "held" else 4)
        self.stop = threading.Event()
        if mode != "held":
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                stream = conn.makefile("rb")
                if self.mode == "silent":
                    self.stop.wait(10)
                    continue
                conn.sendall(b'{"return": {}}\n')  # an earlier client's, arriving late
                for line in stream:
                    request = json.loads(line.lstrip(SENTINEL))
                    if request["execute"] == "guest-sync-delimited":
                        conn.sendall(sync_answer(request["arguments"]["id"]))
                    elif request["execute"] == "guest-ping":
                        conn.sendall(b'{"return": {}}\n')
                        break

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.fixture()
def agents(tmp_path: Path) -> Iterator[dict[str, AgentSocket]]:
    made = {mode: AgentSocket(tmp_path / f"{mode}.qga", mode) for mode in ("answer", "silent")}
    yield made
    for server in made.values():
        server.close()


def _facts(poll: VmPoll, pid: int) -> VmFacts:
    raise AssertionError("no monitor in these tests")


def test_exchange_pings_side_by_side_each_within_its_timeout(
    agents: dict[str, AgentSocket], tmp_path: Path
) -> None:
    pings = {name: AgentPing(f"{name}.qmp", str(s.path)) for name, s in agents.items()}
    pings["gone"] = AgentPing("gone.qmp", str(tmp_path / "gone.qga"))
    started = time.monotonic()
    monitors_done = exchange([], 1.0, _facts, pings=list(pings.values()), ping_timeout=0.3)
    took = time.monotonic() - started
    assert monitors_done - started < 0.3  # no monitor here: the agents' wait is not the API's
    assert pings["answer"].latency is not None and pings["answer"].error is None
    assert pings["silent"].latency is None and pings["silent"].error_kind == "timeout"
    assert pings["gone"].error_kind == "gone"
    assert took < 1.0  # the silent one cost its own timeout, not the monitors'


def test_agents_that_do_not_answer_cost_two_timeouts_at_most(tmp_path: Path) -> None:
    """More silent agents than slots: those not started within one timeout are not sent
    ("late": not judged, pinged first next poll), so the pings end within two timeouts."""
    servers = [AgentSocket(tmp_path / f"{i}.qga", "silent") for i in range(5)]
    try:
        pings = [AgentPing(f"{i}.qmp", str(server.path)) for i, server in enumerate(servers)]
        started = time.monotonic()
        exchange([], 1.0, _facts, pings=pings, ping_timeout=0.3, max_pings=2)
        took = time.monotonic() - started
        kinds = [p.error_kind for p in pings]
        assert kinds[:2] == ["timeout", "timeout"] and kinds[2:] == ["late"] * 3
        assert took < 1.0  # about one timeout here; two at most whatever the count
    finally:
        for server in servers:
            server.close()


def test_a_held_agent_socket_with_a_full_queue_is_busy_not_silent(tmp_path: Path) -> None:
    held = AgentSocket(tmp_path / "held.qga", "held")
    waiting: list[socket.socket] = []
    try:
        for _ in range(8):  # fill the listen queue as other clients would
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            try:
                client.connect(str(held.path))
            except BlockingIOError:
                client.close()
                break
            waiting.append(client)
        ping = AgentPing("held.qmp", str(held.path))
        exchange([], 1.0, _facts, pings=[ping], ping_timeout=0.3)
        assert ping.error_kind == "busy" and ping.latency is None
    finally:
        for client in waiting:
            client.close()
        held.close()


def test_source_reports_connected_latency_and_not_connected(
    agents: dict[str, AgentSocket], tmp_path: Path
) -> None:
    """Through the source's own rule: answered -> connected and its latency; no answer in
    time -> not connected; busy or gone -> nothing (not judged)."""
    source = QmpSource(QmpConfig(sockets=("/nonexistent/*.qmp",)), "pve-1", Log(io.StringIO()))
    expected: dict[str, tuple[Optional[bool], bool]] = {
        "answer": (True, True),
        "silent": (False, False),
        "gone": (None, False),
        "busy": (None, False),
    }
    pings = {name: AgentPing(f"{name}.qmp", str(tmp_path / f"{name}.qga")) for name in expected}
    pings["answer"].latency = 0.004
    pings["silent"].error_kind = "timeout"
    pings["gone"].error_kind = "gone"
    pings["busy"].error_kind = "busy"
    for name, (connected, timed) in expected.items():
        fields: dict[str, object] = {}
        source._agent_fields(pings[name], fields)  # type: ignore[arg-type]
        assert fields.get("guest_agent_connected") is connected, name
        assert ("guest_agent_latency_seconds" in fields) is timed, name
