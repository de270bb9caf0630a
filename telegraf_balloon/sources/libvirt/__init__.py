"""KVM/QEMU (and Xen) hosts through libvirt: bulk stats of every domain, in concurrent slices.

One concept a module: `uri` (what of a URI may be shown, what host it names), `connection`
(how connections are opened: the seam, keepalive), `domainxml` (what a domain's XML says),
`reread` (when it is read again), `stats` (the stats fetch: bulk, or slices on worker
threads, with NOWAIT), `fields` (stats to fields, in bytes) and `source` (the poll).

The libvirt binding is imported with the source, not with this package: `uri`, `domainxml`,
`reread` and `fields` work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .source import LibvirtSource
    from .stats import FETCH_SHARE

__all__ = ["FETCH_SHARE", "LibvirtSource"]


def __getattr__(name: str) -> object:
    """LibvirtSource and FETCH_SHARE, imported on first use (ImportError without the binding)."""
    if name == "LibvirtSource":
        from .source import LibvirtSource

        return LibvirtSource
    if name == "FETCH_SHARE":
        from .stats import FETCH_SHARE

        return FETCH_SHARE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
