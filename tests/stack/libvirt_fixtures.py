"""Session fixtures: one real libvirtd and one real QEMU guest for the whole test run."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.stack.common import need_program, unavailable
from tests.stack.libvirt_stack import LibvirtStack, StackError

GUEST_NAME = "balloon-qemu"


@pytest.fixture(scope="session")
def libvirt_stack() -> Iterator[LibvirtStack]:
    """A private libvirtd serving the QEMU and test drivers (fails under CI=true if it cannot)."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt-python is not installed")
    if os.geteuid() != 0:
        unavailable("the real libvirtd stack needs root (mount namespace, QEMU as root)")
    for program in ("libvirtd", "qemu-system-x86_64", "unshare"):
        need_program(program)
    stack = LibvirtStack()
    try:
        stack.start_daemon()
    except StackError as exc:
        stack.stop()
        unavailable(f"libvirtd did not start: {exc}")
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def qemu_guest(libvirt_stack: LibvirtStack) -> str:
    """A booted TCG guest with a virtio balloon whose driver reports stats every 2 s."""
    try:
        libvirt_stack.define_guest(GUEST_NAME, memory_mib=512, stats_period=2)
        libvirt_stack.wait_guest_stats(GUEST_NAME, timeout=240)
    except StackError as exc:
        unavailable(f"the QEMU guest did not boot: {exc}")
    return GUEST_NAME
