"""Count balloon troubleshooting events in log files and the kernel log: balloon_log lines."""

from __future__ import annotations

import errno
import glob
import os
import re
import time
from stat import S_ISREG
from typing import Callable, Optional

from .. import catalog
from ..config import LogsConfig
from ..log import Log
from ..model import PollResult, Tags

# The strings operators grep for (hypervisor logs, guest kernel and VMware Tools logs).
BUILTIN_EVENTS: tuple[tuple[str, str], ...] = (
    ("balloon_extend_failed", re.escape("Failed to extend balloon")),
    ("host_pin_failed", re.escape("Insufficient host resources to pin memory")),
    ("vmmemctl_freeze", re.escape("vmmemctl: G_FREEZE")),
    ("vmmemctl_pin_failed", re.escape("vmmemctl: PIN_FAILED")),
    ("virtio_out_of_puff", re.escape("Out of puff!")),
    # One match per kill: since Linux 4.19 a kill also logs an "oom-kill:" line, which would
    # count it twice; "Kill process" is the wording of older kernels, "Memory cgroup out of
    # memory" that of a cgroup limit. Starting with a literal (not [Oo]) lets the regex engine
    # skip ahead by it: 15x faster on a file of log lines.
    ("oom_kill", r"ut of memory: Kill(?:ed)? process"),
)
READ_LIMIT = 8 << 20  # bytes read from one file per poll; the rest waits for the next poll
POLL_BUDGET = 32 << 20  # bytes read from all files together per poll
MAX_LINE = 64 << 10  # an unfinished line kept up to this; beyond, its head is matched alone
MARK = 64  # bytes before the offset remembered to notice a file rewritten in place

KMSG_PATH = "/dev/kmsg"
KMSG_TAG = "kmsg"  # the `file` tag of kernel log events
KMSG_RECORDS = 20000  # records read from the kernel log per poll
KMSG_READ = 16384  # one record per read(); the kernel refuses (EINVAL) a buffer too small


class _Lines:
    """Cuts a byte stream into whole lines without keeping a long line whole in memory.

    An unfinished line is kept up to MAX_LINE bytes. A longer one is matched on its first
    MAX_LINE bytes (where a syslog line carries its message) and the rest is skipped.
    """

    __slots__ = ("partial", "skipping")

    def __init__(self) -> None:
        self.partial = b""
        self.skipping = False

    def feed(self, data: bytes) -> bytes:
        """The complete lines that `data` ends, newline-terminated; keeps the unfinished rest."""
        out: list[bytes] = []
        start = 0
        if self.skipping or self.partial:
            newline = data.find(b"\n")
            if newline < 0:
                if self.skipping:
                    return b""
                room = MAX_LINE - len(self.partial)
                if len(data) < room:
                    self.partial += data
                    return b""
                head, self.partial, self.skipping = self.partial + data[:room], b"", True
                return head + b"\n"
            if not self.skipping:
                out.append(self.partial + data[: newline + 1])
            self.partial, self.skipping = b"", False
            start = newline + 1
        cut = data.rfind(b"\n", start) + 1
        if cut > start:
            out.append(data[start:cut])
        else:
            cut = start
        rest = data[cut:]
        if len(rest) >= MAX_LINE:
            out.append(rest[:MAX_LINE] + b"\n")
            self.skipping = True
        else:
            self.partial = rest
        return b"".join(out)

    def finish(self) -> bytes:
        """The file ended (rotated away and read to its end): its unfinished line counts."""
        rest, self.partial, self.skipping = self.partial, b"", False
        return rest + b"\n" if rest else b""


