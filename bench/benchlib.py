"""What every benchmark script shares: timing, medians, tables, verdicts and --quick.

Each bench script imports these instead of growing its own copy. ``--quick`` is understood
by every script: a short run that still prints every table, so ``make test`` can run each
one and a broken benchmark fails CI instead of rotting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the shared --quick flag; the description is doc's first line."""
    p = argparse.ArgumentParser(description=(doc or "").strip().split("\n\n")[0] or None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run that still prints every table (make test runs each bench so)",
    )
    return p


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], scale: float = 1e3, unit: str = "ms") -> str:
    """'median (min-max) unit' of seconds, scaled (ms by default)."""
    return (
        f"{median(values) * scale:,.2f} ({min(values) * scale:,.2f}-"
        f"{max(values) * scale:,.2f}) {unit}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A plain-text table; `right` says which columns are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL  <<<<<<<<<<"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"
