"""The logs source: balloon troubleshooting events counted in log files and the kernel log.

- lines.py: a byte stream cut into whole lines, a long line's head kept alone;
- files.py: the followed files (rotation, truncation, copytruncate, the open-file bound);
- kmsg.py: the kernel log, read from its end;
- events.py: which lines are events (built-in and configured regexes), counted per line;
- source.py: LogsSource, which polls them and writes a balloon_log point per file and event.
"""

from .source import LogsSource

__all__ = ["LogsSource"]