class _Tail:
    """One followed path: the file open under it, where we are, and its event totals."""

    __slots__ = ("fd", "inode", "lines", "mark", "offset", "path", "totals")

    def __init__(self, path: str, fd: int, inode: tuple[int, int], offset: int) -> None:
        self.path = path
        self.fd = fd
        self.inode = inode
        self.offset = offset
        self.mark = b""  # the last bytes read, which must still be there next time
        self.lines = _Lines()
        self.totals: dict[str, int] = {}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _open(path: str) -> tuple[int, os.stat_result]:
    """A regular file opened for reading; O_NONBLOCK: a FIFO put at the path cannot hang us."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fd, stat
    except OSError:
        os.close(fd)
        raise


def matching_lines(regex: re.Pattern[str], text: str) -> int:
    """How many lines of `text` (each ending with a newline) `regex` matches.

    A line counts once however many matches it holds, and a match never spans a newline.
    The regex (compiled with re.MULTILINE: `^` and `$` are each line's start and end) scans
    the whole text, as fast as one search can; only a match that runs into the next line
    makes its line be searched again alone (`endpos` at its end, where `$` matches).
    """
    count = pos = 0
    end = len(text)
    search, find = regex.search, text.find
    while pos < end:
        found = search(text, pos)
        if found is None:
            break
        start = found.start()
        if start >= end:
            break  # an empty match after the last newline: no line there
        eol = find("\n", start)
        if eol < 0:
            eol = end
        if found.end() > eol:  # ran over the line's end: does the line match on its own?
            bol = text.rfind("\n", 0, start) + 1
            if search(text, bol, eol) is None:
                pos = eol + 1
                continue
        count += 1
        pos = eol + 1
    return count


# /dev/kmsg, one record per read() (Documentation/ABI/testing/dev-kmsg):
# 6,1234,5678901,-;virtio_balloon virtio0: Out of puff! Can't get 256 pages
#  SUBSYSTEM=virtio          <- continuation lines (the record's dictionary) start with a space
class _Kmsg:
    """The kernel log from its end: records since start, never blocking, overruns counted."""

    def __init__(self, path: str, read: Callable[[int, int], bytes]) -> None:
        self.path = path
        self._read = read
        self.fd = -1
        self.next_seq: Optional[int] = None  # the sequence number the next record should have
        self.partial = b""
        self.totals: dict[str, int] = {}
        self.lost_total = 0
        self.malformed_total = 0

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.lseek(fd, 0, os.SEEK_END)  # only what the kernel logs from now on
        except OSError as exc:
            if exc.errno != errno.ESPIPE:  # a FIFO (a stand-in) cannot seek: it has no past
                os.close(fd)
                raise
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self) -> tuple[list[bytes], int]:
        """(messages of the new records, records lost to overruns) since the last call."""
        messages: list[bytes] = []
        lost = 0
        for _ in range(KMSG_RECORDS):
            try:
                chunk = self._read(self.fd, KMSG_READ)
            except BlockingIOError:
                break  # EAGAIN: nothing new
            except InterruptedError:
                continue
            except BrokenPipeError:
                # EPIPE: the ring buffer overwrote the records we had not read yet. The next
                # read returns the oldest record left; its sequence number says how many went.
                continue
            if not chunk:
                break  # EOF: only a stand-in FIFO without a writer says that
            data = self.partial + chunk
            cut = data.rfind(b"\n") + 1
            self.partial = data[cut:][-KMSG_READ:]
            for line in data[:cut].split(b"\n"):
                if not line or line.startswith(b" "):
                    continue  # dictionary lines (" KEY=value") belong to the record above
                message, gap = self._record(line)
                lost += gap
                if message is not None:
                    messages.append(message)
        self.lost_total += lost
        return messages, lost

    def _record(self, line: bytes) -> tuple[Optional[bytes], int]:
        header, sep, message = line.partition(b";")
        parts = header.split(b",")
        if not sep or len(parts) < 3 or not parts[1].isdigit():
            self.malformed_total += 1
            return None, 0
        seq = int(parts[1])
        gap = seq - self.next_seq if self.next_seq is not None and seq > self.next_seq else 0
        self.next_seq = seq + 1
        return message, gap


class LogsSource:
    """Follows files like `tail -F` (and the kernel log): new lines only, bounded work per poll.

    A file rotated by rename is read to its end before the new file at the path is followed
    (until one appears, the renamed file is followed: its writer may not have reopened yet);
    a deleted one is read to its end and forgotten; one truncated (or truncated and refilled)
    is read again from its start; files that appear after start are read from their start.
    At most READ_LIMIT bytes of a file and POLL_BUDGET bytes in all are read per poll: a file
    far behind catches up over polls.
    """

    kind = "logs"

    def __init__(
        self,
        config: LogsConfig,
        hostname: str,
        log: Log,
        clock: Callable[[], float] = time.perf_counter,
        kmsg_path: str = KMSG_PATH,
        kmsg_read: Callable[[int, int], bytes] = os.read,
    ) -> None:
        self.config = config
        self.instance = ",".join([*config.files, KMSG_TAG] if config.kmsg else config.files)
        self.hostname = hostname
        self.log = log
        self._clock = clock
        # MULTILINE: `^` and `$` are a line's start and end (see matching_lines).
        self.events = [(name, re.compile(regex, re.M)) for name, regex in BUILTIN_EVENTS]
        self.events += [(name, re.compile(regex, re.M)) for name, regex in config.patterns]
        self._tails: dict[str, _Tail] = {}
        self._started = False
        self._turn = 0  # which file reads first, so a busy one cannot starve the others
        self._kmsg = _Kmsg(kmsg_path, kmsg_read) if config.kmsg else None

    def close(self) -> None:
        for tail in self._tails.values():
            tail.close()
        self._tails.clear()
        if self._kmsg is not None:
            self._kmsg.close()

    def _files(self) -> list[str]:
        paths: set[str] = set()
        for pattern in self.config.files:
            paths.update(p for p in glob.glob(pattern) if os.path.isfile(p))
        return sorted(paths)

    def poll(self, now: float) -> PollResult:
        started = self._clock()
        result = PollResult()
        first = not self._started
        self._started = True
        paths = self._files()
        # Followed files no longer matched (deleted, or renamed away with nothing new yet)
        # are read to their end first.
        paths += sorted(set(self._tails) - set(paths))
        if paths:
            self._turn = (self._turn + 1) % len(paths)
            paths = paths[self._turn :] + paths[: self._turn]
        budget = POLL_BUDGET
        for path in paths:
            try:
                text, used, totals, error = self._read_path(path, first, budget)
            except OSError as exc:
                text, used, totals, error = b"", 0, {}, exc.strerror or str(exc)
            if error is None:
                self.log.clear(f"logs:{path}", f"logs source: {path} is readable again")
            else:
                self.log.fault(f"logs:{path}", f"logs source: cannot read {path}: {error}")
            budget -= used
            if text:
                self._count(text, path, totals, result)
        if self._kmsg is not None:
            self._poll_kmsg(result)
        result.api_latency_seconds = self._clock() - started
        return result

    def _read_path(
        self, path: str, first: bool, budget: int
    ) -> tuple[bytes, int, dict[str, int], Optional[str]]:
        """The complete new lines of one path, the bytes read, its event totals, an error.

        The error: the file newly at the path cannot be opened (the old one's end is kept).
        """
        tail = self._tails.get(path)
        if tail is None:
            fd, stat = _open(path)
            # Files there before the plugin started: only what is written from now on counts.
            tail = _Tail(path, fd, _identity(stat), stat.st_size if first else 0)
            if first and stat.st_size:
                tail.mark = os.pread(fd, MARK, max(0, stat.st_size - MARK))
            self._tails[path] = tail
        out: list[bytes] = []
        used = 0
        while True:
            size = os.fstat(tail.fd).st_size
            if size < tail.offset or (
                tail.mark
                and os.pread(tail.fd, len(tail.mark), tail.offset - len(tail.mark)) != tail.mark
            ):
                # Truncated (copytruncate), perhaps refilled past our offset: from the start.
                tail.offset, tail.mark, tail.lines = 0, b"", _Lines()
            want = min(READ_LIMIT - used, budget - used, size - tail.offset)
            if want > 0:
                data = os.pread(tail.fd, want, tail.offset)
                tail.offset += len(data)
                used += len(data)
                tail.mark = (tail.mark + data)[-MARK:]
                out.append(tail.lines.feed(data))
            if tail.offset < size:
                if size - tail.offset >= 1 << 20:
                    self.log.fault(
                        f"logs-behind:{path}",
                        f"logs source: {path} is {(size - tail.offset) >> 20} MiB behind: "
                        f"reading at most {READ_LIMIT >> 20} MiB of it per poll",
                    )
                break
            self.log.clear(f"logs-behind:{path}", f"logs source: {path} caught up")
            # At the end of this file: is it still the one at the path?
            try:
                current = _identity(os.stat(path))
            except FileNotFoundError:
                current = None
            if current == tail.inode:
                break
            if current is None and os.fstat(tail.fd).st_nlink:
                break  # renamed away, nothing new at the path yet: its writer may go on
            out.append(tail.lines.finish())  # rotated away or deleted, and read to its end
            tail.close()
            if current is None:
                del self._tails[path]
                break
            try:
                fd, stat = _open(path)  # the new file under the path: all of it is new
            except OSError as exc:
                del self._tails[path]  # tried again next poll, as a file that appeared
                return b"".join(out), used, tail.totals, exc.strerror or str(exc)
            tail.fd, tail.inode, tail.offset, tail.mark = fd, _identity(stat), 0, b""
            if used >= min(READ_LIMIT, budget):
                break
        return b"".join(out), used, tail.totals, None

    def _poll_kmsg(self, result: PollResult) -> None:
        kmsg = self._kmsg
        assert kmsg is not None
        key = f"logs:{kmsg.path}"
        try:
            if kmsg.fd < 0:
                kmsg.open()
            messages, lost = kmsg.read()
        except OSError as exc:
            kmsg.close()
            hint = ""
            if exc.errno in (errno.EPERM, errno.EACCES):
                hint = " (with kernel.dmesg_restrict = 1 only root or CAP_SYSLOG may read it)"
            self.log.fault(key, f"logs source: cannot read {kmsg.path}: {exc.strerror}{hint}")
            return
        self.log.clear(key, f"logs source: {kmsg.path} is readable again")
        if lost:
            self.log.fault(
                f"logs-lost:{kmsg.path}",
                f"logs source: {kmsg.path}: {lost} kernel log records were overwritten before "
                f"they could be read ({kmsg.lost_total} since start): events in them are not "
                "counted; poll more often or enlarge the ring (log_buf_len=)",
            )
        else:
            self.log.clear(f"logs-lost:{kmsg.path}")
        if messages:
            self._count(b"\n".join(messages) + b"\n", KMSG_TAG, kmsg.totals, result)

    def _count(self, data: bytes, file: str, totals: dict[str, int], result: PollResult) -> None:
        text = data.decode("utf-8", "replace")
        for name, regex in self.events:
            count = matching_lines(regex, text)
            if count:
                totals[name] = totals.get(name, 0) + count
                tags: Tags = {"host": self.hostname, "file": file, "event": name}
                result.points.append(
                    (catalog.LOG, tags, {"count": count, "count_total": totals[name]})
                )
