"""Every VM's QMP socket, side by side from one thread: a selector, no thread per VM.

Each VM's socket is connected, greeted, sent all of its commands in one write, read until
every command is answered, and closed; a VM whose monitor is busy costs at most the timeout,
and a peer that answers what QEMU never would is dropped at once: one VM's fault is its own.
The guest agents' pings (agent.py) run in the same loop, on sockets of their own, each
within its own timeout.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from typing import Callable, Optional, Union

from .agent import AgentDialogue, AgentPing
from .protocol import Dialogue, VmFacts, VmPoll
from .replies import ProtocolError

MAX_IN_FLIGHT = 128  # sockets open at once: under any fd limit; busy VMs wait side by side
# Agent sockets open at once, besides the monitors (384 descriptors in all, under the usual
# limit of 1024): a VM whose agent does not answer holds one for the whole ping timeout.
MAX_PINGS_IN_FLIGHT = 256
_PEERCRED = struct.Struct("3i")
_RECV = 65536


class _Conversation:
    """The socket side of one Dialogue: bytes out, bytes in, a deadline over all of it."""

    __slots__ = ("deadline", "dialogue", "out", "poll", "sock")

    def __init__(
        self, dialogue: Union[Dialogue, AgentDialogue], sock: socket.socket, deadline: float
    ) -> None:
        self.dialogue = dialogue
        self.poll: Union[VmPoll, AgentPing] = dialogue.poll
        self.sock = sock
        self.deadline = deadline
        self.out = dialogue.opening() if isinstance(dialogue, AgentDialogue) else b""


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process serving a connected unix socket (0 if unknown)."""
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return 0
    return int(_PEERCRED.unpack(data)[0])


def exchange(
    polls: list[VmPoll],
    timeout: float,
    facts_for: Callable[[VmPoll, int], VmFacts],
    max_in_flight: int = MAX_IN_FLIGHT,
    clock: Callable[[], float] = time.monotonic,
    pings: Optional[list[AgentPing]] = None,
    ping_timeout: float = 1.0,
    max_pings: int = MAX_PINGS_IN_FLIGHT,
) -> float:
    """Talk to every VM side by side; each VmPoll ends with its replies or its error, and
    each AgentPing (`pings`, at most `max_pings` at once besides the monitors) with its
    latency or its error. A ping not started within `ping_timeout` of the start is not sent
    (error_kind "late"): however many agents do not answer, the pings take at most two
    timeouts. Returns when (on `clock`) the last monitor was done: the agents may take
    longer."""
    selector = selectors.DefaultSelector()
    window = clock() + ping_timeout
    waiting = list(reversed(polls))
    agents = list(reversed(pings or []))
    live: dict[int, _Conversation] = {}
    pinging = 0  # agent conversations among the live ones
    monitors_done: Optional[float] = None

    try:
        while waiting or agents or live:
            while waiting and len(live) - pinging < max_in_flight:
                poll = waiting.pop()
                sock = _connect(poll, poll.path)
                if sock is not None:
                    conv = _Conversation(Dialogue(poll, facts_for), sock, clock() + timeout)
                    live[sock.fileno()] = conv
                    selector.register(sock, selectors.EVENT_READ, conv)
            if agents and clock() >= window:
                for ping in agents:
                    ping.error_kind = "late"
                    ping.error = f"not sent: other agents held every slot for {ping_timeout:g}s"
                agents.clear()
            while agents and pinging < max_pings:
                ping = agents.pop()
                sock = _connect(ping, ping.socket)
                if sock is not None:
                    dialogue = AgentDialogue(ping, clock)
                    conv = _Conversation(dialogue, sock, clock() + ping_timeout)
                    live[sock.fileno()] = conv
                    pinging += 1
                    selector.register(sock, selectors.EVENT_READ, conv)
                    try:
                        _send(conv, selector)  # nothing greets a client of the agent
                    except OSError as exc:
                        message = f"connection lost: {exc.strerror or exc}"
                        pinging -= _fail(conv, "gone", message, selector, live)
            if monitors_done is None and not waiting and len(live) == pinging:
                monitors_done = clock()
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
                        pinging -= _close(conv, selector, live)
                except ProtocolError as exc:
                    pinging -= _fail(conv, "protocol", str(exc), selector, live)
                except OSError as exc:
                    message = f"connection lost: {exc.strerror or exc}"
                    pinging -= _fail(conv, "gone", message, selector, live)
                except Exception as exc:  # a reply no check foresaw: still this VM's alone
                    message = f"unreadable reply ({type(exc).__name__}: {str(exc)[:120]})"
                    pinging -= _fail(conv, "protocol", message, selector, live)
            now = clock()
            for conv in [c for c in live.values() if c.deadline <= now]:
                if isinstance(conv.dialogue, AgentDialogue):
                    message = f"no answer within {ping_timeout:g}s"
                    pinging -= _fail(conv, "timeout", message, selector, live)
                elif conv.dialogue.greeted:
                    _fail(conv, "busy", f"no reply within {timeout:g}s", selector, live)
                else:
                    message = f"no greeting within {timeout:g}s (another client holds the monitor)"
                    _fail(conv, "busy", message, selector, live)
    finally:
        for conv in list(live.values()):
            _fail(conv, "gone", "poll abandoned", selector, live)
        selector.close()
    return clock() if monitors_done is None else monitors_done


def _connect(poll: Union[VmPoll, AgentPing], path: str) -> Optional[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        sock.connect(path)
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
) -> int:
    """Closes one conversation; 1 when it was an agent's (the caller counts those), else 0."""
    live.pop(conv.sock.fileno(), None)
    selector.unregister(conv.sock)
    conv.sock.close()
    return 1 if isinstance(conv.dialogue, AgentDialogue) else 0


def _fail(
    conv: _Conversation,
    kind: str,
    message: str,
    selector: selectors.BaseSelector,
    live: dict[int, _Conversation],
) -> int:
    conv.poll.error_kind, conv.poll.error = kind, message
    return _close(conv, selector, live)
