"""A libvirt connection that answers from recorded data: the libvirt source without libvirtd.

`FakeConnection` speaks the part of libvirt's API the libvirt source calls, and no more (a
call it does not know is an AttributeError: a call the source starts making belongs here
too). It answers from a `Recording`: what a real libvirtd answered during one poll
(`RecordingConnection` keeps it, handed to the source through its connect seam, as
bench/bench_libvirt.py does), or answers a test writes. Told to, it raises libvirt's own
libvirtError with a given error code: the faults a real daemon cannot be made to produce on
demand (a daemon older than the NOWAIT flag, a domain gone at one exact moment).

The libvirt binding is needed for libvirtError and its codes.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

import libvirt

# method -> its answer, for a domain: name, UUIDString, ID, memoryStats, info, XMLDesc
DomainCalls = dict[str, Any]


def libvirt_error(code: int, message: str = "") -> Any:
    """libvirt's own exception, carrying `code` as an error from libvirtd does."""
    text = message or f"libvirt error code {code}"
    error = libvirt.libvirtError(text)
    # (code, domain, message, level, str1, str2, str3, int1, int2), as libvirt reports it
    error.err = (code, libvirt.VIR_FROM_NONE, text, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    error.args = (text,)  # not whatever error this thread saw last
    return error


@dataclass
class Recording:
    """What a libvirtd answered: the connection's own calls, and each running domain's
    answers with its record of the bulk stats call."""

    host: dict[str, Any]  # getHostname, getInfo, getType, getFreeMemory -> answer
    domains: list[tuple[DomainCalls, dict[str, Any]]]  # (answers, bulk stats) per domain
    bulk_args: Optional[tuple[int, int]] = None  # (stats, flags) of the bulk call; None: any


class FakeDomain:
    """A running domain: answers what was recorded of it (KeyError for what never was).

    A test may change `answers` between polls (a new ID is the domain restarted).
    """

    def __init__(self, answers: DomainCalls) -> None:
        self.answers = answers
        self.xml_reads = 0
        self.period_set: Optional[int] = None  # by setMemoryStatsPeriod

    def name(self) -> Any:
        return self.answers["name"]

    def UUIDString(self) -> Any:
        return self.answers["UUIDString"]

    def UUID(self) -> bytes:
        return uuid.UUID(self.answers["UUIDString"]).bytes

    def ID(self) -> Any:
        return self.answers["ID"]

    def memoryStats(self) -> Any:
        return self.answers["memoryStats"]

    def info(self) -> Any:
        return self.answers["info"]

    def XMLDesc(self, flags: int = 0) -> Any:
        self.xml_reads += 1
        return self.answers["XMLDesc"]

    def setMemoryStatsPeriod(self, period: int, flags: int = 0) -> int:
        self.period_set = period
        return 0

    def fail(self, method: str, code: int) -> None:
        """From now on `method` raises libvirtError(code): VIR_ERR_NO_DOMAIN is a domain
        undefined since the bulk call listed it, VIR_ERR_OPERATION_INVALID one shut down."""

        def refuse(*_args: Any) -> NoReturn:
            raise libvirt_error(code, f"{method}: refused with code {code}")

        setattr(self, method, refuse)


class FakeConnection:
    """A connection with zero latency that answers the recorded poll, as often as asked.

    `copies` > 1 repeats the recorded domains under distinct names, UUIDs and IDs. Every
    connection-level call is kept in `calls` as (method, flags). `records` are the running
    domains with their bulk stats: a test may take one out (the domain stopped) or put it back.
    """

    def __init__(self, recording: Recording, copies: int = 1) -> None:
        self.bulk_args = recording.bulk_args
        self._host = recording.host
        self.records: list[tuple[FakeDomain, dict[str, Any]]] = []
        for k in range(copies):
            for calls, stats in recording.domains:
                self.records.append((FakeDomain(_copy_calls(calls, k)), stats))
        uuids = {dom.UUIDString() for dom, _ in self.records}
        names = {dom.name() for dom, _ in self.records}
        if len(uuids) != len(self.records) or len(names) != len(self.records):
            raise ValueError("fake libvirt: the domains do not have distinct names and UUIDs")
        self.calls: list[tuple[str, int]] = []
        self.alive = True
        self.closed = False
        self._failures: dict[str, list[tuple[int, int]]] = {}
        self.event_callbacks: dict[int, tuple[int, Any, Any]] = {}  # id -> (event, cb, opaque)

    # -- what a test tells it --

    def fail(self, method: str, code: int, *, flags: int = 0) -> None:
        """From now on `method` raises libvirtError(code); with `flags`, only the calls made
        with all those flags set (a daemon that refuses a flag it does not know)."""
        self._failures.setdefault(method, []).append((code, flags))

    def domain(self, name: str) -> FakeDomain:
        return next(dom for dom, _ in self.records if dom.name() == name)

    def _call(self, method: str, flags: int = 0) -> None:
        self.calls.append((method, flags))
        for code, wanted in self._failures.get(method, ()):
            if flags & wanted == wanted:
                raise libvirt_error(code, f"{method}: refused with code {code}")

    # -- libvirt's virConnect, the part the source calls --

    def isAlive(self) -> int:
        self._call("isAlive")
        return 1 if self.alive else 0

    def _answer(self, method: str) -> Any:
        self._call(method)
        return self._host[method]

    def getHostname(self) -> Any:
        return self._answer("getHostname")

    def getInfo(self) -> Any:  # [model, memory MiB, cpus, ...]
        return self._answer("getInfo")

    def getType(self) -> Any:
        return self._answer("getType")

    def getFreeMemory(self) -> Any:  # bytes
        return self._answer("getFreeMemory")

    def setKeepAlive(self, interval: int, count: int) -> int:
        self._call("setKeepAlive")
        return 0

    def getAllDomainStats(self, stats: int, flags: int = 0) -> list[tuple[FakeDomain, Any]]:
        self._call("getAllDomainStats", flags)
        if self.bulk_args is not None and (stats, flags) != self.bulk_args:
            raise RuntimeError(f"fake libvirt: getAllDomainStats{(stats, flags)} was not recorded")
        # new dicts on every call, as libvirt's answer is: the source owns and fills them
        return [(dom, dict(stats)) for dom, stats in self.records]

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:
        self._call("listAllDomains", flags)
        return [dom for dom, _ in self.records]

    def lookupByUUIDString(self, key: str) -> FakeDomain:
        """The running domain of this UUID (the agent pings look their domains up)."""
        self._call("lookupByUUIDString")
        for dom, _ in self.records:
            if dom.UUIDString() == key:
                return dom
        raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, f"no domain with UUID {key}")

    def domainListGetStats(
        self, doms: list[FakeDomain], stats: int, flags: int = 0
    ) -> list[tuple[FakeDomain, Any]]:
        self._call("domainListGetStats", flags)
        stats_of = {id(dom): stats for dom, stats in self.records}
        return [(dom, dict(stats_of[id(dom)])) for dom in doms if id(dom) in stats_of]

    def domainEventRegisterAny(self, dom: Any, event: int, callback: Any, opaque: Any) -> int:
        self._call("domainEventRegisterAny", event)
        self.event_callbacks[len(self.event_callbacks)] = (event, callback, opaque)
        return len(self.event_callbacks) - 1

    def domainEventDeregisterAny(self, callback_id: int) -> int:
        self._call("domainEventDeregisterAny")
        del self.event_callbacks[callback_id]
        return 0

    def emit(self, event: int, dom: FakeDomain, *args: Any) -> None:
        """What libvirt's event loop does when `event` happens to `dom` (the test says when)."""
        for kind, callback, opaque in list(self.event_callbacks.values()):
            if kind == event:
                callback(self, dom, *args, opaque)

    def close(self) -> int:
        self._call("close")
        self.closed = True
        return 0


