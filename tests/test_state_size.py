"""What the plugin holds per VM between polls, and that a poll's judging runs without the GC.

At 40,000 VMs every byte kept per VM is 40 kB of resident memory: the health stage's state,
the serializer's cached line head and its key must stay small. 5,000 VMs with a vCenter's
eight tags go through the real Runner with the sample config's rules; what the package's own
code still holds after the third poll (tracemalloc, filtered to the package) is divided by
the VMs. The source is written for the test: the real one is measured whole in
bench/bench_vsphere.py.
"""

from __future__ import annotations

import gc
import io
import tracemalloc
from pathlib import Path

import pytest

import telegraf_balloon
from telegraf_balloon import lineprotocol
from telegraf_balloon.config import Config, load_text
from telegraf_balloon.health import Health
from telegraf_balloon.log import Log
from telegraf_balloon.model import Fields, HostInfo, PollResult, Sample
from telegraf_balloon.runner import Runner

GiB = 1 << 30
MiB = 1 << 20
VMS = 5_000
PACKAGE = str(Path(telegraf_balloon.__file__).parent)
# Bytes held per VM between polls: the state, the cached head (~220 bytes of text) and its
# key. The previous release held about 1,200 (a key of one tuple per tag, the escaped copy of
# every name and UUID, two lists per VM for threshold clocks that mostly never start).
HELD_PER_VM = 700


class VcenterLike:
    """VMS VMs on 50 hosts, tagged as the vSphere source tags them, with fresh strings each
    poll (as a parsed reply has)."""

    kind = "vsphere"
    instance = "vcenter.example.com"

    def __init__(self) -> None:
        self.polls = 0

    def poll(self, now: float) -> PollResult:
        self.polls += 1
        samples = []
        for i in range(VMS):
            host = f"esx-{i % 50:02d}.example.com"
            tags = {
                "host": host,
                "guest": "".join(("web-", str(i))),
                "hypervisor": "vmware",
                "source": "vsphere",
                "vcenter": self.instance,
                "uuid": "".join((f"{i:08x}", "-7f07-572d-951e-", f"{i:012x}")),
                "datacenter": "DC1",
                "cluster": f"C{i % 5}",
            }
            fields: Fields = {
                "memory_max_bytes": 4 * GiB,
                "balloon_actual_bytes": (i % 4) * 256 * MiB,
                "memory_current_bytes": 4 * GiB - (i % 4) * 256 * MiB,
                "host_swapped_bytes": 0,
                "compressed_bytes": 0,
                "granted_bytes": 4 * GiB,
                "consumed_bytes": 3 * GiB + i,
                "active_bytes": GiB + i,
                "reservation_bytes": 0,
                "inflation_blocked": False,
                "balloon_target_bytes": (i % 4) * 256 * MiB,
            }
            samples.append(Sample(tags["uuid"], tags, fields))
        hosts = [
            HostInfo({"host": f"esx-{h:02d}.example.com", "source": "vsphere"}, 512 * GiB)
            for h in range(50)
        ]
        return PollResult(samples=samples, hosts=hosts)

    def close(self) -> None:
        pass


def package_bytes() -> int:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, PACKAGE + "*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def sample_config() -> Config:
    sample = Path(telegraf_balloon.__file__).with_name("sample.toml")
    loaded = load_text(sample.read_text(encoding="utf-8"), str(sample), environ={})
    return Config(path="size", health=loaded.health, thresholds=loaded.thresholds)


def test_what_the_plugin_holds_per_vm_between_polls() -> None:
    lineprotocol.clear_caches()
    source = VcenterLike()
    runner = Runner(sample_config(), [source], io.BytesIO(), Log(io.StringIO()), "h")
    tracemalloc.start()
    try:
        before = package_bytes()
        for _ in range(3):
            runner.out = io.BytesIO()  # the written lines are not the plugin's to keep
            assert runner.poll()
        runner.out = io.BytesIO()
        held = package_bytes() - before
    finally:
        tracemalloc.stop()
        runner.close()
        lineprotocol.clear_caches()
    assert lineprotocol.cached_heads() == 0
    assert held / VMS < HELD_PER_VM, f"{held / VMS:.0f} bytes per VM"


def test_a_vm_whose_rules_never_fire_keeps_no_clock_list() -> None:
    health = Health(sample_config().health, sample_config().thresholds)
    quiet: Fields = {"memory_max_bytes": 4 * GiB, "balloon_actual_bytes": 0}
    ballooned: Fields = {"memory_max_bytes": 4 * GiB, "balloon_actual_bytes": 3 * GiB}
    health.vms("s", [("quiet", dict(quiet)), ("busy", dict(ballooned))], 1000.0)
    states = health._vms["s"].states
    assert states["quiet"].since is None
    assert states["busy"].since is not None  # balloon_ratio 0.75: its warn clock runs
    held = health.vm_rules_now("s", "busy", 1060.0)
    assert any(rule.field == "balloon_ratio" and rule.held == 60.0 for rule in held)
    health.vms("s", [("quiet", dict(quiet)), ("busy", dict(quiet))], 1100.0)
    assert states["busy"].since is None  # every condition clear again: the list goes
    assert all(rule.held == 0.0 for rule in health.vm_rules_now("s", "busy", 1100.0))


def test_tag_values_with_nothing_to_escape_are_not_copied() -> None:
    lineprotocol.clear_caches()
    name = "".join(("web-", "17"))  # a string of its own, as a parsed reply gives
    assert lineprotocol.tag_value(name) is name
    assert lineprotocol.tag_value("web 17") == "web\\ 17"
    assert len(lineprotocol._tag_value_cache) == 1  # only the one that needed escaping
    lineprotocol.clear_caches()


def test_head_keys_tell_tag_sets_apart() -> None:
    lineprotocol.clear_caches()
    lines = [
        lineprotocol.format_line("m", {"a": "b"}, {"v": 1}, 1),
        lineprotocol.format_line("m", {"b": "a"}, {"v": 1}, 1),
        lineprotocol.format_line("m", {"a": "b", "c": "d"}, {"v": 1}, 1),
        lineprotocol.format_line("m", {"a": "c", "b": "d"}, {"v": 1}, 1),
        lineprotocol.format_line("n", {"a": "b"}, {"v": 1}, 1),
    ]
    assert lines == ["m,a=b v=1i 1", "m,b=a v=1i 1", "m,a=b,c=d v=1i 1", "m,a=c,b=d v=1i 1",
                     "n,a=b v=1i 1"]  # fmt: skip
    lineprotocol.clear_caches()


@pytest.mark.parametrize("stage", ["judge", "write"])
def test_a_polls_judging_and_writing_run_with_the_collector_paused(
    stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judging and writing make and drop objects per VM, none cyclic: a full collection's
    walk over every object held would cost more each poll the more VMs there are."""
    seen: list[bool] = []
    runner = Runner(sample_config(), [VcenterLike()], io.BytesIO(), Log(io.StringIO()), "h")
    if stage == "judge":
        real_pass = runner.health.vm_pass

        def vm_pass(*args: object) -> object:
            seen.append(gc.isenabled())
            return real_pass(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(runner.health, "vm_pass", vm_pass)
    else:
        real_write = runner.write_points

        def write(points: object) -> None:
            seen.append(gc.isenabled())
            real_write(points)  # type: ignore[arg-type]

        monkeypatch.setattr(runner, "write_points", write)
    try:
        assert runner.poll()
    finally:
        runner.close()
    assert seen == [False]
    assert gc.isenabled()
