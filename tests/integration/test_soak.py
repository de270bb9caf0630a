"""A short soak in every test run: 300 polls of a 200-domain node, the guest and logs sources.

The full run (20,000 polls of 500 domains) is bench/bench_soak.py; its figures are in the
README's Reliability section. This one holds the same bounds over fewer polls.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.stack.common import unavailable
from tests.stack.soak import LogFeeder, soak, soak_config, write_inventory

pytestmark = pytest.mark.integration

POLLS, DOMAINS, WARMUP = 300, 200, 100


def test_short_soak_stays_flat(tmp_path: Path) -> None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt-python is not installed")
    node = write_inventory(tmp_path / "node.xml", DOMAINS)
    feeder = LogFeeder(tmp_path / "events.log", every=5, truncate_every=100)
    config = soak_config(tmp_path / "soak.toml", node, "/", tmp_path / "events.log")
    result = soak(config, POLLS, 3, 10, on_poll=feeder)
    assert result.polls == POLLS
    assert result.invalid == []
    assert result.leaks == 0  # the libvirt URI's password, in no line
    assert result.down == 0
    assert result.balloon_lines_per_poll == {DOMAINS + 1}  # every domain + this machine
    growth = result.rss_growth_kib(WARMUP)
    fds, threads = result.spread(WARMUP, "fds"), result.spread(WARMUP, "threads")
    print(f"{POLLS} polls: RSS growth {growth} KiB, fds {fds}, threads {threads}")
    assert growth < 5 * 1024
    assert fds[0] == fds[1] and threads[0] == threads[1]
    assert result.exit_code == 0
    assert not [line for line in result.stderr if line.startswith("E! ")], result.stderr


# --- a slow leak, per source ------------------------------------------------------------------

LEAK_WARMUP, LEAK_POLLS, LEAK_LIMIT_KIB = 1000, 4000, 96


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("kind", ["guest", "libvirt", "logs"])
def test_no_slow_leak_per_source(tmp_path: Path, kind: str) -> None:
    """4,000 polls of one source in this process after 1,000 of warm-up: resident memory flat.

    A leak of ~100 bytes a poll passes the soak's 5 MiB bound for a long time; here it adds
    ~400 KiB. (One read(1 MiB) per kernel file once grew the guest source so.)
    """
    import gc
    import io

    from telegraf_balloon.config import load
    from telegraf_balloon.log import Log
    from telegraf_balloon.runner import Runner
    from telegraf_balloon.sources import build_sources

    if kind == "libvirt":
        try:
            import libvirt  # noqa: F401
        except ImportError:
            unavailable("libvirt-python is not installed")
    node = write_inventory(tmp_path / "node.xml", 20)
    feeder = LogFeeder(tmp_path / "events.log", every=5, truncate_every=500)
    config = load(str(soak_config(tmp_path / "soak.toml", node, "/", tmp_path / "events.log")))
    stream = io.StringIO()
    sources = build_sources(config, Log(stream))
    chosen = [s for s in sources if s.kind == kind]
    with open(os.devnull, "wb") as sink:
        runner = Runner(config, chosen, sink, Log(stream), "soak")
        try:
            for i in range(1, LEAK_WARMUP + 1):
                feeder(i)
                assert runner.poll()
            gc.collect()
            before = _rss_kib()
            for i in range(LEAK_WARMUP + 1, LEAK_WARMUP + LEAK_POLLS + 1):
                feeder(i)
                assert runner.poll()
            gc.collect()
            growth = _rss_kib() - before
        finally:
            runner.close()
    print(f"{kind}: {LEAK_POLLS} polls in-process, RSS growth {growth} KiB")
    assert growth < LEAK_LIMIT_KIB
    assert "E! " not in stream.getvalue()
