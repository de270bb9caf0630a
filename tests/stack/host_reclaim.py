"""Real host reclaim for the tests: a swap file, memory cgroups of the test's own, KSM.

Each is a context manager that changes the machine only as far as the test needs and puts
back what it changed, also when the test fails:

* :func:`swap_file`: a swap file made and enabled (``mkswap``/``swapon``), switched off and
  removed after;
* :class:`MemoryGroups`: a group of the test's own in the v1 memory hierarchy (with a
  limit) and one in the v2 hierarchy (where every group has ``memory.pressure``, even on a
  host whose memory controller is on v1), found from the mount table, removed after; a
  process enters them by :meth:`MemoryGroups.wrapper` (a shell that writes its own pid and
  execs the command), so nothing is ever moved out of a group the test did not create;
* :func:`ksm_merging`: KSM scanning fast with transparent huge pages off (QEMU's guest RAM
  is madvised huge and KSM does not merge huge pages), then ``run = 2`` (unmerge everything)
  and every setting as it was.

Needs root. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from tests.stack.common import StackError, require_program

KSM = Path("/sys/kernel/mm/ksm")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")


@contextlib.contextmanager
def swap_file(size_mib: int = 512, directory: str = "/var/tmp") -> Iterator[Path]:
    """A swap file of the test's own, on for the block (``swapoff`` and removed after)."""
    for program in ("mkswap", "swapon", "swapoff"):
        require_program(program)
    folder = Path(tempfile.mkdtemp(prefix="tb-swap-", dir=directory))
    path = folder / "swapfile"
    on = False
    try:
        with open(path, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, size_mib << 20)
        path.chmod(0o600)
        _run(require_program("mkswap"), str(path))
        _run(require_program("swapon"), str(path))
        on = True
        yield path
    finally:
        if on:
            _run(require_program("swapoff"), str(path))  # brings its pages back in first
        shutil.rmtree(folder, ignore_errors=True)


def _cgroup_mounts() -> dict[str, Path]:
    """ "memory" -> the v1 memory hierarchy's mount point, "v2" -> the cgroup2 mount point."""
    found: dict[str, Path] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            head, _, tail = line.partition(" - ")
            fields, after = head.split(), tail.split()
            if len(fields) < 5 or len(after) < 3 or fields[3] != "/":
                continue
            if after[0] == "cgroup2":
                found.setdefault("v2", Path(fields[4]))
            elif after[0] == "cgroup" and "memory" in after[2].split(","):
                found.setdefault("memory", Path(fields[4]))
    return found


class MemoryGroups:
    """A v1 memory group with a limit and a v2 group, both the test's own, removed after.

    Where the host has the memory controller on v2 instead, the v2 group gets the limit
    (``memory.max``) and there is no v1 group.
    """

    def __init__(self, limit_mib: int) -> None:
        self.limit = limit_mib << 20
        self.name = f"tb-reclaim-{uuid.uuid4().hex[:8]}"
        self.v1: Optional[Path] = None
        self.v2: Optional[Path] = None

    def __enter__(self) -> MemoryGroups:
        mounts = _cgroup_mounts()
        try:
            if "v2" in mounts:
                self.v2 = mounts["v2"] / self.name
                self.v2.mkdir()
            v2_memory = self.v2 is not None and "memory" in (
                (mounts["v2"] / "cgroup.controllers").read_text().split()
            )
            if v2_memory:
                assert self.v2 is not None
                (self.v2 / "memory.max").write_text(str(self.limit))
            elif "memory" in mounts:
                self.v1 = mounts["memory"] / self.name
                self.v1.mkdir()
                (self.v1 / "memory.limit_in_bytes").write_text(str(self.limit))
            else:
                raise StackError("no memory cgroup controller mounted")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for group in (self.v1, self.v2):
            if group is None:
                continue
            deadline = time.monotonic() + 30
            while group.exists():
                try:
                    group.rmdir()  # EBUSY while a process of the test is still in it
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    @property
    def memory(self) -> Path:
        """The group that holds the limit and the swap figures."""
        group = self.v1 if self.v1 is not None else self.v2
        assert group is not None
        return group

    def wrapper(self) -> list[str]:
        """A command prefix: a shell that puts itself in both groups, then execs the rest."""
        enter = "; ".join(
            f"echo $$ > {group / 'cgroup.procs'}" for group in (self.v1, self.v2) if group
        )
        return ["/bin/sh", "-c", f'{enter}; exec "$@"', "sh"]

    def set_limit(self, limit_mib: Optional[int]) -> None:
        """A new limit (None: unlimited)."""
        if self.v1 is not None:
            value = str(limit_mib << 20) if limit_mib is not None else "-1"
            (self.v1 / "memory.limit_in_bytes").write_text(value)
        else:
            assert self.v2 is not None
            value = str(limit_mib << 20) if limit_mib is not None else "max"
            (self.v2 / "memory.max").write_text(value)

    def _stat(self, v1: str, v2: str) -> int:
        group, key = (self.v1, v1) if self.v1 is not None else (self.v2, v2)
        assert group is not None
        for line in (group / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
        raise StackError(f"no {key} in {group}/memory.stat (swap accounting off?)")

    def swapped(self) -> int:
        """The group's own figure of its memory in swap, in bytes."""
        if self.v1 is not None:
            return self._stat("total_swap", "")
        assert self.v2 is not None
        return int((self.v2 / "memory.swap.current").read_text())

    def swapcached(self) -> int:
        """The group's pages in the swap cache: written to swap and still in memory."""
        return self._stat("total_swapcached", "swapcached")

    def stall_seconds(self) -> float:
        """The v2 group's memory stall total (PSI some), in seconds."""
        assert self.v2 is not None
        for line in (self.v2 / "memory.pressure").read_text().splitlines():
            if line.startswith("some "):
                return int(line.rsplit("total=", 1)[1]) / 1e6
        raise StackError("no some line in memory.pressure")


def _read(path: Path) -> str:
    return path.read_text().strip()


def _thp_mode() -> str:
    text = _read(THP)
    return text[text.index("[") + 1 : text.index("]")]


@contextlib.contextmanager
def ksm_merging(pages_to_scan: int = 5000, sleep_ms: int = 10) -> Iterator[None]:
    """KSM on and scanning fast, THP off, for the block; then everything unmerged (`run` =
    2, which also gives back what it merged of other processes meanwhile) and every setting
    as it was. THP is switched off first: start the QEMU to merge inside the block."""
    if not (KSM / "run").exists():
        raise StackError("this kernel has no KSM")
    saved = {name: _read(KSM / name) for name in ("run", "pages_to_scan", "sleep_millisecs")}
    thp = _thp_mode()
    try:
        THP.write_text("never")
        (KSM / "pages_to_scan").write_text(str(pages_to_scan))
        (KSM / "sleep_millisecs").write_text(str(sleep_ms))
        (KSM / "run").write_text("1")
        yield
    finally:
        with contextlib.suppress(OSError):
            (KSM / "run").write_text("2")
            deadline = time.monotonic() + 60
            while int(_read(KSM / "pages_sharing")) > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
        for name in ("pages_to_scan", "sleep_millisecs", "run"):
            with contextlib.suppress(OSError):
                (KSM / name).write_text(saved[name])
        with contextlib.suppress(OSError):
            THP.write_text(thp)
