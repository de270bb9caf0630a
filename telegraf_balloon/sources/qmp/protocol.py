"""One VM's side of a poll's QMP exchange, without the socket: which commands to send, what
each reply means, and the framing of both (the greeting, ids, one JSON object per line).

A command is a Request named as QMP names it (`query-balloon`, `qom-get` of `guest-stats`);
each reply is handled by the handler of the command it answers, found by the command's name
and the property it asked for (HANDLERS, at the end). What is read once per QEMU process
start is kept in VmFacts; what one poll found, in VmPoll.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Optional

from ..kvm import Vmem
from .replies import (
    MAX_INT64,
    MAX_MEMORY,
    MAX_PERIOD,
    PVE_BALLOON,
    ProtocolError,
    as_object,
    bounded,
    described,
    devices,
    error_class,
    error_of,
    guest_stats,
    integer_member,
    memory_devices,
    shown,
    string_member,
)

BALLOON_PATH = "/machine/peripheral/balloon0"  # libvirt's and Proxmox's device id
PERIPHERAL = "/machine/peripheral"  # devices with an id
PERIPHERAL_ANON = "/machine/peripheral-anon"  # devices without one
STATS = "guest-stats"  # the balloon device's property: the guest's latest figures
PERIOD = "guest-stats-polling-interval"  # ... and how often the guest sends them (0: never)

# What one peer may make us keep, whatever it sends.
MAX_LINE = 1 << 20  # bytes of one reply line; QEMU's longest here (qom-list) is a few KiB
MAX_EXCHANGE = 8 << 20  # bytes from one VM in one poll
MAX_EVENTS = 1000  # events between replies in one poll; QEMU rate-limits BALLOON_CHANGE to 1/s


class Request(NamedTuple):
    """One QMP command as sent: `execute`, and for the qom-* commands the object (`path`),
    its property (`prop`) and the value to set."""

    execute: str
    path: str = ""
    prop: str = ""
    value: Optional[int] = None

    def arguments(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.path:
            out["path"] = self.path
        if self.prop:
            out["property"] = self.prop
        if self.value is not None:
            out["value"] = self.value
        return out

    def __str__(self) -> str:
        """As a log line names it: `query-balloon`, `qom-get guest-stats`, `qom-list`."""
        return f"{self.execute} {self.prop}" if self.prop else self.execute


CAPABILITIES = Request("qmp_capabilities")
QUERY_NAME = Request("query-name")
QUERY_UUID = Request("query-uuid")
QUERY_KVM = Request("query-kvm")
QUERY_MEMORY = Request("query-memory-size-summary")
QUERY_BALLOON = Request("query-balloon")
QUERY_MEMORY_DEVICES = Request("query-memory-devices")  # virtio-mem: plugged and requested
IDENTITY = (QUERY_NAME, QUERY_UUID, QUERY_KVM)  # asked once per QEMU process start
# A VM with no virtio-mem device is asked again every this many polls (one may be hot-plugged):
# most VMs have none, and the command costs a tenth of a poll.
VMEM_RECHECK_POLLS = 10


def qom_get_stats(balloon: str) -> Request:
    return Request("qom-get", balloon, STATS)


def qom_get_period(balloon: str) -> Request:
    return Request("qom-get", balloon, PERIOD)


def qom_set_period(balloon: str, seconds: int) -> Request:
    return Request("qom-set", balloon, PERIOD, seconds)


def qom_list(container: str) -> Request:
    return Request("qom-list", container)


class VmFacts:
    """What cannot change while one QEMU process runs: read once per VM start."""

    __slots__ = (
        "arm_failed",
        "balloon_path",
        "first_seen",
        "hypervisor",
        "identity_read",
        "last_update",
        "max_bytes",
        "memory_stale",
        "name",
        "no_device",
        "pve_stats",
        "start",
        "uuid",
        "vmem_absent",
        "vmem_base",
        "vmem_unsupported",
        "vmem_wait",
    )

    def __init__(self, start: tuple[int, int], now: float) -> None:
        self.start = start  # (pid, process start time): a new QEMU process is a new start
        self.first_seen = now
        self.name: Optional[str] = None
        self.uuid: Optional[str] = None
        self.hypervisor = "unknown"
        self.identity_read = False  # query-name, query-uuid and query-kvm all answered
        self.last_update = 0  # the guest's latest report seen: a poll without one is no news
        self.max_bytes: Optional[int] = None
        self.memory_stale = True  # query-memory-size-summary wanted (again: hotplug)
        # virtio-mem plugged when max_bytes was read (query-memory-size-summary counts it in
        # plugged-memory, query-balloon's actual does not); None: not known then
        self.vmem_base: Optional[int] = None
        self.vmem_unsupported = False  # query-memory-devices refused (QEMU before 2.1)
        self.vmem_absent = False  # its last answer had no virtio-mem device
        self.vmem_wait = 0  # polls left before such a VM is asked again
        self.balloon_path: Optional[str] = BALLOON_PATH  # None: no balloon object found
        self.no_device = False  # query-balloon said DeviceNotActive: no qom-get until it changes
        self.pve_stats = False  # query-balloon carries the guest figures (Proxmox's QEMU)
        self.arm_failed = False


Error = Optional[dict[str, Any]]  # a reply's `error` member; None when it succeeded


class VmPoll:
    """One VM's exchange in one poll: the commands it sends and what the replies said."""

    def __init__(self, path: str, set_period: int) -> None:
        self.path = path
        self.set_period = set_period
        self.facts: Optional[VmFacts] = None
        self.pid = 0
        self.error: Optional[str] = None  # why this VM is missing from the poll
        self.error_kind = ""  # busy, gone, refused, denied, protocol
        self.balloon: Optional[dict[str, Any]] = None
        self.no_device = False
        self.stats: Optional[dict[str, Any]] = None
        self.period: Optional[int] = None
        self.armed = False
        self.arm_error: Optional[str] = None
        self.identity_waiting: set[Request] = set()  # identity commands not answered yet
        self.summary_read = False  # this poll read query-memory-size-summary
        self.vmem: Optional[Vmem] = None  # the VM's virtio-mem devices, summed
        self.vmem_asked = False  # query-memory-devices is one of this poll's commands
        self.vmem_known = False  # query-memory-devices answered and every device was read
        self.vmem_problems: list[str] = []  # virtio-mem devices skipped, and why

    # -- what to send --

    def first(self, facts: VmFacts) -> list[Request]:
        """The pipelined commands after the greeting (capabilities first, as QMP requires)."""
        self.facts = facts
        requests = [CAPABILITIES]
        if not facts.identity_read:
            requests += IDENTITY
            self.identity_waiting = set(IDENTITY)
        if facts.memory_stale:
            requests.append(QUERY_MEMORY)
        if facts.vmem_absent and facts.vmem_wait > 0:
            facts.vmem_wait -= 1
        elif not facts.vmem_unsupported:
            requests.append(QUERY_MEMORY_DEVICES)
            self.vmem_asked = True
        requests.append(QUERY_BALLOON)
        if facts.balloon_path is not None and not facts.no_device:
            requests += self._stats_requests(facts.balloon_path, not facts.pve_stats)
        return requests

    def _stats_requests(self, balloon: str, stats: bool) -> list[Request]:
        """The balloon's stats period, and its guest-stats unless `stats` is False."""
        period = qom_get_period(balloon)
        return [qom_get_stats(balloon), period] if stats else [period]

    # -- what came back --

    def reply(self, request: Request, message: dict[str, Any]) -> list[Request]:
        """Take the reply to `request`; return follow-up commands (device search, stats,
        setting the stats period).

        ProtocolError when the reply is not what QEMU sends: a wrong type, a number out of
        range, neither `return` nor `error`. Nothing else escapes, whatever the peer sent.
        """
        error = error_of(message, str(request))
        handler = HANDLERS[request.execute, request.prop]
        follow = handler(self, request, error, message.get("return"))
        if request in self.identity_waiting:
            self.identity_waiting.discard(request)
            if not self.identity_waiting:  # the three of them, in whatever order they came
                self._facts().identity_read = True
        return follow

    def _facts(self) -> VmFacts:
        facts = self.facts
        assert facts is not None, "first() gives the poll its facts"
        return facts

    def _capabilities(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is not None:
            raise ProtocolError(f"qmp_capabilities refused: {described(error)}")
        return []

    def _query_name(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is None:
            what = str(request)
            self._facts().name = string_member(as_object(value, what), "name", what) or None
        return []

    def _query_uuid(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is None:
            what = str(request)
            uuid = string_member(as_object(value, what), "UUID", what)
            if uuid is not None and uuid.strip("0-"):
                self._facts().uuid = uuid
        return []

    def _query_kvm(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is None:
            enabled = as_object(value, str(request)).get("enabled")
            if not isinstance(enabled, bool):
                raise ProtocolError(f"{request}: enabled is {shown(enabled)}")
            self._facts().hypervisor = "kvm" if enabled else "qemu"
        return []

    def _query_memory(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is None:  # CommandNotFound before QEMU 2.11: the size stays unknown
            facts = self._facts()
            what = str(request)
            info = as_object(value, what)
            base = integer_member(info, "base-memory", what, MAX_MEMORY, required=True)
            plugged = integer_member(info, "plugged-memory", what, MAX_MEMORY)
            assert base is not None
            facts.max_bytes = base + (plugged or 0)
            facts.memory_stale = False
            self.summary_read = True
            if not self.vmem_asked:  # a VM known to have no virtio-mem device
                facts.vmem_base = 0
        return []

    def vmem_plugged(self) -> Optional[int]:
        """virtio-mem plugged now (0 without a device); None when a device was not read."""
        facts = self._facts()
        if self.vmem_known:
            return self.vmem.plugged or 0 if self.vmem is not None else 0
        if facts.vmem_unsupported or (facts.vmem_absent and not self.vmem_asked):
            return 0
        return None

    def _query_memory_devices(self, request: Request, error: Error, value: object) -> list[Request]:
        """virtio-mem devices summed; sent after query-memory-size-summary, so that a poll
        reading both sees virtio-mem's part of plugged-memory at the same moment."""
        facts = self._facts()
        if error is not None:
            if error_class(error) == "CommandNotFound":
                facts.vmem_unsupported = True  # no memory devices at all: not asked again
        else:
            self.vmem, self.vmem_problems = memory_devices(value)
            self.vmem_known = not self.vmem_problems
            facts.vmem_absent = self.vmem is None and self.vmem_known
            facts.vmem_wait = VMEM_RECHECK_POLLS - 1
        if self.summary_read:
            if self.vmem_known or facts.vmem_unsupported:
                facts.vmem_base = self.vmem.plugged or 0 if self.vmem is not None else 0
            else:
                facts.vmem_base = None
                facts.memory_stale = True  # read both again until every device is readable
        return []

    def _query_balloon(self, request: Request, error: Error, value: object) -> list[Request]:
        facts = self._facts()
        if error is not None:
            if error_class(error) == "DeviceNotActive":
                self.no_device = facts.no_device = True  # no balloon device at all
            return []
        what = str(request)
        info = as_object(value, what)
        actual = integer_member(info, "actual", what, MAX_MEMORY, required=True)
        assert actual is not None
        integer_member(info, "max_mem", what, MAX_MEMORY)
        integer_member(info, "last_update", what, MAX_INT64)
        for key, _ in PVE_BALLOON:  # the guest's figures: any int64 (junk is left out later)
            integer_member(info, key, what, MAX_INT64, minimum=-MAX_INT64 - 1)
        self.balloon = info
        if facts.no_device:  # a balloon device was hot-plugged: ask for its stats now
            facts.no_device = False
            if facts.balloon_path is not None:
                return self._stats_requests(facts.balloon_path, True)
        if "max_mem" in info:
            # Proxmox's QEMU: the guest figures come with query-balloon while they flow.
            was = facts.pve_stats
            facts.pve_stats = "last_update" in info
            if was and not facts.pve_stats and facts.balloon_path is not None:
                return [qom_get_stats(facts.balloon_path)]
        elif facts.max_bytes is not None and actual > facts.max_bytes - (facts.vmem_base or 0):
            facts.memory_stale = True  # memory was hotplugged: read the size again next poll
        return []

    def _qom_get_stats(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is None:
            self.stats = guest_stats(as_object(value, str(request)))
        elif error_class(error) == "DeviceNotFound" and not self.no_device:
            # The balloon has no id `balloon0`: look for it among the devices, once per start.
            self._facts().balloon_path = None
            return [qom_list(PERIPHERAL)]
        return []

    def _qom_get_period(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is None:
            facts = self._facts()
            period = bounded(value, str(request), MAX_PERIOD)
            self.period = period
            if period == 0 and self.set_period > 0 and not facts.arm_failed:
                assert facts.balloon_path is not None
                return [qom_set_period(facts.balloon_path, self.set_period)]
        return []

    def _qom_set_period(self, request: Request, error: Error, value: object) -> list[Request]:
        if error is None:
            self.armed = True
            self.period = self.set_period
        else:
            self.arm_error = described(error)
            self._facts().arm_failed = True  # not again until the VM restarts
        return []

    def _qom_list(self, request: Request, error: Error, value: object) -> list[Request]:
        """qom-list of PERIPHERAL, then of PERIPHERAL_ANON: the first virtio balloon found."""
        facts = self._facts()
        for device, kind in devices(value if error is None else []):
            if kind.startswith("child<virtio-balloon"):
                facts.balloon_path = f"{request.path}/{device}"
                return self._stats_requests(facts.balloon_path, True)
        if request.path == PERIPHERAL:
            return [qom_list(PERIPHERAL_ANON)]
        return []


Handler = Callable[[VmPoll, Request, Error, object], list[Request]]
# Each reply's handler, by the command it answers and the property that command named.
HANDLERS: dict[tuple[str, str], Handler] = {
    ("qmp_capabilities", ""): VmPoll._capabilities,
    ("query-name", ""): VmPoll._query_name,
    ("query-uuid", ""): VmPoll._query_uuid,
    ("query-kvm", ""): VmPoll._query_kvm,
    ("query-memory-size-summary", ""): VmPoll._query_memory,
    ("query-memory-devices", ""): VmPoll._query_memory_devices,
    ("query-balloon", ""): VmPoll._query_balloon,
    ("qom-get", STATS): VmPoll._qom_get_stats,
    ("qom-get", PERIOD): VmPoll._qom_get_period,
    ("qom-set", PERIOD): VmPoll._qom_set_period,
    ("qom-list", ""): VmPoll._qom_list,
}


class Dialogue:
    """One VM's side of a poll's QMP exchange, without the socket: bytes in, bytes out.

    `feed` takes what the peer sent and returns what to send next; ProtocolError when the
    peer is not speaking QMP as QEMU does. Nothing it is fed raises anything else, and what
    it keeps is bounded (MAX_LINE, MAX_EXCHANGE, MAX_EVENTS) whatever the peer sends.
    """

    __slots__ = ("buffer", "events", "facts_for", "greeted", "next_id", "pending", "poll", "size")

    def __init__(self, poll: VmPoll, facts_for: Callable[[VmPoll, int], VmFacts]) -> None:
        self.poll = poll
        self.facts_for = facts_for
        self.buffer = bytearray()
        self.greeted = False
        self.pending: dict[int, Request] = {}  # by the id it was sent with
        self.next_id = 0
        self.size = 0  # bytes received
        self.events = 0

    @property
    def done(self) -> bool:
        """Greeted, and every command answered."""
        return self.greeted and not self.pending

    def feed(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > MAX_EXCHANGE:
            raise ProtocolError(f"more than {MAX_EXCHANGE} bytes in one exchange")
        self.buffer += data
        if b"\n" not in data:
            if len(self.buffer) > MAX_LINE:
                raise ProtocolError(f"a reply line longer than {MAX_LINE} bytes")
            return b""
        *lines, rest = self.buffer.split(b"\n")
        self.buffer = rest
        if len(rest) > MAX_LINE:
            raise ProtocolError(f"a reply line longer than {MAX_LINE} bytes")
        follow: list[Request] = []
        for line in lines:
            if len(line) > MAX_LINE:
                raise ProtocolError(f"a reply line longer than {MAX_LINE} bytes")
            if line.strip():
                follow += self._message(bytes(line))
        return self.queue(follow)

    def _message(self, line: bytes) -> list[Request]:
        try:
            message = json.loads(line)
        except RecursionError:
            raise ProtocolError(f"a reply nested too deeply: {_head(line)}") from None
        except ValueError:  # UnicodeDecodeError too
            raise ProtocolError(f"not JSON: {_head(line)}") from None
        if not isinstance(message, dict):
            raise ProtocolError(f"not a JSON object: {_head(line)}")
        poll = self.poll
        if not self.greeted:
            if "QMP" not in message:
                raise ProtocolError(f"no QMP greeting: {_head(line)}")
            self.greeted = True
            return poll.first(self.facts_for(poll, poll.pid))
        if "event" in message:
            self.events += 1
            if self.events > MAX_EVENTS:
                raise ProtocolError(f"more than {MAX_EVENTS} events and no reply")
            return []  # BALLOON_CHANGE and friends: not ours to read
        ident = message.get("id")
        request = None
        if type(ident) is int:  # not a bool, not a float: the ids we sent
            request = self.pending.pop(ident, None)
        if request is None:
            raise ProtocolError(f"a reply whose id is none we sent: {_head(line)}")
        return poll.reply(request, message)

    def queue(self, requests: list[Request]) -> bytes:
        """The commands as bytes to send, each remembered under its id."""
        parts = []
        for request in requests:
            message: dict[str, Any] = {"execute": request.execute, "id": self.next_id}
            arguments = request.arguments()
            if arguments:
                message["arguments"] = arguments
            self.pending[self.next_id] = request
            self.next_id += 1
            parts.append(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        return b"".join(parts)


def _head(line: bytes) -> str:
    return repr(line[:60]) + ("..." if len(line) > 60 else "")
