"""VMware vSphere: every VM of a vCenter in one paged property-collector poll, plus balloon targets.

pyVmomi does what it does well: the session (login, TLS, re-login), container views and the
once-per-session lookups (performance counter ids, the server's query limit). The hot path,
the property retrieval of every VM and host and the realtime QueryPerf, is SOAP built here and
sent on pyVmomi's own connection and session cookie, its reply parsed while it streams in:
pyVmomi's object building is most of a bulk poll's time (about 360 µs per VM measured on the
simulator, against about 60 µs here), and the tests keep pyVmomi as the oracle the figures
must equal.

One concept per module:

- ``soap``: the requests written here and their replies parsed as they stream; SOAP faults;
- ``fields``: the property paths asked, and properties and counters to balloon fields;
- ``inventory``: folders, datacenters, clusters and hosts: host tags and inventory paths;
- ``perf``: balloon targets from realtime counters, batched, used only while fresh;
- ``shards``: one agent's part of a vCenter shared by several: its hosts and subtrees;
- ``session``: pyVmomi's session, the calls on its connection, re-login and reconnect;
- ``source``: :class:`VsphereSource`, one poll put together from the above.

Only ``session`` (and ``source``, through it) imports pyVmomi: the others are plain Python,
tested without it. ``VsphereSource`` is imported from ``source`` on first use, so importing a
plain module of this package does not import pyVmomi either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .source import VsphereSource

__all__ = ["VsphereSource"]


def __getattr__(name: str) -> Any:
    if name == "VsphereSource":
        from .source import VsphereSource

        return VsphereSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
