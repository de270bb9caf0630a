"""Config errors name the key path and say what is wrong; valid configs load into frozen objects."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Optional

import pytest

from telegraf_balloon import config
from telegraf_balloon.config import ConfigError, load_text

GUEST = '[[sources.guest]]\nroot = "/"\n'
LIBVIRT = '[[sources.libvirt]]\nuri = "qemu:///system"\n'
VSPHERE = '[[sources.vsphere]]\nurl = "https://vc.example.com/sdk"\n'
RULE = '[[thresholds]]\nfield = "balloon_ratio"\nwarn = 0.2\ncrit = 0.4\n'
ENV = {"HOME": "/root", "SET_ROOT": "/srv/guest", "EMPTY": ""}


def case(text: str, key: str, fragment: str, id: str) -> object:
    return pytest.param(text, key, fragment, id=id)


ERRORS = [
    # syntax and structure
    case("[agent\n" + GUEST, "", "TOML syntax", "toml-syntax"),
    case('[[sources.guest]]\nroot = "/\n', "", "TOML syntax", "toml-unterminated-string"),
    case("bogus = 1\n" + GUEST, "bogus", "unknown key", "unknown-top-level-key"),
    case("agent = 5\n" + GUEST, "agent", "expected a table", "agent-not-a-table"),
    # unknown keys in every section
    case("[agent]\nbogus = 1\n" + GUEST, "agent.bogus", "unknown key", "unknown-agent-key"),
    case(GUEST + "bogus = 1\n", "sources.guest[0].bogus", "unknown key", "unknown-guest-key"),
    case(
        GUEST + GUEST.replace('"/"', '"/host"') + "bogus = 1\n",
        "sources.guest[1].bogus",
        "unknown key",
        "unknown-key-in-second-guest",
    ),
    case(LIBVIRT + "bogus = 1\n", "sources.libvirt[0].bogus", "unknown key", "unknown-libvirt-key"),
    case(VSPHERE + "bogus = 1\n", "sources.vsphere[0].bogus", "unknown key", "unknown-vsphere-key"),
    case(
        '[[sources.logs]]\nfiles = ["/var/log/messages"]\nbogus = 1\n',
        "sources.logs[0].bogus",
        "unknown key",
        "unknown-logs-key",
    ),
    case(GUEST + "[health]\nbogus = 1\n", "health.bogus", "unknown key", "unknown-health-key"),
    case(
        GUEST + RULE + '[[thresholds]]\nfield = "stale"\nwarn = 1\nbogus = 1\n',
        "thresholds[1].bogus",
        "unknown key",
        "unknown-threshold-key",
    ),
    case(
        '[[sources.hyperv]]\nhost = "x"\n', "sources.hyperv", "unknown source kind", "unknown-kind"
    ),
    # wrong types
    case(
        '[agent]\ninternal = "yes"\n' + GUEST,
        "agent.internal",
        "expected true or false, got a string",
        "string-for-bool",
    ),
    case(
        LIBVIRT + "read_only = 1\n",
        "sources.libvirt[0].read_only",
        "expected true or false, got an integer",
        "int-for-bool",
    ),
    case(
        '[agent]\nhostname = ["a"]\n' + GUEST,
        "agent.hostname",
        "expected a string, got a list",
        "list-for-string",
    ),
    case(
        "[[sources.guest]]\nroot = 5\n",
        "sources.guest[0].root",
        "expected a string, got an integer",
        "int-for-string",
    ),
    case(
        LIBVIRT + "read_only = false\nset_stats_period = 1.5\n",
        "sources.libvirt[0].set_stats_period",
        "expected an integer, got a float",
        "float-for-int",
    ),
    case(
        LIBVIRT + "concurrency = -1\n",
        "sources.libvirt[0].concurrency",
        "must be at least 0, got -1",
        "negative-concurrency",
    ),
    case(
        LIBVIRT + 'concurrency = "auto"\n',
        "sources.libvirt[0].concurrency",
        "expected an integer, got a string",
        "string-for-concurrency",
    ),
    case(
        LIBVIRT + "keepalive_count = true\n",
        "sources.libvirt[0].keepalive_count",
        "expected an integer, got a boolean",
        "bool-for-int",
    ),
    case(
        LIBVIRT + 'domains = "web*"\n',
        "sources.libvirt[0].domains",
        "expected a list of strings",
        "string-for-list",
    ),
    case(
        LIBVIRT + 'domains = ["web*", 1]\n',
        "sources.libvirt[0].domains",
        "expected a list of strings",
        "mixed-list",
    ),
    case(
        GUEST + '[[thresholds]]\nfield = "balloon_ratio"\nwarn = "0.2"\n',
        "thresholds[0].warn",
        "expected a number, got a string",
        "string-for-number",
    ),
    case(
        GUEST + '[[thresholds]]\nfield = "stale"\nwarn = true\n',
        "thresholds[0].warn",
        "expected a number, got a boolean",
        "bool-for-number",
    ),
    case(
        VSPHERE + "page_size = 0\n",
        "sources.vsphere[0].page_size",
        "must be at least 1",
        "int-below-minimum",
    ),
    # durations
    case('[agent]\ntimeout = "5x"\n' + GUEST, "agent.timeout", "bad duration", "duration-5x"),
    case('[agent]\ntimeout = "-1s"\n' + GUEST, "agent.timeout", "bad duration", "duration-neg"),
    case('[agent]\ntimeout = ""\n' + GUEST, "agent.timeout", "empty duration", "duration-empty"),
    case('[agent]\ntimeout = "5"\n' + GUEST, "agent.timeout", "bad duration", "duration-no-unit"),
    case("[agent]\ntimeout = true\n" + GUEST, "agent.timeout", "boolean", "duration-bool"),
    case("[agent]\ntimeout = [5]\n" + GUEST, "agent.timeout", "list", "duration-list"),
    case("[agent]\ntimeout = -1\n" + GUEST, "agent.timeout", "negative", "duration-neg-number"),
    case('[agent]\ntimeout = "0s"\n' + GUEST, "agent.timeout", "greater than zero", "timeout-0s"),
    case("[agent]\ntimeout = 0\n" + GUEST, "agent.timeout", "greater than zero", "timeout-0"),
    case(GUEST + '[health]\nstuck_for = "5 m"\n', "health.stuck_for", "bad duration", "stuck-for"),
    case(
        GUEST + '[health]\nstale_after = "-60s"\n',
        "health.stale_after",
        "bad duration",
        "stale-after-negative",
    ),
    case(GUEST + RULE + 'for = "10x"\n', "thresholds[0].for", "bad duration", "threshold-for-bad"),
    case(
        LIBVIRT + 'refresh_interval = "soon"\n',
        "sources.libvirt[0].refresh_interval",
        "bad duration",
        "refresh-interval-bad",
    ),
    # ratios
    case(
        GUEST + "[health]\nstuck_gap_ratio = 1.5\n",
        "health.stuck_gap_ratio",
        "between 0 and 1",
        "ratio-above-1",
    ),
    case(
        GUEST + "[health]\nstuck_gap_ratio = -0.1\n",
        "health.stuck_gap_ratio",
        "between 0 and 1",
        "ratio-negative",
    ),
    case(
        GUEST + "[health]\nstuck_gap_ratio = nan\n",
        "health.stuck_gap_ratio",
        "finite number",
        "ratio-nan",
    ),
    # sources
    case("", "sources", "no source configured", "empty-file"),
    case('[agent]\ntimeout = "5s"\n', "sources", "no source configured", "agent-only"),
    case("[sources]\n", "sources", "no source configured", "empty-sources-table"),
    case("sources.guest = []\n", "sources.guest", "empty list", "empty-source-list"),
    case(
        'sources.guest = "/"\n', "sources.guest", "expected [[sources.guest]] tables", "not-tables"
    ),
    case(LIBVIRT + LIBVIRT, "sources.libvirt[1]", "duplicate of sources.libvirt[0]", "dup-uri"),
    case(GUEST + GUEST, "sources.guest[1]", "duplicate of sources.guest[0]", "dup-root"),
    case(
        '[[sources.guest]]\nroot = "/x"\n[[sources.guest]]\nroot = "/x/"\n',
        "sources.guest[1]",
        "duplicate of sources.guest[0]",
        "dup-root-trailing-slash",
    ),
    case(
        '[[sources.guest]]\nroot = "/srv/guest"\n[[sources.guest]]\nroot = "${SET_ROOT}"\n',
        "sources.guest[1]",
        "duplicate of sources.guest[0]",
        "dup-root-through-env",
    ),
    case(VSPHERE + VSPHERE, "sources.vsphere[1]", "duplicate of sources.vsphere[0]", "dup-url"),
    case(
        '[[sources.guest]]\nroot = ""\n', "sources.guest[0].root", "must not be empty", "empty-root"
    ),
    case(
        '[[sources.libvirt]]\nuri = "system"\n',
        "sources.libvirt[0].uri",
        "not a libvirt URI",
        "libvirt-uri-not-uri",
    ),
    case(
        LIBVIRT + "set_stats_period = 10\n",
        "sources.libvirt[0].set_stats_period",
        "read_only = false",
        "stats-period-read-only",
    ),
    case(
        LIBVIRT + "read_only = true\nset_stats_period = 10\n",
        "sources.libvirt[0].set_stats_period",
        "read_only = false",
        "stats-period-read-only-explicit",
    ),
    case(
        "[[sources.logs]]\nfiles = []\n",
        "sources.logs[0].files",
        "at least one file",
        "logs-no-files",
    ),
    case(
        "[[sources.logs]]\nkmsg = false\n",
        "sources.logs[0].files",
        "or set kmsg = true",
        "logs-no-files-no-kmsg",
    ),
    case(
        '[[sources.logs]]\nkmsg = "yes"\n',
        "sources.logs[0].kmsg",
        "expected true or false",
        "logs-kmsg-not-bool",
    ),
    case(
        '[[sources.logs]]\nkmsg = true\n[[sources.logs]]\nfiles = ["/x"]\nkmsg = true\n',
        "sources.logs[1].kmsg",
        "read by sources.logs[0] already",
        "logs-kmsg-twice",
    ),
    case(
        '[[sources.logs]]\nfiles = ["/var/log/messages"]\n[sources.logs.patterns]\nbad = "(("\n',
        "sources.logs[0].patterns.bad",
        "bad regular expression",
        "logs-bad-regex",
    ),
    # environment
    case(
        '[[sources.guest]]\nroot = "${UNSET_ROOT}"\n',
        "sources.guest[0].root",
        "UNSET_ROOT",
        "env-unset",
    ),
    case(
        LIBVIRT + 'domains = ["${UNSET_DOMAIN}"]\n',
        "sources.libvirt[0].domains",
        "UNSET_DOMAIN",
        "env-unset-in-list",
    ),
    case(
        VSPHERE + 'password = "${VSPHERE_PASSWORD}"\n',
        "sources.vsphere[0].password",
        "VSPHERE_PASSWORD is not set",
        "env-unset-password",
    ),
    # vsphere
    case(
        VSPHERE + 'password_file = "/nonexistent-dir/vsphere.pass"\n',
        "sources.vsphere[0].password_file",
        "cannot read /nonexistent-dir/vsphere.pass",
        "password-file-missing",
    ),
    case(
        VSPHERE + 'password_file = "/"\n',
        "sources.vsphere[0].password_file",
        "cannot read",
        "password-file-is-a-directory",
    ),
    case(
        VSPHERE + 'password = "x"\npassword_file = "/etc/hostname"\n',
        "sources.vsphere[0].password_file",
        "not both",
        "password-and-password-file",
    ),
    case(
        '[[sources.vsphere]]\nurl = "vcenter.example.com"\n',
        "sources.vsphere[0].url",
        "not an http(s) URL",
        "url-without-scheme",
    ),
    case(
        '[[sources.vsphere]]\nurl = "ftp://vcenter.example.com/sdk"\n',
        "sources.vsphere[0].url",
        "not an http(s) URL",
        "url-wrong-scheme",
    ),
    case(
        '[[sources.vsphere]]\nusername = "monitor"\n',
        "sources.vsphere[0].url",
        "not an http(s) URL",
        "url-missing",
    ),
    case(
        VSPHERE + 'ca_file = "/nonexistent-dir/ca.pem"\n',
        "sources.vsphere[0].ca_file",
        "cannot read",
        "ca-file-missing",
    ),
    # thresholds
    case(
        GUEST + '[[thresholds]]\nfield = "no_such_field"\nwarn = 1\n',
        "thresholds[0].field",
        "no numeric or boolean field 'no_such_field'",
        "threshold-unknown-field",
    ),
    case(
        GUEST + '[[thresholds]]\nfield = "thp_mode"\nwarn = 1\n',
        "thresholds[0].field",
        "'thp_mode'",
        "threshold-string-field",
    ),
    case(
        GUEST + '[[thresholds]]\nfield = "alert_level"\nwarn = 1\n',
        "thresholds[0].field",
        "'alert_level'",
        "threshold-on-alert-level",
    ),
    case(
        GUEST + '[[thresholds]]\nmeasurement = "balloon_host"\nfield = "stale"\nwarn = 1\n',
        "thresholds[0].field",
        "balloon_host has no numeric or boolean field 'stale'",
        "threshold-field-not-on-measurement",
    ),
    case(
        GUEST + "[[thresholds]]\nwarn = 1\n",
        "thresholds[0].field",
        "required",
        "threshold-without-field",
    ),
    case(
        GUEST + '[[thresholds]]\nfield = "stale"\n',
        "thresholds[0].warn",
        "set warn, crit or both",
        "threshold-without-levels",
    ),
    case(
        GUEST + RULE + '[[thresholds]]\nfield = "balloon_ratio"\nwarn = 0.5\ncrit = 0.4\n',
        "thresholds[1].warn",
        "warn (0.5) is beyond crit (0.4)",
        "warn-beyond-crit",
    ),
    case(
        GUEST
        + '[[thresholds]]\nfield = "guest_available_bytes"\nbelow = true\nwarn = 1\ncrit = 2\n',
        "thresholds[0].warn",
        "warn (1) is above crit (2)",
        "below-warn-under-crit",
    ),
    case(
        GUEST + '[[thresholds]]\nmeasurement = "balloon_log"\nfield = "count"\nwarn = 1\n',
        "thresholds[0].measurement",
        'must be "balloon" or "balloon_host"',
        "threshold-bad-measurement",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), ERRORS)
def test_config_error(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "test.toml", ENV)
    error = caught.value
    assert error.key == key
    assert error.path == "test.toml"
    assert fragment in error.message, error.message
    # The one-line E! message names the file, then the key path, then the problem.
    expected_start = f"test.toml: {key}: " if key else "test.toml: "
    assert str(error).startswith(expected_start), str(error)
    assert "\n" not in str(error), str(error)


def test_config_error_on_syntax_names_the_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text('[agent]\ntimeout = "5s"\nhostname = \n' + GUEST, "test.toml", ENV)
    assert "line 3" in caught.value.message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[agent]\ntimeout = "${BALLOON_TIMEOUT:-10s}"\n' + GUEST, "agent.timeout"),
        (GUEST + '[health]\nstuck_for = "${STUCK_FOR:-2m}"\n', "health.stuck_for"),
    ],
    ids=["agent-timeout", "health-stuck-for"],
)
def test_env_default_in_duration(text: str, key: str) -> None:
    """`${VAR}` and `${VAR:-default}` are expanded in strings, and durations are strings.

    BUG: durations are parsed without expansion, so "${BALLOON_TIMEOUT:-10s}" is a bad
    duration (config.py _Reader.duration reads the raw value).
    """
    try:
        loaded = load_text(text, "test.toml", ENV)
    except ConfigError as exc:
        pytest.fail(f"{key}: a ${{VAR:-default}} duration was refused: {exc}")
    if key == "agent.timeout":
        assert loaded.agent.timeout == 10.0
    else:
        assert loaded.health.stuck_for == 120.0


def test_threshold_level_nan_refused() -> None:
    """BUG: `warn = nan` is accepted, and a NaN level never compares true: the rule never fires."""
    text = GUEST + '[[thresholds]]\nfield = "balloon_ratio"\nwarn = nan\n'
    with pytest.raises(ConfigError) as caught:
        load_text(text, "test.toml", ENV)
    assert caught.value.key == "thresholds[0].warn"


# --- environment expansion --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "environ", "expected"),
    [
        ("${SET_ROOT}", ENV, "/srv/guest"),
        ("${UNSET_ROOT:-/host}", ENV, "/host"),
        ("${SET_ROOT:-/host}", ENV, "/srv/guest"),
        ("${EMPTY:-/host}", ENV, "/host"),
        ("${SET_ROOT}/sub", ENV, "/srv/guest/sub"),
        ("/plain/$SET_ROOT", ENV, "/plain/$SET_ROOT"),
    ],
    ids=["set", "default-used", "default-unused", "empty-takes-default", "embedded", "no-braces"],
)
def test_env_expansion(root: str, environ: dict[str, str], expected: str) -> None:
    loaded = load_text(f'[[sources.guest]]\nroot = "{root}"\n', "test.toml", environ)
    assert loaded.guest[0].root == expected


NESTED_ENV = {**ENV, "B": "/from-b", "C": "/from-c", "SECRET": "s3cret"}


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("${UNSET_A:-${B:-/x}}", "/from-b"),
        ("${UNSET_A:-${UNSET_B:-/x}}", "/x"),
        ("${SET_ROOT:-${B:-/x}}", "/srv/guest"),
        ("${EMPTY:-${B}}/sub", "/from-b/sub"),
        ("${UNSET_A:-${UNSET_B:-${C}}}", "/from-c"),
        ("${UNSET_A:-/a/${B}/b}", "/a//from-b/b"),
        ("${SET_ROOT:-${UNSET_B}}", "/srv/guest"),  # a default not used is not expanded
        ("${EMPTY-/x}/sub", "/sub"),  # without the colon: only an unset one takes the default
        ("${UNSET_A-/x}", "/x"),
        ("${SET_ROOT:?set it}", "/srv/guest"),
        ("$${B}", "${B}"),  # $${ is a literal ${, as in Telegraf
        ("/a/$${UNSET_A:-x}", "/a/${UNSET_A:-x}"),
        ("$$${B}", "$/from-b"),
        ("$$$${B}", "$${B}"),
        ("${UNSET_A:-$${B}}", "${B}"),  # a literal ${ in a default
        ("pa$$word$", "pa$$word$"),  # a $ not before { is literal, doubled or not
        ("{}$", "{}$"),
    ],
)
def test_env_nested_defaults_and_literal_dollar_brace(root: str, expected: str) -> None:
    loaded = load_text(f'[[sources.guest]]\nroot = "{root}"\n', "test.toml", NESTED_ENV)
    assert loaded.guest[0].root == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("${UNSET_A:-${UNSET_B}}", "UNSET_B is not set"),
        ("${UNSET_A:?the root of the guest}", "UNSET_A is not set: the root of the guest"),
        ("${EMPTY:?give one}", "EMPTY is empty: give one"),
        ("${B:-${C}", "not closed"),
        ("${B", "not closed"),
        ("${}", "no variable name"),
        ("${1}", "no variable name"),
        ("a${ B}", "no variable name"),
        ("${B:=x}", "expected"),
        ("${B/x/y}", "expected"),
        ("${UNSET_A:-${}}", "no variable name"),  # an unused default is still checked
    ],
)
def test_env_expression_errors_name_the_key(value: str, fragment: str) -> None:
    """Nothing is silently literal: a `${` that expands to nothing sensible is an error."""
    text = VSPHERE + f'password = "{value}"\n'
    with pytest.raises(ConfigError) as caught:
        load_text(text, "test.toml", NESTED_ENV)
    assert caught.value.key == "sources.vsphere[0].password"
    assert fragment in caught.value.message, caught.value.message
    assert "$${" in caught.value.message or "environment variable" in caught.value.message
    assert "s3cret" not in str(caught.value)


def test_env_expression_error_in_a_list_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(LIBVIRT + 'domains = ["web", "${A:-${B}"]\n', "test.toml", NESTED_ENV)
    assert caught.value.key == "sources.libvirt[0].domains"
    assert "not closed" in caught.value.message


def test_check_config_exits_2_naming_the_key_of_a_bad_expression(tmp_path: Path) -> None:
    """The command line: --check-config refuses an unclosed nested default (exit 2)."""
    from tests.stack.execd import run_cli

    config = tmp_path / "bad.toml"
    config.write_text('[[sources.guest]]\nroot = "${GUEST_ROOT:-${FALLBACK:-/}"\n')
    done = run_cli("--check-config", "--config", str(config), env={}, timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith(f"E! {config}: sources.guest[0].root: "), line
    assert "not closed" in line and "$${" in line
    good = tmp_path / "good.toml"
    good.write_text('[[sources.guest]]\nroot = "${GUEST_ROOT:-${FALLBACK:-/}}"\n')
    assert run_cli("--check-config", "--config", str(good), env={}, timeout=30).returncode == 0


def test_env_expansion_in_lists_and_passwords() -> None:
    environ = {**ENV, "DOM": "web-1", "VSPHERE_PASSWORD": "s3cret-Pa55"}
    text = (
        LIBVIRT
        + 'domains = ["${DOM}", "${OTHER:-db-*}"]\n'
        + VSPHERE
        + 'password = "${VSPHERE_PASSWORD}"\n'
    )
    loaded = load_text(text, "test.toml", environ)
    assert loaded.libvirt[0].domains == ("web-1", "db-*")
    assert loaded.vsphere[0].password == "s3cret-Pa55"
    assert "s3cret-Pa55" not in repr(loaded), "secrets never appear in logs"
    assert "s3cret-Pa55" not in str(loaded)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TB_TEST_ROOT", "/from-environ")
    loaded = load_text('[[sources.guest]]\nroot = "${TB_TEST_ROOT}"\n', "test.toml")
    assert loaded.guest[0].root == "/from-environ"


# --- valid configs ----------------------------------------------------------------------------


def sample_text() -> str:
    return (Path(config.__file__).parent / "sample.toml").read_text(encoding="utf-8")


def test_sample_config_loads() -> None:
    loaded = load_text(sample_text(), "sample.toml", {})
    assert loaded.guest == (config.GuestConfig(root="/"),)
    assert loaded.libvirt == () and loaded.vsphere == () and loaded.logs == ()
    assert loaded.agent == config.AgentConfig()
    assert loaded.health == config.HealthConfig(stuck_gap_ratio=0.05, stuck_for=300.0)
    fields = [(r.measurement, r.field) for r in loaded.thresholds]
    assert fields == [
        ("balloon", "balloon_ratio"),
        ("balloon", "stuck"),
        ("balloon", "vmem_stuck"),
        ("balloon", "stale"),
        ("balloon", "swap_out_bytes_per_second"),
        ("balloon_host", "reclaimed_ratio"),
        ("balloon_host", "ecc_uncorrected_new"),
        ("balloon", "guest_agent_latency_seconds"),
        ("balloon", "host_swapped_bytes_per_second"),
        ("balloon_host", "host_swap_out_bytes_per_second"),
        ("balloon", "host_memory_stall_ratio"),
        ("balloon", "guest_memory_stall_ratio"),
    ]
    first = loaded.thresholds[0]
    assert (first.warn, first.crit, first.for_seconds, first.below) == (0.2, 0.4, 600.0, False)


def test_sample_config_commented_defaults_are_the_defaults() -> None:
    """Uncommenting every `# key = value` line of the sample keeps it valid, and the values
    shown commented out are the defaults the code uses."""
    kept: list[str] = []
    skipping = False
    for line in sample_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# ") and ("=" in stripped or stripped.startswith("# [")):
            line = stripped[2:]
        elif stripped.startswith("#"):
            continue
        if line.strip().startswith("["):
            # vsphere needs a password and a reachable vCenter: leave that section out.
            skipping = line.strip() == "[[sources.vsphere]]" or (
                skipping and line.strip().startswith("[sources.vsphere.")
            )
        if not skipping:
            kept.append(line)
    loaded = load_text("\n".join(kept) + "\n", "sample.toml", {})
    assert loaded.agent == config.AgentConfig()
    assert loaded.guest == (config.GuestConfig(),)
    assert loaded.libvirt == (config.LibvirtConfig(),)
    assert loaded.logs[0].patterns == (("my_event", "balloon .* refused"),)
    assert loaded.health == config.HealthConfig(stale_after=60.0)
    assert loaded.qmp == (config.QmpConfig(),)
    assert loaded.vsphere == ()


# --- the sample documents every default ------------------------------------------------------

_SAMPLE_HEADER = re.compile(r"^(?:# )?\[\[?([a-z_.]+)\]\]?$")
_SAMPLE_KEY = re.compile(r"^(# )?([A-Za-z_][A-Za-z0-9_]*) = (.+)$")


@dataclasses.dataclass(frozen=True)
class SampleKey:
    """One `key = value` line of the sample, active or commented out."""

    section: str  # "agent", "sources.libvirt", "sources.logs.patterns", "thresholds", ...
    key: str
    value: str  # as TOML
    line: int

    def __str__(self) -> str:
        return f"{self.section}.{self.key}"


def sample_keys() -> list[SampleKey]:
    """Every key line of the sample; a line that is neither prose (`##`), a table header nor
    a key is an error, so no documented value can hide from the tests below."""
    section = ""
    found: list[SampleKey] = []
    for number, line in enumerate(sample_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("##"):
            continue
        header = _SAMPLE_HEADER.match(text)
        key = _SAMPLE_KEY.match(text)
        if header is not None:
            section = header.group(1)
        elif key is not None and section:
            found.append(SampleKey(section, key.group(2), key.group(3), number))
        else:
            raise AssertionError(f"sample.toml line {number}: neither prose, header nor key")
    return found


# Keys whose sample value is an example to fill in, not the default, and why.
SAMPLE_EXAMPLES = {
    "sources.vsphere.url": "required: no default",
    "sources.vsphere.username": "the account to fill in",
    "sources.vsphere.password": "the secret to fill in",
    "sources.vsphere.password_file": "the other way to give the password",
    "sources.logs.files": "the files to watch (none by default, with kmsg = true)",
    "health.stale_after": "unset by default: the larger of 60 s and 3 stats periods",
}
# Tables that hold only examples: extra log events and threshold rules have no defaults.
EXAMPLE_TABLES = ("sources.logs.patterns", "sources.vsphere.shards", "thresholds")

Pick = Callable[[config.Config], object]
# Each table whose keys have defaults: a config holding one of its keys (with what the table
# requires besides), where the loaded object is, and the defaults it must equal.
SAMPLE_TABLES: dict[str, tuple[str, Pick, object]] = {
    "agent": ("[agent]\n{line}\n" + GUEST, lambda c: c.agent, config.AgentConfig()),
    "sources.guest": ("[[sources.guest]]\n{line}\n", lambda c: c.guest[0], config.GuestConfig()),
    "sources.libvirt": (
        "[[sources.libvirt]]\n{line}\n",
        lambda c: c.libvirt[0],
        config.LibvirtConfig(),
    ),
    "sources.vsphere": (VSPHERE + "{line}\n", lambda c: c.vsphere[0], config.VsphereConfig()),
    "sources.logs": (
        '[[sources.logs]]\nfiles = ["/var/log/messages"]\n{line}\n',
        lambda c: c.logs[0],
        config.LogsConfig(),
    ),
    "sources.qmp": ("[[sources.qmp]]\n{line}\n", lambda c: c.qmp[0], config.QmpConfig()),
    "health": ("[health]\n{line}\n" + GUEST, lambda c: c.health, config.HealthConfig()),
}


def _documented_defaults() -> list[SampleKey]:
    return [
        k for k in sample_keys() if k.section in SAMPLE_TABLES and str(k) not in SAMPLE_EXAMPLES
    ]


@pytest.mark.parametrize("item", _documented_defaults(), ids=str)
def test_sample_value_is_the_default(item: SampleKey) -> None:
    """What the sample shows for a key (commented out or active) is what the code uses when
    the key is left out: the dataclass field's default."""
    template, pick, default = SAMPLE_TABLES[item.section]
    text = template.replace("{line}", f"{item.key} = {item.value}")
    loaded = pick(load_text(text, "sample.toml", {}))
    assert getattr(loaded, item.key) == getattr(default, item.key), (
        f"sample.toml line {item.line}: {item.key} = {item.value} is not the default "
        f"{getattr(default, item.key)!r}"
    )


