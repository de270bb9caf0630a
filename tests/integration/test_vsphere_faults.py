"""A vCenter that is not there yet, or hangs: the plugin in execd mode, driven as Telegraf does.

The vCenter is the real simulator; the guest source beside it reads a captured guest tree,
so each poll must still bring that source's lines complete, within the deadline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.stack.execd import Execd, copy_guest_root
from tests.stack.fixtures import _start_vcsim
from tests.stack.vcsim import Vcsim

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # the plugin's [agent] timeout in these tests
SMALL = {"dc": 1, "cluster": 1, "host": 1, "standalone_host": 0, "vm": 2}


def _config(tmp_path: Path, sim: Vcsim) -> Path:
    root = copy_guest_root(tmp_path / "guest")
    path = tmp_path / "plugin.toml"
    path.write_text(
        f'[agent]\ntimeout = "{TIMEOUT}s"\nhostname = "guest-1"\n'
        f'[[sources.guest]]\nroot = "{root}"\n'
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "{sim.username}"\n'
        f'password = "{sim.password}"\nca_file = "{sim.cert_file}"\n'
    )
    return path


def _tasks_and_fds(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _poll(proc: Execd, count: int) -> tuple[float, dict[str, object], int]:
    """Tick once; (seconds to the batch, vsphere collector fields, guest lines)."""
    started = time.monotonic()
    proc.tick()
    batch = proc.wait_batches(count, timeout=TIMEOUT + 10)[count - 1]
    elapsed = batch.at - started
    vsphere = [m for m in batch.of("balloon_collector") if m.tags["source"] == "vsphere"]
    guest = [m for m in batch.of("balloon") if m.tags["source"] == "guest"]
    return elapsed, vsphere[0].fields, len(guest)


def _until_up(proc: Execd, count: int, timeout: float = 30.0) -> tuple[int, dict[str, object], int]:
    """Poll until the vSphere source is up again; (polls so far, its fields, guest lines)."""
    deadline = time.monotonic() + timeout
    while True:
        count += 1
        _, fields, guests = _poll(proc, count)
        if fields["up"] is True:
            return count, fields, guests
        assert time.monotonic() < deadline, proc.transcript()
        time.sleep(0.5)


def test_vcenter_down_at_start_is_picked_up_when_it_appears(tmp_path: Path) -> None:
    sim = _start_vcsim(SMALL)
    try:
        sim.kill()  # the port is known and nothing listens on it
        with Execd(["--config", str(_config(tmp_path, sim))]) as proc:
            proc.wait_ready()
            for count in (1, 2):
                _, fields, guests = _poll(proc, count)
                assert fields["up"] is False and guests == 1
            assert len(proc.stderr_lines("E! vsphere")) == 1  # once, not every poll
            sim.restart()
            _, fields, guests = _until_up(proc, 2)
            assert guests == 1 and fields["vms"] == 2
            code, _ = proc.shutdown()
            assert code == 0
    finally:
        sim.stop()


def test_frozen_vcenter_holds_no_poll_past_the_deadline(tmp_path: Path) -> None:
    sim = _start_vcsim(SMALL)
    try:
        with Execd(["--config", str(_config(tmp_path, sim))]) as proc:
            proc.wait_ready()
            _, fields, _ = _poll(proc, 1)
            assert fields["up"] is True
            pid = proc.proc.pid
            sim.pause()  # SIGSTOP: the port accepts, nothing answers
            count = 1
            longest = 0.0
            samples = []
            for _ in range(50):
                count += 1
                elapsed, fields, guests = _poll(proc, count)
                longest = max(longest, elapsed)
                assert fields["up"] is False
                assert guests == 1  # the other source's line, complete, every poll
                samples.append(_tasks_and_fds(pid))
            assert longest < TIMEOUT + 1.0, longest
            tasks, fds = zip(*samples)
            assert max(tasks) - min(tasks[5:]) <= 1, tasks  # no thread piles up
            assert max(fds[5:]) - min(fds[5:]) <= 2, fds  # nor sockets/descriptors
            sim.resume()
            _until_up(proc, count)
            code, seconds = proc.shutdown()
            assert code == 0 and seconds < 1.5
    finally:
        sim.stop()
