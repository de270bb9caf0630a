"""The pure parsers of the guest source: kernel formats in, plain data out, Malformed otherwise.

Real inputs come from tests/fixtures/guest/ (see each case's SOURCE.md): the Firecracker 6.18
capture, and files written from the kernel's format strings (vmw_balloon.c, hv_balloon.c).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from telegraf_balloon.sources.guest.parsers import (
    Malformed,
    blacklisted_modules,
    parse_features,
    parse_hv_balloon,
    parse_meminfo,
    parse_thp,
    parse_ulong,
    parse_vmmemctl,
    parse_vmstat,
)

FIXTURES = Path(__file__).parent / "fixtures" / "guest"
CAPTURE = FIXTURES / "firecracker-6.18-virtio-balloon" / "root"


def fixture_text(case: str, rel: str) -> str:
    return (FIXTURES / case / "root" / rel).read_text(encoding="utf-8")


# --- /proc/meminfo ----------------------------------------------------------------------------


def test_meminfo_real_capture() -> None:
    info = parse_meminfo((CAPTURE / "proc" / "meminfo").read_text(encoding="utf-8"))
    assert info["MemTotal"] == 24684092
    assert info["MemFree"] == 23230036
    assert info["MemAvailable"] == 24156148
    assert info["Balloon"] == 0
    assert info["SwapTotal"] == 0
    assert info["Active(anon)"] == 1572  # parenthesised names kept whole
    assert info["HugePages_Total"] == 0  # a line without a unit
    assert info["VmallocTotal"] == 34359738367  # wider than the usual 8 digits
    assert len(info) == 54  # every line of the capture


def test_meminfo_values_stay_in_kb() -> None:
    assert parse_meminfo("MemTotal:         481296 kB\n\n") == {"MemTotal": 481296}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "MemFree:        23230036 kB\n",  # no MemTotal
        "MemTotal:       24684092 kB\nBalloon:              -4 kB\n",
        "MemTotal:       24684092 kB\nMemFree:        lots kB\n",
        "MemTotal:       24684092 kB\nMemFree:\n",
        "MemTotal:       24684092 kB kB\n",
        "MemTotal        24684092 kB\n",  # no colon
    ],
)
def test_meminfo_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_meminfo(text)


# --- /proc/vmstat -----------------------------------------------------------------------------


def test_vmstat_real_capture() -> None:
    stats = parse_vmstat((CAPTURE / "proc" / "vmstat").read_text(encoding="utf-8"))
    assert stats["nr_balloon_pages"] == 0
    assert stats["balloon_inflate"] == 0
    assert stats["balloon_deflate"] == 0
    assert stats["balloon_migrate"] == 0
    assert stats["pgmajfault"] == 570
    assert stats["pgfault"] == 1599041
    assert stats["oom_kill"] == 0
    assert stats["pswpin"] == 0 and stats["pswpout"] == 0
    assert len(stats) == 192  # every line of the capture


def test_vmstat_6_1_console_log_counters() -> None:
    text = "balloon_inflate 65536\nballoon_deflate 43008\nballoon_migrate 0\n"
    assert parse_vmstat(text) == {
        "balloon_inflate": 65536,
        "balloon_deflate": 43008,
        "balloon_migrate": 0,
    }


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "pgmajfault five-hundred-seventy\n",
        "pgmajfault 570 570\n",
        "pgmajfault\n",
    ],
)
def test_vmstat_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_vmstat(text)


# --- virtio features --------------------------------------------------------------------------


def test_features_real_capture() -> None:
    text = (CAPTURE / "sys/bus/virtio/devices/virtio0/features").read_text(encoding="utf-8")
    bits = parse_features(text)
    assert len(bits) == 128
    assert [i for i, bit in enumerate(bits) if bit] == [1, 2, 5, 7, 32]


def test_features_6_1_console_log() -> None:
    bits = parse_features("0100000000000000000000000000010010000000100000000000000000000000\n")
    assert len(bits) == 64
    assert [i for i, bit in enumerate(bits) if bit] == [1, 29, 32, 40]


@pytest.mark.parametrize("text", ["", "\n", "01100101zz\n", "0110 0101\n", "0x25\n", "²\n"])
def test_features_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_features(text)


# --- transparent hugepages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
    ],
)
def test_thp(text: str, mode: str) -> None:
    assert parse_thp(text) == mode


def test_thp_real_capture() -> None:
    text = (CAPTURE / "sys/kernel/mm/transparent_hugepage/enabled").read_text(encoding="utf-8")
    assert parse_thp(text) == "madvise"


@pytest.mark.parametrize("text", ["", "always madvise never\n", "[] madvise\n", "always [\n"])
def test_thp_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_thp(text)


# --- vmw_balloon debugfs ----------------------------------------------------------------------


def test_vmmemctl_4_20_format() -> None:
    text = fixture_text("vmware-4.20-current-below-target", "sys/kernel/debug/vmmemctl")
    stats = parse_vmmemctl(text)
    # the size lines, in 4 KiB pages
    assert stats["target"] == 262144
    assert stats["current"] == 131072
    # the GET_TARGET command counter of the same name must not replace the target
    assert stats["target calls"] == 7211
    assert stats["target failed"] == 0
    assert stats["balloon capabilities"] == 0x3E
    assert stats["timer"] == 7211
    assert "is resetting" not in stats  # "n" is not a number


def test_vmmemctl_legacy_format() -> None:
    text = fixture_text("vmware-legacy-4.19", "sys/kernel/debug/vmmemctl")
    stats = parse_vmmemctl(text)
    assert stats["target"] == 32768  # "target:                32768 pages"
    assert stats["current"] == 65536
    assert stats["target calls"] == 3712  # "target:                 3712 (   0 failed)"
    assert stats["start failed"] == 0
    assert stats["prim2mAlloc calls"] == 192
    assert stats["prim2mFree"] == 64


def test_vmmemctl_counter_before_size_does_not_win() -> None:
    # whatever the order, the line with "(N failed)" is the command counter
    text = "target: 20 (1 failed)\ntarget: 4096 pages\ncurrent: 1024 pages\n"
    stats = parse_vmmemctl(text)
    assert (stats["target"], stats["current"]) == (4096, 1024)
    assert (stats["target calls"], stats["target failed"]) == (20, 1)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x7fELF\x02\x01\x01 not vmmemctl output\ntarget: lots\ncurrent:\n",
        "target                :           262144\n",  # no current
        "current: 1024 pages\n",  # no target
        "target: 20 (0 failed)\ncurrent: 1024 pages\n",  # only the command counter
    ],
)
def test_vmmemctl_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_vmmemctl(text)


# --- hv_balloon debugfs -----------------------------------------------------------------------


def test_hv_balloon_6_0_format() -> None:
    stats = parse_hv_balloon(fixture_text("hyperv-valid", "sys/kernel/debug/hv-balloon"))
    assert stats["pages_ballooned"] == "262144"
    assert stats["page_size"] == "4096"
    assert stats["host_version"] == "2.0"
    assert stats["capabilities"] == "enabled hot_add"
    assert stats["state"] == "2 (Balloon Up)"
    assert stats["max_dynamic_page_count"] == "4194304"


def test_hv_balloon_generic_keys() -> None:
    # vendor kernels add or rename keys: any "key: value" line is kept
    stats = parse_hv_balloon("pages_ballooned: 12\nvendor_thing : x : y\n")
    assert stats == {"pages_ballooned": "12", "vendor_thing": "x : y"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "host_version          : 2.0\n",
        "pages_ballooned       : (unavailable)\n",
        "pages_ballooned       :\n",
        "pages_ballooned       : -1\n",
    ],
)
def test_hv_balloon_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_hv_balloon(text)


# --- xen_memory0 attributes -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("3145728\n", 3145728), ("0\n", 0), (" 7 ", 7)])
def test_ulong(text: str, value: int) -> None:
    assert parse_ulong(text) == value


@pytest.mark.parametrize("text", ["", "\n", "n/a\n", "-1\n", "12 kB\n", "0x10\n"])
def test_ulong_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_ulong(text)


# --- blacklists -------------------------------------------------------------------------------


def test_blacklist_modprobe_d() -> None:
    conf = (
        "# blacklist hv_balloon  (a comment)\n"
        "blacklist virtio_balloon\n"
        "blacklist   vmw-balloon   # trailing comment\n"
        "install xen_balloon /bin/false\n"
        "install hv_balloon /bin/true\n"
        "install virtio_console /sbin/modprobe --ignore-install virtio_console\n"
        "blacklist\n"
        "options virtio_balloon foo=1\n"
    )
    assert blacklisted_modules([conf], "") == {
        "virtio_balloon",
        "vmw_balloon",
        "xen_balloon",
        "hv_balloon",
    }


def test_blacklist_cmdline() -> None:
    cmdline = (
        "BOOT_IMAGE=/boot/vmlinuz-6.1.0-56-cloud-amd64 root=/dev/vda1 ro "
        "module_blacklist=floppy,virtio_balloon modprobe.blacklist=hv-balloon,, quiet\n"
    )
    assert blacklisted_modules([], cmdline) == {"floppy", "virtio_balloon", "hv_balloon"}


def test_blacklist_nothing() -> None:
    assert blacklisted_modules([], "") == set()
    assert blacklisted_modules(["alias virtio:d00000005v* virtio_balloon\n"], "ro quiet") == set()
    assert blacklisted_modules([], "module_blacklist= virtio_balloon") == set()


def test_blacklist_several_files() -> None:
    assert blacklisted_modules(["blacklist a\n", "blacklist b\n"], "") == {"a", "b"}


# --- no input makes a parser raise anything but Malformed -------------------------------------

PARSERS: list[Callable[[str], object]] = [
    parse_meminfo,
    parse_vmstat,
    parse_features,
    parse_thp,
    parse_vmmemctl,
    parse_hv_balloon,
    parse_ulong,
]

# text shaped like the kernel files, so the search gets past the first checks
kernel_like = st.lists(
    st.tuples(
        st.sampled_from(["MemTotal", "target", "current", "pages_ballooned", "x", " ", ""]),
        st.sampled_from([":", " ", ": ", ":  ", ""]),
        st.text(alphabet="0123456789-x ()²kBpagesfailed\t", max_size=12),
    ).map(lambda t: "".join(t)),
    max_size=6,
).map("\n".join)


def never_raises_but_malformed(parser: Callable[[str], object], text: str) -> None:
    with contextlib.suppress(Malformed):
        parser(text)


# Pinned inputs that str.isdigit() accepts and int() refuses: superscript digits ("²" is a
# digit to isdigit(), not a decimal) and a doubled minus sign (vmstat's lstrip("-")).
@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@given(text=st.one_of(st.text(), kernel_like))
@example(text="MemTotal: ² kB")
@example(text="pgmajfault --5")
@example(text="pgmajfault ²")
@example(text="target: ²\ncurrent: 1")
@example(text="²")
def test_parsers_raise_only_malformed(parser: Callable[[str], object], text: str) -> None:
    never_raises_but_malformed(parser, text)


@given(text=st.one_of(st.text(), kernel_like))
@example(text="pages_ballooned: ²\npage_size: 4096")
@example(text="pages_ballooned: 1\npage_size: ²")
def test_hv_balloon_numbers_are_numbers(text: str) -> None:
    """What poll() turns into int (pages_ballooned, and page_size when isdigit()) must be."""
    try:
        stats = parse_hv_balloon(text)
    except Malformed:
        return
    int(stats["pages_ballooned"])
    if stats.get("page_size", "").isdigit():
        int(stats["page_size"])


@given(
    confs=st.lists(st.text(), max_size=3),
    cmdline=st.one_of(st.text(), st.just("module_blacklist=,=,a=b=c modprobe.blacklist")),
)
def test_blacklisted_modules_never_raises(confs: list[str], cmdline: str) -> None:
    assert isinstance(blacklisted_modules(confs, cmdline), set)