def test_sample_shows_every_key_of_every_table() -> None:
    """Every config field appears in the sample, under its own table, and nothing else does."""
    keys = sample_keys()
    shown: dict[str, set[str]] = {}
    for item in keys:
        shown.setdefault(item.section, set()).add(item.key)
        parent, _, child = item.section.rpartition(".")
        if parent in SAMPLE_TABLES:  # a sub-table such as [sources.logs.patterns]
            shown.setdefault(parent, set()).add(child)
    assert set(shown) == set(SAMPLE_TABLES) | set(EXAMPLE_TABLES)
    for section, (_, _, default) in SAMPLE_TABLES.items():
        assert isinstance(default, object) and dataclasses.is_dataclass(default)
        names = {f.name for f in dataclasses.fields(default)}
        assert shown[section] == names, (section, sorted(shown[section] ^ names))
    assert set(SAMPLE_EXAMPLES) <= {str(k) for k in keys}, "an example left the sample"


def test_every_key_of_every_section(tmp_path: Path) -> None:
    password_file = tmp_path / "vsphere.pass"
    password_file.write_text("  file-secret\n", encoding="utf-8")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    text = f"""
[agent]
hostname = "node-1"
timeout = "2500ms"
internal = false

[[sources.guest]]
root = "/host"

[[sources.guest]]
root = "/"

[[sources.libvirt]]
uri = "qemu+tcp://kvm-1/system"
domains = ["web-*", "db"]
read_only = false
set_stats_period = 10
keepalive_interval = 2
keepalive_count = 4
refresh_interval = "1m30s"
concurrency = 3

[[sources.vsphere]]
url = "https://vc.example.com/sdk"
username = "monitor@vsphere.local"
password_file = "{password_file}"
ca_file = "{ca_file}"
insecure_skip_verify = true
vm_include = ["/dc1/vm/prod/*"]
page_size = 100
target_counters = false

[[sources.logs]]
files = ["/var/log/libvirt/qemu/*.log"]
kmsg = true
[sources.logs.patterns]
refused = "balloon .* refused"

[health]
stuck_gap_ratio = 0.1
stuck_for = "2m"
stale_after = "90s"

[[thresholds]]
measurement = "balloon"
field = "guest_available_bytes"
warn = 1073741824
crit = 268435456
for = "5m"
below = true

[[thresholds]]
field = "overcommit_ratio"
crit = 1.5
"""
    loaded = load_text(text, "all.toml", {})
    assert loaded.path == "all.toml"
    assert loaded.agent == config.AgentConfig(hostname="node-1", timeout=2.5, internal=False)
    assert loaded.guest == (config.GuestConfig("/host"), config.GuestConfig("/"))
    assert loaded.libvirt == (
        config.LibvirtConfig(
            uri="qemu+tcp://kvm-1/system",
            domains=("web-*", "db"),
            read_only=False,
            set_stats_period=10,
            keepalive_interval=2,
            keepalive_count=4,
            refresh_interval=90.0,
            concurrency=3,
        ),
    )
    assert loaded.vsphere == (
        config.VsphereConfig(
            url="https://vc.example.com/sdk",
            username="monitor@vsphere.local",
            password="file-secret",
            password_file=str(password_file),
            ca_file=str(ca_file),
            insecure_skip_verify=True,
            vm_include=("/dc1/vm/prod/*",),
            page_size=100,
            target_counters=False,
        ),
    )
    assert loaded.vsphere[0].password == "file-secret"
    assert "file-secret" not in repr(loaded)
    assert loaded.logs == (
        config.LogsConfig(
            files=("/var/log/libvirt/qemu/*.log",),
            patterns=(("refused", "balloon .* refused"),),
            kmsg=True,
        ),
    )
    assert loaded.health == config.HealthConfig(0.1, 120.0, 90.0)
    assert loaded.thresholds == (
        config.ThresholdRule(
            "guest_available_bytes", "balloon", 1073741824.0, 268435456.0, 300.0, True
        ),
        config.ThresholdRule("overcommit_ratio", "balloon_host", None, 1.5, 0.0, False),
    )
    assert loaded.source_count() == 5
    summary = loaded.summary()
    assert "\n" not in summary
    assert summary.startswith("all.toml: ok: ")
    assert "2 guest, 1 libvirt, 1 vsphere, 1 logs" in summary


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), ("250us", 0.00025)],
)
def test_durations(text: str, seconds: float) -> None:
    loaded = load_text(f'[agent]\ntimeout = "{text}"\n' + GUEST, "test.toml", {})
    assert loaded.agent.timeout == pytest.approx(seconds)


