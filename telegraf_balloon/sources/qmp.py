"""QEMU without libvirt (Proxmox VE, plain QEMU): each VM's QMP socket, briefly, every poll.

QMP serves one client at a time, and Proxmox's own daemons use the same sockets. So every
poll connects to every VM side by side from one thread (a selector, no thread per VM), sends
all of its commands in one write once greeted, reads the replies, and closes: nothing is held
between polls, and a VM whose monitor is busy costs at most `connect_timeout` and is skipped.
A socket whose peer answers what QEMU never would (a wrong type, a number out of range, a
line or a stream of events without end) is skipped the same way, at once: one peer's
replies never cost another VM its line.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import selectors
import socket
import struct
import time
from typing import Any, Callable, Optional

from ..config import QmpConfig
from ..log import Log
from ..model import Fields, PollResult, Sample, Tags
from .hostfacts import local_host
from .kvm import driver_silent
from .proxmox import MIB, PVE_DIR, PveConfig, read_config, resolve_dir

NOT_REPORTED = 2**64 - 1  # a guest stat the guest did not send
BALLOON_PATH = "/machine/peripheral/balloon0"  # libvirt's and Proxmox's device id
MAX_IN_FLIGHT = 128  # sockets open at once: under any fd limit; busy VMs wait side by side
_PEERCRED = struct.Struct("3i")
_RECV = 65536

# What a reply may hold. A peer that says otherwise is not QEMU (or not a sane one): that VM
# is skipped for the poll with one W!, the other VMs are not affected.
MAX_MEMORY = 2**52  # bytes: no machine addresses more (52-bit physical addresses at most)
MAX_INT64 = 2**63 - 1  # QAPI's `int`; also the largest integer a line-protocol field holds
MAX_PERIOD = 2**32 - 1  # QEMU refuses a guest-stats-polling-interval above UINT32_MAX
MAX_LINE = 1 << 20  # bytes of one reply line; QEMU's longest here (qom-list) is a few KiB
MAX_EXCHANGE = 8 << 20  # bytes from one VM in one poll
MAX_EVENTS = 1000  # events between replies in one poll; QEMU rate-limits BALLOON_CHANGE to 1/s

# qom-get guest-stats: {"stats": {"stat-total-memory": 492847104, ...}, "last-update": 1795848260}
# Memory and swap in bytes, faults in counts; 2^64-1 = not reported.
_GUEST_STATS: tuple[tuple[str, str], ...] = (
    ("stat-total-memory", "guest_total_bytes"),
    ("stat-free-memory", "guest_free_bytes"),
    ("stat-available-memory", "guest_available_bytes"),
    ("stat-disk-caches", "guest_disk_caches_bytes"),
    ("stat-swap-in", "swap_in_bytes_total"),
    ("stat-swap-out", "swap_out_bytes_total"),
    ("stat-major-faults", "major_faults_total"),
    ("stat-minor-faults", "minor_faults_total"),
)
# Proxmox's QEMU (patch "virtio-balloon: improve query-balloon") adds to query-balloon:
# {"actual": ..., "max_mem": ..., "last_update": ..., "total_mem": ..., "free_mem": ...,
#  "mem_swapped_in": ..., "mem_swapped_out": ..., "major_page_faults": ...,
#  "minor_page_faults": ...}; the guest figures only while the stats period is above 0 and
# the guest has reported, each only where the guest sent it.
_PVE_BALLOON: tuple[tuple[str, str], ...] = (
    ("total_mem", "guest_total_bytes"),
    ("free_mem", "guest_free_bytes"),
    ("mem_swapped_in", "swap_in_bytes_total"),
    ("mem_swapped_out", "swap_out_bytes_total"),
    ("major_page_faults", "major_faults_total"),
    ("minor_page_faults", "minor_faults_total"),
)


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
    )

    def __init__(self, start: tuple[int, int], now: float) -> None:
        self.start = start  # (pid, process start time): a new QEMU process is a new start
        self.first_seen = now
        self.name: Optional[str] = None
        self.uuid: Optional[str] = None
        self.hypervisor = "unknown"
        self.identity_read = False  # name, UUID and KVM state answered
        self.last_update = 0  # the guest's latest report seen: a poll without one is no news
        self.max_bytes: Optional[int] = None
        self.memory_stale = True  # query-memory-size-summary wanted (again: hotplug)
        self.balloon_path: Optional[str] = BALLOON_PATH  # None: no balloon object found
        self.no_device = False  # query-balloon said DeviceNotActive: no qom-get until it changes
        self.pve_stats = False  # query-balloon carries the guest figures (Proxmox's QEMU)
        self.arm_failed = False


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

    # -- what to send --

    def first(self, facts: VmFacts) -> list[tuple[str, dict[str, Any]]]:
        """The pipelined commands after the greeting (capabilities first, as QMP requires)."""
        self.facts = facts
        commands: list[tuple[str, dict[str, Any]]] = [("capabilities", {})]
        if not facts.identity_read:
            commands += [("name", {}), ("uuid", {}), ("kvm", {})]
        if facts.memory_stale:
            commands.append(("memory", {}))
        commands.append(("balloon", {}))
        if facts.balloon_path is not None and not facts.no_device:
            commands += self._stats_commands(facts.balloon_path, not facts.pve_stats)
        return commands

    def _stats_commands(self, path: str, stats: bool) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if stats:
            out.append(("stats", {"path": path, "property": "guest-stats"}))
        out.append(("period", {"path": path, "property": "guest-stats-polling-interval"}))
        return out

    # -- what came back --

    def reply(self, name: str, message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Take one reply; return follow-up commands (device search, stats, arming).

        ProtocolError when the reply is not what QEMU sends: a wrong type, a number out of
        range, neither `return` nor `error`. Nothing else escapes, whatever the peer sent.
        """
        facts = self.facts
        assert facts is not None
        command = _command(name)
        error = _error(message, command)
        value = message.get("return")
        if name == "capabilities":
            if error is not None:
                raise ProtocolError(f"qmp_capabilities refused: {_desc(error)}")
            return []
        if name == "name":
            if error is None:
                facts.name = _string(_object(value, command), "name", command) or None
        elif name == "uuid":
            uuid = _string(_object(value, command), "UUID", command) if error is None else None
            if uuid is not None and uuid.strip("0-"):
                facts.uuid = uuid
        elif name == "kvm":
            if error is None:
                enabled = _object(value, command).get("enabled")
                if not isinstance(enabled, bool):
                    raise ProtocolError(f"{command}: enabled is {_shown(enabled)}")
                facts.hypervisor = "kvm" if enabled else "qemu"
            facts.identity_read = True  # the last of name, uuid, kvm: all three answered
        elif name == "memory":
            if error is None:  # CommandNotFound before QEMU 2.11: the size stays unknown
                info = _object(value, command)
                base = _integer(info, "base-memory", command, MAX_MEMORY, required=True)
                plugged = _integer(info, "plugged-memory", command, MAX_MEMORY)
                assert base is not None
                facts.max_bytes = base + (plugged or 0)
                facts.memory_stale = False
        elif name == "balloon":
            return self._balloon(error, value)
        elif name == "stats":
            if error is None:
                self.stats = _guest_stats(_object(value, "qom-get guest-stats"))
            elif _error_class(error) == "DeviceNotFound" and not self.no_device:
                return self._search()
        elif name == "period":
            if error is None:
                period = _bounded(value, "qom-get guest-stats-polling-interval", MAX_PERIOD)
                self.period = period
                if period == 0 and self.set_period > 0 and not facts.arm_failed:
                    assert facts.balloon_path is not None
                    return [
                        (
                            "arm",
                            {
                                "path": facts.balloon_path,
                                "property": "guest-stats-polling-interval",
                                "value": self.set_period,
                            },
                        )
                    ]
        elif name == "arm":
            if error is None:
                self.armed = True
                self.period = self.set_period
            else:
                self.arm_error = _desc(error)
                facts.arm_failed = True  # not again until the VM restarts
        elif name in ("list-peripheral", "list-anon"):
            return self._found(name, _devices(value if error is None else []))
        return []

    def _balloon(
        self, error: Optional[dict[str, Any]], value: object
    ) -> list[tuple[str, dict[str, Any]]]:
        facts = self.facts
        assert facts is not None
        if error is not None:
            if _error_class(error) == "DeviceNotActive":
                self.no_device = facts.no_device = True  # no balloon device at all
            return []
        info = _object(value, "query-balloon")
        actual = _integer(info, "actual", "query-balloon", MAX_MEMORY, required=True)
        assert actual is not None
        _integer(info, "max_mem", "query-balloon", MAX_MEMORY)
        _integer(info, "last_update", "query-balloon", MAX_INT64)
        for key, _ in _PVE_BALLOON:  # the guest's figures: any int64 (junk is left out later)
            _integer(info, key, "query-balloon", MAX_INT64, minimum=-MAX_INT64 - 1)
        self.balloon = info
        if facts.no_device:  # a balloon device was hot-plugged: ask for its stats now
            facts.no_device = False
            if facts.balloon_path is not None:
                return self._stats_commands(facts.balloon_path, True)
        if "max_mem" in info:
            # Proxmox's QEMU: the guest figures come with query-balloon while they flow.
            was = facts.pve_stats
            facts.pve_stats = "last_update" in info
            if was and not facts.pve_stats and facts.balloon_path is not None:
                return [("stats", {"path": facts.balloon_path, "property": "guest-stats"})]
        elif facts.max_bytes is not None and actual > facts.max_bytes:
            facts.memory_stale = True  # memory was hotplugged: read the size again next poll
        return []

    def _search(self) -> list[tuple[str, dict[str, Any]]]:
        """The balloon has no id `balloon0`: look for it among the devices, once per start."""
        facts = self.facts
        assert facts is not None
        facts.balloon_path = None
        return [("list-peripheral", {"path": "/machine/peripheral"})]

    def _found(self, name: str, devices: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
        facts = self.facts
        assert facts is not None
        base = "/machine/peripheral" if name == "list-peripheral" else "/machine/peripheral-anon"
        for device, kind in devices:
            if kind.startswith("child<virtio-balloon"):
                facts.balloon_path = f"{base}/{device}"
                return self._stats_commands(facts.balloon_path, True)
        if name == "list-peripheral":
            return [("list-anon", {"path": "/machine/peripheral-anon"})]
        return []


class ProtocolError(Exception):
    """The peer said something that is not QMP, or not what QEMU answers."""


def _command(name: str) -> str:
    """The QMP command behind one of our names, as the W! line shows it."""
    execute = _EXECUTE[name]
    if name == "stats":
        return "qom-get guest-stats"
    if name in ("period", "arm"):
        return f"{execute} guest-stats-polling-interval"
    return execute


def _shown(value: object) -> str:
    """A short description of a JSON value for a log line (never the whole of it)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -(10**30) < value < 10**30 else f"a {value.bit_length()}-bit number"
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:37]) + "..."
    return repr(value)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: returned {_shown(value)}, not an object")
    return value


def _string(info: dict[str, Any], key: str, what: str) -> Optional[str]:
    if key not in info:
        return None
    value = info[key]
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: {key} is {_shown(value)}, not a string")
    return value


def _integer(
    info: dict[str, Any],
    key: str,
    what: str,
    maximum: int,
    required: bool = False,
    minimum: int = 0,
) -> Optional[int]:
    """The integer member `key` in [minimum, maximum]; None when absent and not required."""
    if key not in info:
        if required:
            raise ProtocolError(f"{what}: no {key}")
        return None
    return _bounded(info[key], f"{what} {key}", maximum, minimum)


def _bounded(value: object, what: str, maximum: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} is {_shown(value)}, not an integer")
    if not minimum <= value <= maximum:
        raise ProtocolError(f"{what} is {_shown(value)}, out of range")
    return value


def _guest_stats(info: dict[str, Any]) -> dict[str, Any]:
    """qom-get guest-stats: {"stats": {name: uint64}, "last-update": int}."""
    what = "qom-get guest-stats"
    stats = info.get("stats", {})
    if not isinstance(stats, dict):
        raise ProtocolError(f"{what}: stats is {_shown(stats)}, not an object")
    for key, _ in _GUEST_STATS:
        _integer(stats, key, what, NOT_REPORTED)  # QEMU's uint64; junk is left out later
    _integer(info, "last-update", what, MAX_INT64)
    return info


def _devices(value: object) -> list[tuple[str, str]]:
    """qom-list: [{"name": str, "type": str, ...}] as (name, type) pairs."""
    if not isinstance(value, list):
        raise ProtocolError(f"qom-list: returned {_shown(value)}, not an array")
    out = []
    for item in value:
        info = _object(item, "qom-list")
        name = _string(info, "name", "qom-list")
        kind = _string(info, "type", "qom-list")
        if name is None or kind is None:
            raise ProtocolError("qom-list: a property without name or type")
        out.append((name, kind))
    return out


def _error(message: dict[str, Any], command: str) -> Optional[dict[str, Any]]:
    """The reply's `error` member (None if it succeeded); ProtocolError if it is neither."""
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict) or not isinstance(error.get("class"), str):
            raise ProtocolError(f"{command}: error is {_shown(error)}, not a QMP error")
        if not isinstance(error.get("desc", ""), str):
            raise ProtocolError(f"{command}: error desc is {_shown(error['desc'])}")
        return error
    if "return" not in message:
        raise ProtocolError(f"{command}: a reply with neither return nor error")
    return None


