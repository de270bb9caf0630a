"""Reading a guest tree's files safely: regular files only, bounded, each fault said once."""

from __future__ import annotations

import os
import stat
from typing import Callable, Optional, TypeVar

from ...log import Log
from .parsers import Malformed

T = TypeVar("T")

READ_LIMIT = 1 << 20  # the kernel's files here are a few KiB; a bigger one is not theirs
_CHUNK = 16384


class NotRegular(OSError):
    """A FIFO, socket or device where a kernel file should be: opening it could block."""


def read_regular(path: str, head: Optional[int] = None) -> str:
    """A regular file's text, at most READ_LIMIT bytes of it (or its first `head` characters,
    where only the start matters: /proc/cpuinfo grows with the CPUs).

    /proc, /sys and debugfs files are all regular files. Anything else is refused before it
    is opened: opening a FIFO without a writer blocks forever, and a device can do anything.
    (A path swapped for a FIFO between the stat and the open can still block: the tree is the
    operator's, and the runner's deadline covers that case.)
    """
    info = os.stat(path)
    mode = info.st_mode
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # open() fails at once on a directory
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        )
        raise NotRegular(f"{kind}, not a regular file")
    if info.st_size > READ_LIMIT and head is None:
        raise NotRegular(f"larger than {READ_LIMIT} bytes")
    # Read in small chunks: /proc and /sys files say size 0 whatever they hold, and one
    # read(READ_LIMIT) asks the allocator for a MiB each time, which fragments the heap.
    chunks: list[str] = []
    size = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if head is not None and size >= head:
                chunks.append(chunk)
                break
            if size > READ_LIMIT:
                raise NotRegular(f"larger than {READ_LIMIT} bytes")
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else "".join(chunks)


class GuestFiles:
    """The files of one guest tree (a root): missing is normal and silent; unreadable or
    malformed warns once, and says so again when it is readable once more."""

    def __init__(self, root: str, log: Log) -> None:
        self.root = root
        self.log = log

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> Optional[str]:
        path = self.path(rel)
        try:
            text = read_regular(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except NotRegular as exc:
            self.log.fault(f"guest:{path}", f"guest source: skipped {path}: {exc}")
            return None
        except OSError as exc:
            self.log.fault(f"guest:{path}", f"guest source: cannot read {path}: {exc.strerror}")
            return None
        self.log.clear(f"guest:{path}", f"guest source: {path} is readable again")
        return text

    def parse(self, rel: str, parser: Callable[[str], T]) -> Optional[T]:
        text = self.read(rel)
        return None if text is None else self.parse_text(rel, text, parser)

    def parse_text(self, rel: str, text: str, parser: Callable[[str], T]) -> Optional[T]:
        """Parse a file's text; a malformed file warns once and gives None."""
        path = self.path(rel)
        try:
            value = parser(text)
        except Malformed as exc:
            self.log.fault(f"guest-parse:{path}", f"guest source: malformed {path}: {exc}")
            return None
        self.log.clear(f"guest-parse:{path}")
        return value

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))