def test_duration_as_number_of_seconds() -> None:
    assert load_text("[agent]\ntimeout = 3\n" + GUEST, "t.toml", {}).agent.timeout == 3.0


def test_default_config() -> None:
    default = config.default_config()
    assert default.guest == (config.GuestConfig(root="/"),)
    assert default.libvirt == () and default.vsphere == () and default.logs == ()
    assert default.agent == config.AgentConfig(hostname="", timeout=5.0, internal=True)
    assert default.health == config.HealthConfig(0.05, 300.0, None)
    assert default.thresholds == ()
    assert default.source_count() == 1
    assert "1 guest" in default.summary()


def test_logs_kmsg_alone() -> None:
    """A guest with no syslog file: the kernel log only, no files."""
    loaded = load_text("[[sources.logs]]\nkmsg = true\n", "k.toml", {})
    assert loaded.logs == (config.LogsConfig(files=(), kmsg=True),)
    assert loaded.source_count() == 1


def test_minimal_config_takes_every_default() -> None:
    loaded = load_text("[[sources.guest]]\n", "min.toml", {})
    assert loaded.guest == (config.GuestConfig(root="/"),)
    assert loaded.agent == config.AgentConfig()
    assert loaded.health == config.HealthConfig()
    lib = load_text("[[sources.libvirt]]\n", "min.toml", {}).libvirt[0]
    assert lib == config.LibvirtConfig()
    assert (lib.uri, lib.read_only, lib.set_stats_period) == ("qemu:///system", True, 0)


