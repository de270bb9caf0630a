"""Fixtures shared by the whole suite; real components are started once per session.

Every test under tests/integration carries the `integration` marker (its module's
``pytestmark``, or its own): `make unit` selects by marker (``-m "not integration"``), so a
collection that finds one without it stops the run before any test starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.stack.fixtures import (  # noqa: F401
    influxdb,
    leases,
    libvirt_stack,
    promtool,
    qemu_guest,
    qmp_host,
    vcsim,
    vcsim_2000,
    vcsim_factory,
)

INTEGRATION = Path(__file__).resolve().parent / "integration"


def check_integration_markers(items: Sequence[pytest.Item], folder: Path) -> None:
    """pytest.UsageError naming every test under `folder` that lacks the integration marker."""
    missing = [
        item.nodeid
        for item in items
        if item.path.resolve().is_relative_to(folder)
        and item.get_closest_marker("integration") is None
    ]
    if missing:
        raise pytest.UsageError(
            f"{len(missing)} test(s) under {folder.name}/ without the integration marker "
            "(add `pytestmark = pytest.mark.integration` to the module):\n  " + "\n  ".join(missing)
        )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: an unmarked test must not slip through
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    check_integration_markers(items, INTEGRATION)
