"""Which domains' metadata was edited since the last poll: libvirt's metadata-change event.

`virsh metadata` and virDomainSetMetadata (what Nova does on a rename, a resize, a project
change) edit a running domain's XML without restarting it, so the XML the source keeps would
hold the old names until its refresh_interval. libvirt says so at once with a
VIR_DOMAIN_EVENT_ID_METADATA_CHANGE event carrying the domain and the metadata namespace:
the source registers for it on its own connection (only when context tags are asked for),
and the next poll reads that domain's XML again. A daemon or driver that refuses the
registration leaves the refresh_interval re-read (said once, `I! `).

The callback runs on libvirt's event-loop thread: it only notes the domain's UUID.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any, Optional

import libvirt

from ...log import Log
from .context import WATCHED_NAMESPACES

METADATA_CHANGE = getattr(libvirt, "VIR_DOMAIN_EVENT_ID_METADATA_CHANGE", 23)  # libvirt 3.0+
METADATA_ELEMENT = getattr(libvirt, "VIR_DOMAIN_METADATA_ELEMENT", 2)


class MetadataWatch:
    """The UUIDs of domains whose watched metadata changed, noted by libvirt's event."""

    def __init__(self, log: Log, instance: str) -> None:
        self._log = log
        self._instance = instance
        self._lock = threading.Lock()
        self._changed: set[str] = set()
        self._callback: Optional[int] = None
        self.refused: Optional[str] = None  # why the last registration failed

    def attach(self, conn: Any, known: Iterable[str]) -> None:
        """Register on a new connection; the domains `known` are read again (an edit made
        while no connection listened would otherwise wait for the refresh_interval)."""
        self.note(known)
        try:
            self._callback = conn.domainEventRegisterAny(
                None, METADATA_CHANGE, self._on_change, None
            )
        except (libvirt.libvirtError, AttributeError) as exc:
            self._callback = None
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if self.refused is None:
                self._log.info(
                    f"libvirt {self._instance}: no metadata-change events ({reason}): "
                    "a metadata edit shows in the context tags within refresh_interval"
                )
            self.refused = reason
            return
        if self.refused is not None:
            self._log.info(f"libvirt {self._instance}: metadata-change events registered")
        self.refused = None

    def detach(self, conn: Any) -> None:
        """Deregister from a connection about to be closed."""
        callback, self._callback = self._callback, None
        if callback is not None:
            with contextlib.suppress(libvirt.libvirtError, AttributeError):
                conn.domainEventDeregisterAny(callback)

    def note(self, uuids: Iterable[str]) -> None:
        with self._lock:
            self._changed.update(uuids)

    def take(self) -> set[str]:
        """The domains noted since the last call."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def _on_change(self, _conn: Any, dom: Any, kind: int, uri: Optional[str], _opaque: Any) -> None:
        if kind == METADATA_ELEMENT and uri in WATCHED_NAMESPACES:
            with contextlib.suppress(libvirt.libvirtError):
                self.note((dom.UUIDString(),))