@pytest.mark.parametrize(
    ("target", "attribute", "value"),
    [
        ("config", "agent", None),
        ("agent", "timeout", 1.0),
        ("guest", "root", "/x"),
        ("libvirt", "read_only", False),
        ("vsphere", "password", "x"),
        ("logs", "files", ()),
        ("health", "stuck_for", 1.0),
        ("threshold", "warn", 1.0),
    ],
)
def test_config_objects_are_frozen(target: str, attribute: str, value: Optional[object]) -> None:
    text = (
        GUEST
        + LIBVIRT
        + VSPHERE
        + '[[sources.logs]]\nfiles = ["/var/log/messages"]\n'
        + "[health]\n"
        + RULE
    )
    loaded = load_text(text, "test.toml", {})
    objects: dict[str, object] = {
        "config": loaded,
        "agent": loaded.agent,
        "guest": loaded.guest[0],
        "libvirt": loaded.libvirt[0],
        "vsphere": loaded.vsphere[0],
        "logs": loaded.logs[0],
        "health": loaded.health,
        "threshold": loaded.thresholds[0],
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(objects[target], attribute, value)
    assert isinstance(loaded.guest, tuple) and isinstance(loaded.thresholds, tuple)
    assert isinstance(loaded.libvirt[0].domains, tuple)


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GUEST, encoding="utf-8")
    assert config.load(str(path), {}).path == str(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "cannot read config"), (b"\xff\xfe[[sources.guest]]\n", "not UTF-8")],
    ids=["missing", "not-utf8"],
)
def test_load_file_errors(tmp_path: Path, content: Optional[bytes], fragment: str) -> None:
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load(str(path), {})
    assert caught.value.path == str(path)
    assert caught.value.key == ""
    assert fragment in caught.value.message
    assert str(caught.value).startswith(f"{path}: ")


