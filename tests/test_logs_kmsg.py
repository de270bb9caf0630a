"""The logs source on the kernel log (`kmsg = true`): guest kernel events with no syslog file.

The main cases run on the real /dev/kmsg where the test may write to it (root: a record
written there comes back as a kernel log record). Where it may not, they run on a FIFO
stand-in fed records in /dev/kmsg's format ("prio,seq,ts_usec,flags;message\\n", one per
write): marked `stand-in` in the test ids. Ring buffer overruns are shown with the stand-in
only: producing one on the real device means overwriting this machine's whole kernel log.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources.logs.kmsg import KMSG_PATH, KMSG_TAG
from telegraf_balloon.sources.logs.source import LogsSource
from tests.test_logs_source import Counts
from tests.test_logs_source import _counts as file_counts


class StandIn:
    """A FIFO that speaks /dev/kmsg's record format (its writer numbers the records)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = str(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)  # never blocks, never EOF
        self.seq = 1000

    def record(self, message: str, skip: int = 0, extra: str = "") -> None:
        self.seq += 1 + skip
        os.write(self.fd, f"6,{self.seq},{self.seq * 1000},-;{message}\n{extra}".encode())

    def close(self) -> None:
        os.close(self.fd)


def real_kmsg_writable() -> bool:
    """Root may write records into the kernel log; check it is so here (containers differ)."""
    if not os.access(KMSG_PATH, os.R_OK | os.W_OK):
        return False
    token = f"telegraf-balloon-test-probe-{uuid.uuid4()}"
    try:
        reader = os.open(KMSG_PATH, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.lseek(reader, 0, os.SEEK_END)
        _write_kmsg(token)
        while True:
            try:
                if token.encode() in os.read(reader, 16384):
                    return True
            except BlockingIOError:
                return False
    except OSError:
        return False
    finally:
        os.close(reader)


def _write_kmsg(message: str) -> None:
    # A fresh open per record: /dev/kmsg rate-limits each writer to 10 records per 5 s.
    fd = os.open(KMSG_PATH, os.O_WRONLY)
    try:
        os.write(fd, f"<14>{message}\n".encode())  # user facility, info: not on the console
    finally:
        os.close(fd)


@pytest.fixture(params=["device", "stand-in"])
def kernel_log(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[str], None], bool]]:
    """(path, write one record, real): the real /dev/kmsg, or the FIFO stand-in.

    `device`: the real /dev/kmsg where the test can write to it, else the stand-in again
    (non-root); `stand-in`: always the FIFO, so its format handling runs on every machine.
    """
    if request.param == "device" and real_kmsg_writable():
        yield KMSG_PATH, _write_kmsg, True
        return
    fifo = StandIn(tmp_path / "kmsg")
    yield fifo.path, fifo.record, False
    fifo.close()


def _source(path: str, files: str = "[]", log: Log | None = None, extra: str = "") -> LogsSource:
    config = load_text(f"[[sources.logs]]\nfiles = {files}\nkmsg = true\n{extra}", "k.toml")
    return LogsSource(config.logs[0], "guest-1", log or Log(io.StringIO()), kmsg_path=path)


def _counts(source: LogsSource) -> Counts:
    """By the whole `file` tag: kmsg, or a log file's path."""
    return file_counts(source, str)


def test_guest_kernel_events_from_the_kernel_log(
    kernel_log: tuple[str, Callable[[str], None], bool],
) -> None:
    path, write, real = kernel_log
    source = _source(path)
    if real:  # a FIFO has no past to skip
        write("before start: vmmemctl: G_FREEZE")  # history when the plugin starts: not counted
    try:
        assert _counts(source) == {}
        write("vmw_balloon: vmmemctl: G_FREEZE")
        write("vmw_balloon: vmmemctl: PIN_FAILED")
        write("virtio_balloon virtio0: Out of puff! Can't get 256 pages")
        assert _counts(source) == {
            (KMSG_TAG, "vmmemctl_freeze"): (1, 1),
            (KMSG_TAG, "vmmemctl_pin_failed"): (1, 1),
            (KMSG_TAG, "virtio_out_of_puff"): (1, 1),
        }
        assert _counts(source) == {}  # nothing new: no line, and the poll did not block
        write("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=java,pid=4242,uid=0")
        write("Out of memory: Killed process 4242 (java) total-vm:9000000kB, anon-rss:1kB")
        write("virtio_balloon virtio0: Out of puff! Can't get 1 pages")
        assert _counts(source) == {
            (KMSG_TAG, "oom_kill"): (1, 1),  # one kill, two lines: counted once
            (KMSG_TAG, "virtio_out_of_puff"): (1, 2),
        }
    finally:
        source.close()


def test_a_kernel_log_record_is_a_line_for_events(
    kernel_log: tuple[str, Callable[[str], None], bool],
) -> None:
    """One record is one line: an event counts the records it matches, `^`/`$` are the
    message's start and end, and no match joins two records."""
    path, write, _ = kernel_log
    tag = uuid.uuid4().hex[:8]  # the real kernel log holds other records too
    extra = (
        "[sources.logs.patterns]\n"
        f'refused = "^balloon {tag}: refused$"\n'
        f'joined = "refused\\\\s+balloon {tag}"\n'
    )
    source = _source(path, extra=extra)
    try:
        _counts(source)
        for _ in range(3):
            write(f"balloon {tag}: refused")
        write(f"balloon {tag}: refused, balloon {tag}: refused")  # two matches in a record
        write("virtio_balloon virtio0: Out of puff! Out of puff!")
        assert _counts(source) == {
            (KMSG_TAG, "refused"): (3, 3),
            (KMSG_TAG, "virtio_out_of_puff"): (1, 1),
        }
    finally:
        source.close()


