"""Balloon sources: each turns one kind of client call into plain Samples, nothing else."""

from __future__ import annotations

from ..config import Config, hostname
from ..log import Log
from ..model import Source


class SetupError(Exception):
    """A source cannot be built from a valid config (a missing optional dependency)."""


def build_sources(config: Config, log: Log) -> list[Source]:
    """Every configured source, ready to poll. Connections are opened on first poll."""
    from .guest import GuestSource

    sources: list[Source] = [GuestSource(c, hostname(config), log) for c in config.guest]
    if config.libvirt:
        try:
            from .libvirt import FETCH_SHARE, LibvirtSource
        except ImportError as exc:
            raise SetupError(
                f"sources.libvirt needs the libvirt binding ({exc}): "
                "pip install 'telegraf-balloon[libvirt]'"
            ) from None
        budget = FETCH_SHARE * config.agent.timeout  # the runner abandons a later answer
        sources.extend(LibvirtSource(c, log, fetch_budget=budget) for c in config.libvirt)
    if config.vsphere:
        try:
            from .vsphere import VsphereSource
        except ImportError as exc:
            raise SetupError(
                f"sources.vsphere needs pyVmomi ({exc}): pip install 'telegraf-balloon[vsphere]'"
            ) from None
        sources.extend(VsphereSource(c, log, timeout=config.agent.timeout) for c in config.vsphere)
    if config.logs:
        from .logs import LogsSource

        sources.extend(LogsSource(c, hostname(config), log) for c in config.logs)
    if config.qmp:
        from .qmp import QmpSource

        sources.extend(QmpSource(c, hostname(config), log) for c in config.qmp)
    return sources
