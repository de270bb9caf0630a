"""--explain: the troubleshooting procedure, judged from the same samples and health stage.

One poll (or a watch of several) through the same Runner the plugin uses; every finding
comes from the judged fields of that poll and the health stage's rule state, never from a
second set of rules. The findings table (telegraf_balloon/findings.py) holds every code, its
severity rule, messages and remedies.

- poll: run(), the one poll or the watch, then the judge on the last poll
- judge: Judge, which findings a poll's samples, hosts and sources raise
- templates: a finding's message and remedy filled in, commands shell-quoted
- report: Finding, the judged VM, host and source reports, the verdict and exit code
- render: to_text() for people, to_json() for scripts
- figures: sizes, percentages and durations for people
"""

from __future__ import annotations

from ..findings import markdown_table
from .poll import run
from .render import to_json, to_text

__all__ = ["markdown_table", "run", "to_json", "to_text"]
