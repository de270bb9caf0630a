"""The logs source on real files: new lines only, rotation, truncation, custom events."""

from __future__ import annotations

import io
import os
import re
import resource
from pathlib import Path
from typing import Callable

from telegraf_balloon import catalog
from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources.logs.events import matching_lines
from telegraf_balloon.sources.logs.files import POLL_BUDGET, READ_LIMIT
from telegraf_balloon.sources.logs.lines import MAX_LINE, Lines
from telegraf_balloon.sources.logs.source import LogsSource

Counts = dict[tuple[str, str], tuple[int, int]]

# What a kernel >= 4.19 logs for one OOM kill: both lines, which must count once.
OOM = (
    "[ 812.1] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=java,pid=4242,uid=0\n"
    "[ 812.1] Out of memory: Killed process 4242 (java) total-vm:9000000kB\n"
)


def _source(tmp_path: Path, extra: str = "") -> tuple[LogsSource, io.StringIO]:
    config = load_text(f'[[sources.logs]]\nfiles = ["{tmp_path}/*.log"]\n{extra}', "test.toml")
    stream = io.StringIO()
    return LogsSource(config.logs[0], "h", Log(stream)), stream


def _counts(source: LogsSource, name: Callable[[str], str] = os.path.basename) -> Counts:
    """One poll's lines, each held to the catalog: (name(file tag), event) -> (count, total)."""
    out: Counts = {}
    for measurement, tags, fields in source.poll(0.0).points:
        assert measurement == catalog.LOG
        assert catalog.check_point(measurement, tags, dict(fields)) == []
        count, total = fields["count"], fields["count_total"]
        assert isinstance(count, int) and isinstance(total, int)
        out[(name(tags["file"]), tags["event"])] = (count, total)
    return out


def _following(
    tmp_path: Path, name: str, text: str = "", extra: str = ""
) -> tuple[Path, LogsSource, io.StringIO]:
    """The log `name` holding `text`, and a source that has polled once (what was there is
    history from then on)."""
    log = tmp_path / name
    log.write_text(text)
    source, stream = _source(tmp_path, extra)
    _counts(source)
    return log, source, stream


def _append(log: Path, text: str) -> None:
    with log.open("a") as handle:
        handle.write(text)


def test_only_new_lines_count_and_totals_accumulate(tmp_path: Path) -> None:
    log = tmp_path / "hostd.log"
    log.write_text("old: Failed to extend balloon\n")
    source, _ = _source(tmp_path)
    assert _counts(source) == {}  # what was there before the plugin started is history
    _append(log, "x Failed to extend balloon y\nInsufficient host resources to pin memory\n")
    assert _counts(source) == {
        ("hostd.log", "balloon_extend_failed"): (1, 1),
        ("hostd.log", "host_pin_failed"): (1, 1),
    }
    assert _counts(source) == {}  # nothing new: no line
    _append(log, "Failed to extend balloon\n" + OOM)
    assert _counts(source) == {
        ("hostd.log", "balloon_extend_failed"): (1, 2),
        ("hostd.log", "oom_kill"): (1, 1),
    }


def test_partial_lines_wait_for_their_end(tmp_path: Path) -> None:
    log, source, _ = _following(tmp_path, "messages.log")
    _append(log, "kernel: virtio_balloon virtio0: Out of puff! Can't get 256 pa")
    assert _counts(source) == {}
    _append(log, "ges\nvmmemctl: G_FREEZE\nvmmemctl: PIN_FAILED\n")
    assert _counts(source) == {
        ("messages.log", "virtio_out_of_puff"): (1, 1),
        ("messages.log", "vmmemctl_freeze"): (1, 1),
        ("messages.log", "vmmemctl_pin_failed"): (1, 1),
    }


