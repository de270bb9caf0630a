"""Fixtures shared by the whole suite; real components are started once per session."""

from tests.stack.libvirt_fixtures import libvirt_stack, qemu_guest  # noqa: F401
