"""Fixtures shared by the whole suite; real components are started once per session."""

from tests.stack.fixtures import (  # noqa: F401
    influxdb,
    libvirt_stack,
    promtool,
    qemu_guest,
    qmp_host,
    vcsim,
    vcsim_2000,
    vcsim_factory,
)
