"""The QEMU guest agent seen through libvirt, without libvirtd: the channel's state in the
domain XML, when the XML is read again for it, and the pings (agent.py) against a command
that answers, refuses, or does not come back, as a test tells it.

The faults here are those a real guest agent cannot be made to produce at one exact moment
(an agent command that blocks until the test lets it go, a domain gone between the stats and
its ping, an error libvirt gives only under an access-control policy); the real guest agent
channel, a stand-in agent in a real guest and a stopped QEMU are in
tests/integration/test_integration_service.py.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Any, Optional

import libvirt  # the binding is a test dependency: make setup installs it
import pytest

from telegraf_balloon.config import LibvirtConfig
from telegraf_balloon.log import Log
from telegraf_balloon.sources.libvirt.agent import PING, AgentPinger
from telegraf_balloon.sources.libvirt.domainxml import DomainFacts, parse_domain_xml
from telegraf_balloon.sources.libvirt.fields import domain_fields
from telegraf_balloon.sources.libvirt.reread import RECHECK_SECONDS, needs_xml
from telegraf_balloon.sources.libvirt.source import LibvirtSource
from tests.fakes.libvirt_conn import FakeConnection, FakeDomain, libvirt_error
from tests.stack.common import wait_for
from tests.test_libvirt_source import T0, UUIDS, domain, domain_xml, fake

AGENT = "<channel type='unix'><source mode='bind' path='/run/x.sock'/>{target}</channel>"
TARGET = "<target type='virtio' name='org.qemu.guest_agent.0'{state}/>"
BALLOON = "<memballoon model='virtio'><stats period='2'/></memballoon>"


def with_agent(state: Optional[str]) -> str:
    """A memballoon and the guest agent's channel, in `state` (None: no state attribute)."""
    attr = "" if state is None else f" state='{state}'"
    return BALLOON + AGENT.format(target=TARGET.format(state=attr))


def facts_of(devices: str) -> DomainFacts:
    facts = DomainFacts(1, T0)
    xml = f"<domain type='kvm'><memory unit='KiB'>524288</memory><devices>{devices}</devices>"
    assert parse_domain_xml(xml + "</domain>", facts) == []
    return facts


# --- the channel in the XML ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "channel", "connected"),
    [
        (with_agent("connected"), True, True),
        (with_agent("disconnected"), True, False),
        (with_agent(None), True, None),  # the inactive XML, or a QEMU without port events
        (BALLOON, False, None),
        # other channels are not the agent's: SPICE's vdagent, a guest agent on another port
        (
            BALLOON + "<channel type='spicevmc'><target type='virtio' "
            "name='com.redhat.spice.0' state='connected'/></channel>",
            False,
            None,
        ),
        (
            BALLOON + "<channel type='pty'><target type='guestfwd' name='org.qemu.guest_agent.0'"
            " state='connected'/></channel>",
            False,
            None,
        ),
        (
            BALLOON + "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'"
            " state='connected'/></channel>" + with_agent("disconnected")[len(BALLOON):],
            True,
            False,
        ),
        (with_agent("half-open"), True, None),  # a state libvirt does not write: unknown
    ],
)  # fmt: skip
def test_agent_channel_and_its_state(
    devices: str, channel: bool, connected: Optional[bool]
) -> None:
    facts = facts_of(devices)
    assert facts.agent_channel is channel
    assert facts.agent_connected is connected
    fields = domain_fields({"balloon.current": 1, "balloon.maximum": 2}, facts, T0)
    if connected is None:
        assert "guest_agent_connected" not in fields
    else:
        assert fields["guest_agent_connected"] is connected
    assert "guest_agent_latency_seconds" not in fields  # only a ping measures it


def test_a_channel_removed_on_reread_leaves_no_state_behind() -> None:
    facts = facts_of(with_agent("connected"))
    root = f"<domain type='kvm'><devices>{BALLOON}</devices></domain>"
    parse_domain_xml(root, facts)
    assert facts.agent_channel is False and facts.agent_connected is None


def test_a_disconnected_agent_is_read_again_soon_a_connected_one_at_refresh() -> None:
    off, on = facts_of(with_agent("disconnected")), facts_of(with_agent("connected"))

    def at(seconds: float) -> tuple[dict[str, int], float]:  # stats flowing, every 2 s
        return {"balloon.last-update": int(T0 + seconds)}, T0 + seconds

    for facts in (off, on):
        assert not needs_xml(facts, *at(5), 300.0)
    assert needs_xml(off, *at(RECHECK_SECONDS), 300.0)  # an agent that starts after boot
    assert not needs_xml(on, *at(RECHECK_SECONDS), 300.0)
    assert not needs_xml(on, *at(299), 300.0)
    assert needs_xml(on, *at(300), 300.0)


