"""guest-ping on a VM's QEMU guest agent socket (Proxmox: <vmid>.qga beside the monitor),
without the socket: what to send, and what the answer means.

QEMU hands the agent's socket to the guest's virtio-serial port byte for byte: there is no
greeting, one client at a time, and whatever an earlier client left half-sent or unread may
still be in the stream either way. So, as qemu-ga's protocol asks of a client that has just
connected: first a 0xFF byte (qemu-ga drops a half-read request on it), then
guest-sync-delimited with an id of our own, whose answer qemu-ga sends after a 0xFF byte of
its own; everything before that byte belongs to an earlier client and is dropped, and so is
an answer with another id. Then guest-ping: the next answer is its own (qemu-ga answers in
order). The latency is the two round trips, sync and ping, as libvirt's agent command makes
them. Whatever the peer sends, what is kept stays bounded.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Callable, Optional

from .replies import ProtocolError

SENTINEL = b"\xff"
MAX_STALE = 1 << 20  # bytes before the sync's sentinel: an earlier client's leftovers
MAX_LINE = 1 << 16  # bytes of one answer after it; qemu-ga's to a ping is a dozen


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


PING = _line({"execute": "guest-ping"})


class AgentPing:
    """One VM's guest-ping in one poll: the agent socket, and what came of it.

    `path` is the VM's monitor socket (its sample's key); `socket` the agent's. `latency` is
    set when the agent answered; `error_kind` and `error` say why not: busy (another client
    holds the socket and its queue is full), timeout (no answer in time), gone, refused,
    denied, protocol (an answer that is not qemu-ga's).
    """

    __slots__ = ("error", "error_kind", "latency", "path", "pid", "socket")

    def __init__(self, path: str, socket: str) -> None:
        self.path = path
        self.socket = socket
        self.pid = 0
        self.latency: Optional[float] = None
        self.error: Optional[str] = None
        self.error_kind = ""


class AgentDialogue:
    """One agent ping's side of the exchange, without the socket: bytes in, bytes out.

    `opening()` is sent as soon as the socket connects (nothing greets us); `feed` takes what
    came and returns what to send next. ProtocolError when the answer is not qemu-ga's.
    """

    __slots__ = ("buffer", "clock", "greeted", "ident", "marked", "poll", "sent_at", "stale")

    def __init__(self, poll: AgentPing, clock: Callable[[], float] = time.monotonic) -> None:
        self.poll = poll
        self.clock = clock
        self.ident = random.getrandbits(31)
        self.buffer = bytearray()
        self.marked = False  # a sentinel came: the next line may be the sync's answer
        self.greeted = False  # synced: the sync's answer came, the ping is on its way
        self.stale = 0  # bytes dropped before the sync's answer
        self.sent_at = 0.0

    @property
    def done(self) -> bool:
        return self.poll.latency is not None

    def opening(self) -> bytes:
        self.sent_at = self.clock()
        sync = {"execute": "guest-sync-delimited", "arguments": {"id": self.ident}}
        return SENTINEL + _line(sync)

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = b""
        while not self.done:
            if not self.greeted and not self.marked:
                mark = self.buffer.find(SENTINEL)
                dropped = len(self.buffer) if mark < 0 else mark + 1
                self.stale += dropped
                del self.buffer[:dropped]
                if self.stale > MAX_STALE:
                    raise ProtocolError(f"more than {MAX_STALE} bytes and no guest-sync answer")
                if mark < 0:
                    break
                self.marked = True
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            if not self.greeted:
                self.stale += end + 1
            if line.strip():
                out += self._answer(line)
        if self.done:
            self.buffer.clear()  # anything after the ping's answer is not ours to read
        elif len(self.buffer) > MAX_LINE:
            raise ProtocolError(f"an answer line longer than {MAX_LINE} bytes")
        return out

    def _answer(self, line: bytes) -> bytes:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        answer = isinstance(message, dict) and ("return" in message or "error" in message)
        if not self.greeted:
            ident = message.get("return") if isinstance(message, dict) else None
            if type(ident) is not int or ident != self.ident:
                self.marked = False  # an earlier client's answer: look for the next sentinel
                return b""
            self.greeted = True
            return PING
        if not answer:
            raise ProtocolError(f"not a guest agent's answer: {line[:60]!r}")
        # qemu-ga answers in order: the first answer after the sync's is the ping's; an
        # error (guest-ping refused by the agent's allow list) is an answer all the same
        self.poll.latency = max(0.0, self.clock() - self.sent_at)
        return b""