QMP = '[[sources.qmp]]\nsockets = ["/var/run/qemu-server/*.qmp"]\n'
QMP_KEY = "sources.qmp[0]"

QMP_ERRORS = [
    case(QMP + "bogus = 1\n", f"{QMP_KEY}.bogus", "unknown key", "qmp-unknown-key"),
    case(
        '[[sources.qmp]]\nsockets = "/run/qemu-server/*.qmp"\n',
        f"{QMP_KEY}.sockets",
        "expected a list of strings",
        "qmp-sockets-not-a-list",
    ),
    case("[[sources.qmp]]\nsockets = []\n", f"{QMP_KEY}.sockets", "at least one", "qmp-no-sockets"),
    case(
        '[[sources.qmp]]\nsockets = ["qemu-server/*.qmp"]\n',
        f"{QMP_KEY}.sockets",
        "not an absolute path",
        "qmp-relative-socket",
    ),
    case(
        '[[sources.qmp]]\nsockets = ["/var/lib/libvirt/qemu/domain-*/monitor.sock"]\n',
        f"{QMP_KEY}.sockets",
        "libvirtd owns those monitors",
        "qmp-under-var-lib-libvirt",
    ),
    case(
        '[[sources.qmp]]\nsockets = ["/run/libvirt/qemu/*.sock"]\n',
        f"{QMP_KEY}.sockets",
        "under libvirt's state directory",
        "qmp-under-run-libvirt",
    ),
    case(
        '[[sources.qmp]]\nsockets = ["/var/run/libvirt/qemu/*.sock"]\n',
        f"{QMP_KEY}.sockets",
        "use [[sources.libvirt]]",
        "qmp-under-var-run-libvirt",
    ),
    case(
        '[[sources.qmp]]\nsockets = ["/var/lib/../lib/libvirt/qemu/x.sock"]\n',
        f"{QMP_KEY}.sockets",
        "libvirtd owns those monitors",
        "qmp-under-libvirt-not-normalised",
    ),
    case(
        '[[sources.qmp]]\nsockets = ["${UNSET_QMP}/*.qmp"]\n',
        f"{QMP_KEY}.sockets",
        "UNSET_QMP is not set",
        "qmp-env-unset",
    ),
    case(
        QMP + 'connect_timeout = "soon"\n',
        f"{QMP_KEY}.connect_timeout",
        "bad duration",
        "qmp-connect-timeout-bad",
    ),
    case(
        QMP + "connect_timeout = -1\n",
        f"{QMP_KEY}.connect_timeout",
        "must not be negative",
        "qmp-connect-timeout-negative",
    ),
    case(
        QMP + 'connect_timeout = "0s"\n',
        f"{QMP_KEY}.connect_timeout",
        "greater than zero",
        "qmp-connect-timeout-zero",
    ),
    case(
        QMP + "connect_timeout = true\n",
        f"{QMP_KEY}.connect_timeout",
        "got a boolean",
        "qmp-connect-timeout-bool",
    ),
    case(
        '[agent]\ntimeout = "2s"\n' + QMP + 'connect_timeout = "2s"\n',
        f"{QMP_KEY}.connect_timeout",
        "must be shorter than agent.timeout (2s)",
        "qmp-connect-timeout-not-below-agent-timeout",
    ),
    case(
        QMP + "set_stats_period = -2\n",
        f"{QMP_KEY}.set_stats_period",
        "at least 0",
        "qmp-set-stats-period-negative",
    ),
    case(
        QMP + 'set_stats_period = "2s"\n',
        f"{QMP_KEY}.set_stats_period",
        "expected an integer",
        "qmp-set-stats-period-string",
    ),
    case(
        QMP + 'proxmox_config = "/nonexistent-dir/qemu-server"\n',
        f"{QMP_KEY}.proxmox_config",
        "is not a directory",
        "qmp-proxmox-config-missing",
    ),
    case(
        QMP + "proxmox_config = false\n",
        f"{QMP_KEY}.proxmox_config",
        "expected a string",
        "qmp-proxmox-config-bool",
    ),
    case(QMP + 'host_root = ""\n', f"{QMP_KEY}.host_root", "must not be empty", "qmp-host-root"),
    case(QMP + QMP, "sources.qmp[1]", "duplicate of sources.qmp[0]", "qmp-duplicate"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), QMP_ERRORS)
