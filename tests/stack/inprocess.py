"""The plugin run in this process: the real runner and sources, its output parsed and checked.

For integration tests that need many polls quickly and the sources' objects at hand; the
execd harness (tests/stack/execd.py) is for the plugin as a child process, as Telegraf runs it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import line_protocol_parser

from telegraf_balloon import catalog
from telegraf_balloon.config import load_text
from telegraf_balloon.log import Log
from telegraf_balloon.runner import Runner
from telegraf_balloon.sources import build_sources
from tests.stack.common import unavailable, wait_for
from tests.stack.node_xml import DomainSpec, write_node_xml

__all__ = [
    "Plugin",
    "rootless_plugin",
    "wait_for",
]  # wait_for: the toolkit's, for the tests that import it here


class Plugin:
    """The real runner with real sources, its output parsed line by line (closed at the end
    of a `with` block)."""

    def __init__(self, toml: str) -> None:
        self.log_stream = io.StringIO()
        log = Log(self.log_stream)
        config = load_text(toml, "test.toml")
        self.out = io.BytesIO()
        self.sources = build_sources(config, log)
        self.runner = Runner(config, self.sources, self.out, log, "plugin-host")

    def poll(self) -> list[dict[str, Any]]:
        """One poll; every line it wrote, parsed, each held to the field catalog."""
        start = self.out.tell()
        self.runner.poll()
        text = self.out.getvalue()[start:].decode()
        lines = [line_protocol_parser.parse_line(line) for line in text.splitlines()]
        for line in lines:
            problems = catalog.check_point(line["measurement"], line["tags"], line["fields"])
            assert problems == [], problems
        return lines

    def vm(self, guest: str) -> dict[str, Any]:
        """The fields of `guest`'s balloon line in one poll."""
        for line in self.poll():
            if line["measurement"] == "balloon" and line["tags"].get("guest") == guest:
                return dict(line["fields"])
        raise AssertionError(f"no balloon line for {guest}: {self.log_stream.getvalue()}")

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rootless_plugin(folder: Path, domains: Sequence[DomainSpec], more: str = "") -> Plugin:
    """The plugin over sources that need no root: libvirt's test driver on a node file of
    `domains` and a QMP source whose glob matches no socket (both under `folder`), then the
    TOML in `more`. Unavailable without the libvirt binding."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        unavailable("libvirt-python is not installed (make setup)")
    node = folder / "node.xml"
    write_node_xml(node, list(domains))
    (folder / "qmp").mkdir()
    return Plugin(
        f'[[sources.libvirt]]\nuri = "test://{node}"\n'
        f'[[sources.qmp]]\nsockets = ["{folder}/qmp/*.qmp"]\nproxmox_config = ""\n' + more
    )
