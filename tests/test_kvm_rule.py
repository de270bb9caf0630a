"""The rule the libvirt and qmp sources share for a guest balloon driver that never reported.

One function (sources/kvm.py driver_verdict) serves the sources, which raise
`inflation_blocked`, and --explain, which says "not judged" while a VM was not watched for
long enough. Against the real libvirtd (a domain whose job another call holds) the rule is
tested in tests/integration/test_libvirt_qemu.py; here the pure rule, and the qmp source's
memory of the last report.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from telegraf_balloon.config import QmpConfig
from telegraf_balloon.log import Log
from telegraf_balloon.sources.kvm import DRIVER_GRACE, driver_grace, driver_silent, driver_verdict
from telegraf_balloon.sources.qmp import QmpSource
from tests.fakes.qmp_peer import QmpPeer

MIB = 1024 * 1024


def test_grace_is_30s_or_three_periods() -> None:
    assert driver_grace(2) == DRIVER_GRACE == 30.0
    assert driver_grace(10) == 30.0
    assert driver_grace(15) == 45.0


@pytest.mark.parametrize(
    ("period", "reported", "current", "seen_for", "verdict"),
    [
        (10, False, 512, 31.0, True),  # never reported, never moved, past the grace
        (10, False, 512, 30.0, None),  # not past it: cannot tell yet
        (20, False, 512, 59.0, None),  # 3 periods are more than 30 s
        (20, False, 512, 61.0, True),
        (10, True, 512, 999.0, False),  # it reported once: it is there, whatever this poll
        (10, False, 256, 999.0, False),  # the balloon moved: a driver moved it
        (0, False, 512, 999.0, False),  # no stats period: the rule cannot apply
        (None, False, 512, 999.0, False),  # period unknown
    ],
)
def test_driver_verdict(
    period: Optional[int], reported: bool, current: int, seen_for: float, verdict: Optional[bool]
) -> None:
    assert driver_verdict(period, reported, current, 512, seen_for) is verdict
    assert driver_silent(period, reported, current, 512, seen_for) is (verdict is True)
    assert driver_verdict(period, reported, current, None, seen_for) is False


class Monitor(QmpPeer):
    """A QMP server for one VM whose guest-stats read fails while `stats_fail` is set.

    A stand-in (comment required by the project's rules): a real QEMU answers qom-get of
    guest-stats whenever its balloon exists, so the fault cannot be produced with one; here
    it stands for a read that did not come back this poll. Everything else is answered as
    QEMU does (greeting, capabilities, one JSON object per line, ids echoed).
    """

    def __init__(self, path: str, last_update: int) -> None:
        self.last_update = last_update
        self.stats_fail = False
        super().__init__(path)

    def reply(self, message: dict[str, Any]) -> dict[str, Any]:
        name = message["execute"]
        prop = message.get("arguments", {}).get("property")
        answers: dict[str, Any] = {
            "query-name": {"name": "web"},
            "query-uuid": {"UUID": "5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10"},
            "query-kvm": {"enabled": True, "present": True},
            "query-memory-size-summary": {"base-memory": 512 * MIB, "plugged-memory": 0},
            "query-balloon": {"actual": 512 * MIB},
            "query-memory-devices": [],  # QEMU's answer for a VM without memory devices
        }
        if name == "qom-get" and prop == "guest-stats":
            if self.stats_fail:
                return {"error": {"class": "GenericError", "desc": "no reply this time"}}
            stats = {"stat-free-memory": 300 * MIB, "stat-total-memory": 480 * MIB}
            return {"return": {"stats": stats, "last-update": self.last_update}}
        if name == "qom-get" and prop == "guest-stats-polling-interval":
            return {"return": 2}
        return {"return": answers.get(name, {})}


@pytest.fixture()
def monitor(tmp_path: Path) -> Iterator[tuple[Monitor, QmpSource]]:
    server = Monitor(str(tmp_path / "101.qmp"), last_update=1_700_000_000)
    config = QmpConfig(sockets=(f"{tmp_path}/*.qmp",), proxmox_config="")
    source = QmpSource(config, "kvm-1", Log(io.StringIO()))
    try:
        yield server, source
    finally:
        server.close()


def test_qmp_stats_missing_one_poll_is_not_a_silent_driver(
    monitor: tuple[Monitor, QmpSource],
) -> None:
    """The guest reported; then, long past the grace, one poll's guest-stats read fails while
    query-balloon answers: no guest figures that poll, the age runs on from the last report,
    and the driver is not called missing."""
    server, source = monitor
    now = 1_700_000_001.0
    [first] = source.poll(now).samples
    assert first.fields["stats_age_seconds"] == 1.0 and "guest_free_bytes" in first.fields
    assert first.fields["inflation_blocked"] is False
    server.stats_fail = True
    [missing] = source.poll(now + 100).samples
    assert "guest_free_bytes" not in missing.fields
    assert missing.fields["memory_current_bytes"] == missing.fields["memory_max_bytes"]
    assert missing.fields["stats_age_seconds"] == 101.0
    assert missing.fields["inflation_blocked"] is False