def _copy_calls(calls: DomainCalls, k: int) -> DomainCalls:
    """The k-th copy of one domain's answers: its own name, UUID and ID (k=0: the original)."""
    if k == 0:
        return dict(calls)
    out = dict(calls)
    name, key = calls["name"], calls["UUIDString"]
    out["name"] = f"{name}~{k}"
    out["UUIDString"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{key}/{k}"))
    if "ID" in calls:
        out["ID"] = int(calls["ID"]) + 1_000_000 * k
    if "XMLDesc" in calls:
        xml = str(calls["XMLDesc"])
        xml = xml.replace(f"<name>{name}</name>", f"<name>{out['name']}</name>", 1)
        out["XMLDesc"] = xml.replace(f"<uuid>{key}</uuid>", f"<uuid>{out['UUIDString']}</uuid>")
    return out


# -- recording a real libvirtd --


def _keeping(target: Any, method: str, kept: dict[str, Any]) -> Any:
    """`target`'s attribute `method`; a method keeps a copy of its last answer in `kept`."""
    attr = getattr(target, method)
    if not callable(attr):
        return attr

    def call(*args: Any) -> Any:
        value = attr(*args)
        kept[method] = copy.deepcopy(value)
        return value

    return call


class RecordingDomain:
    """A real virDomain whose every answer is kept (the last one of each method)."""

    def __init__(self, dom: Any) -> None:
        self._dom = dom
        self.calls: DomainCalls = {}

    def __getattr__(self, method: str) -> Any:
        return _keeping(self._dom, method, self.calls)


class RecordingConnection:
    """A real virConnect whose answers to one bulk-call poll are kept: hand it to the source
    through its connect seam, poll once, then take `recording()`.

    Records the bulk stats call (getAllDomainStats: the source's one-call way), not the
    chunked fetch.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.bulk_args: Optional[tuple[int, int]] = None
        self.bulk: list[tuple[RecordingDomain, dict[str, Any]]] = []
        self.host: dict[str, Any] = {}

    def __getattr__(self, method: str) -> Any:
        return _keeping(self._conn, method, self.host)  # getHostname, getInfo, ...

    def getAllDomainStats(self, stats: int, flags: int) -> list[tuple[RecordingDomain, Any]]:
        records = self._conn.getAllDomainStats(stats, flags)
        self.bulk_args = (stats, flags)
        self.bulk = [(RecordingDomain(dom), copy.deepcopy(values)) for dom, values in records]
        return [(rec, values) for (rec, _), (_, values) in zip(self.bulk, records)]

    def close(self) -> None:
        pass  # whoever opened the real connection closes it

    def recording(self) -> Recording:
        """What was answered; the bulk call must have been made."""
        if self.bulk_args is None:
            raise RuntimeError("recording: no bulk stats call was made")
        return Recording(
            host=dict(self.host),
            domains=[(rec.calls, stats) for rec, stats in self.bulk],
            bulk_args=self.bulk_args,
        )
