"""Followed log files: rotation, truncation and copytruncate, a bound on files held open."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import os
import re
import resource
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from stat import S_ISREG
from typing import Optional

from ...log import Log
from .lines import Lines

READ_LIMIT = 8 << 20  # bytes read from one file per poll; the rest waits for the next poll
POLL_BUDGET = 32 << 20  # bytes read from all files together per poll
MARK = 64  # bytes before the offset remembered to notice a file rewritten in place
# Followed files kept open at once, the least recently grown closed first (and opened again,
# by inode and offset, when they grow). A glob such as /var/log/libvirt/qemu/*.log matches one
# log per domain the host ever ran, and the descriptors are the whole process's: one per QMP
# socket (hundreds of VMs), libvirt and vSphere connections, the kernel log. 64 keeps open
# every log written often (the host's syslog, the hypervisor's, the running guests' QEMU
# logs, which are quiet) and leaves 950 of the usual 1,024; a file beyond it costs an open()
# only in a poll where it grew. Never more than 1/OPEN_SHARE of the soft RLIMIT_NOFILE, so a
# lowered limit still leaves most of it to the other sources.
OPEN_FILES = 64
OPEN_SHARE = 8


class Tail:
    """One followed path: its file (open or not), where we are in it, its event totals."""

    __slots__ = (
        "fd",
        "inode",
        "lines",
        "mark",
        "moved",
        "mtime",
        "offset",
        "path",
        "totals",
    )

    def __init__(self, path: str, inode: tuple[int, int], offset: int) -> None:
        self.path = path
        self.fd = -1  # -1: not held open; the file is found again by `inode`
        self.inode = inode  # (st_dev, st_ino) of the file we read
        self.offset = offset
        self.mark = b""  # the last bytes read, which must still be there next time
        self.mtime = -1  # st_mtime_ns when `offset` was reached (-1: look at it next poll)
        self.moved: Optional[str] = None  # where the file was last found after a rename
        self.lines = Lines()
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


def _siblings(path: str) -> list[str]:
    """Where rotation puts a log: beside it, named after it (x.log.1, x.log-20240501, ...)."""
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return [os.path.join(folder, n) for n in sorted(names) if n.startswith(name) and n != name]


_MAGIC = re.compile(r"[*?[]")


def _matches(pattern: str) -> list[tuple[str, os.stat_result]]:
    """The paths `pattern` matches as glob.glob() finds them, each with its stat().

    A pattern with wildcards in its last part only (/var/log/libvirt/qemu/*.log) lists its
    directory once with scandir, whose entries carry their path and stat without more
    Python work per file: a third of the time of glob() then os.stat() on 2,000 files.
    """
    folder, name = os.path.split(pattern)
    out: list[tuple[str, os.stat_result]] = []
    if _MAGIC.search(folder) or not _MAGIC.search(name):
        for path in glob.glob(pattern):
            with contextlib.suppress(OSError):
                out.append((path, os.stat(path)))
        return out
    matcher = re.compile(fnmatch.translate(name)).match
    hidden = name.startswith(".")  # glob's rule: a leading dot is matched only by a dot
    try:
        with os.scandir(folder or ".") as entries:
            for entry in entries:
                if not matcher(entry.name) or (entry.name[0] == "." and not hidden):
                    continue
                try:  # (not contextlib.suppress: a third of this loop's time)
                    stat = entry.stat()
                except OSError:
                    continue  # gone since listed, or a dangling symlink
                out.append((entry.path if folder else entry.name, stat))
    except OSError:
        pass  # no such directory, or not readable: nothing matches, as with glob()
    return out


def open_bound(wanted: int = OPEN_FILES) -> int:
    """How many followed files one logs source keeps open: `wanted`, within OPEN_SHARE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    return max(1, min(wanted, soft // OPEN_SHARE))


class FollowedFiles:
    """The files the globs match, followed like `tail -F`: new lines only, bounded work per poll.

    A file rotated by rename is read to its end before the new file at the path is followed
    (until one appears, the renamed file is followed: its writer may not have reopened yet);
    a deleted one is read to its end and forgotten; one truncated (or truncated and refilled)
    is read again from its start, after the rest of copytruncate's copy where that lies
    beside it; files that appear after start are read from their start. At most READ_LIMIT
    bytes of a file and POLL_BUDGET bytes in all are read per poll: a file far behind
    catches up over polls.

    At most `open_bound()` files are kept open: the others are looked at with stat() each
    poll and opened again (by inode and offset, found beside their path after a rotation)
    only when they changed.
    """

    def __init__(
        self, patterns: Sequence[str], instance: str, log: Log, open_files: int = OPEN_FILES
    ) -> None:
        self.patterns = patterns
        self.instance = instance  # the source's, in the key of its descriptor fault
        self.log = log
        self._tails: dict[str, Tail] = {}
        self._held: OrderedDict[str, Tail] = OrderedDict()  # open, least recently grown first
        self._open_files = open_files
        self._bound = open_bound(open_files)
        self._changed: set[str] = set()  # held files that changed since the last poll
        self._waiting = 0  # changed files that could not be opened in this poll
        self._starved = False  # ... because the process had no descriptor left
        self._unlisted = False  # the globs could not be listed in this poll (no descriptor)
        self._started = False
        self._turn = 0  # which file reads first, so a busy one cannot starve the others

    def close(self) -> None:
        for tail in self._tails.values():
            tail.close()
        self._tails.clear()
        self._held.clear()

    def _files(self) -> Optional[dict[str, os.stat_result]]:
        """The regular files the globs match now, with their stat (one per file and poll).

        None: no descriptor to list a directory with (glob would say nothing, as if no file
        matched), even after giving one of ours back.
        """
        try:
            os.close(os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._starved = True
                if not self._evict():
                    return None
        found: dict[str, os.stat_result] = {}
        for pattern in self.patterns:
            for path, stat in _matches(pattern):
                if S_ISREG(stat.st_mode):
                    found.setdefault(path, stat)
        return found

    def read(self) -> Iterator[tuple[str, bytes, dict[str, int]]]:
        """Each followed path's new complete lines, as they are read: (path, lines, the
        path's event totals). Faults are said on the log, once each."""
        self._bound = open_bound(self._open_files)  # the limit may have been changed
        while len(self._held) > self._bound and self._evict():
            pass
        self._waiting, self._starved = 0, False
        listed = self._files()
        self._unlisted = listed is None
        found = listed or {}
        # The first look at the globs: what the files hold then is history.
        first = not self._started and listed is not None
        self._started = self._started or listed is not None
        paths = sorted(found)
        # Followed files no longer matched (deleted, or renamed away with nothing new yet)
        # are read to their end first.
        paths += sorted(set(self._tails) - set(found))
        if paths:
            self._turn = (self._turn + 1) % len(paths)
            paths = paths[self._turn :] + paths[: self._turn]
        self._changed = {
            path
            for path, tail in self._held.items()
            if (stat := found.get(path)) is None
            or _identity(stat) != tail.inode
            or (stat.st_size, stat.st_mtime_ns) != (tail.offset, tail.mtime)
        }
        budget = POLL_BUDGET
        tails = self._tails
        for path in paths:
            stat = found.get(path)
            tail = tails.get(path)
            if (
                tail is not None
                and stat is not None
                and stat.st_size == tail.offset
                and stat.st_mtime_ns == tail.mtime
                and stat.st_ino == tail.inode[1]
                and stat.st_dev == tail.inode[0]
            ):
                continue  # unchanged since last read (most files of a big glob): not opened
            try:
                text, used, totals, error = self._read_path(path, stat, first, budget)
            except OSError as exc:
                text, used, totals, error = b"", 0, {}, exc.strerror or str(exc)
            if error is None:
                self.log.clear(f"logs:{path}", f"logs source: {path} is readable again")
            else:
                self.log.fault(f"logs:{path}", f"logs source: cannot read {path}: {error}")
            budget -= used
            if text:
                yield path, text, totals
        self._say_waiting()

    def _say_waiting(self) -> None:
        key = f"logs-open:{self.instance}"
        if not self._waiting and not self._unlisted:
            self.log.clear(key, "logs source: no changed file waits for a descriptor any more")
        elif self._starved:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            waits = [f"{self._waiting} changed files"] if self._waiting else []
            waits += ["the globs (new files)"] if self._unlisted else []
            self.log.fault(
                key,
                f"logs source: the process has no file descriptor left (soft RLIMIT_NOFILE "
                f"{soft}, held by other sources): {' and '.join(waits)} wait for a later "
                "poll; raise the limit (LimitNOFILE= in Telegraf's unit)",
            )
        else:
            self.log.fault(
                key,
                f"logs source: {self._waiting} changed files wait for a later poll: the "
                f"{self._bound} files it keeps open at most are all deleted files not read "
                "to their end yet",
            )

    # --- descriptors: at most self._bound held, the least recently grown given back first --

    def _hold(self, tail: Tail, fd: int) -> None:
        tail.fd = fd
        self._held[tail.path] = tail

    def _release(self, tail: Tail) -> None:
        tail.close()
        self._held.pop(tail.path, None)

    def _evict(self) -> bool:
        """Close the least recently grown held file that can be found again; False: none.

        One that changed since the last poll (its stat says so) is closed last: it is about
        to be read.
        """
        for changed in (False, True):
            for tail in self._held.values():
                if (tail.path in self._changed) != changed:
                    continue
                stat = os.fstat(tail.fd)
                if stat.st_nlink or tail.offset >= stat.st_size:  # else deleted, and not read
                    self._release(tail)  # to its end: closing it would lose that end
                    return True
        return False

    def _acquire(self, path: str) -> Optional[tuple[int, os.stat_result]]:
        """`path` opened, one of ours closed first at the bound; None: the file must wait."""
        if len(self._held) >= self._bound and not self._evict():
            self._waiting += 1
            return None
        for _ in range(2):
            try:
                return _open(path)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
            # The process is out of descriptors (the other sources hold them): give one
            # of ours back and try once more; with none to give, the file waits.
            self._starved = True
            if not self._evict():
                break
        self._waiting += 1
        return None

    def _attach(self, tail: Tail, where: str) -> bool:
        """Open `where`, which should be the tail's file, and hold it; False: not now."""
        opened = self._acquire(where)
        if opened is None:
            return False
        fd, stat = opened
        if _identity(stat) != tail.inode:
            os.close(fd)  # replaced since its stat(): the next poll sees which file it is
            return False
        self._hold(tail, fd)
        return True

    # --- reading ------------------------------------------------------------------------

    def _read_path(
        self, path: str, stat: Optional[os.stat_result], first: bool, budget: int
    ) -> tuple[bytes, int, dict[str, int], Optional[str]]:
        """The complete new lines of one path, the bytes read, its event totals, an error.

        `stat`: the path's, if the globs matched it in this poll. The error: the file newly
        at the path cannot be opened (the old one's end is kept).
        """
        out: list[bytes] = []
        tail = self._tails.get(path)
        if tail is None:
            if stat is None:
                return b"", 0, {}, None
            # Files there before the plugin started: only what is written from now on counts.
            tail = Tail(path, _identity(stat), stat.st_size if first else 0)
            if first:
                tail.mtime = stat.st_mtime_ns
            # An error: not followed yet, tried again next poll as a file that appeared.
            opened = self._acquire(path)
            self._tails[path] = tail
            if opened is None:
                return b"", 0, tail.totals, None  # waits, known by its inode and offset
            fd, stat = opened
            self._hold(tail, fd)
            tail.inode = _identity(stat)
            if first:
                tail.offset, tail.mtime = stat.st_size, stat.st_mtime_ns
                if stat.st_size:
                    tail.mark = os.pread(fd, MARK, max(0, stat.st_size - MARK))
        elif tail.fd < 0:
            if budget <= 0:
                return b"", 0, tail.totals, None  # nothing could be read: not opened either
            try:
                where = self._where(tail, stat, out)
                if where is None or not self._attach(tail, where):
                    return b"".join(out), 0, tail.totals, None
            except OSError as exc:
                return b"".join(out), 0, tail.totals, exc.strerror or str(exc)
        return self._read_open(tail, out, budget)

    def _where(self, tail: Tail, stat: Optional[os.stat_result], out: list[bytes]) -> Optional[str]:
        """Where a tail not held open is to be opened again; None: nothing to read now.

        Unchanged (same inode, size and mtime as when last read): nothing. Another file at
        the path, or none: the old one is looked for beside it (rotation renames it there)
        and read to its end first; if it is gone, its unfinished line ends and what was
        written to it since it was last read cannot be counted.
        """
        path = tail.path
        if stat is None:
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(path)
        if stat is not None and _identity(stat) == tail.inode:
            if stat.st_size == tail.offset and stat.st_mtime_ns == tail.mtime:
                return None
            return path
        found = self._find(tail)
        if found is not None:
            tail.moved, old = found
            if stat is None and old.st_size == tail.offset and old.st_mtime_ns == tail.mtime:
                return None  # renamed away, nothing new in it and nothing at the path
            return tail.moved
        out.append(tail.lines.finish())
        if stat is None or not S_ISREG(stat.st_mode):
            del self._tails[path]  # deleted (or replaced by no file): forgotten
            if stat is not None:
                raise OSError(errno.EINVAL, "not a regular file")
            return None
        self.log.info(
            f"logs source: {path} was replaced while not held open and its previous file is "
            f"no longer beside it (compressed or removed): what was written to that file "
            "after the last poll is not counted"
        )
        tail.inode, tail.offset, tail.mark, tail.mtime = _identity(stat), 0, b"", -1
        tail.lines, tail.moved = Lines(), None
        return path

    def _find(self, tail: Tail) -> Optional[tuple[str, os.stat_result]]:
        """The tail's file (by inode) where rotation put it, with its stat; None: gone."""
        if tail.moved is not None:  # where it was last time: one stat, no directory listing
            with contextlib.suppress(OSError):
                stat = os.stat(tail.moved)
                if _identity(stat) == tail.inode:
                    return tail.moved, stat
        for candidate in _siblings(tail.path):
            try:
                stat = os.stat(candidate)
            except OSError:
                continue
            if _identity(stat) == tail.inode:
                return candidate, stat
        return None

    def _copy_of(self, tail: Tail) -> Optional[tuple[int, os.stat_result]]:
        """copytruncate's copy of the tail's file, opened, if it lies beside it uncompressed:
        a file named after it holding our offset, with the last bytes we read (the mark)
        just before it."""
        if not tail.mark:
            return None
        for candidate in _siblings(tail.path):
            try:
                stat = os.stat(candidate)
                if stat.st_size < tail.offset or _identity(stat) == tail.inode:
                    continue
                fd, stat = _open(candidate)
            except OSError:
                continue
            try:
                start = tail.offset - len(tail.mark)
                if (
                    _identity(stat) != tail.inode
                    and os.pread(fd, len(tail.mark), start) == tail.mark
                ):
                    return fd, stat
            except OSError:
                pass
            os.close(fd)
        return None

    def _read_open(
        self, tail: Tail, out: list[bytes], budget: int
    ) -> tuple[bytes, int, dict[str, int], Optional[str]]:
        """Read the held tail on (see _read_path); follow it to the next file at its path."""
        path = tail.path
        used = 0
        copied = False
        while True:
            stat = os.fstat(tail.fd)
            size = stat.st_size
            if size < tail.offset or (
                tail.mark
                and os.pread(tail.fd, len(tail.mark), tail.offset - len(tail.mark)) != tail.mark
            ):
                # Truncated (copytruncate), perhaps refilled past our offset. What was written
                # before the copy was taken and after we last read is in the copy: read it on
                # from our offset, then (at its end, below) the file at the path from its start.
                copy = None if copied else self._copy_of(tail)
                if copy is not None:
                    self._release(tail)
                    fd, stat = copy
                    self._hold(tail, fd)
                    tail.inode, tail.moved, copied = _identity(stat), None, True
                    continue
                tail.offset, tail.mark, tail.lines = 0, b"", Lines()
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
            stat = os.fstat(tail.fd)
            if current is None and stat.st_nlink:
                break  # renamed away, nothing new at the path yet: its writer may go on
            out.append(tail.lines.finish())  # rotated away or deleted, and read to its end
            self._release(tail)
            if current is None:
                del self._tails[path]
                break
            try:
                fd, stat = _open(path)  # the new file under the path: all of it is new
            except OSError as exc:
                del self._tails[path]  # tried again next poll, as a file that appeared
                return b"".join(out), used, tail.totals, exc.strerror or str(exc)
            self._hold(tail, fd)
            tail.inode, tail.offset, tail.mark, tail.moved = _identity(stat), 0, b"", None
            if used >= min(READ_LIMIT, budget):
                break
        if tail.fd >= 0:
            tail.mtime = stat.st_mtime_ns
            if used:
                self._held.move_to_end(path)  # grew: the last to be closed
        return b"".join(out), used, tail.totals, None
