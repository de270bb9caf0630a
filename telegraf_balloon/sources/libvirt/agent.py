"""guest-ping of each domain's QEMU guest agent through libvirt, side by side, bounded in time.

libvirt's agent command (libvirt-qemu's virDomainQemuAgentCommand) sends the agent a
guest-sync, then the command, and waits for each: up to 5 s for the sync whatever the
command's own timeout, with the domain's agent job held all along. A guest that does not
answer therefore holds the calling thread for seconds. The pinger keeps those calls off the
poll: a few worker threads, each on a connection of its own (one stuck call holds up nothing
else), take the pings of one poll in turn; the poll waits for the answers at most
AGENT_TIMEOUT past each ping's start (and never past the deadline it is given), counts a ping
out for that long as not answered, and leaves a domain whose previous ping still waits out of
the new round (it has not answered that one either). A ping that could not start before the
deadline is not sent: the domain is simply not judged this poll, and goes first in the next.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any, Callable, Optional

import libvirt

from ...log import Log
from ..kvm import AGENT_TIMEOUT
from .connection import AgentCommand

PING = json.dumps({"execute": "guest-ping"})
PING_WORKERS = 4  # libvirtd serves 5 calls per client and keeps 5 workers for everyone
# libvirt's answers that mean the agent did not answer: not connected (nothing in the guest
# has the port open), no reply within the wait, or out of sync with libvirt.
_UNANSWERED = frozenset(
    getattr(libvirt, name)
    for name in (
        "VIR_ERR_AGENT_UNRESPONSIVE",
        "VIR_ERR_AGENT_UNSYNCED",
        "VIR_ERR_OPERATION_TIMEOUT",
    )
    if hasattr(libvirt, name)
)
# The domain stopped or left since the stats listed it: nothing to say of its agent.
_GONE = frozenset((libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID))


class _Ping:
    """One guest-ping: queued, then started by a worker, then done (or cancelled unsent)."""

    __slots__ = ("cancelled", "ended", "error", "gone", "key", "started", "took", "unanswered")

    def __init__(self, key: str) -> None:
        self.key = key  # the domain's UUID
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self.took: Optional[float] = None  # the agent command's own round trip
        self.cancelled = False
        self.unanswered = False  # libvirt said the agent did not answer
        self.gone = False
        self.error: Optional[str] = None  # any other failure (logged, not judged)


class AgentPinger:
    """The agent pings of one libvirt source, over the source's life.

    `opener()` opens a worker's connection (read-write: libvirt refuses agent commands on a
    read-only one); `command(domain, json, seconds)` sends one agent command.
    """

    def __init__(
        self,
        opener: Callable[[], Any],
        command: AgentCommand,
        log: Log,
        instance: str,
        timeout: float = AGENT_TIMEOUT,
        workers: int = PING_WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._command = command
        self.log = log
        self.instance = instance
        self.timeout = timeout
        self._size = workers
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[_Ping] = []
        self._threads: list[threading.Thread] = []
        self._inflight: dict[str, _Ping] = {}  # UUID -> its ping not returned yet
        self._answered_at: dict[str, float] = {}  # UUID -> when its last ping came back
        self._generation = 0
        self._stopped = False

    def reconnected(self) -> None:
        """The source reconnected: each worker opens a new connection for its next ping."""
        with self._cond:
            self._generation += 1

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            for ping in self._queue:
                ping.cancelled = True
            self._queue.clear()
            self._cond.notify_all()  # a worker in a call leaves when the call returns

    def forget(self, keys: set[str]) -> None:
        """Domains no longer running: their bookkeeping goes."""
        with self._cond:
            for key in keys:
                self._answered_at.pop(key, None)

    # -- one poll --

    def ping(self, keys: list[str], wait: float) -> dict[str, Optional[float]]:
        """Ping the agents of these domains; wait for the answers `wait` seconds at most.

        Returns UUID -> seconds the ping took (answered within the timeout), or None (not
        answered: no reply for AGENT_TIMEOUT, libvirt says the agent is not connected or not
        responding, or the previous poll's ping has been waiting that long). A domain left out
        was not judged: its ping could not start in time, or failed in another way (logged).
        """
        until = self._clock() + wait
        with self._cond:
            order = sorted(keys, key=lambda k: self._answered_at.get(k, 0.0))
            pings: list[_Ping] = []
            for key in order:
                ping = self._inflight.get(key)
                if ping is None:
                    ping = self._inflight[key] = _Ping(key)
                    self._queue.append(ping)
                pings.append(ping)
            self._start_workers()
            self._cond.notify_all()
            while True:
                now = self._clock()
                waiting = [p for p in pings if p.ended is None and not self._expired(p, now)]
                if not waiting or now >= until:
                    break
                started = [p.started + self.timeout for p in waiting if p.started is not None]
                self._cond.wait(max(0.0, min([until, *started]) - now))
            return self._results(pings, self._clock())

    def _expired(self, ping: _Ping, now: float) -> bool:
        return ping.started is not None and now - ping.started >= self.timeout

    def _results(self, pings: list[_Ping], now: float) -> dict[str, Optional[float]]:
        """Under the lock: what each ping says; the ones not started are cancelled."""
        out: dict[str, Optional[float]] = {}
        errors: list[str] = []
        for ping in pings:
            if ping.started is None:
                ping.cancelled = True  # not sent: the next poll pings this domain first
                with contextlib.suppress(ValueError):
                    self._queue.remove(ping)
                self._inflight.pop(ping.key, None)
            elif ping.ended is None:
                if self._expired(ping, now):
                    out[ping.key] = None
            elif ping.unanswered:
                out[ping.key] = None
            elif ping.error is not None:
                errors.append(ping.error)
            elif ping.took is not None:
                out[ping.key] = ping.took if ping.took < self.timeout else None
        key = f"libvirt-agent:{self.instance}"
        if errors:
            self.log.fault(
                key,
                f"libvirt {self.instance}: guest-ping failed for {len(errors)} domain(s), "
                f"their agent left unjudged: {errors[0]}",
            )
        else:
            self.log.clear(key, f"libvirt {self.instance}: guest-ping answers again")
        return out

    # -- the workers --

    def _start_workers(self) -> None:
        """Under the lock: as many workers as there are pings queued, up to the pool's size."""
        while len(self._threads) < min(self._size, len(self._queue) + self._busy()):
            name = f"libvirt-agent-{len(self._threads)}"
            thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _busy(self) -> int:
        return sum(1 for p in self._inflight.values() if p.started is not None)

    def _run(self) -> None:
        conn: Any = None
        generation = -1
        doms: dict[str, Any] = {}
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    break
                ping = self._queue.pop(0)
                ping.started = self._clock()
                if generation != self._generation:
                    conn, doms = _closed(conn), {}
                    generation = self._generation
            try:
                if conn is None:
                    conn = self._opener()
                dom = doms.get(ping.key)
                if dom is None:
                    dom = doms[ping.key] = conn.lookupByUUIDString(ping.key)
                sent = self._clock()
                self._command(dom, PING, max(1, round(self.timeout)))
                ping.took = self._clock() - sent
            except libvirt.libvirtError as exc:
                code = exc.get_error_code()
                if code in _UNANSWERED:
                    ping.unanswered = True
                elif code in _GONE:
                    ping.gone = True
                    doms.pop(ping.key, None)
                else:
                    ping.error = " ".join((str(exc).strip() or type(exc).__name__).split())
                    conn, doms = _closed(conn), {}  # the next ping reconnects
            except Exception as exc:  # a binding fault: this domain's, logged by the poll
                ping.error = f"{type(exc).__name__}: {exc}"
                conn, doms = _closed(conn), {}
            with self._cond:
                ping.ended = self._clock()
                if self._inflight.get(ping.key) is ping:
                    del self._inflight[ping.key]
                self._answered_at[ping.key] = ping.ended
                self._cond.notify_all()
        _closed(conn)


def _closed(conn: Any) -> Any:
    """Closes a connection (if any); None, to put in its place."""
    if conn is not None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    return None
