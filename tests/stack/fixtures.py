"""Session-scoped pytest fixtures: one of each real component for the whole test run.

``tests/conftest.py`` imports them for every test module.

* ``influxdb``: a running :class:`tests.stack.influx.InfluxDB` (one ``influxd`` in a
  temporary directory on a loopback port). Tests create their own databases.
* ``promtool``: the path of ``promtool``.
* ``libvirt_stack``: a private libvirtd serving the QEMU and test drivers.
* ``qemu_guest``: the name of a booted QEMU guest with a virtio balloon on that daemon.
* ``vcsim``: a running :class:`tests.stack.vcsim.Vcsim` (govmomi's vCenter simulator through our
  launcher): 1 datacenter, 2 clusters of 2 hosts and 1 standalone host, 4 VMs per cluster and
  on the standalone host (12 VMs), TLS with ``cert_file``, RetrievePropertiesEx pages of 7.
* ``vcsim_2000``: 2,000 VMs (4 clusters of 5 hosts, 500 VMs each), pages of 500, started
  once per session the first time a test asks for it (about 4 s).
* ``vcsim_factory``: ``vcsim_factory(**inventory)`` starts a private simulator for one test
  (stopped after it): for tests that restart, pause or end sessions, which would disturb the
  shared ones.

* ``qmp_host``: three plain QEMUs laid out as a Proxmox VE node runs them (one booted).

A component that is missing or cannot start calls :func:`tests.stack.common.unavailable`:
a skip locally, a failure under ``CI=true``. Modules that need a private component of their
own use :func:`running` (or :func:`start_vcsim`) the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, Dict, Tuple, Type

import pytest

from tests.stack.common import StackError, need_program, unavailable
from tests.stack.execd import Lease, Start, supervised
from tests.stack.guest_image import DEFAULT_CACHE_DIR, build_guest
from tests.stack.influx import InfluxDB, InfluxError
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.qemu_stack import QemuError, QemuHost
from tests.stack.vcsim import Vcsim, launcher_available

__all__ = [
    "influxdb",
    "leases",
    "libvirt_stack",
    "new_qemu_host",
    "promtool",
    "qemu_guest",
    "qmp_host",
    "running",
    "running_vcsim",
    "start_fixture",
    "start_vcsim",
    "vcsim",
    "vcsim_2000",
    "vcsim_factory",
]


@contextlib.contextmanager
def running(
    start: Callable[[], object],
    stop: Callable[[], None],
    errors: Tuple[Type[BaseException], ...],
    what: str,
) -> Iterator[None]:
    """Run a component for the block: `start()`, then `stop()` when the block ends. When
    start raises one of `errors`, stop it and give up (:func:`unavailable`, naming `what`)."""
    try:
        start()
    except errors as exc:
        stop()
        unavailable(f"{what}: {exc}")
    try:
        yield
    finally:
        stop()


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxDB]:
    """A real InfluxDB 1.x for the whole session."""
    server = InfluxDB(need_program("influxd"))
    with running(server.start, server.stop, (InfluxError, OSError), "influxd could not be started"):
        yield server


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Prometheus' rule checker and rule unit tester)."""
    return need_program("promtool")


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
    with running(stack.start_daemon, stack.stop, (StackError,), "libvirtd did not start"):
        yield stack


@pytest.fixture(scope="session")
def qemu_guest(libvirt_stack: LibvirtStack) -> str:
    """A booted TCG guest with a virtio balloon whose driver reports stats every 2 s."""
    try:
        libvirt_stack.define_guest(GUEST_NAME, memory_mib=512, stats_period=2)
        libvirt_stack.wait_guest_stats(GUEST_NAME, timeout=240)
    except StackError as exc:
        unavailable(f"the QEMU guest did not boot: {exc}")
    return GUEST_NAME


VCSIM_SMALL: Dict[str, Any] = {
    "dc": 1,
    "cluster": 2,
    "host": 2,
    "standalone_host": 1,
    "vm": 4,
    "page": 7,
}
VCSIM_2000: Dict[str, Any] = {
    "dc": 1,
    "cluster": 4,
    "host": 5,
    "standalone_host": 0,
    "vm": 500,
    "page": 500,
}


def start_vcsim(inventory: Dict[str, Any]) -> Vcsim:
    """A started simulator with this inventory (the caller stops it), or unavailable()."""
    reason = launcher_available()
    if reason is not None:
        unavailable(reason)
    sim = Vcsim(**inventory)
    try:
        sim.start()
    except StackError as exc:
        sim.stop()
        unavailable(f"the vCenter simulator did not start: {exc}")
    return sim


