"""Command line: argument parsing, config loading, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from typing import NoReturn, Optional, Sequence

from . import __version__
from .config import DEFAULT_PATH, Config, ConfigError, default_config, hostname, load
from .config import parse_duration as _parse_duration
from .log import Log
from .model import Source
from .runner import Runner, StdoutClosed
from .sources import SetupError, build_sources

EXIT_OK, EXIT_SOURCE_DOWN, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"E! telegraf-balloon: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def sample_config() -> str:
    """The commented sample config shipped with the package."""
    return resources.files("telegraf_balloon").joinpath("sample.toml").read_text("utf-8")


def _duration(text: str) -> float:
    try:
        seconds = _parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return seconds


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = _Parser(
        prog="telegraf-balloon",
        description="Report VM memory ballooning as InfluxDB line protocol for Telegraf's "
        "inputs.execd (one poll per stdin line, SIGHUP, SIGUSR1 or SIGUSR2).",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"the plugin's TOML config (default: {DEFAULT_PATH}, else the guest source on /)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--interval",
        metavar="DURATION",
        type=_duration,
        help='self-timed mode for signal = "none": poll every DURATION',
    )
    mode.add_argument(
        "--once",
        action="store_true",
        help="one poll, print, exit (0 when every source answered, 1 otherwise)",
    )
    mode.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print a summary, exit 0 or 2",
    )
    mode.add_argument(
        "--sample-config", action="store_true", help="print the commented sample config"
    )
    mode.add_argument(
        "--explain",
        action="store_true",
        help="poll, then say per VM and host what is wrong and what to do "
        "(exit 0 nothing to act on, 1 something to act on)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        help="with --explain: text for people (default) or json for scripts",
    )
    parser.add_argument(
        "--watch",
        metavar="DURATION",
        type=_duration,
        help="with --explain: poll every 2s for DURATION, so rates, stuck_for and a "
        "threshold's for can be judged",
    )
    parser.add_argument("--all", action="store_true", help="with --explain: list healthy VMs too")
    parser.add_argument("--debug", action="store_true", help="D! lines on stderr")
    parser.add_argument("--version", action="version", version=f"telegraf-balloon {__version__}")
    args = parser.parse_args(argv)
    if not args.explain:
        for flag, given in (
            ("--format", args.format),
            ("--watch", args.watch),
            ("--all", args.all),
        ):
            if given:
                parser.error(f"{flag} is only valid with --explain")
    return args


def load_config(path: Optional[str]) -> Config:
    if path is not None:
        return load(path)
    if os.path.exists(DEFAULT_PATH):
        return load(DEFAULT_PATH)
    return default_config()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    log = Log(debug=args.debug)
    if args.sample_config:
        sys.stdout.write(sample_config())
        return EXIT_OK
    try:
        config = load_config(args.config)
        for warning in config.warnings:
            log.warn(warning)
        sources = build_sources(config, log)
    except (ConfigError, SetupError) as exc:
        log.error(str(exc))
        return EXIT_USAGE
    if args.check_config:
        print(config.summary())
        return EXIT_OK
    if args.explain:
        return _explain(args, config, sources, log)
    runner = Runner(config, sources, sys.stdout.buffer, log, hostname(config))
    code = EXIT_OK
    try:
        if args.once:
            code = EXIT_OK if runner.poll() else EXIT_SOURCE_DOWN
        else:
            runner.install_signals()
            log.info(f"telegraf-balloon {__version__} started: {config.summary()}")
            code = runner.run(sys.stdin.buffer, args.interval)
    except StdoutClosed:
        # Nobody reads our lines any more: leave quietly, and keep Python's exit
        # handler from complaining about the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_OK
    runner.close()
    sys.stderr.flush()
    if any(w.busy for w in runner.workers):
        # A source call is stuck in a C library: do not wait for it at exit.
        os._exit(code)
    return code


def _explain(args: argparse.Namespace, config: Config, sources: list[Source], log: Log) -> int:
    from . import explain

    report = explain.run(config, sources, log, hostname(config), watch=args.watch)
    if args.format == "json":
        text = explain.to_json(report)
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        text = explain.to_text(report, colour=colour, show_all=args.all)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.stderr.flush()
    code = report.exit_code
    if report.busy:
        # A source call is stuck in a C library: do not wait for it at exit.
        os._exit(code)
    return code
