"""The kernel log (/dev/kmsg), read from its end: guest kernel events with no syslog file."""

from __future__ import annotations

import errno
import os
from typing import Callable, Optional

from ...log import Log

KMSG_PATH = "/dev/kmsg"
KMSG_TAG = "kmsg"  # the `file` tag of kernel log events
KMSG_RECORDS = 20000  # records read from the kernel log per poll
KMSG_READ = 16384  # one record per read(); the kernel refuses (EINVAL) a buffer too small


# /dev/kmsg, one record per read() (Documentation/ABI/testing/dev-kmsg):
# 6,1234,5678901,-;virtio_balloon virtio0: Out of puff! Can't get 256 pages
#  SUBSYSTEM=virtio          <- continuation lines (the record's dictionary) start with a space
class Kmsg:
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

    def poll(self, log: Log) -> bytes:
        """The messages of the records logged since the last poll, one a line (opened on
        first use, again after a fault); a fault or lost records said once on `log`."""
        key = f"logs:{self.path}"
        try:
            if self.fd < 0:
                self.open()
            messages, lost = self.read()
        except OSError as exc:
            self.close()
            hint = ""
            if exc.errno in (errno.EPERM, errno.EACCES):
                hint = " (with kernel.dmesg_restrict = 1 only root or CAP_SYSLOG may read it)"
            log.fault(key, f"logs source: cannot read {self.path}: {exc.strerror}{hint}")
            return b""
        log.clear(key, f"logs source: {self.path} is readable again")
        if lost:
            log.fault(
                f"logs-lost:{self.path}",
                f"logs source: {self.path}: {lost} kernel log records were overwritten before "
                f"they could be read ({self.lost_total} since start): events in them are not "
                "counted; poll more often or enlarge the ring (log_buf_len=)",
            )
        else:
            log.clear(f"logs-lost:{self.path}")
        return b"\n".join(messages) + b"\n" if messages else b""
