"""Session-scoped pytest fixtures for the real components in tests/stack.

``tests/conftest.py`` does ``from tests.stack.fixtures import *``; a test module may also
import a fixture by name (``from tests.stack.fixtures import influxdb  # noqa: F401``).

* ``influxdb``: a running :class:`tests.stack.influx.InfluxDB` (one ``influxd`` for the
  session, in a temporary directory on a loopback port).  Tests create their own databases.
* ``promtool``: the path of ``promtool``.

A component that is missing or cannot start calls :func:`tests.stack.common.unavailable`:
a skip locally, a failure under ``CI=true``.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.stack.common import unavailable
from tests.stack.influx import InfluxDB, InfluxError, find_influxd
from tests.stack.promtool import find_promtool

__all__ = ["influxdb", "promtool"]


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxDB]:
    """A real InfluxDB 1.x for the whole session."""
    binary = find_influxd()
    if binary is None:
        unavailable(
            "influxd is not installed (make test installs it: scripts/install-system-deps.sh)"
        )
    server = InfluxDB(binary)
    try:
        server.start()
    except (InfluxError, OSError) as exc:
        unavailable(f"influxd could not be started: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Prometheus' rule checker and rule unit tester)."""
    path = find_promtool()
    if path is None:
        unavailable(
            "promtool is not installed (make test installs it: scripts/install-system-deps.sh)"
        )
    return path
