"""The guest source: inside a Linux guest, balloon state from /proc, /sys and debugfs.

- parsers.py: the pure parsers, a kernel file's text in, plain data out (no I/O);
- files.py: reading a guest tree's files safely (regular files only, bounded, faults once);
- detect.py: the balloon driver, its blacklisting, and the hypervisor (or bare metal);
- source.py: GuestSource, which polls a tree and makes its sample.
"""

from .detect import BALLOON_MODULES, blacklist_origins
from .source import GuestSource

__all__ = ["BALLOON_MODULES", "GuestSource", "blacklist_origins"]
