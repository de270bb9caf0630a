"""The command line as users and Telegraf run it: `python -m telegraf_balloon ...` subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import line_protocol_parser
import pytest

from telegraf_balloon import __version__, catalog
from telegraf_balloon.config import load_text
from tests.stack.common import free_port, unavailable
from tests.stack.execd import REPO, copy_guest_root, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on old Pythons only
    import tomli as tomllib

SAMPLE = REPO / "telegraf_balloon" / "sample.toml"


def run(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; every stderr line must carry a Telegraf level prefix."""
    return run_cli(*args, env=env, timeout=30)


def parse_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as line protocol (an unparsable line fails the test)."""
    out = []
    for line in stdout.splitlines():
        parsed = line_protocol_parser.parse_line(line)
        assert isinstance(parsed, dict), line
        out.append(parsed)
    return out


def guest_root(path: Path, relink: bool = True) -> Path:
    try:
        return copy_guest_root(path, relink=relink)
    except FileNotFoundError as exc:
        unavailable(str(exc))


def write_config(path: Path, body: str) -> str:
    path.write_text(body, encoding="utf-8")
    return str(path)


def guest_config(path: Path, *roots: Path) -> str:
    body = '[agent]\nhostname = "vm"\n'
    body += "".join(f'\n[[sources.guest]]\nroot = "{root}"\n' for root in roots)
    return write_config(path, body)


def assert_usage_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("E! "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- information ------------------------------------------------------------------------------


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout == f"telegraf-balloon {__version__}\n"
    assert done.stderr == ""


def test_help() -> None:
    done = run("--help")
    assert done.returncode == 0
    for flag in ("--config", "--interval", "--once", "--check-config", "--sample-config"):
        assert flag in done.stdout


def test_sample_config() -> None:
    done = run("--sample-config")
    assert done.returncode == 0
    assert done.stderr == ""
    assert done.stdout == SAMPLE.read_text(encoding="utf-8")
    assert tomllib.loads(done.stdout)["sources"]["guest"] == [{"root": "/"}]
    loaded = load_text(done.stdout, "sample.toml", {})
    assert loaded.source_count() == 1


def test_sample_config_ignores_a_bad_config(tmp_path: Path) -> None:
    done = run("--sample-config", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 0
    assert done.stdout == SAMPLE.read_text(encoding="utf-8")


# --- --check-config ---------------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path) -> None:
    config = guest_config(tmp_path / "c.toml", tmp_path / "a", tmp_path / "b")
    done = run("--check-config", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{config}: ok")
    assert "2 guest" in lines[0]


def test_check_config_sample(tmp_path: Path) -> None:
    config = write_config(tmp_path / "sample.toml", SAMPLE.read_text(encoding="utf-8"))
    done = run("--check-config", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "12 threshold rule(s)" in done.stdout


def test_check_config_expands_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", '[[sources.guest]]\nroot = "${GUEST_ROOT}"\n')
    assert run("--check-config", "--config", config, env={"GUEST_ROOT": "/x"}).returncode == 0
    done = run("--check-config", "--config", config, env={"GUEST_ROOT_UNRELATED": "1"})
    assert_usage_error(done, config, "sources.guest[0].root", "GUEST_ROOT")


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ('[agent]\ntimeout = "5x"\n[[sources.guest]]\n', "agent.timeout", "bad duration"),
        ("[[sources.guest]]\nbogus = true\n", "sources.guest[0].bogus", "unknown key"),
        ("[agent\n", "TOML syntax", "line 1"),
        ("", "sources", "no source"),
        (
            '[[sources.guest]]\n[[thresholds]]\nfield = "thp_mode"\nwarn = 1\n',
            "thresholds[0].field",
            "thp_mode",
        ),
    ],
    ids=["duration", "unknown-key", "syntax", "no-source", "threshold-string-field"],
)
def test_check_config_error(tmp_path: Path, body: str, key: str, fragment: str) -> None:
    config = write_config(tmp_path / "bad.toml", body)
    done = run("--check-config", "--config", config)
    assert_usage_error(done, config, key, fragment)


def test_config_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    for args in (["--check-config"], ["--once"], []):
        done = run(*args, "--config", missing)
        assert_usage_error(done, missing, "cannot read config")


def test_config_is_a_directory(tmp_path: Path) -> None:
    assert_usage_error(run("--once", "--config", str(tmp_path)), str(tmp_path))


def test_vsphere_with_nothing_listening_is_down_not_fatal(tmp_path: Path) -> None:
    """A vCenter port with nothing behind it: one E! line and up=false, exit 1; no secret."""
    port = free_port()
    config = write_config(
        tmp_path / "c.toml",
        f'[[sources.vsphere]]\nurl = "https://127.0.0.1:{port}/sdk"\npassword = "s3cret"\n',
    )
    done = run("--once", "--config", config)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "s3cret" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("E! ")]
    assert len(errors) == 1 and "vsphere" in errors[0], done.stderr
    points = parse_lines(done.stdout)
    assert [p["measurement"] for p in points] == [catalog.COLLECTOR]
    assert points[0]["fields"]["up"] is False
    assert points[0]["tags"]["instance"] == f"127.0.0.1:{port}"


# --- --once -----------------------------------------------------------------------------------


def test_once_against_fixture_root(tmp_path: Path) -> None:
    root = guest_root(tmp_path / "guest")
    done = run("--once", "--config", guest_config(tmp_path / "c.toml", root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "E! " not in done.stderr
    points = parse_lines(done.stdout)
    assert [p["measurement"] for p in points] == [catalog.BALLOON, catalog.COLLECTOR]
    assert len({p["time"] for p in points}) == 1, "one poll, one timestamp"
    balloon, collector = points
    assert balloon["tags"]["driver"] == "virtio_balloon"
    assert balloon["tags"]["host"] == "vm"
    assert balloon["fields"]["guest_total_bytes"] == 24684092 * 1024
    assert balloon["fields"]["balloon_actual_bytes"] == 0
    assert balloon["fields"]["driver_loaded"] is True
    assert collector["tags"] == {"host": "vm", "instance": str(root), "source": "guest"}
    assert collector["fields"]["up"] is True
    for point in points:
        assert catalog.check_point(point["measurement"], point["tags"], point["fields"]) == []


def test_once_source_down_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    done = run("--once", "--config", guest_config(tmp_path / "c.toml", missing))
    assert done.returncode == 1
    (collector,) = parse_lines(done.stdout)
    assert collector["measurement"] == catalog.COLLECTOR
    assert collector["fields"]["up"] is False
    assert collector["fields"]["error"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("E! ")]
    assert len(errors) == 1 and str(missing) in errors[0], done.stderr


def test_once_one_of_two_down_exits_1(tmp_path: Path) -> None:
    root = guest_root(tmp_path / "guest")
    done = run("--once", "--config", guest_config(tmp_path / "c.toml", root, tmp_path / "gone"))
    assert done.returncode == 1
    points = parse_lines(done.stdout)
    ups = {
        p["tags"]["instance"]: p["fields"]["up"]
        for p in points
        if p["measurement"] == catalog.COLLECTOR
    }
    assert ups == {str(root): True, str(tmp_path / "gone"): False}
    assert sum(p["measurement"] == catalog.BALLOON for p in points) == 1


def test_once_debug_lines_are_prefixed(tmp_path: Path) -> None:
    root = guest_root(tmp_path / "guest")
    done = run("--once", "--debug", "--config", guest_config(tmp_path / "c.toml", root))
    assert done.returncode == 0  # run() already checked every stderr line's prefix


def test_once_driver_entry_not_a_symlink(tmp_path: Path) -> None:
    """BUG: a virtio `driver` entry that is not a symlink takes the whole guest source down.

    The shared fixture stores sysfs symlinks as plain files (copied verbatim here). The guest
    source calls os.readlink() on devices/virtio0/driver unguarded: OSError EINVAL ends the
    poll (up=false, exit 1) instead of that one file being skipped; every other file of the
    guest is readable, and drivers/virtio_balloon/virtio0 alone shows the driver is bound.
    """
    root = guest_root(tmp_path / "guest", relink=False)
    done = run("--once", "--config", guest_config(tmp_path / "c.toml", root))
    assert done.returncode == 0, done.stdout + done.stderr
    balloon = parse_lines(done.stdout)[0]
    assert balloon["tags"]["driver"] == "virtio_balloon"
    assert balloon["fields"]["driver_loaded"] is True


# --- usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--interval", "-1s"],
        ["--interval=-1s"],
        ["--interval", "0s"],
        ["--interval", "5x"],
        ["--interval"],
        ["--interval", "1s", "--once"],
        ["--once", "--check-config"],
        ["--once", "--sample-config"],
        ["stray-argument"],
    ],
    ids=lambda args: " ".join(args),
)
def test_usage_error(args: list[str]) -> None:
    assert_usage_error(run(*args), "telegraf-balloon")