@contextlib.contextmanager
def running_vcsim(inventory: Dict[str, Any]) -> Iterator[Vcsim]:
    """A simulator with this inventory for the block (a module's own, for instance)."""
    sim = start_vcsim(inventory)
    try:
        yield sim
    finally:
        sim.stop()


_start_vcsim = start_vcsim  # the name some test modules still import


@pytest.fixture(scope="session")
def vcsim() -> Iterator[Vcsim]:
    """A small vCenter simulator (12 VMs, pages of 7, TLS) for the whole session.

    Tests that change VMs should restore them or use VMs of their own (by name).
    """
    with running_vcsim(VCSIM_SMALL) as sim:
        yield sim


@pytest.fixture(scope="session")
def vcsim_2000() -> Iterator[Vcsim]:
    """A vCenter simulator with 2,000 VMs (started lazily, once per session)."""
    with running_vcsim(VCSIM_2000) as sim:
        yield sim


@pytest.fixture()
def vcsim_factory() -> Iterator[Callable[..., Vcsim]]:
    """Start private simulators for one test: ``sim = vcsim_factory(vm=3, page=2)``."""
    started: list[Vcsim] = []

    def start(**inventory: Any) -> Vcsim:
        sim = start_vcsim(inventory)
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture()
def leases() -> Iterator[list[Lease]]:
    """Write leases the test takes (execd.Lease), all closed at teardown."""
    held: list[Lease] = []
    yield held
    for lease in held:
        lease.close()


def start_fixture(*always_secret: str) -> Callable[[], Iterator[Start]]:
    """A test module's ``start`` fixture (``start = start_fixture(SECRET)``): the plugin under
    the execd harness, every child killed and checked at teardown (execd.supervised)."""

    @pytest.fixture(name="start")
    def fixture() -> Iterator[Start]:
        with supervised(*always_secret) as run:
            yield run

    return fixture


# --- plain QEMU with Proxmox's layout, for the qmp source ---------------------------------------

QMP_BOOTED = 101  # booted guest, balloon device, Proxmox config with a 256 MiB minimum
QMP_NO_BALLOON = 102  # paused, no balloon device; its Proxmox config says balloon: 0
QMP_PLAIN = 104  # paused, balloon device, no Proxmox config (plain QEMU)
QMP_UUID = "7d4f3c2a-1b0e-4d5c-9a8b-6f5e4d3c2b1a"
# The node's user.cfg: 101 in the pool "shop", 102 in "db", 104 in none.
QMP_USER_CFG = (
    "user:root@pam:1:0:::root@example.com:::\n\n"
    "pool:shop:Web%20shop:101:local-lvm:\npool:db::102,999:\n\n"
    "acl:1:/pool/shop:root@pam:PVEVMAdmin:\n"
)


def new_qemu_host() -> QemuHost:
    """An empty QemuHost that can boot the test guest, or unavailable() saying why not."""
    if os.geteuid() != 0:
        unavailable("QMP sockets are root-only: the qmp tests run as root")
    qemu = need_program("qemu-system-x86_64")
    try:
        image = build_guest(DEFAULT_CACHE_DIR)
    except (StackError, OSError) as exc:
        unavailable(f"the guest image could not be built: {exc}")
    return QemuHost(qemu, image)


@pytest.fixture(scope="session")
def qmp_host() -> Iterator[QemuHost]:
    """Three QEMUs as a Proxmox node runs them: one booted with stats, two paused."""
    host = new_qemu_host()

    def boot() -> None:
        host.write_conf(
            QMP_BOOTED,
            "#booted test VM\nballoon: 256\nmemory: 512\nname: web-renamed\n"
            f"smbios1: uuid={QMP_UUID}\ntags: web;prod\n\n[snap]\nname: old\nmemory: 1024\n"
            "tags: old\n",
        )
        host.write_conf(QMP_NO_BALLOON, "balloon: 0\nmemory: 256\nname: fixed-db\ntags: db\n")
        host.write_user_cfg(QMP_USER_CFG)
        host.start(QMP_BOOTED, memory_mib=512, name="web", uuid=QMP_UUID)
        host.start(QMP_NO_BALLOON, memory_mib=256, balloon=False, boot=False)
        host.start(QMP_PLAIN, memory_mib=192, boot=False, name="plain-104")
        host.wait_guest_report(QMP_BOOTED)

    with running(boot, host.close, (QemuError, OSError), "QEMU did not start"):
        yield host
