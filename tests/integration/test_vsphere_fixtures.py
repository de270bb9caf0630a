"""The vSphere unit tests' SOAP replies are what the simulator answers today.

scripts/capture_vsphere_fixtures.py captures them again into a temporary directory, from a
simulator of its own; each must equal the committed file (tests/fixtures/vsphere/) byte for
byte, but for the QueryPerf sample's timestamp, which is the capture's time. A change to the
simulator's launcher or to the source's requests that changes a reply fails here until the
fixtures are captured again.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.common import unavailable
from tests.stack.vcsim import launcher_available

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "capture_vsphere_fixtures.py"
FIXTURES = REPO / "tests" / "fixtures" / "vsphere"
TIMESTAMP = re.compile(rb"<timestamp>[^<]*</timestamp>")
VERSIONS = re.compile(r"^- simulator: .*$", re.MULTILINE)  # this machine's Go, govmomi, pyVmomi


def _steady(path: Path) -> bytes:
    return TIMESTAMP.sub(b"<timestamp>(the capture's time)</timestamp>", path.read_bytes())


def test_the_committed_replies_are_captured_again_the_same(tmp_path: Path) -> None:
    reason = launcher_available()
    if reason is not None:
        unavailable(reason)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    committed = sorted(p.name for p in FIXTURES.glob("*.xml"))
    assert sorted(p.name for p in tmp_path.glob("*.xml")) == committed
    assert len(committed) == 6
    for name in committed:
        assert _steady(tmp_path / name) == _steady(FIXTURES / name), (
            f"{name} differs from what the simulator answers: "
            "run scripts/capture_vsphere_fixtures.py"
        )
    # the note says how they were made, as the script writes it
    fresh, kept = ((d / "SOURCE.md").read_text() for d in (tmp_path, FIXTURES))
    assert VERSIONS.sub("", fresh) == VERSIONS.sub("", kept)
