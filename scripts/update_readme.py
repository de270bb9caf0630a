"""Regenerate the README's generated sections (sample config, metrics tables, fields by source,
findings) from the code.

Usage: python scripts/update_readme.py [--check]   (--check: exit 1 if the README is stale)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telegraf_balloon import catalog, findings  # noqa: E402
from telegraf_balloon.cli import sample_config  # noqa: E402


def source_fields() -> str:
    """Per source, the fields it reads itself (the rest are computed from them for all)."""
    columns = [catalog.BALLOON, catalog.HOST]
    out = [
        "| source | " + " | ".join(f"`{m}` fields it fills" for m in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for source in (catalog.GUEST, catalog.LIBVIRT, catalog.VSPHERE, catalog.QMP):
        cells = []
        for measurement in columns:
            if source not in catalog.WRITTEN_BY[measurement]:
                cells.append("no line")
                continue
            _, fields = catalog.MEASUREMENTS[measurement]
            names = [f"`{f.name}`" for f in fields if source in f.sources]
            cells.append(", ".join(names) or "-")
        out.append(f"| {source} | " + " | ".join(cells) + " |")
    computed = []
    for measurement in columns:
        _, fields = catalog.MEASUREMENTS[measurement]
        names = [f"`{f.name}`" for f in fields if catalog.HEALTH in f.sources]
        computed.append(f"on `{measurement}`: " + ", ".join(names))
    out.append("")
    out.append(
        "Computed by the plugin from those, for every source that writes the line, "
        + "; ".join(computed)
        + "; and each rule's `<field>_level`."
    )
    return "\n".join(out)


def sections() -> dict[str, str]:
    return {
        "SAMPLE CONFIG": "```toml\n" + sample_config() + "```",
        "METRICS": catalog.markdown_tables().rstrip(),
        "FINDINGS": findings.markdown_table(),
        "SOURCE FIELDS": source_fields(),
    }


def render(text: str) -> str:
    for name, body in sections().items():
        pattern = re.compile(
            rf"(<!-- BEGIN {name} -->\n)(?:.*?\n)?(<!-- END {name} -->)", re.DOTALL
        )
        match = pattern.search(text)
        if match is None:
            raise SystemExit(f"README.md has no <!-- BEGIN {name} --> section")
        start, end = match.group(1), match.group(2)
        text = text[: match.start()] + start + body + "\n" + end + text[match.end() :]
    return text


def main() -> int:
    readme = ROOT / "README.md"
    current = readme.read_text(encoding="utf-8")
    updated = render(current)
    if "--check" in sys.argv[1:]:
        if updated != current:
            print("README.md is stale: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
