"""Fixtures shared by the whole suite; real components are started once per session."""

from tests.stack.fixtures import influxdb, libvirt_stack, promtool, qemu_guest  # noqa: F401
