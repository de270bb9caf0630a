"""The vSphere source's poll itself, without a server (with one: tests/integration)."""

from __future__ import annotations

import gc

import pytest

from telegraf_balloon.gcpause import gc_paused


def test_gc_paused_during_a_poll_and_restored_after() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a failed poll")
    assert gc.isenabled()  # back on after a failure too
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # off before (by the program): left off
    finally:
        gc.enable()
