"""How the libvirt source opens its connections: the seam, keepalive and its event loop.

Every connection the source makes (its own and each stats worker's) goes through one
`Connect` function, `(uri, read_only) -> connection`. The real one is `open_libvirt`; a test
or a bench passes another that returns an object answering the same calls (the tests' fake
replays recorded libvirtd answers). The guest agent's commands go through libvirt-qemu, a
module-level call on a domain: `AgentCommand` is their seam, `qemu_agent_command` the real one.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import libvirt
import libvirt_qemu

from ...config import LibvirtConfig
from .uri import over_rpc

Connect = Callable[[str, bool], Any]
AgentCommand = Callable[[Any, str, int], str]  # (domain, command JSON, seconds) -> reply JSON


def open_libvirt(uri: str, read_only: bool) -> Any:
    """A real connection: libvirt.openReadOnly, or libvirt.open when read_only is off."""
    return libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)


def qemu_agent_command(dom: Any, command: str, timeout: int) -> str:
    """A command to the domain's QEMU guest agent (libvirt-qemu's virDomainQemuAgentCommand):
    libvirtd syncs with the agent first, then waits `timeout` whole seconds for the answer."""
    return str(libvirt_qemu.qemuAgentCommand(dom, command, timeout, 0))


_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_event_loop() -> None:
    """libvirt's keepalive needs its default event loop running in some thread."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _ignore(_ctx: object, _err: object) -> None:
    """Drops a libvirt error report: the exception the call raises carries it."""


def silence_libvirt_errors() -> None:
    """libvirt prints every error to stderr by default; ours go through Log instead."""
    libvirt.registerErrorHandler(_ignore, None)


def open_connection(
    connect: Connect, config: LibvirtConfig, instance: str
) -> tuple[Any, Optional[libvirt.libvirtError]]:
    """A connection to config.uri through `connect`, read-only unless configured otherwise,
    with keepalive on a daemon's connection.

    Returns the connection and, when keepalive was wanted but refused, the daemon's error
    (the connection is still good: it only goes unwatched). A `connect` that returns None
    raises libvirtError, as a failed open does.
    """
    keepalive = over_rpc(config.uri) and config.keepalive_interval > 0
    if keepalive:
        start_event_loop()
    conn = connect(config.uri, config.read_only)
    if conn is None:
        raise libvirt.libvirtError(f"cannot connect to {instance}")
    refused: Optional[libvirt.libvirtError] = None
    if keepalive:
        try:
            conn.setKeepAlive(config.keepalive_interval, config.keepalive_count)
        except libvirt.libvirtError as exc:
            refused = exc
    return conn, refused
