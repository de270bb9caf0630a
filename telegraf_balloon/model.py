"""What sources hand to the health stage: samples, host facts, poll results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Union

FieldValue = Union[bool, int, float, str]
Fields = dict[str, FieldValue]
Tags = dict[str, str]


@dataclass(frozen=True)
class Detail:
    """What a source knows of a VM beyond its fields, for --explain's messages only.

    Not a line-protocol field: the serializer and the health stage never read it, and no
    finding rests on it (the fields decide; this names the place to act on).
    """

    # balloon driver -> where it is blacklisted ("/etc/modprobe.d/x.conf", "the kernel
    # command line"), drivers in the guest source's order of preference
    blacklist_origins: dict[str, list[str]] = field(default_factory=dict)
    # the virtio-mem device furthest off its request: libvirt's alias or QEMU's id ("" if it
    # has none), and its plugged size in bytes (the size to ask of it to stop its retries)
    vmem_device: str = ""
    vmem_device_plugged: Optional[int] = None


class Sample:
    """One VM seen by one source at one poll: tags and the fields the source knows.

    `key` identifies the VM within its source instance across polls (UUID, else name).
    Fields a source cannot know are absent, never zero-filled. `detail` is None unless the
    source has something to say for --explain (see Detail).
    """

    __slots__ = ("detail", "fields", "key", "tags")

    def __init__(
        self, key: str, tags: Tags, fields: Fields, detail: Optional[Detail] = None
    ) -> None:
        self.key = key
        self.tags = tags
        self.fields = fields
        self.detail = detail

    def __repr__(self) -> str:
        return f"Sample({self.key!r}, {self.tags!r}, {self.fields!r})"


@dataclass
class HostInfo:
    """What a source knows of one hypervisor host itself (not summed from its VMs)."""

    tags: Tags
    memory_bytes: Optional[int] = None
    free_bytes: Optional[int] = None
    ecc_corrected_total: Optional[int] = None  # EDAC, where the host has it and it is local
    ecc_uncorrected_total: Optional[int] = None
    # Further host figures already named as balloon_host fields (host reclaim on local KVM
    # hosts: swap, swap traffic, KSM, zswap, memory stall totals), copied onto the host line.
    figures: Fields = field(default_factory=dict)
    # The source reports only some of the host's VMs (a filter left others out): its sums are
    # partial, and ratios against the host's memory are not written.
    partial: bool = False


@dataclass
class PollResult:
    """Everything one source poll produced."""

    samples: list[Sample] = field(default_factory=list)
    hosts: list[HostInfo] = field(default_factory=list)
    points: list[tuple[str, Tags, Fields]] = field(default_factory=list)  # other measurements
    api_latency_seconds: Optional[float] = None
    error: Optional[str] = None  # set when the poll failed as a whole (the source is down)


class Source(Protocol):
    """A balloon source: polled from its own worker thread, one call at a time."""

    kind: str  # "guest", "libvirt", ...
    instance: str  # shown in the collector's `instance` tag; never holds credentials

    def poll(self, now: float) -> PollResult:
        """Read everything for one poll; `now` is the poll's wall-clock time (seconds)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
