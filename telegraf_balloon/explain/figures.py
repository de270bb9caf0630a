"""Figures for people: sizes, percentages and durations as --explain prints them."""

from __future__ import annotations

MIB = 1024 * 1024
GIB = 1024 * MIB
TIB = 1024 * GIB


def size(value: object) -> str:
    """Bytes for people: MiB below 1 GiB, GiB below 1 TiB, then TiB."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    number = float(value)
    sign = "-" if number < 0 else ""
    number = abs(number)
    if number >= TIB:
        return f"{sign}{number / TIB:.1f} TiB"
    if number >= GIB:
        return f"{sign}{number / GIB:.1f} GiB"
    mib = number / MIB
    return f"{sign}{mib:.1f} MiB" if 0 < mib < 10 else f"{sign}{mib:.0f} MiB"


def percent(value: object) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{float(value) * 100:.1f}%"


def duration(seconds: float) -> str:
    """'45s', '5m', '1h30m', like the config's durations."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{hours // 24}d"
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return out + (f"{secs}s" if secs else "")


def latency(seconds: object) -> str:
    """A round trip for people: '3.2 ms', '250 ms', '1.5s'."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    value = max(0.0, float(seconds))
    if value >= 1:
        return f"{value:.1f}s"
    ms = value * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
