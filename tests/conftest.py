"""Fixtures shared by the whole suite; real components are started once per session."""

from tests.stack.fixtures import influxdb, promtool  # noqa: F401
from tests.stack.libvirt_fixtures import libvirt_stack, qemu_guest  # noqa: F401
