"""End to end through the guest source and the runner: a vmw_balloon short of its target."""

from __future__ import annotations

import io
from pathlib import Path

import line_protocol_parser

from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.runner import Runner
from telegraf_balloon.sources import build_sources
from tests.stack.clock import Clock

# drivers/misc/vmw_balloon.c (4.20+) writes "%-22s: %16llu\n"; target and current in 4 KiB pages.
VMMEMCTL = """balloon capabilities  :             0x3e
used capabilities     :             0x3e
is resetting          :                n
target                :           {target}
current               :           {current}
start                 :                1 (               0 failed)
target                :               20 (               0 failed)
timer                 :               20
"""
MEMINFO = "MemTotal:        4028048 kB\nMemFree:         1000000 kB\nMemAvailable:    2000000 kB\n"


def _tree(root: Path, target: int, current: int) -> None:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/meminfo").write_text(MEMINFO)
    (root / "proc/vmstat").write_text("pswpin 0\npswpout 0\npgfault 10\npgmajfault 1\n")
    debug = root / "sys/kernel/debug"
    debug.mkdir(parents=True, exist_ok=True)
    (debug / "vmmemctl").write_text(VMMEMCTL.format(target=target, current=current))
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    (dmi / "sys_vendor").write_text("VMware, Inc.\n")


def test_vmw_balloon_below_target_becomes_stuck(tmp_path: Path) -> None:
    root = tmp_path / "guest"
    # the host asks for 262144 pages (1 GiB); the balloon holds 131072 (512 MiB): gap 12.7%
    _tree(root, target=262144, current=131072)
    config = load_text(
        f"""
[[sources.guest]]
root = "{root}"
[health]
stuck_gap_ratio = 0.05
stuck_for = "5m"
[[thresholds]]
field = "stuck"
crit = 1
""",
        "test.toml",
    )
    log = Log(io.StringIO())
    out = io.BytesIO()
    clock = Clock(1_800_000_000.0)
    runner = Runner(config, build_sources(config, log), out, log, "h", clock=clock)

    def balloon() -> dict[str, object]:
        start = out.tell()
        runner.poll()
        lines = out.getvalue()[start:].decode().splitlines()
        [line] = [line_protocol_parser.parse_line(x) for x in lines if x.startswith("balloon,")]
        assert line["tags"]["driver"] == "vmw_balloon"
        assert line["tags"]["hypervisor"] == "vmware"
        return dict(line["fields"])

    fields = balloon()
    assert fields["balloon_target_bytes"] == 262144 * 4096
    assert fields["balloon_actual_bytes"] == 131072 * 4096
    assert fields["balloon_gap_bytes"] == 131072 * 4096
    assert fields["stuck"] is False
    clock.now += 299
    assert balloon()["stuck"] is False  # not yet stuck_for
    clock.now += 1
    fields = balloon()
    assert fields["stuck"] is True and fields["stuck_level"] == 2 and fields["alert_level"] == 2

    # The balloon reaches its target: stuck clears at once, and the clock starts over.
    _tree(root, target=262144, current=262144)
    clock.now += 60
    fields = balloon()
    assert fields["stuck"] is False and fields["alert_level"] == 0
    _tree(root, target=262144, current=131072)
    clock.now += 60
    assert balloon()["stuck"] is False
    runner.close()
