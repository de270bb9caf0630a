"""The logs source keeps a bounded number of files open, on real files in a temp dir.

A glob like /var/log/libvirt/qemu/*.log matches one log per domain the host ever ran. Only
`open_bound()` of them stay open (the least recently grown are closed); the others are
opened again, by inode and offset, when they grow or are rotated. Nothing is lost that an
open descriptor would have kept, and the rest of the process keeps its descriptors.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources.logs.files import OPEN_FILES, READ_LIMIT, open_bound
from telegraf_balloon.sources.logs.source import LogsSource
from tests.stack.execd import run_cli
from tests.test_logs_source import Counts, _counts

PUFF = "virtio_balloon virtio0: Out of puff! Can't get 256 pages\n"


def _source(folder: Path, open_files: Optional[int] = None) -> tuple[LogsSource, io.StringIO]:
    config = load_text(f'[[sources.logs]]\nfiles = ["{folder}/*.log"]\n', "test.toml")
    stream = io.StringIO()
    if open_files is None:
        return LogsSource(config.logs[0], "h", Log(stream)), stream
    return LogsSource(config.logs[0], "h", Log(stream), open_files=open_files), stream


def _held(folder: Path) -> dict[str, int]:
    """The files under `folder` this process has open for reading: name -> descriptor."""
    held: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = int(info.read().split("flags:")[1].split()[0], 8)
        except OSError:
            continue  # the listing's own descriptor, closed already
        if target.startswith(f"{folder}/") and flags & os.O_ACCMODE == os.O_RDONLY:
            held[target[len(str(folder)) + 1 :]] = int(fd)
    return held


def _append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def _warnings(stream: io.StringIO) -> list[str]:
    return [x for x in stream.getvalue().splitlines() if x.startswith("W! ")]


@contextmanager
def soft_nofile(limit: int) -> Iterator[None]:
    """RLIMIT_NOFILE's soft limit lowered for the block, restored whatever happens."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _another_source_opens_a_socket_and_a_file(folder: Path) -> None:
    """What a libvirt, QMP or vSphere source does next in the same process."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.close()
    with open(folder / "other-source.state", "w") as other:
        other.write("ok")


def test_1100_logs_with_the_usual_1024_descriptors(tmp_path: Path) -> None:
    """More matched logs than the process may open: every event counted, poll after poll,
    and the process can still open a socket and a file (what the other sources need).

    The limit is lowered while the source polls (as the plugin's own); the test writes to
    the logs between polls with the limit it found, as the programs writing them would.
    """
    names = [f"vm{n:04d}.log" for n in range(1100)]
    for name in names:
        (tmp_path / name).write_text("2024-05-01 qemu started\n")
    source, stream = _source(tmp_path)
    try:
        with soft_nofile(1024):
            assert _counts(source) == {}  # start: what is there is history
            _another_source_opens_a_socket_and_a_file(tmp_path)
        for name in names:  # every file grows: the worst case
            _append(tmp_path / name, PUFF)
        with soft_nofile(1024):
            counts = _counts(source)
            _another_source_opens_a_socket_and_a_file(tmp_path)
        assert counts == {(n, "virtio_out_of_puff"): (1, 1) for n in names}
        grown = names[::50] + names[-30:]  # the last ones are far beyond the bound
        for name in grown:
            _append(tmp_path / name, PUFF + PUFF)
        with soft_nofile(1024):
            counts = _counts(source)
            _another_source_opens_a_socket_and_a_file(tmp_path)
            bound = open_bound()
        assert counts == {(n, "virtio_out_of_puff"): (2, 3) for n in grown}
        assert _warnings(stream) == []
        assert len(_held(tmp_path)) <= bound == OPEN_FILES
    finally:
        source.close()
    assert _held(tmp_path) == {}


def test_the_least_recently_grown_are_closed_a_busy_file_stays_open(tmp_path: Path) -> None:
    names = ["a.log", "b.log", "c.log", "d.log", "busy.log"]
    for name in names:
        (tmp_path / name).write_text("")
    source, stream = _source(tmp_path, open_files=2)
    _counts(source)
    assert len(_held(tmp_path)) <= 2
    _append(tmp_path / "busy.log", PUFF)
    assert _counts(source) == {("busy.log", "virtio_out_of_puff"): (1, 1)}
    fd = _held(tmp_path)["busy.log"]
    for round, name in enumerate(["a.log", "b.log", "c.log", "d.log"] * 2):
        _append(tmp_path / name, PUFF)
        _append(tmp_path / "busy.log", PUFF)
        assert _counts(source) == {
            (name, "virtio_out_of_puff"): (1, 1 + round // 4),
            ("busy.log", "virtio_out_of_puff"): (1, round + 2),
        }
        held = _held(tmp_path)
        assert len(held) <= 2 and held["busy.log"] == fd  # never closed and reopened
    assert _warnings(stream) == []
    source.close()


def _closed(tmp_path: Path, name: str, *others: str) -> tuple[LogsSource, io.StringIO]:
    """A source holding one file open, with `name` followed but closed."""
    for each in (name, *others, "keeper.log"):
        (tmp_path / each).write_text("")
    source, stream = _source(tmp_path, open_files=1)
    _counts(source)
    _append(tmp_path / "keeper.log", "growing\n")
    _counts(source)
    assert set(_held(tmp_path)) == {"keeper.log"}
    return source, stream


def test_closed_file_rotated_by_rename_is_read_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    source, stream = _closed(tmp_path, "a.log")
    _append(log, PUFF)  # written while closed, then rotated (virtlogd, logrotate `create`)
    log.rename(tmp_path / "a.log.1")
    log.write_text(PUFF + "vmmemctl: G_FREEZE\n")
    assert _counts(source) == {
        ("a.log", "virtio_out_of_puff"): (2, 2),  # the old file's end and the new file
        ("a.log", "vmmemctl_freeze"): (1, 1),
    }
    _append(log, PUFF)
    assert _counts(source) == {("a.log", "virtio_out_of_puff"): (1, 3)}
    assert stream.getvalue() == ""
    source.close()


def test_closed_file_renamed_away_is_followed_until_a_new_one_appears(tmp_path: Path) -> None:
    """logrotate with `nocreate`: the writer goes on in the renamed file until it reopens."""
    log, rotated = tmp_path / "a.log", tmp_path / "a.log.1"
    source, stream = _closed(tmp_path, "a.log")
    _append(log, "vmmemctl: PIN_FAILED\n")
    log.rename(rotated)
    assert _counts(source) == {("a.log", "vmmemctl_pin_failed"): (1, 1)}
    _append(tmp_path / "keeper.log", "growing\n")  # a.log's file closed again ...
    _counts(source)
    _append(rotated, "vmmemctl: PIN_FAILED\nvmmemctl: G_FREEZE")  # ... and written to
    assert _counts(source) == {("a.log", "vmmemctl_pin_failed"): (1, 2)}
    _append(rotated, " (end)\n")
    log.write_text("vmmemctl: PIN_FAILED\n")  # the writer reopened
    assert _counts(source) == {
        ("a.log", "vmmemctl_freeze"): (1, 1),
        ("a.log", "vmmemctl_pin_failed"): (1, 3),
    }
    assert stream.getvalue() == ""
    source.close()


def _copytruncate(log: Path, then: str) -> None:
    shutil.copyfile(log, log.with_name(log.name + ".1"))  # logrotate copytruncate,
    with log.open("r+") as handle:  # delaycompress: the copy stays uncompressed a cycle
        handle.truncate(0)
    _append(log, then)


def test_copytruncate_closed_or_open_counts_what_went_into_the_copy(tmp_path: Path) -> None:
    """What was written between the last poll and the copy is read from the copy."""
    for open_files in (1, OPEN_FILES):
        folder = tmp_path / f"open{open_files}"
        folder.mkdir()
        log = folder / "a.log"
        source, _ = _closed(folder, "a.log") if open_files == 1 else _source(folder)
        log.write_text("2024-05-01 qemu started\n")
        _counts(source)
        if open_files == 1:
            _append(folder / "keeper.log", "growing\n")
            _counts(source)
        assert ("a.log" in _held(folder)) == (open_files > 1)
        _append(log, PUFF + "vmmemctl: G_FREEZE")  # the copy ends in an unfinished line
        _copytruncate(log, PUFF)
        assert _counts(source) == {
            ("a.log", "virtio_out_of_puff"): (2, 2),
            ("a.log", "vmmemctl_freeze"): (1, 1),  # the line the copy cut ends there
        }, open_files
        _append(log, PUFF)
        assert _counts(source) == {("a.log", "virtio_out_of_puff"): (1, 3)}
        source.close()


def test_copytruncate_without_the_copy_reads_from_the_start(tmp_path: Path) -> None:
    """The copy compressed at once (no delaycompress): the truncated file from its start."""
    log = tmp_path / "a.log"
    source, _ = _closed(tmp_path, "a.log")
    _append(log, "x\n")
    _counts(source)
    _append(log, "not counted: Out of puff!\n")
    with log.open("r+") as handle:
        handle.truncate(0)
    _append(log, PUFF)
    assert _counts(source) == {("a.log", "virtio_out_of_puff"): (1, 1)}
    source.close()


def test_closed_file_whose_old_file_is_gone(tmp_path: Path) -> None:
    """What an open descriptor would have kept and a closed file cannot: a file rotated and
    compressed, or deleted, between two polls. The new file at the path counts from its
    start and an I! line says what may be lost."""
    log = tmp_path / "a.log"
    source, stream = _closed(tmp_path, "a.log", "b.log")
    _append(log, "lost: Out of puff!\n")
    log.rename(tmp_path / "a.log.1")
    log.write_text(PUFF)
    (tmp_path / "a.log.1").unlink()  # compressed: a.log.1.gz is another file
    assert _counts(source) == {("a.log", "virtio_out_of_puff"): (1, 1)}
    assert "a.log was replaced while not held open" in stream.getvalue()
    _append(tmp_path / "b.log", "lost: Out of puff!\n")
    (tmp_path / "b.log").unlink()
    assert _counts(source) == {}  # deleted: forgotten
    (tmp_path / "b.log").write_text(PUFF)
    assert _counts(source) == {("b.log", "virtio_out_of_puff"): (1, 1)}
    assert _warnings(stream) == []
    source.close()


def test_deleted_file_not_read_to_its_end_stays_open_and_the_wait_is_said(
    tmp_path: Path,
) -> None:
    """At the bound, the only held file is deleted and not read to its end (closing it would
    lose that end): a changed file waits for it, and a W! line says so once."""
    big, other = tmp_path / "big.log", tmp_path / "other.log"
    source, stream = _closed(tmp_path, "big.log", "other.log")
    (tmp_path / "keeper.log").unlink()
    _append(big, "x\n")
    _counts(source)  # big.log now the one held
    assert set(_held(tmp_path)) == {"big.log"}
    with big.open("a") as handle:  # 2 polls' worth (a hole), then an event
        handle.truncate(handle.tell() + 2 * READ_LIMIT)
        handle.seek(0, os.SEEK_END)
        handle.write("\n" + PUFF)
    _counts(source)  # the first READ_LIMIT bytes
    big.unlink()
    _append(other, PUFF)
    seen: Counts = {}
    for _ in range(4):
        counts = _counts(source)
        seen.update(counts)
        assert len(_held(tmp_path)) <= 1
    assert seen == {
        ("big.log", "virtio_out_of_puff"): (1, 1),
        ("other.log", "virtio_out_of_puff"): (1, 1),
    }
    waits = [x for x in _warnings(stream) if "wait" in x]
    assert len(waits) == 1 and "deleted files not read to their end" in waits[0], waits
    assert "no changed file waits for a descriptor any more" in stream.getvalue()
    assert "big.log" not in _held(tmp_path)  # read to its end, closed, forgotten
    source.close()


def test_out_of_descriptors_the_source_gives_its_own_back(tmp_path: Path) -> None:
    """Another source took every descriptor left (a real EMFILE, the descriptors held by
    this test): the logs source reads on by reusing its own, or waits and says so once."""
    names = [f"vm{n}.log" for n in range(20)]
    writers = [(tmp_path / name).open("a") for name in names]  # opened while it can be
    hog: list[int] = []
    with soft_nofile(len(os.listdir("/proc/self/fd")) + 48):
        source, stream = _source(tmp_path)
        try:
            _counts(source)
            assert 0 < len(_held(tmp_path)) <= open_bound() < 20
            while True:  # the other source
                try:
                    hog.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            for writer in writers:
                writer.write(PUFF)
                writer.flush()
            assert _counts(source) == {(n, "virtio_out_of_puff"): (1, 1) for n in names}
            assert _warnings(stream) == []  # nothing waited
            # A source started with no descriptor left cannot even list its globs: it says
            # so once, and starts (what the files hold is history) when it can.
            late, late_stream = _source(tmp_path)
            assert _counts(late) == {} and _counts(late) == {}
            waits = [x for x in _warnings(late_stream) if "no file descriptor left" in x]
            assert len(waits) == 1 and "the globs (new files) wait" in waits[0], waits
            for fd in hog:
                os.close(fd)
            hog.clear()
            assert _counts(late) == {}
            assert "no changed file waits" in late_stream.getvalue()
            for writer in writers:
                writer.write(PUFF)
                writer.flush()
            assert _counts(late) == {(n, "virtio_out_of_puff"): (1, 1) for n in names}
            late.close()
        finally:
            for fd in hog:
                os.close(fd)
            for writer in writers:
                writer.close()
            source.close()


def test_bad_pattern_is_a_usage_error_naming_its_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[[sources.logs]]\nfiles = ["{tmp_path}/*.log"]\n'
        '[sources.logs.patterns]\nfine = "^ok$"\nrefused = "balloon (refused"\n'
    )
    done = run_cli("--check-config", "--config", str(config))
    assert done.returncode == 2, done
    assert "sources.logs[0].patterns.refused" in done.stderr
    assert "bad regular expression" in done.stderr
