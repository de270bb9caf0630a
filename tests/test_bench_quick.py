"""Every benchmark still runs: each bench script in --quick mode exits 0 and prints its table.

Benchmarks are not tests (they print side-by-side figures and never fail on a target); this
only keeps them from rotting. Every ``bench/bench_*.py`` is found by glob, so a bench added
later is covered too, and must accept ``--quick``. A bench that starts a real component is an
integration test here. Scripts in ``bench/archive/`` (one-off measurements whose figures the
README keeps) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.common import need_program, unavailable

BENCH = Path(__file__).resolve().parents[1] / "bench"
# A table's rule line: groups of dashes under its column headers.
RULE = re.compile(r"^\s*-{3,}(\s+-+)*\s*$", re.MULTILINE)
# Benches that start real components (a private libvirtd, QEMUs, the vCenter simulator), and
# the programs they need.
NEEDS: dict[str, tuple[str, ...]] = {
    "bench_libvirt.py": ("libvirtd", "qemu-system-x86_64", "unshare"),
    "bench_libvirt_vmem.py": ("libvirtd", "qemu-system-x86_64", "unshare"),
    "bench_qmp.py": ("qemu-system-x86_64",),
    "bench_vsphere.py": (),
}
TIMEOUT = 300.0  # seconds; the quick runs take under a minute here


def _scripts() -> list[object]:
    found = sorted(BENCH.glob("bench_*.py"))
    return [
        pytest.param(path, id=path.name, marks=[pytest.mark.integration] * (path.name in NEEDS))
        for path in found
    ]


def test_every_bench_is_covered() -> None:
    """The glob finds the benches this suite knows about (a renamed one is not lost)."""
    names = {getattr(p, "id", "") for p in _scripts()}
    assert {"bench_health.py", "bench_lineprotocol.py", "bench_libvirt.py"} <= names


@pytest.mark.parametrize("script", _scripts())
def test_bench_runs_quick(script: Path) -> None:
    for program in NEEDS.get(script.name, ()):
        need_program(program)
    if script.name in ("bench_libvirt.py", "bench_libvirt_vmem.py") and os.geteuid() != 0:
        unavailable(f"{script.name} starts a private libvirtd: it needs root")
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=BENCH.parent,
        check=False,
    )
    tail = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, tail
    assert RULE.search(proc.stdout), f"no table printed\n{tail}"
    assert "Traceback" not in proc.stderr, tail
