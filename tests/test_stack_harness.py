"""The test harness's own parts that need no real component: its toolkit (tests/stack/common.py),
the guest console parser, the test driver's domain specs, and the integration-marker rule."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.stack.common import (
    REPO,
    StackError,
    child_env,
    free_port,
    memtotal,
    pid_alive,
    stop_process,
    tail,
    wait_for,
)
from tests.stack.guest_image import parse_console
from tests.stack.node_xml import DomainSpec


def test_parse_console_takes_last_complete_block() -> None:
    text = (
        "GUEST: BALLOON-READY\r\n"
        "=== SNAPSHOT 1 ===\r\n--- uptime 1.0\r\n--- /proc/meminfo\r\nMemTotal:  100 kB\r\n"
        "HugePages_Total:       0\r\n--- /proc/vmstat\r\nnr_free_pages 7\r\n"
        "balloon_inflate 1\r\n=== END 1 ===\r\n"
        "=== SNAPSHOT 2 ===\r\n--- /proc/meminfo\r\nMemTotal:  90 kB\r\n--- /proc/vmstat\r\n"
        "nr_free_pages 5\r\nballoon_inflate 3\r\n=== END 2 ===\r\n"
        "=== SNAPSHOT 3 ===\r\n--- /proc/meminfo\r\nMemTotal:  80 kB\r\n"  # cut off
    )
    got = parse_console(text)
    assert got == (2, {"MemTotal": 90, "nr_free_pages": 5, "balloon_inflate": 3})
    first = parse_console(text.split("=== SNAPSHOT 2")[0])
    assert first is not None and first[1]["HugePages_Total"] == 0
    assert parse_console("=== SNAPSHOT 1 ===\nMemTotal: 1 kB\n") is None


def test_domain_spec_rejects_what_libvirt_refuses() -> None:
    for bad in ("a/b", "line\nbreak", "", "bell\x07"):
        with pytest.raises(ValueError):
            DomainSpec(name=bad)
    with pytest.raises(ValueError):
        DomainSpec(name="x", memory_kib=1024, current_kib=2048)


# --- the toolkit ------------------------------------------------------------------------------


def test_tail_keeps_the_last_lines_without_noise(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_bytes(b"".join(b"line %d\r\n" % i for i in range(100)) + b"noise\n")
    assert tail(log, 3, noise=re.compile("noise")) == "line 97\nline 98\nline 99"
    assert tail(log, 5, max_bytes=15) == "line 99\nnoise"  # only the file's last bytes read
    assert tail(None) == "(no file)"
    assert tail(tmp_path / "missing.log").endswith("No such file or directory)")
    (tmp_path / "empty.log").write_bytes(b"")
    assert tail(tmp_path / "empty.log") == "(empty)"


def test_wait_for_returns_the_first_truthy_result() -> None:
    answers = iter([None, 0, "", "up", "later"])
    assert wait_for(lambda: next(answers), 5, "the daemon", interval=0.01) == "up"


def test_wait_for_fails_with_what_it_waited_for_and_the_last_answer() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the socket \(last: False\)"):
        wait_for(lambda: False, 0.05, "the socket", interval=0.01)
    with pytest.raises(StackError, match=r"timed out after 0\.05s"):
        wait_for(lambda: None, 0.05, "the socket", interval=0.01, fail=StackError)


def test_wait_for_lets_an_error_of_the_check_through_at_once() -> None:
    def exited() -> bool:
        raise StackError("the daemon exited with status 1")

    started = time.monotonic()
    with pytest.raises(StackError, match="exited"):
        wait_for(exited, 30, "the daemon")
    assert time.monotonic() - started < 5


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_pid_alive_is_false_for_a_zombie_and_a_gone_process() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid):  # exited but not reaped: a zombie
        assert time.monotonic() < deadline, "the child never ended"
        time.sleep(0.01)
    child.wait()
    assert not pid_alive(child.pid)


def test_stop_process_escalates_to_sigkill() -> None:
    ignores_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + (
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", ignores_term], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    stop_process(child, timeout=0.2)
    assert child.returncode == -signal.SIGKILL
    stop_process(child, timeout=0.2)  # gone already: nothing to do, no error


def test_memtotal_is_this_machines_memory() -> None:
    assert memtotal() > 64 * 1024 * 1024
    assert memtotal() % 1024 == 0


def test_child_env_puts_the_repository_first_and_unbuffered_output_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = child_env({"EXTRA": "x"})
    assert "PYTHONUNBUFFERED" not in env
    assert env["PYTHONPATH"] == f"{REPO}{os.pathsep}/elsewhere"
    assert env["EXTRA"] == "x"


# --- every integration test carries the marker ------------------------------------------------

_CONFTEST = """
from pathlib import Path

from tests.conftest import check_integration_markers


def pytest_collection_modifyitems(config, items):
    check_integration_markers(items, Path(__file__).resolve().parent / "integration")
"""


def _collect(tmp_path: Path, module: str) -> subprocess.CompletedProcess[str]:
    """pytest run on a small tree: a unit test, and `module` as integration/test_real.py."""
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = integration: real component\n")
    (tmp_path / "test_unit.py").write_text("def test_unit():\n    pass\n")
    (tmp_path / "integration").mkdir()
    (tmp_path / "integration" / "test_real.py").write_text(textwrap.dedent(module))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not integration"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unmarked_integration_test_stops_the_run(tmp_path: Path) -> None:
    done = _collect(tmp_path, "def test_starts_a_daemon():\n    pass\n")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "integration/test_real.py::test_starts_a_daemon" in done.stderr
    assert "1 passed" not in done.stdout  # not even the unit test ran


def test_a_marked_integration_module_is_deselected(tmp_path: Path) -> None:
    module = """
    import pytest

    pytestmark = pytest.mark.integration


    def test_starts_a_daemon():
        raise AssertionError("must not run under -m 'not integration'")
    """
    done = _collect(tmp_path, module)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 deselected" in done.stdout
