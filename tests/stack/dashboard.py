"""scripts/build_dashboard.py as a module for tests (scripts/ is not a package)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_dashboard.py"


@functools.cache
def generator() -> ModuleType:
    """The dashboard generator, loaded once (registered in sys.modules for its dataclasses)."""
    spec = importlib.util.spec_from_file_location("build_dashboard", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
