"""Cutting a byte stream into whole lines, with a bound on how long a line is kept."""

from __future__ import annotations

MAX_LINE = 64 << 10  # an unfinished line kept up to this; beyond, its head is matched alone


class Lines:
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