def test_rotation_truncation_and_new_files(tmp_path: Path) -> None:
    log, source, _ = _following(
        tmp_path, "a.log", "start\n", '[sources.logs.patterns]\nrefused = "balloon .* refused"\n'
    )
    log.rename(tmp_path / "a.log.1")  # rotated: a new file under the old name
    log.write_text("balloon 7 refused\n")
    assert _counts(source) == {("a.log", "refused"): (1, 1)}
    log.write_text("")  # truncated (copytruncate)
    _append(log, "balloon 8 refused\n")
    assert _counts(source) == {("a.log", "refused"): (1, 2)}
    (tmp_path / "b.log").write_text("Out of memory: Killed process 1 (x)\n")
    assert _counts(source) == {("b.log", "oom_kill"): (1, 1)}  # new files count from the start


def test_unreadable_file_warns_once(tmp_path: Path) -> None:
    (tmp_path / "dir.log").mkdir()  # matches the glob but is no file: skipped silently
    source, stream = _source(tmp_path)
    assert _counts(source) == {}
    assert stream.getvalue() == ""


def test_rotation_by_rename_finishes_the_old_file(tmp_path: Path) -> None:
    """logrotate's default: rename, the writer keeps its handle a while, then a new file."""
    log, source, _ = _following(tmp_path, "hostd.log", "start\n")
    writer = log.open("a")
    writer.write("Failed to extend balloon\n")
    writer.flush()
    log.rename(tmp_path / "hostd.log.1")  # not matched by the glob any more
    writer.write("Failed to extend balloon\nvmmemctl: G_FREEZE")  # still the old file
    writer.flush()
    # the old file is followed to its end although nothing is at the path now
    assert _counts(source) == {("hostd.log", "balloon_extend_failed"): (2, 2)}
    writer.write(" late\n")
    writer.close()
    log.write_text("Insufficient host resources to pin memory\n")  # the new file
    assert _counts(source) == {
        ("hostd.log", "vmmemctl_freeze"): (1, 1),  # the old file's last line, then ...
        ("hostd.log", "host_pin_failed"): (1, 1),  # ... the new file, from its start
    }
    _append(log, "Failed to extend balloon\n")
    assert _counts(source) == {("hostd.log", "balloon_extend_failed"): (1, 3)}


def test_rotation_replaced_at_once_reads_old_end_then_new(tmp_path: Path) -> None:
    log, source, _ = _following(tmp_path, "a.log")
    _append(log, "Out of puff! 1\nOut of puff! 2\n")
    log.rename(tmp_path / "a.log.1")
    log.write_text("Out of puff! 3\n")
    assert _counts(source) == {("a.log", "virtio_out_of_puff"): (3, 3)}
    assert _counts(source) == {}


def test_deleted_file_is_finished_and_forgotten(tmp_path: Path) -> None:
    log, source, _ = _following(tmp_path, "gone.log")
    _append(log, "Out of memory: Killed process 7 (x)\n")
    log.unlink()
    assert _counts(source) == {("gone.log", "oom_kill"): (1, 1)}
    log.write_text("Out of memory: Killed process 8 (y)\n")  # a new file: counts from 1
    assert _counts(source) == {("gone.log", "oom_kill"): (1, 1)}


