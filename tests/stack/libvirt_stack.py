"""The libvirt stack's former single module, kept as a re-export for the code that still
imports it from here.

New code imports from where each part lives: :mod:`tests.stack.guest_image` (the guest
kernel and initramfs), :mod:`tests.stack.libvirt_daemon` (the private libvirtd and its
domains), :mod:`tests.stack.node_xml` (the test driver's node files) and
:mod:`tests.stack.common` (:class:`StackError`).
"""

from __future__ import annotations

from tests.stack.common import StackError
from tests.stack.guest_image import DEFAULT_CACHE_DIR, GuestImage, build_guest, parse_console
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.node_xml import DomainSpec, DomainState, Memballoon, write_node_xml

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DomainSpec",
    "DomainState",
    "GuestImage",
    "LibvirtStack",
    "Memballoon",
    "StackError",
    "build_guest",
    "parse_console",
    "write_node_xml",
]