# --- the pinger ---------------------------------------------------------------------------------


class Agent:
    """The agent command seam: per domain UUID, an answer, a libvirt error code, or a gate the
    command waits on (a guest that does not answer) until the test opens it."""

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.gates: dict[str, threading.Event] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, dom: Any, command: str, timeout: int) -> str:
        assert command == PING and timeout == 1
        key = dom.UUIDString()
        with self.lock:
            self.calls.append(key)
        gate = self.gates.get(key)
        if gate is not None:
            gate.wait(30)
        if key in self.errors:
            raise libvirt_error(self.errors[key], f"agent of {key}: code {self.errors[key]}")
        return '{"return":{}}'

    def count(self, key: str) -> int:
        with self.lock:
            return self.calls.count(key)


def pinger(
    conn: FakeConnection, agent: Agent, timeout: float = 0.3, workers: int = 4
) -> tuple[AgentPinger, io.StringIO]:
    stream = io.StringIO()
    return AgentPinger(lambda: conn, agent, Log(stream), "qemu:///system", timeout, workers), stream


def three() -> FakeConnection:
    return fake(*((domain(name), {}) for name in UUIDS))


def test_answers_unanswered_gone_and_faults() -> None:
    conn, agent = three(), Agent()
    web, db, cache = UUIDS["web-01"], UUIDS["db-01"], UUIDS["cache-01"]
    agent.errors[db] = libvirt.VIR_ERR_AGENT_UNRESPONSIVE  # "QEMU guest agent is not connected"
    agent.errors[cache] = libvirt.VIR_ERR_ACCESS_DENIED  # a policy refuses the command
    gone = "00000000-0000-0000-0000-0000000000aa"  # stopped since the stats listed it
    pings, log = pinger(conn, agent)
    try:
        got = pings.ping([web, db, cache, gone], 5.0)
        assert set(got) == {web, db}  # the refused one and the gone one are not judged
        latency = got[web]
        assert latency is not None and 0 <= latency < 0.3
        assert got[db] is None
        assert "guest-ping failed for 1 domain(s)" in log.getvalue()
        assert log.getvalue().startswith("W! ")
        del agent.errors[cache]
        got = pings.ping([web, db, cache], 5.0)
        assert got[cache] is not None
        assert "guest-ping answers again" in log.getvalue()
    finally:
        pings.close()


def test_no_answer_within_the_timeout_is_not_connected_and_not_asked_again_meanwhile() -> None:
    conn, agent = three(), Agent()
    web, db = UUIDS["web-01"], UUIDS["db-01"]
    gate = agent.gates[web] = threading.Event()
    pings, _ = pinger(conn, agent)
    try:
        started = time.monotonic()
        got = pings.ping([web, db], 5.0)
        took = time.monotonic() - started
        assert got[web] is None and got[db] is not None
        assert took < 5.0  # the wait ended with the agent's timeout, not the poll's deadline
        # the next poll: the first ping has not come back; it is not sent again
        got = pings.ping([web, db], 5.0)
        assert got[web] is None and agent.count(web) == 1
        gate.set()  # the guest answers (too late for those polls): pinged again after that
        wait_for(lambda: pings.ping([web], 5.0).get(web) is not None, 10, "a new answer", 0.05)
        assert agent.count(web) >= 2
    finally:
        for gate in agent.gates.values():
            gate.set()
        pings.close()


def test_pings_that_cannot_start_in_time_are_not_sent_and_go_first_next_time() -> None:
    """Two workers, both held by guests that do not answer: the third domain's ping waits
    for a worker, is not sent when the poll's wait ends, and is the first of the next poll."""
    conn, agent = three(), Agent()
    web, db, cache = UUIDS["web-01"], UUIDS["db-01"], UUIDS["cache-01"]
    held = [agent.gates.setdefault(k, threading.Event()) for k in (web, db)]
    pings, _ = pinger(conn, agent, workers=2)
    try:
        got = pings.ping([web, db, cache], 5.0)
        assert got == {web: None, db: None}  # cache-01: not judged, not a false "down"
        assert agent.count(cache) == 0
        for gate in held:
            gate.set()
        got = pings.ping([web, db, cache], 5.0)
        assert got[cache] is not None
        assert agent.calls[2] == cache  # the one left out last time went first
    finally:
        for gate in agent.gates.values():
            gate.set()
        pings.close()


