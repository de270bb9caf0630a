"""Every VM's QMP socket, side by side from one thread: a selector, no thread per VM.

Each VM's socket is connected, greeted, sent all of its commands in one write, read until
every command is answered, and closed; a VM whose monitor is busy costs at most the timeout,
and a peer that answers what QEMU never would is dropped at once: one VM's fault is its own.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from typing import Callable, Optional

from .protocol import Dialogue, VmFacts, VmPoll
from .replies import ProtocolError

MAX_IN_FLIGHT = 128  # sockets open at once: under any fd limit; busy VMs wait side by side
_PEERCRED = struct.Struct("3i")
_RECV = 65536


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
