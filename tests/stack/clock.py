"""A clock that a test or a bench moves by hand, handed to what takes a clock."""

from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    """Returns ``now`` when called; the caller sets or advances it (``clock.now += 20``)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