def test_the_wait_never_passes_the_deadline_it_is_given() -> None:
    """A deadline shorter than the agent's timeout: the ping out for less than the timeout
    is left unjudged (absent), not counted as an agent that does not answer."""
    conn, agent = three(), Agent()
    web = UUIDS["web-01"]
    agent.gates[web] = threading.Event()
    pings, _ = pinger(conn, agent, timeout=5.0)
    try:
        started = time.monotonic()
        assert pings.ping([web], 0.2) == {}
        assert time.monotonic() - started < 5.0
    finally:
        agent.gates[web].set()
        pings.close()


# --- through the source -------------------------------------------------------------------------


def test_source_with_agent_ping_reports_latency_and_not_connected() -> None:
    xml = {
        "web-01": domain_xml("web-01", with_agent("connected")),
        "db-01": domain_xml("db-01", with_agent("connected")),  # stale: its agent is gone
        "cache-01": domain_xml("cache-01", BALLOON),  # no channel: never pinged
    }
    conn = fake(*((domain(name, xml=text), {}) for name, text in xml.items()))
    agent = Agent()
    agent.errors[UUIDS["db-01"]] = libvirt.VIR_ERR_AGENT_UNRESPONSIVE
    config = LibvirtConfig(uri="qemu:///system", read_only=False, agent_ping=True, concurrency=1)
    source = LibvirtSource(config, Log(io.StringIO()), connect=lambda *_: conn, agent=agent)
    try:
        result = source.poll(T0)
        assert result.error is None, result.error
        fields = {s.tags["guest"]: s.fields for s in result.samples}
        assert fields["web-01"]["guest_agent_connected"] is True
        latency = fields["web-01"]["guest_agent_latency_seconds"]
        assert isinstance(latency, float) and 0 <= latency < 1.0
        assert fields["db-01"]["guest_agent_connected"] is False
        assert "guest_agent_latency_seconds" not in fields["db-01"]
        assert "guest_agent_connected" not in fields["cache-01"]
        assert UUIDS["cache-01"] not in agent.calls
    finally:
        source.close()


def test_source_without_agent_ping_sends_nothing_to_the_agent() -> None:
    conn = fake((domain("web-01", xml=domain_xml("web-01", with_agent("disconnected"))), {}))
    agent = Agent()
    config = LibvirtConfig(uri="qemu:///system", concurrency=1)
    source = LibvirtSource(config, Log(io.StringIO()), connect=lambda *_: conn, agent=agent)
    try:
        (sample,) = source.poll(T0).samples
        assert sample.fields["guest_agent_connected"] is False
        assert "guest_agent_latency_seconds" not in sample.fields
        assert agent.calls == [] and source.agent is None
    finally:
        source.close()


def test_source_keeps_its_deadline_with_agents_that_do_not_answer() -> None:
    """The pings wait at most a share of the runner's timeout from the poll's start."""
    conn = fake((domain("web-01", xml=domain_xml("web-01", with_agent("connected"))), {}))
    agent = Agent()
    gate = agent.gates[UUIDS["web-01"]] = threading.Event()
    config = LibvirtConfig(uri="qemu:///system", read_only=False, agent_ping=True, concurrency=1)
    # a runner's timeout of 0.5 s: FETCH_SHARE of it is the fetch budget
    source = LibvirtSource(
        config, Log(io.StringIO()), fetch_budget=0.35, connect=lambda *_: conn, agent=agent
    )
    try:
        started = time.monotonic()
        (sample,) = source.poll(T0).samples
        assert time.monotonic() - started < 0.5
        assert sample.fields["guest_agent_connected"] is True  # the XML's: the ping was cut
        assert "guest_agent_latency_seconds" not in sample.fields
    finally:
        gate.set()
        source.close()


def test_fake_domains_answer_the_lookup() -> None:
    conn = three()
    dom = conn.lookupByUUIDString(UUIDS["db-01"])
    assert isinstance(dom, FakeDomain) and dom.name() == "db-01"
    with pytest.raises(libvirt.libvirtError) as caught:
        conn.lookupByUUIDString("00000000-0000-0000-0000-000000000001")
    assert caught.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    assert ("lookupByUUIDString", 0) in conn.calls