def test_kmsg_with_files_and_instance(
    kernel_log: tuple[str, Callable[[str], None], bool], tmp_path: Path
) -> None:
    path, write, _ = kernel_log
    log_file = tmp_path / "messages"
    log_file.write_text("")
    source = _source(path, files=f'["{log_file}"]')
    try:
        assert source.instance == f"{log_file},kmsg"
        _counts(source)
        write("vmw_balloon: vmmemctl: G_FREEZE")
        with log_file.open("a") as handle:
            handle.write("vmmemctl: G_FREEZE\n")
        assert _counts(source) == {
            (KMSG_TAG, "vmmemctl_freeze"): (1, 1),
            (str(log_file), "vmmemctl_freeze"): (1, 1),
        }
    finally:
        source.close()


# --- stand-in only: what the real device shows only after overwriting the kernel log ---------


def test_stand_in_records_lost_are_counted_and_said(tmp_path: Path) -> None:
    fifo = StandIn(tmp_path / "kmsg")
    stream = io.StringIO()
    source = _source(fifo.path, log=Log(stream))
    try:
        _counts(source)
        fifo.record("Out of puff! 1")
        assert _counts(source) == {(KMSG_TAG, "virtio_out_of_puff"): (1, 1)}
        fifo.record("Out of puff! 2", skip=37)  # the kernel overwrote 37 records in between
        fifo.record("Out of puff! 3")
        assert _counts(source) == {(KMSG_TAG, "virtio_out_of_puff"): (2, 3)}
        fifo.record("Out of puff! 4", skip=5)
        _counts(source)
        warnings = [x for x in stream.getvalue().splitlines() if x.startswith("W! ")]
        # said when losses start, not again while every poll loses some
        assert len(warnings) == 1 and "37 kernel log records" in warnings[0], warnings
        assert "(37 since start)" in warnings[0]
        fifo.record("Out of puff! 5")
        _counts(source)  # a poll without loss: the fault is over
        fifo.record("Out of puff! 6", skip=2)
        _counts(source)
        warnings = [x for x in stream.getvalue().splitlines() if x.startswith("W! ")]
        assert len(warnings) == 2 and "(44 since start)" in warnings[1], warnings
    finally:
        source.close()
        fifo.close()


def test_stand_in_overrun_epipe_carries_on(tmp_path: Path) -> None:
    """EPIPE from read(): the records after our position were overwritten. A fake read
    raises it (the one fault a FIFO cannot produce); the source carries on from the oldest
    record left, whose sequence number says how many were lost."""
    fifo = StandIn(tmp_path / "kmsg")
    armed: list[OSError] = []

    def read(fd: int, size: int) -> bytes:
        if armed:
            raise armed.pop()
        return os.read(fd, size)

    stream = io.StringIO()
    config = load_text("[[sources.logs]]\nkmsg = true\n", "k.toml")
    source = LogsSource(config.logs[0], "g", Log(stream), kmsg_path=fifo.path, kmsg_read=read)
    try:
        _counts(source)
        fifo.record("vmw_balloon: vmmemctl: PIN_FAILED")
        assert _counts(source) == {(KMSG_TAG, "vmmemctl_pin_failed"): (1, 1)}
        armed.append(BrokenPipeError(32, "Broken pipe"))
        fifo.record("vmw_balloon: vmmemctl: PIN_FAILED", skip=100)  # the oldest record left
        assert _counts(source) == {(KMSG_TAG, "vmmemctl_pin_failed"): (1, 2)}
        assert not armed
        warnings = [x for x in stream.getvalue().splitlines() if x.startswith("W! ")]
        assert len(warnings) == 1 and "100 kernel log records" in warnings[0], warnings
    finally:
        source.close()
        fifo.close()


def test_stand_in_dictionary_lines_and_malformed_records(tmp_path: Path) -> None:
    fifo = StandIn(tmp_path / "kmsg")
    source = _source(fifo.path)
    try:
        _counts(source)
        fifo.record("Out of puff! a", extra=" SUBSYSTEM=virtio\n DEVICE=+virtio:virtio0\n")
        os.write(fifo.fd, b"no header here: Out of puff!\n6,x,1,-;Out of puff!\n")
        fifo.record("Out of puff! b")
        assert _counts(source) == {(KMSG_TAG, "virtio_out_of_puff"): (2, 2)}
    finally:
        source.close()
        fifo.close()


def test_no_kernel_log_is_a_warning_once_and_files_go_on(tmp_path: Path) -> None:
    log_file = tmp_path / "messages"
    log_file.write_text("")
    stream = io.StringIO()
    source = _source(str(tmp_path / "no-kmsg"), files=f'["{log_file}"]', log=Log(stream))
    _counts(source)
    with log_file.open("a") as handle:
        handle.write("Out of puff!\n")
    assert _counts(source) == {(str(log_file), "virtio_out_of_puff"): (1, 1)}
    warnings = [x for x in stream.getvalue().splitlines() if x.startswith("W! ")]
    assert len(warnings) == 1 and "cannot read" in warnings[0] and "no-kmsg" in warnings[0]
    source.close()
