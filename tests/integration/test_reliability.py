"""Reliability in execd mode: dead sources at start, hung files, Telegraf's faults, restarts.

Every case runs the plugin as a child process under :class:`tests.stack.execd.Execd`, which
checks every stdout line (line protocol, field catalog) and every stderr line (level prefix)
as it arrives, and reports any line holding a configured secret. Each fault is real: a FIFO
where a debugfs file should be, a regular file whose open() the kernel holds (a write
lease), a libvirtd that is not running yet, SIGTERM and SIGKILL, a reader that goes away.

The tables (DEAD_AT_START, HANGS) take one entry per source kind: a new kind is a few lines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from telegraf_balloon import catalog
from tests.stack.common import StackError, unavailable
from tests.stack.execd import Batch, Execd, Lease, Start, copy_guest_root, hang_file
from tests.stack.fixtures import start_fixture, start_vcsim
from tests.stack.libvirt_daemon import LibvirtStack
from tests.stack.node_xml import DomainSpec, write_node_xml
from tests.stack.qemu_stack import QemuHost
from tests.stack.soak import ProcSample, proc_sample

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GUEST_FIXTURES = REPO / "tests" / "fixtures" / "guest"
# In every libvirt URI of this file; the harness fails a test on any line that holds it.
SECRET = "reliability-canary-Pa55"
MARGIN = 0.5  # a batch may come this long after the source timeout (shared, loaded machine)
EXIT_WITHIN = 1.0


start = start_fixture(SECRET)  # the plugin under the harness: `start(args, ...)`


def fixture_root(case: str, dest: Path) -> Path:
    source = GUEST_FIXTURES / case / "root"
    if not source.is_dir():
        unavailable(f"guest fixture {case} is missing")
    return copy_guest_root(dest, source)


def config(path: Path, sections: Sequence[str], timeout: str = "1s", extra: str = "") -> Path:
    body = f'[agent]\nhostname = "vm"\ntimeout = "{timeout}"\n\n' + "\n".join(sections) + extra
    path.write_text(body, encoding="utf-8")
    return path


def guest_section(root: Path) -> str:
    return f'[[sources.guest]]\nroot = "{root}"\n'


def logs_section(files: Sequence[Path]) -> str:
    listed = ", ".join(f'"{f}"' for f in files)
    return f"[[sources.logs]]\nfiles = [{listed}]\n"


def poll(child: Execd, number: int, lines: Optional[int] = None, timeout: float = 5.0) -> Batch:
    """Trigger poll `number` (1-based, counted over the child's life) and return its batch."""
    assert child.tick(), "the plugin stopped reading stdin"
    return child.wait_batches(number, timeout=timeout, lines=lines)[number - 1]


def flat(samples: list[ProcSample], attr: str) -> bool:
    """Nothing piles up: the last sample is no higher than the first, and no sample passes the
    first by more than one (a descriptor open for a moment is not a pile)."""
    values = [int(getattr(s, attr)) for s in samples]
    return values[-1] <= values[0] and max(values) <= values[0] + 1


# --- a FIFO where a kernel file should be -----------------------------------------------------

FIFO_CASES = [
    # (fixture, file made a FIFO, fields that come from it and go, fields that must stay)
    (
        "vmware-4.20-current-below-target",
        "sys/kernel/debug/vmmemctl",
        ["balloon_actual_bytes", "balloon_target_bytes"],
        ["guest_total_bytes", "guest_free_bytes", "swap_in_bytes_total", "thp_mode"],
    ),
    (
        "hyperv-valid",
        "sys/kernel/debug/hv-balloon",
        ["balloon_actual_bytes"],
        ["guest_total_bytes", "guest_free_bytes", "major_faults_total"],
    ),
    (
        "firecracker-6.18-virtio-balloon",
        "proc/vmstat",
        ["swap_in_bytes_total", "major_faults_total"],
        ["guest_total_bytes", "guest_free_bytes", "feature_deflate_on_oom"],
    ),
]


@pytest.mark.parametrize(
    ("case", "rel", "gone", "kept"), FIFO_CASES, ids=[c[0] for c in FIFO_CASES]
)
def test_fifo_where_a_kernel_file_should_be(
    start: Start, tmp_path: Path, case: str, rel: str, gone: list[str], kept: list[str]
) -> None:
    """50 polls: never stuck on the FIFO, the other fields out, one W! naming it, flat threads."""
    root = fixture_root(case, tmp_path / "root")
    hang_file(root / rel)
    child = start(["--config", str(config(tmp_path / "c.toml", [guest_section(root)]))])
    child.wait_ready()
    samples: list[ProcSample] = []
    for i in range(1, 51):
        ticked = time.monotonic()
        batch = poll(child, i, lines=2)
        assert batch.at - ticked < 1.0 + MARGIN
        status = batch.collector(str(root))
        assert status.fields["up"] is True, status.text
        (line,) = batch.of(catalog.BALLOON)
        for name in kept:
            assert name in line.fields, f"{name} missing: {line.text}"
        for name in gone:
            assert name not in line.fields, f"{name} from a FIFO: {line.text}"
        if i >= 5:
            samples.append(proc_sample(child.proc.pid, i))
    warnings = [w for w in child.stderr_lines("W! ") if str(root / rel) in w]
    assert len(warnings) == 1, child.stderr_lines()
    assert "FIFO" in warnings[0]
    assert not child.stderr_lines("E! ")
    assert flat(samples, "threads") and flat(samples, "fds"), samples


# --- sources that hang: each poll on time, the others complete, nothing piles up --------------


@dataclass
class Hang:
    """One source kind made to hang for real, beside healthy sources of every kind."""

    kind: str
    section: str  # the hung source's config
    instance: str  # its balloon_collector instance tag
    stop: Callable[[], None]  # make it hang (after a healthy first poll)
    resume: Callable[[], None]  # idempotent: also run at teardown


def guest_hang(tmp_path: Path, leases: list[Lease], request: pytest.FixtureRequest) -> Hang:
    root = fixture_root("firecracker-6.18-virtio-balloon", tmp_path / "hung")
    holder: list[Lease] = []

    def stop() -> None:
        holder.append(Lease(root / "proc" / "meminfo"))
        leases.append(holder[-1])

    return Hang("guest", guest_section(root), str(root), stop, lambda: holder[-1].release())


def libvirtd_hang(tmp_path: Path, leases: list[Lease], request: pytest.FixtureRequest) -> Hang:
    """The session's libvirtd frozen with SIGSTOP (its test driver serves a node file)."""
    stack: LibvirtStack = request.getfixturevalue("libvirt_stack")
    node = tmp_path / "hung-node.xml"
    write_node_xml(node, [DomainSpec("hung-vm", memory_kib=1048576, current_kib=786432)])
    pid = stack.daemon_pid
    assert pid is not None
    stopped: list[bool] = []

    def stop() -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(True)

    def resume() -> None:
        if stopped:
            os.kill(pid, signal.SIGCONT)
            stopped.clear()

    uri = stack.test_uri(node)
    return Hang("libvirt", f'[[sources.libvirt]]\nuri = "{uri}"\n', uri, stop, resume)


def vcenter_hang(tmp_path: Path, leases: list[Lease], request: pytest.FixtureRequest) -> Hang:
    """A vCenter frozen with SIGSTOP: its port accepts, nothing answers."""
    sim = start_vcsim({"dc": 1, "cluster": 1, "host": 1, "standalone_host": 0, "vm": 2})
    request.addfinalizer(sim.stop)
    section = (
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "{sim.username}"\n'
        f'password = "{sim.password}"\nca_file = "{sim.cert_file}"\n'
    )

    def resume() -> None:
        if sim.paused:
            sim.resume()

    return Hang("vsphere", section, f"127.0.0.1:{sim.port}", sim.pause, resume)


HANGS: dict[str, Callable[[Path, list[Lease], pytest.FixtureRequest], Hang]] = {
    "guest-file-blocks": guest_hang,
    "libvirtd-sigstop": libvirtd_hang,
    "vcenter-sigstop": vcenter_hang,
}


@pytest.mark.parametrize("name", list(HANGS))
def test_hung_source_50_polls(
    start: Start,
    tmp_path: Path,
    leases: list[Lease],
    request: pytest.FixtureRequest,
    name: str,
) -> None:
    """A source hangs: each poll still within timeout + margin, the other sources complete,
    no thread or descriptor piles up over 50 polls, and it answers again once released."""
    hang = HANGS[name](tmp_path, leases, request)
    try:
        _hung_50_polls(start, tmp_path, hang, name)
    finally:
        hang.resume()


def _hung_50_polls(start: Start, tmp_path: Path, hang: Hang, name: str) -> None:
    healthy = fixture_root("firecracker-6.18-virtio-balloon", tmp_path / "ok")
    events = tmp_path / "events.log"
    events.write_text("")
    sections = [
        hang.section,
        guest_section(healthy),
        logs_section([events]),
        '[[sources.libvirt]]\nuri = "test://watcher:' + SECRET + '@/default"\n',
    ]
    child = start(["--config", str(config(tmp_path / "c.toml", sections, timeout="0.5s"))])
    child.wait_ready()
    sources = len(sections)
    first = poll(child, 1, lines=sources + 3)
    assert first.collector(hang.instance).fields["up"] is True
    hang.stop()
    samples: list[ProcSample] = []
    longest = 0.0
    for i in range(2, 52):
        with open(events, "a") as handle:
            handle.write("virtio_balloon virtio0: Out of puff! Can't get 1 pages\n")
        ticked = time.monotonic()
        batch = poll(child, i, lines=sources + 3)
        longest = max(longest, batch.at - ticked)
        assert batch.at - ticked < 0.5 + MARGIN, f"poll {i} took {batch.at - ticked:.3f}s"
        down = batch.collector(hang.instance)
        assert down.fields["up"] is False, down.text
        others = [m for m in batch.of(catalog.COLLECTOR) if m.tags["instance"] != hang.instance]
        assert len(others) == sources - 1 and all(m.fields["up"] is True for m in others)
        guests = {m.tags.get("guest") for m in batch.of(catalog.BALLOON)}
        assert {"vm", "test"} <= guests, batch.metrics  # guest + libvirt's test domain
        assert [m.fields["count"] for m in batch.of(catalog.LOG)] == [1]
        if i >= 4:
            samples.append(proc_sample(child.proc.pid, i))
        time.sleep(0.02)
    fds = sorted({x.fds for x in samples})
    threads = sorted({x.threads for x in samples})
    print(
        f"{name}: 50 polls with a hung source, longest {longest:.3f}s (timeout 0.5s), "
        f"fds {fds}, threads {threads}"
    )
    trail = [(s.fds, s.threads) for s in samples]
    assert flat(samples, "threads") and flat(samples, "fds"), f"(fds, threads): {trail}"
    errors = [e for e in child.stderr_lines("E! ") if hang.instance in e]
    assert 1 <= len(errors) <= 2, errors  # the fault is logged when it starts, not per poll
    hang.resume()
    deadline = time.monotonic() + 15
    number = 51
    while True:
        number += 1
        batch = poll(child, number)
        if batch.collector(hang.instance).fields["up"] is True or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert batch.collector(hang.instance).fields["up"] is True, batch.metrics
    assert proc_sample(child.proc.pid, number).threads == samples[-1].threads


def test_log_rotated_onto_a_file_whose_open_would_hang(start: Start, tmp_path: Path) -> None:
    """The logs source opens with O_NONBLOCK: a file whose open() would wait (a kernel lease,
    as a stalled filesystem) is not waited on; the source stays up and on time, and reads
    the new file once it opens. (A followed file is kept open, so it cannot hang later.)"""
    log = tmp_path / "app.log"
    log.write_text("boot\n")
    child = start(["--config", str(config(tmp_path / "c.toml", [logs_section([log])]))])
    child.wait_ready()
    assert poll(child, 1).collector(str(log)).fields["up"] is True
    log.rename(tmp_path / "app.log.1")
    log.write_text("")
    lease = Lease(log)
    try:
        for number in range(2, 7):
            with open(tmp_path / "app.log.1", "a") as old:
                old.write("virtio_balloon virtio0: Out of puff! Can't get 1 pages\n")
            ticked = time.monotonic()
            batch = poll(child, number)
            assert batch.at - ticked < 1.0 + MARGIN
            assert batch.collector(str(log)).fields["up"] is True
        lease.release()
        with open(log, "a") as new:
            new.write("virtio_balloon virtio0: Out of puff! Can't get 2 pages\n")
        deadline, number = time.monotonic() + 10, 7
        while True:
            batch = poll(child, number)
            if any(m.tags["file"] == str(log) for m in batch.of(catalog.LOG)):
                break
            assert time.monotonic() < deadline, child.transcript()
            number += 1
            time.sleep(0.2)
    finally:
        lease.close()


# --- dead at start: down first, then up by itself ---------------------------------------------


@dataclass
class Dead:
    """A source whose target does not exist when the plugin starts."""

    section: str
    instance: str
    down_at_start: bool  # False: an empty source (nothing to read yet) is not a down one
    revive: Callable[[], None]
    alive: Callable[[Batch], bool]  # the batch shows the source's data again
    secrets: tuple[str, ...] = ()
    cleanup: Callable[[], None] = lambda: None


def dead_guest(tmp_path: Path) -> Dead:
    root = tmp_path / "not-yet"

    def revive() -> None:
        copy_guest_root(root, GUEST_FIXTURES / "hyperv-valid" / "root")

    def alive(batch: Batch) -> bool:
        return [m.tags["driver"] for m in batch.of(catalog.BALLOON)] == ["hv_balloon"]

    return Dead(guest_section(root), str(root), True, revive, alive)


def dead_logs(tmp_path: Path) -> Dead:
    log = tmp_path / "later.log"

    def revive() -> None:
        log.write_text("virtio_balloon virtio0: Out of puff! Can't get 1 pages\n")

    def alive(batch: Batch) -> bool:
        return [m.fields["count"] for m in batch.of(catalog.LOG)] == [1]

    return Dead(logs_section([log]), str(log), False, revive, alive)


def dead_libvirt(tmp_path: Path) -> Dead:
    """A private libvirtd whose socket does not exist yet; the test starts it later."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt-python is not installed")
    if os.geteuid() != 0:
        unavailable("a private libvirtd needs root")
    stack = LibvirtStack(probe_qemu=False)
    try:
        stack.prepare()
    except StackError as exc:
        unavailable(f"libvirtd cannot be prepared: {exc}")
    assert not stack.socket_path.exists()
    node = tmp_path / "node.xml"
    write_node_xml(node, [DomainSpec("late-vm", memory_kib=1048576, current_kib=524288)])
    # A password in the URI: it must appear nowhere (the daemon's unix socket ignores it).
    secret = "dead-at-start-s3cret"
    uri = stack.test_uri(node).replace("test+unix://", f"test+unix://watcher:{secret}@", 1)
    instance = uri.replace(f":{secret}", "")

    def revive() -> None:
        try:
            stack.start_daemon(timeout=120)
        except StackError as exc:
            unavailable(f"libvirtd did not start: {exc}")

    def alive(batch: Batch) -> bool:
        return [m.tags["guest"] for m in batch.of(catalog.BALLOON)] == ["late-vm"]

    section = f'[[sources.libvirt]]\nuri = "{uri}"\n'
    return Dead(section, instance, True, revive, alive, (secret,), stack.stop)


def dead_vcenter(tmp_path: Path) -> Dead:
    """A vCenter port on 127.0.0.1 with nothing listening; the simulator comes up there later."""
    sim = start_vcsim({"dc": 1, "cluster": 1, "host": 1, "standalone_host": 0, "vm": 2})
    sim.kill()  # the port is known (and its certificate); nothing listens
    section = (
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "{sim.username}"\n'
        f'password = "{sim.password}"\nca_file = "{sim.cert_file}"\n'
    )

    def alive(batch: Batch) -> bool:
        return len(batch.of(catalog.BALLOON)) == 2

    return Dead(section, f"127.0.0.1:{sim.port}", True, sim.restart, alive, (), sim.stop)


def dead_qmp(tmp_path: Path) -> Dead:
    """An empty QMP socket directory: up with no VM; a QEMU started later is seen by itself."""
    if os.geteuid() != 0:
        unavailable("QMP sockets are root-only: the qmp tests run as root")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        unavailable("qemu-system-x86_64 is not installed")
    host = QemuHost(qemu, None)

    def revive() -> None:
        host.start(301, memory_mib=128, boot=False)

    def alive(batch: Batch) -> bool:
        return [m.tags["guest"] for m in batch.of(catalog.BALLOON)] == ["vm301"]

    section = f'[[sources.qmp]]\nsockets = ["{host.glob}"]\nproxmox_config = ""\n'
    return Dead(section, host.glob, False, revive, alive, (), host.close)


DEAD_AT_START: dict[str, Callable[[Path], Dead]] = {
    "guest-root-missing": dead_guest,
    "log-file-missing": dead_logs,
    "libvirtd-not-running": dead_libvirt,
    "vcenter-not-listening": dead_vcenter,
    "qmp-directory-empty": dead_qmp,
}


@pytest.mark.parametrize("name", list(DEAD_AT_START))
def test_dead_at_start_then_up_by_itself(start: Start, tmp_path: Path, name: str) -> None:
    dead = DEAD_AT_START[name](tmp_path)
    try:
        child = start(
            ["--config", str(config(tmp_path / "c.toml", [dead.section], timeout="5s"))],
            secrets=dead.secrets,
        )
        child.wait_ready()
        batch = poll(child, 1, timeout=10)
        first = batch.collector(dead.instance)
        assert first.fields["up"] is not dead.down_at_start, first.text
        assert bool(first.fields.get("error")) is dead.down_at_start, first.text
        assert not dead.alive(batch)
        assert child.proc.poll() is None
        dead.revive()
        deadline = time.monotonic() + 30
        number = 1
        while True:
            number += 1
            batch = poll(child, number, timeout=10)
            if batch.collector(dead.instance).fields["up"] is True and dead.alive(batch):
                break
            assert time.monotonic() < deadline, child.transcript()
            time.sleep(0.5)
        print(f"{name}: up by itself {number - 1} poll(s) after it appeared")
        code, seconds = child.shutdown()
        assert code == 0 and seconds < EXIT_WITHIN
        child.assert_clean()  # includes: no configured secret in any line
    finally:
        dead.cleanup()


# --- Telegraf's side --------------------------------------------------------------------------


def inflated_node(path: Path, domains: int = 3) -> Path:
    """Domains ballooned to half their memory: balloon_ratio 0.5, past a 0.4 crit."""
    specs = [DomainSpec(f"vm-{i}", memory_kib=2097152, current_kib=1048576) for i in range(domains)]
    write_node_xml(path, specs)
    return path


def libvirt_section(node: Path) -> str:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt-python is not installed")
    return f'[[sources.libvirt]]\nuri = "test://watcher:{SECRET}@{node}"\n'


def rss_kib(pid: int) -> int:
    return proc_sample(pid, 0).rss_kib


def test_flood_of_10000_newlines(start: Start, tmp_path: Path) -> None:
    """10,000 newlines, one write each: polls collapse, memory stays flat, stdin stays drained."""
    root = fixture_root("firecracker-6.18-virtio-balloon", tmp_path / "g")
    node = inflated_node(tmp_path / "node.xml", 50)
    sections = [guest_section(root), libvirt_section(node)]
    child = start(["--config", str(config(tmp_path / "c.toml", sections))])
    child.wait_ready()
    poll(child, 1, lines=54)
    before = rss_kib(child.proc.pid)
    threads = proc_sample(child.proc.pid, 0).threads
    sent = time.monotonic()
    for _ in range(10_000):
        assert child.write(b"\n", deadline=1.0), "a newline missed Telegraf's 1 s deadline"
    writing = time.monotonic() - sent
    batches = child.settle(1.5)
    after = rss_kib(child.proc.pid)
    print(
        f"10,000 newlines in {writing:.2f}s -> {len(batches) - 1} polls; "
        f"RSS {before} -> {after} KiB"
    )
    assert 1 <= len(batches) - 1 <= 2_000, f"{len(batches) - 1} polls for 10,000 newlines"
    assert after - before < 2048, f"RSS grew {after - before} KiB under the flood"
    assert proc_sample(child.proc.pid, 0).threads == threads
    for batch in batches:
        assert len(batch.of(catalog.COLLECTOR)) == 2  # no batch cut short
    last = poll(child, len(batches) + 1, lines=54)
    assert all(m.fields["up"] is True for m in last.of(catalog.COLLECTOR))


def test_sigterm_at_points_of_a_poll(start: Start, tmp_path: Path) -> None:
    """SIGTERM at points through a poll of 300 domains: exit 0 within 1 s, never a partial
    line, never a batch cut short (a poll stopped midway writes nothing)."""
    node = inflated_node(tmp_path / "node.xml", 300)
    cfg = config(tmp_path / "c.toml", [libvirt_section(node)], timeout="5s")
    mid_poll = 0
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04):
        child = start(["--config", str(cfg)])
        child.wait_ready()
        poll(child, 1, lines=302)  # warm: the next poll's timing is a real poll's
        assert child.tick()
        time.sleep(delay)
        code, seconds = child.stop_with(signal.SIGTERM)
        batches = child.batches()
        mid_poll += len(batches) == 1
        print(f"SIGTERM {delay * 1e3:.0f} ms into a poll -> exit {code} after {seconds:.3f}s, "
              f"{'poll abandoned' if len(batches) == 1 else 'poll written'}")  # fmt: skip
        assert code == 0 and seconds < EXIT_WITHIN
        child.assert_clean()  # an unterminated or unparsable line is a problem
        for batch in batches:
            assert len(batch.metrics) == 302, "a batch was cut short"
        assert not any("Traceback" in line for line in child.stderr_lines())
    assert mid_poll >= 1, "no SIGTERM landed inside a poll"


def test_stdout_closed_mid_batch(start: Start, tmp_path: Path) -> None:
    """The reader stalls mid-batch (the pipe full, the plugin's write waiting), then goes away."""
    node = inflated_node(tmp_path / "node.xml", 1000)
    cfg = config(tmp_path / "c.toml", [libvirt_section(node)], timeout="5s")
    child = start(["--config", str(cfg)])
    child.wait_ready()
    batch = poll(child, 1, lines=1002)
    size = sum(len(m.text) + 1 for m in batch.metrics)
    assert size > 4 * 65536, size
    child.pause_stdout()
    assert child.tick()
    deadline = time.monotonic() + 10
    while child.stdout_queued() < 65536:  # a full pipe: the rest of the batch is waiting
        assert time.monotonic() < deadline, f"only {child.stdout_queued()} bytes queued"
        time.sleep(0.02)
    time.sleep(0.1)
    assert child.proc.poll() is None and child.stdout_queued() < size
    child.close_stdout()
    code = child.wait_exit(5.0)
    stderr = "\n".join(child.stderr_lines())
    print(f"stdout closed with {size} bytes of batch pending -> exit {code}")
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_sigkill_then_restart_raises_no_for_level(start: Start, tmp_path: Path) -> None:
    """After SIGKILL and a restart, the first polls raise no level whose rule needs `for`."""
    node = inflated_node(tmp_path / "node.xml", 3)
    rules = (
        '\n[[thresholds]]\nfield = "balloon_ratio"\nwarn = 0.2\ncrit = 0.4\nfor = "10m"\n'
        '\n[[thresholds]]\nfield = "balloon_actual_bytes"\nwarn = 1\n'  # no for: at once
        '\n[[thresholds]]\nfield = "stats_age_seconds"\nwarn = 60\nfor = "5m"\n'
    )
    cfg = config(tmp_path / "c.toml", [libvirt_section(node)], timeout="5s", extra=rules)
    for run in range(2):
        child = start(["--config", str(cfg)])
        child.wait_ready()
        for i in range(1, 4):
            batch = poll(child, i, lines=5)
            vms = batch.of(catalog.BALLOON)
            assert len(vms) == 3
            for vm in vms:
                assert vm.fields["balloon_ratio"] == 0.5  # past crit: only `for` holds it
                assert vm.fields["balloon_ratio_level"] == 0, vm.text
                assert vm.fields["balloon_actual_bytes_level"] == 1, vm.text  # control
                assert vm.fields.get("stats_age_seconds_level", 0) == 0, vm.text
                assert vm.fields["alert_level"] == 1, vm.text
                assert vm.fields.get("stuck") is not True
            time.sleep(0.2)
        if run == 0:
            child.proc.kill()
            assert child.wait_exit(5.0) == -signal.SIGKILL
    json.dumps([m.text for m in child.metrics])  # the transcript stays printable