def test_files_appearing_later_match_globs_again(tmp_path: Path) -> None:
    config = load_text(f'[[sources.logs]]\nfiles = ["{tmp_path}/*/qemu.log"]\n', "t.toml")
    source = LogsSource(config.logs[0], "h", Log(io.StringIO()))
    assert _counts(source) == {}  # nothing matches yet
    for name in ("vm1", "vm2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "qemu.log").write_text(f"{name}: Failed to extend balloon\n")
        assert _counts(source) == {("qemu.log", "balloon_extend_failed"): (1, 1)}
    source.close()


def _line(number: int) -> str:
    """Line `number` of a burst: every 10th a vmmemctl PIN_FAILED, every 1000th an OOM kill."""
    text = f"2024-05-01T10:00:00.{number:06d}Z guest kernel: [{number}] "
    if number % 1000 == 0:
        text += "Out of memory: Killed process 1 (worker)"
    elif number % 10 == 0:
        text += "vmmemctl: PIN_FAILED while locking page"
    else:
        text += "balloon: nothing to see here, padding the line to a realistic length"
    return text + "\n"


def test_burst_of_100000_lines_counted_exactly_over_bounded_polls(tmp_path: Path) -> None:
    log, source, stream = _following(tmp_path, "messages.log")
    burst = "".join(_line(n) for n in range(1, 100_001))
    assert len(burst) > READ_LIMIT  # more than one poll's worth
    _append(log, burst)
    totals: dict[str, int] = {}
    polls = 0
    while True:
        counts = _counts(source)
        if not counts:
            break
        polls += 1
        for (_, event), (count, total) in counts.items():
            totals[event] = totals.get(event, 0) + count
            assert total == totals[event]
    assert totals == {"vmmemctl_pin_failed": 9_900, "oom_kill": 100}
    assert polls == -(-len(burst) // READ_LIMIT)  # each poll read at most READ_LIMIT
    assert "behind" in stream.getvalue() and "caught up" in stream.getvalue()


def test_growth_of_1_gib_is_read_in_bounded_chunks_and_said(tmp_path: Path) -> None:
    """A file grows by 1 GiB between two polls (a hole: NUL bytes, one endless "line").

    It is read READ_LIMIT bytes per poll, the W! line says how far behind it is (once), the
    endless line is not kept, and the events before and after it are counted once each.
    """
    log, source, stream = _following(tmp_path, "qemu.log")
    with log.open("a") as handle:
        handle.write("Failed to extend balloon\n")
        handle.truncate(handle.tell() + (1 << 30))
        handle.seek(0, os.SEEK_END)
        handle.write("\nInsufficient host resources to pin memory\nFailed to extend balloon\n")
    size = log.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    seen: list[Counts] = []
    for _ in range(size // READ_LIMIT + 2):
        counts = _counts(source)
        if counts:
            seen.append(counts)
    assert seen == [
        {("qemu.log", "balloon_extend_failed"): (1, 1)},  # the first poll, before the hole
        {
            ("qemu.log", "host_pin_failed"): (1, 1),  # the last poll, after it
            ("qemu.log", "balloon_extend_failed"): (1, 2),
        },
    ]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) * 1024
    assert grown < 4 * READ_LIMIT, grown  # a few chunks at most, never the 1 GiB line
    warnings = [x for x in stream.getvalue().splitlines() if x.startswith("W! ")]
    behind = (size - READ_LIMIT) >> 20  # said after the first chunk, once
    assert len(warnings) == 1 and f"{behind} MiB behind" in warnings[0], warnings
    assert stream.getvalue().count("caught up") == 1


def test_every_poll_reads_within_the_budget_and_no_file_starves(tmp_path: Path) -> None:
    per_file = READ_LIMIT  # each file as much as one poll may read of it
    names = [f"vm{i}.log" for i in range(POLL_BUDGET // per_file + 2)]
    for name in names:
        (tmp_path / name).write_text("")
    source, _ = _source(tmp_path)
    _counts(source)
    line = "Out of puff! Can't get 256 pages " + "x" * 94 + "\n"  # 128 bytes
    for name in names:
        with (tmp_path / name).open("a") as handle:
            handle.write(line * (per_file // len(line)))
    done: dict[str, int] = {}
    for _ in range(3):
        counts = _counts(source)
        read = sum(count for count, _ in counts.values()) * len(line)
        assert read <= POLL_BUDGET
        for (name, _), (count, _) in counts.items():
            done[name] = done.get(name, 0) + count
    assert done == {name: per_file // len(line) for name in names}  # all caught up, once


def test_long_lines_are_matched_on_their_head_and_never_kept_whole() -> None:
    lines = Lines()
    head = b"vmmemctl: G_FREEZE " + b"y" * 100
    pieces = [head, b"z" * MAX_LINE, b"z" * MAX_LINE, b"Out of puff! tail\nnext line\n"]
    out = b""
    for piece in pieces:
        out += lines.feed(piece)
        assert len(lines.partial) < MAX_LINE
    assert out.startswith(head) and out.count(b"\n") == 2  # the head, then "next line"
    assert b"Out of puff" not in out  # the rest of the long line was skipped
    assert out.endswith(b"\nnext line\n")
    assert len(out) <= MAX_LINE + len(b"\nnext line\n")


def test_something_unreadable_replacing_a_rotated_file(tmp_path: Path) -> None:
    """A FIFO put where the log was (opening it could block for ever): the old file's end
    still counts, a W! line says it once, and a real file there later is read again."""
    log, source, stream = _following(tmp_path, "a.log")
    _append(log, "Out of puff! 1\n")
    log.rename(tmp_path / "a.log.1")
    os.mkfifo(log)
    assert _counts(source) == {("a.log", "virtio_out_of_puff"): (1, 1)}
    assert _counts(source) == {}  # and no hang on the FIFO, poll after poll
    warnings = [x for x in stream.getvalue().splitlines() if x.startswith("W! ")]
    assert len(warnings) == 1 and "not a regular file" in warnings[0], warnings
    log.unlink()
    log.write_text("Out of puff! 2\n")
    assert _counts(source) == {("a.log", "virtio_out_of_puff"): (1, 1)}
    assert "a.log is readable again" in stream.getvalue()


def test_events_count_matching_lines_and_anchors_are_line_ends(tmp_path: Path) -> None:
    """As grep -c: an event counts the lines it matches; `^`/`$` are each line's start and
    end; no match spans a newline. Written in one go, so one poll reads them as one chunk."""
    patterns = {
        "anchored": "^kernel: balloon refused$",
        "loose": "kernel: balloon refused",
        "spanning": r"refused\s+kernel",  # \s matches a newline: must not join two lines
        "empty_line": "^$",
    }
    listed = "".join(f'{name} = "{regex}"\n' for name, regex in patterns.items())
    extra = "[sources.logs.patterns]\n" + listed.replace("\\", "\\\\")
    log, source, _ = _following(tmp_path, "messages.log", extra=extra)
    _append(
        log,
        "kernel: balloon refused\n" * 3
        + "kernel: balloon refused kernel: balloon refused again\n"  # two matches
        + "guest kernel: balloon refused\n"
        + "\n"
        + "Out of puff! Out of puff! Out of puff!\n"  # a built-in, three times on a line
        + "Out of puff! Can't get 256 pages\n",
    )
    assert _counts(source) == {
        ("messages.log", "anchored"): (3, 3),
        ("messages.log", "loose"): (5, 5),
        ("messages.log", "spanning"): (1, 1),  # only "refused kernel" within line 4
        ("messages.log", "empty_line"): (1, 1),
        ("messages.log", "virtio_out_of_puff"): (2, 2),
    }


def test_a_line_matches_alone_where_a_match_would_run_into_the_next() -> None:
    """matching_lines on its own: a search that crosses a newline gives way to the line's
    own match, and `$` holds at the end of every line, the last one included."""
    count = matching_lines
    spaced = re.compile(r"a\s*b", re.M)
    assert count(spaced, "xa \nb a b\n") == 1  # "a \nb" crosses; "a b" on line 2 counts
    assert count(spaced, "a \t\nb\n") == 0
    greedy = re.compile(r"refused\s*", re.M)  # its first match eats the newline
    assert count(greedy, "refused\nrefused\n") == 2
    tail = re.compile(r"refused$", re.M)
    assert count(tail, "a refused\nrefused b\nrefused\n") == 2
    assert count(re.compile("^", re.M), "one\ntwo\n") == 2  # not a third after the end
    assert count(re.compile(r"(?s)x.*y", re.M), "x\ny\nxy\n") == 1  # DOTALL cannot cross
