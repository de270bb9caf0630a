"""What the plugin remembers per VM is bounded by the VMs it still sees, however many pass.

100,000 VMs pass through one Runner (200 alive at a time, 100 new each poll, some missing
from a poll now and then) with the sample config's rules: the health stage, the serializer's
caches and the fault log must stay the size that the live VMs need, and the memory the
plugin's own code holds (tracemalloc, filtered to the package) must stop growing.

The source here is written for the test: it is the cheap way to push many VM keys through
the real runner, health stage, serializer and log. Real QMP monitors coming and going are
tests/integration/test_state_memory.py.
"""

from __future__ import annotations

import io
import os
import random
import tracemalloc
from pathlib import Path

import telegraf_balloon
from telegraf_balloon import lineprotocol
from telegraf_balloon.config import Config, load_text
from telegraf_balloon.health import GRACE_POLLS
from telegraf_balloon.log import MAX_FAULTS, Log
from telegraf_balloon.model import Fields, HostInfo, PollResult, Sample
from telegraf_balloon.runner import Runner

GiB = 1 << 30
T0 = 1_700_000_000.0
LIVE = 200
CHURN = 100  # new VMs each poll (as many leave)
KEYS = 100_000
POLLS = (KEYS - LIVE) // CHURN + 1
PACKAGE = str(Path(telegraf_balloon.__file__).parent)
# tracemalloc slows the plugin tenfold: it runs for two windows of WINDOW polls only.
WINDOWS = (200, 800)
WINDOW = 100
HELD_LIMIT = 1_500_000  # bytes; 10,000 VMs at 0.7 KiB each would be 7 MB


class ChurnSource:
    """VMs `first`..`first + LIVE` on each poll, `first` moving on by CHURN a poll.

    One VM in 20 misses a poll (a busy monitor) and has a fault logged under its key, cleared
    when it answers again or is gone, as the qmp source does.
    """

    kind = "churn"
    instance = "churn://"

    def __init__(self, log: Log) -> None:
        self.log = log
        self.polls = 0
        self.rng = random.Random(7)
        self.faulted: set[int] = set()

    def poll(self, now: float) -> PollResult:
        first = self.polls * CHURN
        self.polls += 1
        samples = []
        for i in range(first, first + LIVE):
            if self.rng.random() < 0.05:
                self.log.fault(f"churn:{i}", f"churn: vm{i}: skipped this poll: monitor busy")
                self.faulted.add(i)
                continue
            if i in self.faulted:
                self.faulted.discard(i)
                self.log.clear(f"churn:{i}", f"churn: vm{i}: answering again")
            fields: Fields = {
                "memory_max_bytes": 4 * GiB,
                "balloon_actual_bytes": (i % 5) * GiB // 2,
                "balloon_target_bytes": (i % 5) * GiB // 2 + (i % 3) * GiB // 4,
                "swap_out_bytes_total": i * 1000 + self.polls * 4096 * (i % 7),
                "stats_age_seconds": 3.0,
            }
            tags = {"host": "node-1", "guest": f"vm-{i}", "uuid": f"{i:032x}", "source": "churn"}
            samples.append(Sample(f"{i:032x}", tags, fields))
        for i in [i for i in self.faulted if i < first]:  # gone: forget quietly
            self.faulted.discard(i)
            self.log.clear(f"churn:{i}")
        return PollResult(samples=samples, hosts=[HostInfo({"host": "node-1"}, 256 * GiB)])

    def close(self) -> None:
        pass


def package_bytes() -> int:
    """Bytes allocated by the package's own code and still held."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, PACKAGE + "*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_100000_vms_passing_through_leave_state_for_the_live_ones_only() -> None:
    sample = Path(telegraf_balloon.__file__).with_name("sample.toml")
    loaded = load_text(sample.read_text(encoding="utf-8"), str(sample), environ={})
    config = Config(path="churn", health=loaded.health, thresholds=loaded.thresholds)
    lineprotocol.clear_caches()
    with open(os.devnull, "w") as stderr, open(os.devnull, "wb") as stdout:
        log = Log(stderr)
        source = ChurnSource(log)
        runner = Runner(config, [source], stdout, log, "h", clock=lambda: T0 + 10.0 * source.polls)
        held: list[int] = []
        try:
            for poll in range(POLLS):
                if poll in WINDOWS:
                    tracemalloc.start()
                runner.poll()
                # Seen within the grace: the live ones and those that left in the last polls.
                assert runner.health.tracked() <= LIVE + CHURN * GRACE_POLLS + 1, poll
                assert lineprotocol.cached_heads() <= 4 * (LIVE + 2) + lineprotocol._HEAD_SLACK
                assert log.faults() <= LIVE // 5, poll
                if poll + 1 - WINDOW in WINDOWS:
                    held.append(package_bytes())
                    tracemalloc.stop()
        finally:
            tracemalloc.stop()
            runner.close()
    assert source.polls * CHURN + LIVE - CHURN >= KEYS
    # What the package allocated during a window of 100 polls (10,000 VMs passing) and still
    # holds: the state of the live VMs it replaced, not of all those that passed.
    assert len(held) == len(WINDOWS)
    assert all(size < HELD_LIMIT for size in held), held


def test_faults_never_cleared_are_bounded() -> None:
    """A source that forgets to clear a VM's fault: the oldest go, logged again if they recur."""
    stream = io.StringIO()
    log = Log(stream)
    for i in range(3 * MAX_FAULTS):
        log.fault(f"vm:{i}", f"vm{i}: skipped this poll")
    assert log.faults() == MAX_FAULTS
    last = 3 * MAX_FAULTS - 1
    log.fault(f"vm:{last}", f"vm{last}: skipped this poll")  # still going: not again
    assert stream.getvalue().count("\n") == 3 * MAX_FAULTS
    log.fault("vm:0", "vm0: skipped this poll")  # long dropped: logged again
    assert stream.getvalue().count("\n") == 3 * MAX_FAULTS + 1
    assert log.faults() == MAX_FAULTS
