"""The plugin as Telegraf's inputs.execd runs it: a real child process, real pipes, real signals.

Guest roots are copies of the captured Firecracker 6.18 guest
(tests/fixtures/guest/firecracker-6.18-virtio-balloon). A hung source is real too: the test
holds a write lease on the root's proc/meminfo, so the kernel makes the plugin's open() of it
wait, exactly like a /proc or debugfs read stuck behind a kernel lock; no mocks anywhere.
(A FIFO no longer hangs the guest source: it refuses files that are not regular.)
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from telegraf_balloon import catalog
from tests.stack.common import unavailable
from tests.stack.execd import Batch, Execd, Lease, Start, copy_guest_root
from tests.stack.fixtures import start_fixture

pytestmark = pytest.mark.integration

FLUSH_WITHIN = 0.5  # a batch must reach the reader this soon after its trigger
EXIT_WITHIN = 1.0  # README, Behaviour under Telegraf: exit 0 within 1 s of EOF or SIGTERM


start = start_fixture()  # the plugin under the harness: `start(args, ...)`


def guest_root(path: Path) -> Path:
    try:
        return copy_guest_root(path)
    except FileNotFoundError as exc:
        unavailable(str(exc))


def write_config(path: Path, roots: Sequence[Path], timeout: str = "5s") -> Path:
    body = f'[agent]\nhostname = "vm"\ntimeout = "{timeout}"\n'
    for root in roots:
        body += f'\n[[sources.guest]]\nroot = "{root}"\n'
    path.write_text(body, encoding="utf-8")
    return path


def guest_child(start: Start, tmp_path: Path) -> Execd:
    """The plugin on a copy of the captured guest, started and ready (its start-up line seen)."""
    root = guest_root(tmp_path / "g")
    child = start(["--config", str(write_config(tmp_path / "c.toml", [root]))])
    child.wait_ready()
    return child


def hung_root(path: Path, leases: list[Lease]) -> Path:
    """A guest root whose proc/meminfo blocks every open until the test releases its lease."""
    root = guest_root(path)
    leases.append(Lease(root / "proc" / "meminfo"))
    return root


def assert_healthy_batch(batch: Batch, roots: Sequence[Path]) -> None:
    """One balloon line and one up=true balloon_collector line per source, nothing else."""
    balloons = batch.of(catalog.BALLOON)
    collectors = batch.of(catalog.COLLECTOR)
    assert len(balloons) == len(roots), batch.metrics
    assert len(collectors) == len(roots), batch.metrics
    assert len(batch.metrics) == 2 * len(roots), batch.metrics
    for root in roots:
        status = batch.collector(str(root))
        assert status.fields["up"] is True, status.text
        assert "error" not in status.fields
    for line in balloons:
        assert line.tags["source"] == "guest"
        assert line.tags["driver"] == "virtio_balloon"
        assert line.fields["memory_max_bytes"] == 24684092 * 1024  # MemTotal, balloon empty


# --- triggers ---------------------------------------------------------------------------------


def test_one_batch_per_tick(start: Start, tmp_path: Path) -> None:
    roots = [guest_root(tmp_path / "a"), guest_root(tmp_path / "b")]
    child = start(["--config", str(write_config(tmp_path / "c.toml", roots))])
    child.wait_ready()
    ticks = 5
    for i in range(ticks):
        assert child.tick()
        child.wait_batches(i + 1, timeout=2.0, lines=4)
        time.sleep(0.3)
    batches = child.settle(0.3)
    assert len(batches) == ticks
    for i, batch in enumerate(batches):
        assert_healthy_batch(batch, roots)
        for root in roots:
            assert batch.collector(str(root)).fields["polls_total"] == i + 1
    assert [b.time_ns for b in batches] == sorted(b.time_ns for b in batches)
    assert child.proc.poll() is None


def test_batch_flushed_at_once_while_running(start: Start, tmp_path: Path) -> None:
    """Block buffering would hold the lines until exit (Telegraf #7337)."""
    root = guest_root(tmp_path / "g")
    child = start(["--config", str(write_config(tmp_path / "c.toml", [root]))])
    child.wait_ready()
    for i in range(3):
        ticked = time.monotonic()
        assert child.tick()
        batch = child.wait_batches(i + 1, timeout=2.0, lines=2)[i]
        assert batch.at - ticked < FLUSH_WITHIN, f"batch {i} took {batch.at - ticked:.3f}s"
        assert child.proc.poll() is None, "the batch must arrive while the process runs"
        assert_healthy_batch(batch, [root])
        time.sleep(0.2)


def test_burst_in_one_write_collapses(start: Start, tmp_path: Path) -> None:
    root = guest_root(tmp_path / "g")
    child = start(["--config", str(write_config(tmp_path / "c.toml", [root]))])
    child.wait_ready()
    assert child.write(b"\n" * 20)
    batches = child.settle(1.0)
    assert 1 <= len(batches) <= 2, f"{len(batches)} batches for one burst of 20 newlines"
    assert child.tick(), "stdin must still be drained after the burst"
    later = child.wait_batches(len(batches) + 1, timeout=2.0, lines=2)
    assert_healthy_batch(later[-1], [root])


def test_burst_while_poll_runs_collapses(start: Start, tmp_path: Path, leases: list[Lease]) -> None:
    """20 newlines, one write each, while a (really slow) poll runs: one follow-up poll at most."""
    slow, healthy = hung_root(tmp_path / "slow", leases), guest_root(tmp_path / "ok")
    child = start(["--config", str(write_config(tmp_path / "c.toml", [slow, healthy], "1s"))])
    child.wait_ready()
    first = time.monotonic()
    assert child.tick()
    time.sleep(0.1)
    for _ in range(20):
        assert child.tick()
        time.sleep(0.01)
    assert time.monotonic() - first < 0.8, "the burst must land while the first poll runs"
    batches = child.settle(max(0.0, first + 2.0 - time.monotonic()))
    assert 1 <= len(batches) <= 2, f"{len(batches)} batches for 21 triggers during one poll"
    assert child.tick(), "stdin must still be drained"
    later = child.wait_batches(len(batches) + 1, timeout=2.0)[-1]
    assert later.collector(str(healthy)).fields["up"] is True
    # The hung call is still stuck in its worker: stopping must not wait for it.
    code, seconds = child.shutdown()
    print(f"stdin EOF with a hung worker, no poll in flight -> exit {code} after {seconds:.3f}s")
    assert (code, seconds < EXIT_WITHIN) == (0, True), seconds


def test_stdin_drained_under_a_flood(start: Start, tmp_path: Path) -> None:
    """1 MiB of newlines (16 pipe buffers) fits through Telegraf's 1 s write deadline."""
    child = guest_child(start, tmp_path)
    assert child.write(b"\n" * (1 << 20), deadline=1.0), "the plugin stopped draining stdin"
    batches = child.settle(1.0)
    assert 1 <= len(batches) <= 20, f"{len(batches)} batches for 1 MiB of newlines"
    assert child.tick()
    child.wait_batches(len(batches) + 1, timeout=2.0)
    assert child.proc.poll() is None


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGUSR1", "SIGUSR2"])
def test_signal_triggers_one_batch(start: Start, tmp_path: Path, sig: str) -> None:
    root = guest_root(tmp_path / "g")
    child = start(["--config", str(write_config(tmp_path / "c.toml", [root]))])
    child.wait_ready()
    for i in range(2):
        sent = time.monotonic()
        child.signal(getattr(signal, sig))
        batch = child.wait_batches(i + 1, timeout=2.0, lines=2)[i]
        assert batch.at - sent < FLUSH_WITHIN
        assert len(child.settle(0.3)) == i + 1, f"one {sig} must give exactly one batch"
        assert_healthy_batch(batch, [root])
    assert child.proc.poll() is None


# --- stopping ---------------------------------------------------------------------------------


def test_stdin_eof_exits_0_within_1s(start: Start, tmp_path: Path) -> None:
    child = guest_child(start, tmp_path)
    assert child.tick()
    child.wait_batches(1, timeout=2.0, lines=2)
    code, seconds = child.shutdown()
    print(f"stdin EOF -> exit {code} after {seconds:.3f}s")
    assert code == 0
    assert seconds < EXIT_WITHIN
    assert not child.stderr_lines("E! ")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_within_1s(start: Start, tmp_path: Path, sig: str) -> None:
    child = guest_child(start, tmp_path)
    assert child.tick()
    child.wait_batches(1, timeout=2.0, lines=2)
    code, seconds = child.stop_with(getattr(signal, sig))  # stdin stays open
    print(f"{sig} -> exit {code} after {seconds:.3f}s")
    assert code == 0
    assert seconds < EXIT_WITHIN
    assert not any("Traceback" in line for line in child.stderr_lines())


@pytest.mark.parametrize("how", ["EOF", "SIGTERM"])
def test_stop_while_slow_poll_in_flight(
    start: Start, tmp_path: Path, how: str, leases: list[Lease]
) -> None:
    slow, healthy = hung_root(tmp_path / "slow", leases), guest_root(tmp_path / "ok")
    config = write_config(tmp_path / "c.toml", [slow, healthy], timeout="10s")
    child = start(["--config", str(config)])
    child.wait_ready()
    assert child.tick()
    time.sleep(0.3)  # the healthy source answered; the poll waits for the hung one
    if how == "EOF":
        code, seconds = child.shutdown()
    else:
        code, seconds = child.stop_with(signal.SIGTERM)
    print(f"{how} during a hung poll -> exit {code} after {seconds:.3f}s")
    assert code == 0
    assert seconds < EXIT_WITHIN
    assert not any("Traceback" in line for line in child.stderr_lines())


# --- faults -----------------------------------------------------------------------------------


def test_hung_source_reported_down_others_on_time(
    start: Start, tmp_path: Path, leases: list[Lease]
) -> None:
    slow, healthy = hung_root(tmp_path / "slow", leases), guest_root(tmp_path / "ok")
    child = start(["--config", str(write_config(tmp_path / "c.toml", [slow, healthy], "1s"))])
    child.wait_ready()

    # 1: the hung source misses its 1 s deadline; the healthy one's lines come with the batch.
    ticked = time.monotonic()
    assert child.tick()
    first = child.wait_batches(1, timeout=3.0, lines=3)[0]
    waited = first.at - ticked
    print(f"batch with a hung source after {waited:.3f}s (timeout 1s)")
    assert 0.8 <= waited <= 1.6, f"batch after {waited:.3f}s with a 1s timeout"
    down = first.collector(str(slow))
    assert down.fields["up"] is False
    assert "timeout" in down.fields["error"], down.text
    assert down.fields["errors_total"] == 1
    up = first.collector(str(healthy))
    assert up.fields["up"] is True
    assert [m.tags["source"] for m in first.of(catalog.BALLOON)] == ["guest"]
    assert len(first.metrics) == 3

    # 2: the call is still stuck: reported down at once, no second call started.
    ticked = time.monotonic()
    assert child.tick()
    second = child.wait_batches(2, timeout=2.0, lines=3)[1]
    assert second.at - ticked < FLUSH_WITHIN, "a busy source must not delay the batch"
    down = second.collector(str(slow))
    assert down.fields["up"] is False
    assert "previous poll still running" in down.fields["error"], down.text
    assert second.collector(str(healthy)).fields["up"] is True
    assert child.proc.poll() is None

    # 3: release the one stuck call. Had the second trigger queued another call, the worker
    # would be stuck again at once and the next poll would say "previous poll still running";
    # a fresh call (stuck on the lease again) says "no answer within timeout" instead.
    lease = leases[0]
    lease.release()
    lease.take()  # waits until the released call has read and closed the file
    time.sleep(0.1)
    assert child.tick()
    third = child.wait_batches(3, timeout=3.0, lines=3)[2]
    error = third.collector(str(slow)).fields.get("error", "")
    assert "timeout" in error, f"expected a fresh (hung) call, got: {third.collector(str(slow))}"

    # 4: the source heals: up again.
    lease.release()
    time.sleep(0.3)
    assert child.tick()
    fourth = child.wait_batches(4, timeout=3.0, lines=4)[3]
    assert fourth.collector(str(slow)).fields["up"] is True, fourth.collector(str(slow)).text
    assert_healthy_batch(fourth, [slow, healthy])
    child.wait_stderr(rf"^I! guest {re.escape(str(slow))}: ", timeout=1.0)
    assert child.proc.poll() is None


def test_hung_source_logged_once_not_every_poll(
    start: Start, tmp_path: Path, leases: list[Lease]
) -> None:
    """A repeated fault is logged when it starts and when it clears (README, Behaviour under
    Telegraf).

    BUG: runner.py puts the elapsed time in the error ("previous poll still running after
    1.2s"), so Log.fault sees a new message on every poll and logs an E! line each time.
    And the poll the call missed ("no answer within timeout") and the polls it keeps busy
    ("previous poll still running") are one hung call: one E! line, not two.
    """
    slow, healthy = hung_root(tmp_path / "slow", leases), guest_root(tmp_path / "ok")
    child = start(["--config", str(write_config(tmp_path / "c.toml", [slow, healthy], "1s"))])
    child.wait_ready()
    assert child.tick()
    child.wait_batches(1, timeout=3.0, lines=3)
    for i in range(2, 6):
        time.sleep(0.2)
        assert child.tick()
        child.wait_batches(i, timeout=3.0, lines=3)
    errors = [line for line in child.stderr_lines("E! ") if str(slow) in line]
    assert len(errors) == 1, "one hung call, logged more than once:\n" + "\n".join(errors)


def test_missing_root_logged_once_then_recovers(start: Start, tmp_path: Path) -> None:
    later = tmp_path / "later"
    child = start(["--config", str(write_config(tmp_path / "c.toml", [later]))])
    child.wait_ready()
    for i in range(3):
        assert child.tick()
        batch = child.wait_batches(i + 1, timeout=2.0)[i]
        status = batch.collector(str(later))
        assert status.fields["up"] is False
        assert isinstance(status.fields["error"], str) and status.fields["error"]
        assert not batch.of(catalog.BALLOON)
        time.sleep(0.2)
    errors = [line for line in child.stderr_lines("E! ") if str(later) in line]
    assert len(errors) == 1, errors
    assert child.proc.poll() is None, "a source fault must not end the process"

    guest_root(later)  # the directory appears (a late mount)
    assert child.tick()
    batch = child.wait_batches(4, timeout=2.0, lines=2)[3]
    assert_healthy_batch(batch, [later])
    child.wait_stderr(rf"^I! guest {re.escape(str(later))}: ", timeout=1.0)
    assert child.tick()
    child.wait_batches(5, timeout=2.0, lines=2)
    assert len([line for line in child.stderr_lines("E! ") if str(later) in line]) == 1
    again = [line for line in child.stderr_lines("I! ") if str(later) in line and "again" in line]
    assert len(again) == 1


def test_environment_reaches_the_config(start: Start, tmp_path: Path) -> None:
    """Telegraf's `environment = ["GUEST_ROOT=..."]` feeds ${VAR} in the plugin's config."""
    root = guest_root(tmp_path / "g")
    config = tmp_path / "c.toml"
    config.write_text(
        '[agent]\nhostname = "${NODE:-vm}"\n[[sources.guest]]\nroot = "${GUEST_ROOT}"\n',
        encoding="utf-8",
    )
    child = start(["--config", str(config)], env={"GUEST_ROOT": str(root)})
    child.wait_ready()
    assert child.tick()
    batch = child.wait_batches(1, timeout=2.0, lines=2)[0]
    assert_healthy_batch(batch, [root])
    assert {m.tags["host"] for m in batch.metrics} == {"vm"}


# --- modes and pipes --------------------------------------------------------------------------


def test_interval_mode_polls_without_ticks(start: Start, tmp_path: Path) -> None:
    root = guest_root(tmp_path / "g")
    config = write_config(tmp_path / "c.toml", [root])
    child = start(["--config", str(config), "--interval", "0.5s"])
    child.wait_ready()
    batches = child.wait_batches(4, timeout=4.0, lines=2)
    gaps = [(b.time_ns - a.time_ns) / 1e9 for a, b in zip(batches, batches[1:])]
    assert all(0.35 <= gap <= 0.75 for gap in gaps), gaps
    for batch in batches[:4]:
        assert_healthy_batch(batch, [root])
    code, seconds = child.shutdown()
    print(f"--interval: stdin EOF -> exit {code} after {seconds:.3f}s")
    assert code == 0
    assert seconds < EXIT_WITHIN


def test_closed_stdout_exits_quietly(start: Start, tmp_path: Path) -> None:
    child = guest_child(start, tmp_path)
    assert child.tick()
    child.wait_batches(1, timeout=2.0, lines=2)
    child.close_stdout()
    ticked = time.monotonic()
    assert child.tick()
    code = child.wait_exit(3.0)
    print(f"closed stdout -> exit {code} after {time.monotonic() - ticked:.3f}s")
    assert code is not None, "the process must end once nobody reads its lines"
    stderr = "\n".join(child.stderr_lines())
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('[agent]\ntimeout = "5x"\n\n[[sources.guest]]\nroot = "/"\n', "agent.timeout"),
        ('[[sources.guest]]\nroot = "/"\nbogus = 1\n', "sources.guest[0].bogus"),
    ],
)
def test_bad_config_exits_2(start: Start, tmp_path: Path, body: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body, encoding="utf-8")
    started = time.monotonic()
    child = start(["--config", str(config)])
    code = child.wait_exit(5.0)
    seconds = time.monotonic() - started
    print(f"bad config -> exit {code} after {seconds:.3f}s (including interpreter start)")
    assert code == 2
    assert seconds < 2.0
    lines = child.stderr_lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("E! ")
    assert str(config) in lines[0] and key in lines[0], lines[0]
    assert child.metrics == []
