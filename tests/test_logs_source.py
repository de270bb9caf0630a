"""The logs source on real files: new lines only, rotation, truncation, custom events."""

from __future__ import annotations

import io
import os
from pathlib import Path

from telegraf_balloon import catalog
from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.sources.logs import LogsSource

# What a kernel >= 4.19 logs for one OOM kill: both lines, which must count once.
OOM = (
    "[ 812.1] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=java,pid=4242,uid=0\n"
    "[ 812.1] Out of memory: Killed process 4242 (java) total-vm:9000000kB\n"
)


def _source(tmp_path: Path, extra: str = "") -> tuple[LogsSource, io.StringIO]:
    config = load_text(f'[[sources.logs]]\nfiles = ["{tmp_path}/*.log"]\n{extra}', "test.toml")
    stream = io.StringIO()
    return LogsSource(config.logs[0], "h", Log(stream)), stream


def _counts(source: LogsSource) -> dict[tuple[str, str], tuple[int, int]]:
    result = source.poll(0.0)
    out = {}
    for measurement, tags, fields in result.points:
        assert measurement == catalog.LOG
        assert catalog.check_point(measurement, tags, dict(fields)) == []
        count, total = fields["count"], fields["count_total"]
        assert isinstance(count, int) and isinstance(total, int)
        out[(os.path.basename(tags["file"]), tags["event"])] = (count, total)
    return out


def test_only_new_lines_count_and_totals_accumulate(tmp_path: Path) -> None:
    log = tmp_path / "hostd.log"
    log.write_text("old: Failed to extend balloon\n")
    source, _ = _source(tmp_path)
    assert _counts(source) == {}  # what was there before the plugin started is history
    with log.open("a") as handle:
        handle.write("x Failed to extend balloon y\nInsufficient host resources to pin memory\n")
    assert _counts(source) == {
        ("hostd.log", "balloon_extend_failed"): (1, 1),
        ("hostd.log", "host_pin_failed"): (1, 1),
    }
    assert _counts(source) == {}  # nothing new: no line
    with log.open("a") as handle:
        handle.write("Failed to extend balloon\n" + OOM)
    assert _counts(source) == {
        ("hostd.log", "balloon_extend_failed"): (1, 2),
        ("hostd.log", "oom_kill"): (1, 1),
    }


def test_partial_lines_wait_for_their_end(tmp_path: Path) -> None:
    log = tmp_path / "messages.log"
    log.write_text("")
    source, _ = _source(tmp_path)
    _counts(source)
    with log.open("a") as handle:
        handle.write("kernel: virtio_balloon virtio0: Out of puff! Can't get 256 pa")
    assert _counts(source) == {}
    with log.open("a") as handle:
        handle.write("ges\nvmmemctl: G_FREEZE\nvmmemctl: PIN_FAILED\n")
    assert _counts(source) == {
        ("messages.log", "virtio_out_of_puff"): (1, 1),
        ("messages.log", "vmmemctl_freeze"): (1, 1),
        ("messages.log", "vmmemctl_pin_failed"): (1, 1),
    }


def test_rotation_truncation_and_new_files(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("start\n")
    source, _ = _source(tmp_path, '[sources.logs.patterns]\nrefused = "balloon .* refused"\n')
    _counts(source)
    log.rename(tmp_path / "a.log.1")  # rotated: a new file under the old name
    log.write_text("balloon 7 refused\n")
    assert _counts(source) == {("a.log", "refused"): (1, 1)}
    log.write_text("")  # truncated (copytruncate)
    with log.open("a") as handle:
        handle.write("balloon 8 refused\n")
    assert _counts(source) == {("a.log", "refused"): (1, 2)}
    (tmp_path / "b.log").write_text("Out of memory: Killed process 1 (x)\n")
    assert _counts(source) == {("b.log", "oom_kill"): (1, 1)}  # new files count from the start


def test_unreadable_file_warns_once(tmp_path: Path) -> None:
    (tmp_path / "dir.log").mkdir()  # matches the glob but is no file: skipped silently
    source, stream = _source(tmp_path)
    assert _counts(source) == {}
    assert stream.getvalue() == ""
