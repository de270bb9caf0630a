"""What a test does when a real component cannot be started."""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when CI=true: a component that cannot start is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere, always with the reason."""
    if in_ci():
        pytest.fail(f"component unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def need_program(name: str) -> str:
    """Path of a program on PATH (or in /usr/sbin), or unavailable()."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        unavailable(
            f"{name} is not installed (make test installs it: scripts/install-system-deps.sh)"
        )
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
