"""The guest source's pure parsers: a kernel file's text in, plain data out.

No I/O here: each parser takes the text of one /proc, /sys or debugfs file (or of modprobe.d
files and the kernel command line) and returns what it says, or raises Malformed when the
text does not follow the kernel's format.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Optional

INT64_MAX = 2**63 - 1

# virtio balloon feature bits (include/uapi/linux/virtio_balloon.h)
F_STATS_VQ, F_DEFLATE_ON_OOM, F_FREE_PAGE_HINT, F_REPORTING = 1, 2, 3, 5


class Malformed(ValueError):
    """A file whose content does not follow the kernel's format."""


def decimal(text: str) -> int:
    """A plain ASCII decimal (str.isdigit() also accepts '²', which int() refuses)."""
    if not text.isascii() or not text.isdigit():
        raise Malformed(f"not a number: {text[:40]!r}")
    # Beyond int64 no consumer can store it (and int() refuses over 4300 digits).
    if len(text) > 19 or int(text) > INT64_MAX:
        raise Malformed(f"number out of range: {text[:40]!r}")
    return int(text)


# MemTotal:       24684092 kB
# HugePages_Total:       0
def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: value} (kB values stay in kB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or not words or len(words) > 2:
            raise Malformed(f"unexpected line {line[:60]!r}")
        out[name.strip()] = decimal(words[0])
    if "MemTotal" not in out:
        raise Malformed("no MemTotal line")
    return out


# nr_balloon_pages 0
# balloon_inflate 65536
def parse_vmstat(text: str) -> dict[str, int]:
    """/proc/vmstat -> {key: count}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise Malformed(f"unexpected line {line[:60]!r}")
        value = words[1]
        # counters are unsigned, but a few gauges (nr_*) can read negative on some kernels
        out[words[0]] = -decimal(value[1:]) if value.startswith("-") else decimal(value)
    if not out:
        raise Malformed("empty")
    return out


# some avg10=0.00 avg60=0.00 avg300=0.00 total=4511963
# full avg10=0.00 avg60=0.00 avg300=0.00 total=3982741
def parse_psi(text: str) -> tuple[float, Optional[float]]:
    """/proc/pressure/memory -> (some, full) stall totals in seconds (µs in the file); full
    is None where the kernel writes no full line."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        fields = dict(word.partition("=")[::2] for word in words[1:])
        if words[0] not in ("some", "full") or "total" not in fields:
            raise Malformed(f"unexpected line {line[:60]!r}")
        totals[words[0]] = decimal(fields["total"]) / 1e6
    if "some" not in totals:
        raise Malformed("no some line")
    return totals["some"], totals.get("full")


# 01100101000000000000000000000000100000000000...   (character i = feature bit i)
def parse_features(text: str) -> list[bool]:
    """virtio device `features` file -> bit list."""
    bits = text.strip()
    if not bits or any(c not in "01" for c in bits):
        raise Malformed(f"not a bit string: {bits[:40]!r}")
    return [c == "1" for c in bits]


# always [madvise] never
def parse_thp(text: str) -> str:
    """transparent_hugepage/enabled -> the bracketed mode."""
    match = re.search(r"\[(\w+)\]", text)
    if match is None:
        raise Malformed(f"no [mode] in {text.strip()[:40]!r}")
    return match.group(1)


# Kernel 4.20+ (drivers/misc/vmw_balloon.c, "%-22s: %16llu"):
#   balloon capabilities  :             0x3e
#   is resetting          :                n
#   target                :             4096
#   current               :             1024
#   start                 :                1 (               0 failed)
# Kernel 4.19 and older:
#   target:                 4096 pages
#   current:                1024 pages
#   start:                     1 (   0 failed)
_VMW_LINE = re.compile(
    r"^\s*([A-Za-z][\w \-()]*?)\s*:\s*(\S+)(?:\s+pages)?(?:\s*\(\s*(\d+) failed\))?"
)


def parse_vmmemctl(text: str) -> dict[str, int]:
    """debugfs vmmemctl (both formats) -> {'target': pages, 'current': pages, ...}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        match = _VMW_LINE.match(line)
        if match is None:
            continue
        name, value, failed = match.group(1).strip(), match.group(2), match.group(3)
        if failed is not None:
            # A command counter ("target: 20 (0 failed)" counts GET_TARGET calls): kept apart
            # from the balloon's own "target" and "current" lines of the same name.
            name += " calls"
            out[name[:-6] + " failed"] = decimal(failed)
        if name in out:
            continue
        try:
            number = int(value, 16) if value.startswith("0x") else decimal(value)
        except ValueError:  # Malformed included: a line we cannot read is skipped
            continue
        if number <= INT64_MAX:
            out[name] = number
    if "target" not in out or "current" not in out:
        raise Malformed("no numeric target/current lines")
    return out


# host_version          : 10.0
# state                 : 2 (Balloon Up)
# page_size             : 4096
# pages_ballooned       : 1024
def parse_hv_balloon(text: str) -> dict[str, str]:
    """debugfs hv-balloon -> {key: raw value}; vendor kernels differ, so keys are generic."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    if "pages_ballooned" not in out:
        raise Malformed("no pages_ballooned line")
    decimal(out["pages_ballooned"])
    if "page_size" in out:
        decimal(out["page_size"])
    return out


# 123456\n  (each xen_memory0 attribute is one "%lu\n")
def parse_ulong(text: str) -> int:
    return decimal(text.strip())


# processor	: 0
# flags		: fpu vme de pse tsc msr pae mce cx8 ... hypervisor lahf_lm ...
def parse_cpu_hypervisor(text: str) -> Optional[bool]:
    """/proc/cpuinfo -> whether the CPU runs under a hypervisor: x86's `hypervisor` flag
    (CPUID leaf 1, ECX bit 31, which every x86 hypervisor sets). None without a complete
    `flags` line (other architectures have none): no answer, which is not a "no"."""
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a line cut by a partial read could lack the flag only because it is cut
    seen = False
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip() == "flags":
            if "hypervisor" in value.split():
                return True
            seen = True
    return False if seen else None


# 4c4c4544-0051-3510-8051-b4c04f564433
def parse_uuid(text: str) -> str:
    """DMI product_uuid -> its canonical lower-case form."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise Malformed(f"not a UUID: {text.strip()[:40]!r}") from None


# blacklist virtio_balloon
# install vmw_balloon /bin/false
def blacklisted_modules(conf_texts: list[str], cmdline: str) -> set[str]:
    """Module names that modprobe.d files or the kernel command line refuse to load."""
    out: set[str] = set()
    for text in conf_texts:
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if (len(words) >= 2 and words[0] == "blacklist") or (
                len(words) >= 3
                and words[0] == "install"
                and os.path.basename(words[2]) in ("false", "true")
            ):
                out.add(words[1].replace("-", "_"))
    for word in cmdline.split():
        name, _, value = word.partition("=")
        if name == "modprobe.blacklist":  # read by kmod, which takes - and _ alike
            out.update(v.replace("-", "_") for v in value.split(",") if v)
        elif name == "module_blacklist":  # matched by the kernel as written
            out.update(v for v in value.split(",") if v)
    return out


# 8000000\n  (memory/block_size_bytes: "%lx\n", no 0x)
def parse_hex(text: str) -> int:
    """A positive hexadecimal number without 0x."""
    digits = text.strip()
    if not digits or len(digits) > 15 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise Malformed(f"not a hexadecimal number: {digits[:40]!r}")
    value = int(digits, 16)
    if value <= 0:
        raise Malformed(f"not a size: {digits[:40]!r}")
    return value


# /proc/iomem (kernel/resource.c: two spaces per level, "start-end : name"); virtio-mem
# (drivers/virtio/virtio_mem.c) claims its device's whole region under the device's name and
# adds each memory block it plugs into as "System RAM (virtio_mem)" beneath it:
# 100000000-11fffffff : virtio0
#   100000000-10fffffff : System RAM (virtio_mem)
# Readers other than root see every address as 0.
VMEM_RAM = "System RAM (virtio_mem)"


def parse_vmem_iomem(
    text: str, devices: set[str]
) -> Optional[dict[str, tuple[int, list[tuple[int, int]]]]]:
    """/proc/iomem -> {virtio device: (region size, [(start, end) of each block added])}
    for the named virtio-mem devices found at the top level; None where the addresses are
    hidden (a reader other than root)."""
    out: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    current: Optional[list[tuple[int, int]]] = None
    hidden = True
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        span, sep, name = line.strip().partition(" : ")
        first, dash, last = span.partition("-")
        if not sep or not dash:
            raise Malformed(f"unexpected line {line[:60]!r}")
        try:
            start, end = int(first, 16), int(last, 16)
        except ValueError:
            raise Malformed(f"unexpected line {line[:60]!r}") from None
        if end:
            hidden = False
        if indent == 0:
            current = None
            if name in devices:
                current = []
                out[name] = (end - start + 1 if end >= start else 0, current)
        elif indent == 2 and current is not None and name == VMEM_RAM and end >= start:
            current.append((start, end))
    return None if hidden else out
