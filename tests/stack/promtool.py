"""Thin wrappers around Prometheus' ``promtool`` (Debian's prometheus package ships it).

``promtool check rules FILE`` validates a rules file; ``promtool test rules FILE`` runs unit
tests of alerting and recording rules on synthetic series.  Both return ``(returncode,
output)`` with stdout and stderr together, so a failing assertion can show what promtool said.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional, Tuple, Union

__all__ = ["PromtoolError", "check_rules", "find_promtool", "run_promtool", "test_rules"]

PathLike = Union[str, "os.PathLike[str]"]


class PromtoolError(RuntimeError):
    """promtool is not installed."""


def find_promtool() -> Optional[str]:
    """Path of ``promtool`` on PATH or in /usr/bin; None when it is not installed."""
    return shutil.which("promtool") or shutil.which("promtool", path="/usr/bin:/usr/local/bin")


def run_promtool(
    *args: str, promtool: Optional[str] = None, timeout: float = 120.0
) -> Tuple[int, str]:
    """Run ``promtool ARGS...``: (returncode, stdout and stderr)."""
    binary = promtool or find_promtool()
    if binary is None:
        raise PromtoolError("promtool is not installed (apt-get install prometheus)")
    proc = subprocess.run(
        [binary, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def check_rules(path: PathLike, promtool: Optional[str] = None) -> Tuple[int, str]:
    """``promtool check rules PATH``: (returncode, output)."""
    return run_promtool("check", "rules", os.fspath(path), promtool=promtool)


def test_rules(path: PathLike, promtool: Optional[str] = None) -> Tuple[int, str]:
    """``promtool test rules PATH``: (returncode, output).

    Rule files named in the test file are resolved relative to the test file's directory.
    """
    return run_promtool("test", "rules", os.fspath(path), promtool=promtool)


test_rules.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
