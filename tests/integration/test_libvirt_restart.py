"""libvirtd killed and restarted under a plugin running in execd mode, as Telegraf runs it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.stack.execd import Execd
from tests.stack.libvirt_stack import LibvirtStack

pytestmark = pytest.mark.integration


def _collector_up(proc: Execd, instance: str, count: int) -> tuple[bool, dict[str, object]]:
    proc.tick()
    batch = proc.wait_batches(count, timeout=20)[count - 1]
    fields = batch.collector(instance).fields
    return bool(fields["up"]), fields


def test_daemon_killed_and_restarted(
    libvirt_stack: LibvirtStack, qemu_guest: str, tmp_path: Path
) -> None:
    config = tmp_path / "plugin.toml"
    config.write_text(
        f'[agent]\ntimeout = "5s"\n[[sources.libvirt]]\nuri = "{libvirt_stack.uri}"\n'
    )
    instance = libvirt_stack.uri
    with Execd(["--config", str(config)]) as proc:
        proc.wait_ready()
        up, fields = _collector_up(proc, instance, 1)
        assert up, fields
        assert isinstance(fields["vms"], int) and fields["vms"] >= 1

        libvirt_stack.kill_daemon()
        up, fields = _collector_up(proc, instance, 2)
        assert not up
        assert isinstance(fields.get("error"), str) and fields["error"]
        assert proc.proc.poll() is None  # a dead daemon is a down poll, never an exit
        proc.wait_stderr(r"^E! libvirt ", timeout=5)

        libvirt_stack.start_daemon()
        deadline = time.monotonic() + 60
        count = 2
        while True:
            count += 1
            up, fields = _collector_up(proc, instance, count)
            if up or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert up, fields  # reconnected on its own
        guests = [m.tags["guest"] for m in proc.batches()[-1].of("balloon")]
        assert qemu_guest in guests  # the guest survived the daemon and is seen again
        proc.wait_stderr(r"^I! libvirt .*answering again", timeout=5)
        code, seconds = proc.shutdown()
        assert code == 0 and seconds < 1.0
