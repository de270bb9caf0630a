"""A short soak in every test run: 300 polls of a 200-domain node, the guest and logs sources.

The full run (20,000 polls of 500 domains) is bench/bench_soak.py; its figures are in the
README's Reliability section. This one holds the same bounds over fewer polls.
"""

from __future__ import annotations

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
