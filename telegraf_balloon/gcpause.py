"""The cyclic garbage collector paused while a poll builds and drops many objects at once.

A poll of a large inventory makes a few dozen objects per VM (parser elements, dicts, strings,
the lines written), none of them in a reference cycle: reference counting frees each one. Their
sheer number still sets off collections, and each full one walks every object of the process:
at 40,000 VMs about 0.2 s of CPU per poll, and the more VMs held, the longer each walk.
Nothing cyclic is left uncollected: the collector runs as usual once it is back on.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, back on after (if it was on)."""
    if not gc.isenabled():  # off already (by the program, or another thread's poll)
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
