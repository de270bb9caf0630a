"""GuestSource replayed over a real inflate/deflate session of a Linux 6.1 virtio guest.

tests/fixtures/guest/qemu-debian-6.1-virtio-inflate-deflate.console.log (see its .SOURCE.md) is
the serial console of a Debian 6.1 guest under QEMU, 512 MiB, printing MemTotal/MemFree/
MemAvailable and the `balloon_*` lines of /proc/vmstat every ~2 s while the host inflated the
balloon to 256 MiB and back, twice. For each snapshot we lay out a proc/sys tree as that kernel
would show it (6.1: no `nr_balloon_pages`, no meminfo `Balloon:`; the device's features bits
1, 29, 32, 40 as the log prints them, so no DEFLATE_ON_OOM) and poll it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import GuestConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import Fields
from telegraf_balloon.sources.guest.source import GuestSource

FIXTURES = Path(__file__).parent / "fixtures" / "guest"
LOG = FIXTURES / "qemu-debian-6.1-virtio-inflate-deflate.console.log"
PAGE = 4096  # x86-64 guest
MIB = 1024 * 1024
TARGET_PAGES = 256 * MIB // PAGE  # the host asked for 256 MiB: 65536 pages

_SNAPSHOT = re.compile(
    r"^GUEST: t=(?P<t>[\d.]+) MemTotal: (?P<total>\d+) kB MemFree: (?P<free>\d+) kB "
    r"MemAvailable: (?P<avail>\d+) kB\s+balloon_inflate (?P<inflate>\d+) "
    r"balloon_deflate (?P<deflate>\d+) balloon_migrate (?P<migrate>\d+)\s*$"
)
_DEVICE = re.compile(r"^GUEST: /sys/bus/virtio/devices/(\S+) device=(\S+) features=([01]+)\s*$")


@dataclass(frozen=True)
class Snapshot:
    t: float
    total_kb: int
    free_kb: int
    avail_kb: int
    inflate: int
    deflate: int
    migrate: int

    @property
    def balloon_pages(self) -> int:
        return self.inflate - self.deflate


@dataclass(frozen=True)
class Capture:
    device: str
    device_id: str
    features: str
    snapshots: tuple[Snapshot, ...]


def read_log() -> Capture:
    device = device_id = features = ""
    snapshots = []
    for line in LOG.read_text(encoding="utf-8").splitlines():
        match = _DEVICE.match(line)
        if match:
            device, device_id, features = match.groups()
            continue
        match = _SNAPSHOT.match(line)
        if match:
            snapshots.append(
                Snapshot(
                    float(match["t"]),
                    int(match["total"]),
                    int(match["free"]),
                    int(match["avail"]),
                    int(match["inflate"]),
                    int(match["deflate"]),
                    int(match["migrate"]),
                )
            )
    return Capture(device, device_id, features, tuple(snapshots))


CAPTURE = read_log()
REST_TOTAL_KB = CAPTURE.snapshots[0].total_kb  # MemTotal with an empty balloon: 481296 kB


def build_tree(root: Path, capture: Capture, snap: Snapshot) -> None:
    proc = root / "proc"
    proc.mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal:       {snap.total_kb:>8} kB\n"
        f"MemFree:        {snap.free_kb:>8} kB\n"
        f"MemAvailable:   {snap.avail_kb:>8} kB\n"
    )
    (proc / "vmstat").write_text(
        f"balloon_inflate {snap.inflate}\n"
        f"balloon_deflate {snap.deflate}\n"
        f"balloon_migrate {snap.migrate}\n"
    )
    (proc / "modules").write_text("virtio_balloon 28672 0 - Live 0x0000000000000000\n")
    bus = root / "sys" / "bus" / "virtio"
    device = bus / "devices" / capture.device
    device.mkdir(parents=True)
    (device / "device").write_text(capture.device_id + "\n")
    (device / "features").write_text(capture.features + "\n")
    (device / "driver").symlink_to("../../drivers/virtio_balloon")
    (bus / "drivers" / "virtio_balloon").mkdir(parents=True)
    (bus / "drivers" / "virtio_balloon" / capture.device).symlink_to(
        f"../../devices/{capture.device}"
    )


def poll(root: Path) -> tuple[Fields, str]:
    stream = io.StringIO()
    source = GuestSource(GuestConfig(root=str(root)), "debian", Log(stream=stream), PAGE)
    result = source.poll(0.0)
    assert result.error is None, result.error
    assert len(result.samples) == 1
    sample = result.samples[0]
    assert sample.tags["driver"] == "virtio_balloon"
    emitted: dict[str, object] = dict(sample.fields)
    assert catalog.check_point(catalog.BALLOON, sample.tags, emitted) == []
    return sample.fields, stream.getvalue()


@pytest.fixture(scope="module")
def polled(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Snapshot, Fields]]:
    out = []
    for number, snap in enumerate(CAPTURE.snapshots):
        root = tmp_path_factory.mktemp(f"snapshot{number:02d}")
        build_tree(root, CAPTURE, snap)
        fields, log = poll(root)
        assert "W! " not in log, log
        out.append((snap, fields))
    return out


def test_log_is_what_its_source_md_says() -> None:
    """The capture as its .SOURCE.md describes it: the device, its features, 42 snapshots."""
    assert CAPTURE.device == "virtio0"
    assert CAPTURE.device_id == "0x0005"
    assert [i for i, c in enumerate(CAPTURE.features) if c == "1"] == [1, 29, 32, 40]
    assert len(CAPTURE.snapshots) == 42
    assert REST_TOTAL_KB == 481296
    assert max(s.balloon_pages for s in CAPTURE.snapshots) == TARGET_PAGES


def test_features_no_deflate_on_oom(polled: list[tuple[Snapshot, Fields]]) -> None:
    for _, fields in polled:
        assert fields["feature_stats_vq"] is True
        assert fields["feature_deflate_on_oom"] is False
        assert fields["feature_free_page_hint"] is False
        assert fields["feature_free_page_reporting"] is False
        assert fields["driver_loaded"] is True
        assert fields["inflation_blocked"] is False


def test_balloon_is_inflate_minus_deflate(polled: list[tuple[Snapshot, Fields]]) -> None:
    for snap, fields in polled:
        assert fields["balloon_actual_bytes"] == snap.balloon_pages * PAGE, snap
        assert fields["inflate_pages_total"] == snap.inflate
        assert fields["deflate_pages_total"] == snap.deflate
        assert fields["migrate_pages_total"] == snap.migrate
        # without DEFLATE_ON_OOM, what the guest has now is its MemTotal
        assert fields["memory_current_bytes"] == snap.total_kb * 1024, snap
        assert fields["guest_total_bytes"] == snap.total_kb * 1024
        assert fields["guest_free_bytes"] == snap.free_kb * 1024
        assert fields["guest_available_bytes"] == snap.avail_kb * 1024


def test_balloon_reaches_256_mib(polled: list[tuple[Snapshot, Fields]]) -> None:
    sizes = [int(fields["balloon_actual_bytes"]) for _, fields in polled]
    assert max(sizes) == 256 * MIB
    assert min(sizes) == 0
    inflated = [snap.t for snap, fields in polled if fields["balloon_actual_bytes"] == 256 * MIB]
    assert inflated == [6.10]  # the first inflation, caught at rest
    # the second inflation went by between two snapshots; its counter shows it whole
    assert CAPTURE.snapshots[-1].inflate == 2 * TARGET_PAGES
    assert CAPTURE.snapshots[-1].deflate == 2 * TARGET_PAGES
    assert polled[-1][1]["balloon_actual_bytes"] == 0


def test_memory_max_constant_at_rest(polled: list[tuple[Snapshot, Fields]]) -> None:
    """MemTotal shrinks by exactly the balloon, so MemTotal + balloon is the VM's memory.

    At rest (balloon empty or at its 256 MiB target) that holds to the kB. While the driver is
    moving pages, meminfo and vmstat are read at two instants (the log prints meminfo first),
    so the sum is off in the direction of the move: above while inflating (vmstat, read later,
    has more pages), below while deflating.
    """
    rest = REST_TOTAL_KB * 1024
    at_rest = 0
    previous = None
    for snap, fields in polled:
        maximum = fields["memory_max_bytes"]
        if snap.balloon_pages in (0, TARGET_PAGES):
            assert maximum == rest, snap
            at_rest += 1
        else:
            assert previous is not None
            inflating = snap.inflate > previous.inflate and snap.deflate == previous.deflate
            deflating = snap.deflate > previous.deflate
            assert inflating != deflating, snap
            if inflating:
                assert rest < int(maximum) <= rest + TARGET_PAGES * PAGE, snap
            else:
                assert rest - TARGET_PAGES * PAGE <= int(maximum) < rest, snap
        previous = snap
    assert at_rest == len(polled) - 3  # t=8.22, 14.60 and 16.76 caught the driver moving