def _error_class(error: Optional[dict[str, Any]]) -> str:
    return str(error.get("class", "")) if error is not None else ""


def _desc(error: dict[str, Any]) -> str:
    text = f"{error.get('class', 'error')}: {error.get('desc', '')}"
    return text if len(text) <= 200 else text[:197] + "..."


_EXECUTE = {
    "capabilities": "qmp_capabilities",
    "name": "query-name",
    "uuid": "query-uuid",
    "kvm": "query-kvm",
    "memory": "query-memory-size-summary",
    "balloon": "query-balloon",
    "stats": "qom-get",
    "period": "qom-get",
    "arm": "qom-set",
    "list-peripheral": "qom-list",
    "list-anon": "qom-list",
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
        self.pending: dict[int, str] = {}
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
        follow: list[tuple[str, dict[str, Any]]] = []
        for line in lines:
            if len(line) > MAX_LINE:
                raise ProtocolError(f"a reply line longer than {MAX_LINE} bytes")
            if line.strip():
                follow += self._message(bytes(line))
        return self.queue(follow)

    def _message(self, line: bytes) -> list[tuple[str, dict[str, Any]]]:
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
        name = None
        if type(ident) is int:  # not a bool, not a float: the ids we sent
            name = self.pending.pop(ident, None)
        if name is None:
            raise ProtocolError(f"a reply whose id is none we sent: {_head(line)}")
        return poll.reply(name, message)

    def queue(self, commands: list[tuple[str, dict[str, Any]]]) -> bytes:
        """The commands as bytes to send, each remembered under its id."""
        parts = []
        for name, arguments in commands:
            message: dict[str, Any] = {"execute": _EXECUTE[name], "id": self.next_id}
            if arguments:
                message["arguments"] = arguments
            self.pending[self.next_id] = name
            self.next_id += 1
            parts.append(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        return b"".join(parts)


def _head(line: bytes) -> str:
    return repr(line[:60]) + ("..." if len(line) > 60 else "")


class _Conversation:
    """The socket side of one Dialogue: bytes out, bytes in, a deadline over all of it."""

    __slots__ = ("deadline", "dialogue", "out", "poll", "sock")

    def __init__(self, dialogue: Dialogue, sock: socket.socket, deadline: float) -> None:
        self.dialogue = dialogue
        self.poll = dialogue.poll
        self.sock = sock
        self.deadline = deadline
        self.out = b""


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process serving a connected unix socket (0 if unknown)."""
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return 0
    return int(_PEERCRED.unpack(data)[0])


# /proc/<pid>/stat: "1234 (qemu-system-x86) S 1 ... <starttime, field 22> ..."
def process_start(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read(4096)
    except OSError:
        return 0
    fields = text[text.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


# /proc/<pid>/status: "VmRSS:\t  123456 kB"
def process_rss(pid: int) -> Optional[int]:
    """Resident memory of a process in bytes (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            text = handle.read(8192)
    except OSError:
        return None
    at = text.find(b"\nVmRSS:")
    if at < 0:
        return None
    parts = text[at + 7 : text.find(b"\n", at + 1)].split()
    return int(parts[0]) * 1024 if parts and parts[0].isdigit() else None


def exchange(
    polls: list[VmPoll],
    timeout: float,
    facts_for: Callable[[VmPoll, int], VmFacts],
    max_in_flight: int = MAX_IN_FLIGHT,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Talk to every VM side by side; each VmPoll ends with its replies or its error."""
    selector = selectors.DefaultSelector()
    waiting = list(reversed(polls))
    live: dict[int, _Conversation] = {}

    try:
        while waiting or live:
            while waiting and len(live) < max_in_flight:
                poll = waiting.pop()
                sock = _connect(poll)
                if sock is not None:
                    conv = _Conversation(Dialogue(poll, facts_for), sock, clock() + timeout)
                    live[sock.fileno()] = conv
                    selector.register(sock, selectors.EVENT_READ, conv)
            if not live:
                break
            now = clock()
            wait = max(0.0, min(c.deadline for c in live.values()) - now)
            for key, events in selector.select(wait):
                conv = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        _send(conv, selector)
                    if events & selectors.EVENT_READ and _receive(conv, selector):
                        _close(conv, selector, live)
                except ProtocolError as exc:
                    _fail(conv, "protocol", str(exc), selector, live)
                except OSError as exc:
                    _fail(conv, "gone", f"connection lost: {exc.strerror or exc}", selector, live)
                except Exception as exc:  # a reply no check foresaw: still this VM's alone
                    message = f"unreadable reply ({type(exc).__name__}: {str(exc)[:120]})"
                    _fail(conv, "protocol", message, selector, live)
            now = clock()
            for conv in [c for c in live.values() if c.deadline <= now]:
                if conv.dialogue.greeted:
                    _fail(conv, "busy", f"no reply within {timeout:g}s", selector, live)
                else:
                    message = f"no greeting within {timeout:g}s (another client holds the monitor)"
                    _fail(conv, "busy", message, selector, live)
    finally:
        for conv in list(live.values()):
            _fail(conv, "gone", "poll abandoned", selector, live)
        selector.close()


def _connect(poll: VmPoll) -> Optional[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        sock.connect(poll.path)
    except OSError as exc:
        sock.close()
        code = exc.errno
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            poll.error_kind = "busy"
            poll.error = "monitor busy: its connection queue is full (another client holds it)"
        elif code == errno.ENOENT:
            poll.error_kind, poll.error = "gone", "socket gone (the VM stopped)"
        elif code == errno.ECONNREFUSED:
            poll.error_kind = "refused"
            poll.error = "nothing listening (QEMU is gone; a stale socket file)"
        elif code in (errno.EACCES, errno.EPERM):
            poll.error_kind = "denied"
            poll.error = "permission denied"
        else:
            poll.error_kind, poll.error = "gone", f"cannot connect: {exc.strerror or exc}"
        return None
    poll.pid = peer_pid(sock)
    return sock


def _send(conv: _Conversation, selector: selectors.BaseSelector) -> None:
    if conv.out:
        try:
            sent = conv.sock.send(conv.out)
        except BlockingIOError:
            sent = 0
        conv.out = conv.out[sent:]
    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conv.out else 0)
    selector.modify(conv.sock, events, conv)


def _receive(conv: _Conversation, selector: selectors.BaseSelector) -> bool:
    """Read what arrived; True when the exchange is complete."""
    try:
        data = conv.sock.recv(_RECV)
    except BlockingIOError:
        return False
    if not data:
        raise ConnectionResetError(0, "QEMU closed the connection (the VM stopped)")
    out = conv.dialogue.feed(data)
    if out:
        conv.out += out
        _send(conv, selector)
    return conv.dialogue.done


def _close(
    conv: _Conversation, selector: selectors.BaseSelector, live: dict[int, _Conversation]
) -> None:
    live.pop(conv.sock.fileno(), None)
    selector.unregister(conv.sock)
    conv.sock.close()


def _fail(
    conv: _Conversation,
    kind: str,
    message: str,
    selector: selectors.BaseSelector,
    live: dict[int, _Conversation],
) -> None:
    conv.poll.error_kind, conv.poll.error = kind, message
    _close(conv, selector, live)


class QmpSource:
    """Every QMP socket matching the configured globs, re-globbed each poll."""

    kind = "qmp"

    def __init__(
        self,
        config: QmpConfig,
        hostname: str,
        log: Log,
        pve_dir: str = PVE_DIR,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.log = log
        self.instance = ",".join(config.sockets)
        self.hostname = hostname
        self._pve_dir = pve_dir
        self._clock = clock
        self._facts: dict[str, VmFacts] = {}
        self._pve: dict[str, tuple[tuple[int, int], Optional[PveConfig]]] = {}
        self._now = 0.0
        self._faulted: set[str] = set()  # paths with a fault logged and not yet cleared

    def close(self) -> None:
        """Nothing is held between polls."""

    def _paths(self) -> list[str]:
        seen: dict[str, None] = {}
        for pattern in self.config.sockets:
            for path in sorted(glob.glob(pattern)):
                seen.setdefault(path)
        return list(seen)

    def _facts_for(self, poll: VmPoll, pid: int) -> VmFacts:
        """The VM's facts of this start; new ones when its QEMU process changed."""
        start = (pid, process_start(pid) if pid else 0)
        facts = self._facts.get(poll.path)
        if facts is None or facts.start != start or not pid:
            facts = self._facts[poll.path] = VmFacts(start, self._now)
        return facts

    def poll(self, now: float) -> PollResult:
        self._now = now
        paths = self._paths()
        polls = [VmPoll(path, self.config.set_stats_period) for path in paths]
        started = self._clock()
        exchange(polls, self.config.connect_timeout, self._facts_for)
        latency = self._clock() - started
        pve_dir = resolve_dir(self.config.proxmox_config, self._pve_dir)
        host_tags: Tags = {"host": self.hostname, "source": "qmp"}
        samples: list[Sample] = []
        denied = 0
        for poll in polls:
            key = f"qmp:{poll.path}"
            if poll.error is not None:
                if poll.error_kind == "denied":
                    denied += 1
                elif poll.error_kind != "gone":
                    self.log.fault(key, f"qmp: {poll.path}: skipped this poll: {poll.error}")
                    self._faulted.add(poll.path)
                else:
                    self.log.debug(f"qmp: {poll.path}: {poll.error}")
                continue
            self.log.clear(key, f"qmp: {poll.path}: answering again")
            if poll.armed:
                self.log.info(
                    f"qmp: {poll.path}: set guest-stats-polling-interval to "
                    f"{poll.set_period}s (it was 0)"
                )
            elif poll.arm_error is not None:
                self.log.warn(
                    f"qmp: {poll.path}: cannot set guest-stats-polling-interval: {poll.arm_error}"
                )
            samples.append(self._sample(poll, host_tags, pve_dir, now))
        for path in self._faulted - {p.path for p in polls if p.error is not None}:
            self._faulted.discard(path)
            if path not in paths:
                self.log.clear(f"qmp:{path}")  # the VM is gone: forget its fault quietly
        for gone in set(self._facts) - set(paths):
            del self._facts[gone]
        stems = {os.path.basename(path).rsplit(".", 1)[0] for path in paths}
        for gone in [c for c in self._pve if os.path.basename(c)[: -len(".conf")] not in stems]:
            del self._pve[gone]  # its VM's socket is gone: the config may stay on disk for ever
            self.log.clear(f"qmp-pve:{gone}")
        denied_key = f"qmp-denied:{self.instance}"
        if denied:
            message = (
                f"permission denied on {denied} QMP socket(s): QEMU's sockets are root-only "
                "(srwxr-xr-x) and connecting needs write access; run telegraf-balloon as root"
            )
            if not samples:  # the runner logs a source that is down, once
                return PollResult(error=message, api_latency_seconds=latency)
            self.log.fault(denied_key, f"qmp {self.instance}: {message}", level="E")
        else:
            self.log.clear(denied_key)
        if not samples:  # no VM here: no host line (aggregate.host_lines), nothing to read
            return PollResult(api_latency_seconds=latency)
        kinds = {s.tags["hypervisor"] for s in samples}
        hypervisor = kinds.pop() if len(kinds) == 1 else ("kvm" if "kvm" in kinds else "qemu")
        host = local_host({**host_tags, "hypervisor": hypervisor}, self.config.host_root)
        return PollResult(samples=samples, hosts=[host], api_latency_seconds=latency)

    def _proxmox(self, pve_dir: Optional[str], vmid: Optional[str]) -> Optional[PveConfig]:
        """The VM's Proxmox config, re-read only when the file changed."""
        if pve_dir is None or vmid is None:
            return None
        path = os.path.join(pve_dir, f"{vmid}.conf")
        try:
            info = os.stat(path)
        except OSError:
            if self._pve.pop(path, None) is not None:
                self.log.clear(f"qmp-pve:{path}")
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        cached = self._pve.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        config = read_config(path)
        if config is not None and config.problems:
            self.log.fault(f"qmp-pve:{path}", f"qmp: {path}: {'; '.join(config.problems)}")
        else:
            self.log.clear(f"qmp-pve:{path}")
        self._pve[path] = (stamp, config)
        return config

    def _sample(self, poll: VmPoll, host_tags: Tags, pve_dir: Optional[str], now: float) -> Sample:
        facts = poll.facts
        assert facts is not None
        stem = os.path.basename(poll.path).rsplit(".", 1)[0]
        vmid = stem if pve_dir is not None and stem.isdigit() else None
        pve = self._proxmox(pve_dir, vmid)
        tags: Tags = dict(host_tags)
        if pve is not None:
            tags["guest"] = pve.name or f"vm{vmid}"  # QEMU's -name goes stale after a rename
        else:
            tags["guest"] = facts.name or stem
        tags["hypervisor"] = facts.hypervisor
        if facts.uuid:
            tags["uuid"] = facts.uuid
        if vmid is not None:
            tags["vmid"] = vmid
        return Sample(poll.path, tags, self._fields(poll, facts, pve, now))

    def _fields(self, poll: VmPoll, facts: VmFacts, pve: Optional[PveConfig], now: float) -> Fields:
        fields: Fields = {}
        balloon = poll.balloon
        maximum = facts.max_bytes
        if balloon is not None and _count(balloon.get("max_mem")) is not None:
            maximum = int(balloon["max_mem"])
        if maximum is None and pve is not None:
            maximum = pve.memory_bytes
        current = _count(balloon.get("actual")) if balloon is not None else None
        if maximum is not None:
            fields["memory_max_bytes"] = maximum
            if current is None and poll.no_device:
                current = maximum  # no balloon: the guest has all of its memory
        if current is not None:
            fields["memory_current_bytes"] = current
            if maximum is not None:
                fields["balloon_actual_bytes"] = max(0, maximum - current)
        last_update = 0
        if poll.stats is not None:
            stats = poll.stats.get("stats")
            if isinstance(stats, dict):
                for key, name in _GUEST_STATS:
                    value = _count(stats.get(key))
                    if value is not None:
                        fields[name] = value
            last_update = _count(poll.stats.get("last-update")) or 0
        if balloon is not None and "last_update" in balloon:
            for key, name in _PVE_BALLOON:
                value = _count(balloon.get(key))
                if value is not None:
                    fields.setdefault(name, value)
            last_update = max(last_update, _count(balloon.get("last_update")) or 0)
        rss = process_rss(poll.pid) if poll.pid else None
        if rss is not None:
            fields["rss_bytes"] = rss
        facts.last_update = max(facts.last_update, last_update)
        if facts.last_update > 0:
            fields["stats_age_seconds"] = max(0.0, now - facts.last_update)
        reservation = None
        if pve is not None and pve.balloon_mib:
            reservation = pve.balloon_mib * MIB
            fields["reservation_bytes"] = reservation
        period = poll.period
        if period is not None:
            fields["stats_period_seconds"] = period
            fields["stats_disabled"] = period == 0
        no_device = poll.no_device or (pve is not None and pve.balloon_mib == 0)
        floor_at_max = reservation is not None and maximum is not None and reservation >= maximum
        reported = facts.last_update > 0
        fields["inflation_blocked"] = (
            no_device
            or floor_at_max
            or driver_silent(period, reported, current, maximum, now - facts.first_seen)
        )
        return fields


def _count(value: object) -> Optional[int]:
    """A reported figure: a non-negative int64 (not QEMU's 'not reported' marker, 2^64-1).

    The guest's figures pass through QEMU unchecked: a guest can send any uint64, and one
    beyond int64 is junk no line-protocol integer holds, so it is left out like a missing one.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_INT64 else None