def test_qmp_config_error(text: str, key: str, fragment: str) -> None:
    test_config_error(text, key, fragment)


def test_qmp_config_every_key_and_defaults(tmp_path: Path) -> None:
    text = f"""
[[sources.qmp]]
sockets = ["/run/qemu-server/*.qmp", "/srv/vms/*/qmp.sock"]
proxmox_config = "{tmp_path}"
connect_timeout = "250ms"
set_stats_period = 2
host_root = "/host"
"""
    loaded = load_text(text, "qmp.toml", {})
    assert loaded.qmp == (
        config.QmpConfig(
            sockets=("/run/qemu-server/*.qmp", "/srv/vms/*/qmp.sock"),
            proxmox_config=str(tmp_path),
            connect_timeout=0.25,
            set_stats_period=2,
            host_root="/host",
        ),
    )
    assert loaded.source_count() == 1
    assert "1 qmp" in loaded.summary()
    default = load_text("[[sources.qmp]]\n", "min.toml", {}).qmp[0]
    assert default == config.QmpConfig()
    assert default.sockets == ("/var/run/qemu-server/*.qmp",)
    assert (default.proxmox_config, default.connect_timeout) == ("auto", 1.0)


def test_qmp_sockets_through_a_symlink_into_libvirt_are_refused(tmp_path: Path) -> None:
    link = tmp_path / "monitors"
    link.symlink_to("/var/lib/libvirt/qemu")
    text = f'[[sources.qmp]]\nsockets = ["{link}/domain-*/monitor.sock"]\n'
    with pytest.raises(ConfigError) as caught:
        load_text(text, "test.toml", {})
    assert caught.value.key == "sources.qmp[0].sockets"
    assert "libvirtd owns those monitors" in caught.value.message
