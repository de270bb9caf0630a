"""TOML config -> frozen, validated objects. Every error names the file and the key path."""

from __future__ import annotations

import math
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from . import catalog
from .envexpand import EnvError, expand_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on old Pythons only
    import tomli as tomllib

DEFAULT_PATH = "/etc/telegraf/telegraf-balloon.toml"


class ConfigError(Exception):
    """A config problem: which file, which key, what is wrong."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class AgentConfig:
    hostname: str = ""
    timeout: float = 5.0
    internal: bool = True


@dataclass(frozen=True)
class GuestConfig:
    root: str = "/"


@dataclass(frozen=True)
class LibvirtConfig:
    uri: str = "qemu:///system"
    domains: tuple[str, ...] = ()
    read_only: bool = True
    set_stats_period: int = 0
    keepalive_interval: int = 5
    keepalive_count: int = 3
    refresh_interval: float = 300.0
    host_root: str = "/"  # this host's /proc and /sys, read when the URI is local
    concurrency: int = 0  # concurrent stats calls: 0 auto, 1 one bulk call, N pinned
    agent_ping: bool = False  # guest-ping each domain's QEMU guest agent (needs read_only off)
    context_tags: tuple[str, ...] = ()  # opt-in tags: "openstack", "kubevirt"


@dataclass(frozen=True)
class VsphereConfig:
    url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""
    ca_file: str = ""
    insecure_skip_verify: bool = False
    vm_include: tuple[str, ...] = ("*",)
    page_size: int = 500
    target_counters: bool = True
    custom_attributes: tuple[str, ...] = ()  # custom attribute names added as tags
    # Scaling out: this agent's part of the vCenter, a name of `shards` (or, without `shards`,
    # a label on its lines); `shards` maps each part to inventory paths of datacenters, folders,
    # clusters or hosts ("*": the rest), the same map in every agent.
    shard: str = ""
    shards: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class QmpConfig:
    sockets: tuple[str, ...] = ("/var/run/qemu-server/*.qmp",)
    proxmox_config: str = "auto"  # "auto": /etc/pve/qemu-server when it exists; "": off
    connect_timeout: float = 1.0
    set_stats_period: int = 0
    host_root: str = "/"
    agent_ping: bool = True  # guest-ping the <vmid>.qga socket of VMs with the agent enabled
    context_tags: tuple[str, ...] = ()  # opt-in tags: "proxmox"


@dataclass(frozen=True)
class LogsConfig:
    files: tuple[str, ...] = ()
    patterns: tuple[tuple[str, str], ...] = ()
    kmsg: bool = False  # also read the kernel log (/dev/kmsg) from its end


@dataclass(frozen=True)
class HealthConfig:
    stuck_gap_ratio: float = 0.05
    stuck_for: float = 300.0
    stale_after: Optional[float] = None  # None: max(60 s, 3 x the stats period)


@dataclass(frozen=True)
class ThresholdRule:
    field: str
    measurement: str
    warn: Optional[float]
    crit: Optional[float]
    for_seconds: float = 0.0
    below: bool = False


@dataclass(frozen=True)
class Config:
    path: str
    agent: AgentConfig = AgentConfig()
    guest: tuple[GuestConfig, ...] = ()
    libvirt: tuple[LibvirtConfig, ...] = ()
    vsphere: tuple[VsphereConfig, ...] = ()
    logs: tuple[LogsConfig, ...] = ()
    health: HealthConfig = HealthConfig()
    thresholds: tuple[ThresholdRule, ...] = ()
    qmp: tuple[QmpConfig, ...] = ()
    # What loads but deserves a W! line (the caller logs them): e.g. an open password file.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def source_count(self) -> int:
        return (
            len(self.guest) + len(self.libvirt) + len(self.vsphere) + len(self.logs) + len(self.qmp)
        )

    def summary(self) -> str:
        kinds = [
            f"{len(items)} {name}"
            for name, items in (
                ("guest", self.guest),
                ("libvirt", self.libvirt),
                ("vsphere", self.vsphere),
                ("logs", self.logs),
                ("qmp", self.qmp),
            )
            if items
        ]
        return (
            f"{self.path}: ok: sources: {', '.join(kinds)}; "
            f"{len(self.thresholds)} threshold rule(s); timeout {self.agent.timeout:g}s"
        )


def default_config() -> Config:
    """What runs without a config file: the guest source on '/'."""
    return Config(path="(built-in default)", guest=(GuestConfig(),))


# --- values -------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: object) -> float:
    """'5s', '1m30s', '250ms' or a number of seconds -> seconds. ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "5s", got a boolean')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty duration")
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or pos == 0:
            raise ValueError(f'bad duration {value!r} (use e.g. "500ms", "5s", "10m", "1h")')
    else:
        raise ValueError(f'expected a duration such as "5s", got {type(value).__name__}')
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


# --- the walker -------------------------------------------------------------------------------


class _Reader:
    """Reads one table's keys with types checked, then refuses whatever was not read."""

    def __init__(
        self,
        path: str,
        keypath: str,
        table: object,
        environ: Mapping[str, str],
        warnings: Optional[list[str]] = None,
    ):
        self.path = path
        self.keypath = keypath
        self.environ = environ
        self.warnings: list[str] = [] if warnings is None else warnings  # shared by sub-tables
        if not isinstance(table, dict):
            raise ConfigError(path, keypath, f"expected a table, got {_type_name(table)}")
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, f"{self.keypath}.{key}" if self.keypath else key, message)

    def warn(self, key: str, message: str) -> None:
        """A problem that does not stop the load: worded like an error, logged as W!."""
        self.warnings.append(str(self.error(key, message)))

    def _raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.table.get(key)

    def _typed(self, key: str, expected: str, accepts: Callable[[Any], bool]) -> Any:
        """The key's value, None when absent; an error saying `expected` when not `accepts`."""
        value = self._raw(key)
        if value is not None and not accepts(value):
            raise self.error(key, f"expected {expected}, got {_type_name(value)}")
        return value

    def string(self, key: str, default: str) -> str:
        value = self._typed(key, "a string", lambda v: isinstance(v, str))
        if value is None:
            return default
        try:
            return expand_env(value, self.environ)
        except EnvError as exc:
            raise self.error(key, str(exc)) from None

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, "true or false", lambda v: isinstance(v, bool))
        return default if value is None else bool(value)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self._typed(key, "an integer", lambda v: type(v) is not bool and isinstance(v, int))
        if value is None:
            return default
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return int(value)

    def number(self, key: str, default: Optional[float]) -> Optional[float]:
        value = self._typed(
            key, "a number", lambda v: type(v) is not bool and isinstance(v, (int, float))
        )
        if value is None:
            return default
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value}")
        return float(value)

    def ratio(self, key: str, default: float) -> float:
        value = self.number(key, default)
        assert value is not None
        if not 0.0 <= value <= 1.0:
            raise self.error(key, f"must be a ratio between 0 and 1, got {value:g}")
        return value

    def duration(self, key: str, default: Optional[float]) -> Optional[float]:
        value = self._raw(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = self.string(key, "")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def seconds(self, key: str, default: float, positive: bool = False) -> float:
        """A duration that has a default; `positive`: zero or less is an error."""
        value = self.duration(key, default)
        assert value is not None
        if positive and value <= 0:
            raise self.error(key, "must be greater than zero")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._typed(
            key,
            "a list of strings",
            lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        )
        if value is None:
            return default
        try:
            return tuple(expand_env(v, self.environ) for v in value)
        except EnvError as exc:
            raise self.error(key, str(exc)) from None

    def table_of(self, key: str) -> Optional[_Reader]:
        value = self._raw(key)
        if value is None:
            return None
        return _Reader(
            self.path,
            f"{self.keypath}.{key}" if self.keypath else key,
            value,
            self.environ,
            self.warnings,
        )

    def finish(self) -> None:
        for key in self.table:
            if key not in self.seen:
                raise self.error(key, "unknown key")


def _type_name(value: object) -> str:
    names = {
        dict: "a table",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
    }
    return names.get(type(value), type(value).__name__)


def _list_of_tables(reader: _Reader, key: str) -> list[_Reader]:
    value = reader._raw(key)
    if value is None:
        return []
    keypath = f"{reader.keypath}.{key}" if reader.keypath else key
    if not isinstance(value, list):
        raise ConfigError(
            reader.path, keypath, f"expected [[{keypath}]] tables, got {_type_name(value)}"
        )
    return [
        _Reader(reader.path, f"{keypath}[{i}]", item, reader.environ, reader.warnings)
        for i, item in enumerate(value)
    ]


# --- sections ---------------------------------------------------------------------------------


def _agent(r: Optional[_Reader]) -> AgentConfig:
    default = AgentConfig()
    if r is None:
        return default
    timeout = r.seconds("timeout", default.timeout, positive=True)
    out = AgentConfig(
        hostname=r.string("hostname", default.hostname),
        timeout=timeout,
        internal=r.boolean("internal", default.internal),
    )
    r.finish()
    return out


def _guest(r: _Reader) -> GuestConfig:
    root = r.string("root", GuestConfig().root)
    if not root:
        raise r.error("root", 'must not be empty (use "/" for this machine)')
    r.finish()
    return GuestConfig(root=root)


def _libvirt(r: _Reader) -> LibvirtConfig:
    default = LibvirtConfig()
    uri = r.string("uri", default.uri)
    if not uri or "://" not in uri:
        raise r.error("uri", f'not a libvirt URI: {uri!r} (e.g. "qemu:///system")')
    read_only = r.boolean("read_only", default.read_only)
    period = r.integer("set_stats_period", default.set_stats_period)
    if period > 0 and read_only:
        raise r.error("set_stats_period", "needs read_only = false (arming the period writes)")
    agent_ping = r.boolean("agent_ping", default.agent_ping)
    if agent_ping and read_only:
        raise r.error(
            "agent_ping", "needs read_only = false (libvirt refuses agent commands read-only)"
        )
    refresh = r.seconds("refresh_interval", default.refresh_interval)
    out = LibvirtConfig(
        uri=uri,
        domains=r.strings("domains", default.domains),
        read_only=read_only,
        set_stats_period=period,
        keepalive_interval=r.integer("keepalive_interval", default.keepalive_interval),
        keepalive_count=r.integer("keepalive_count", default.keepalive_count),
        refresh_interval=refresh,
        host_root=_host_root(r, default.host_root),
        concurrency=r.integer("concurrency", default.concurrency),
        agent_ping=agent_ping,
        context_tags=_context_tags(r, catalog.LIBVIRT, default.context_tags),
    )
    r.finish()
    return out


def _context_tags(r: _Reader, kind: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The opt-in context tag sets of a source: names the catalog knows for its kind."""
    known = catalog.CONTEXT_TAGS[kind]
    wanted = r.strings("context_tags", default)
    for name in wanted:
        if name not in known:
            raise r.error(
                "context_tags",
                f"unknown context {name!r} for {kind} (known: {', '.join(sorted(known))})",
            )
    return tuple(dict.fromkeys(wanted))


def _custom_attributes(r: _Reader, default: tuple[str, ...]) -> tuple[str, ...]:
    """vSphere custom attribute names, each a tag whose name is its own, made a tag key."""
    names = r.strings("custom_attributes", default)
    taken: dict[str, str] = {}
    for name in names:
        tag = custom_attribute_tag(name)
        if not tag.strip("_"):
            raise r.error("custom_attributes", f"{name!r} gives no tag name")
        if tag in catalog.BALLOON_TAGS or tag in catalog.BALLOON_CONTEXT_TAGS or tag == "time":
            raise r.error(
                "custom_attributes", f"{name!r} would be the tag {tag!r}, which the plugin writes"
            )
        if tag in taken:
            raise r.error(
                "custom_attributes", f"{name!r} and {taken[tag]!r} would both be the tag {tag!r}"
            )
        taken[tag] = name
    return names


def custom_attribute_tag(name: str) -> str:
    """A custom attribute's tag: its name lower-cased, every character but a-z, 0-9, _ as _."""
    return re.sub(r"[^a-z0-9_]", "_", name.strip().lower())


def _host_root(r: _Reader, default: str) -> str:
    root = r.string("host_root", default)
    if not root:
        raise r.error("host_root", 'must not be empty (use "/" for this machine)')
    return root


def _vsphere(r: _Reader) -> VsphereConfig:
    default = VsphereConfig()
    url = r.string("url", default.url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.error("url", 'not an http(s) URL (e.g. "https://vcenter.example.com/sdk")')
    password = r.string("password", default.password)
    password_file = r.string("password_file", default.password_file)
    if password and password_file:
        raise r.error("password_file", "set password or password_file, not both")
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as handle:
                password = handle.read().strip()
                mode = os.fstat(handle.fileno()).st_mode
        except OSError as exc:
            raise r.error("password_file", f"cannot read {password_file}: {exc.strerror}") from None
        if mode & 0o077:
            r.warn(
                "password_file",
                f"{password_file} is open to group or others (mode {mode & 0o777:03o}): "
                "chmod 600 it",
            )
    ca_file = r.string("ca_file", default.ca_file)
    if ca_file and not os.access(ca_file, os.R_OK):
        raise r.error("ca_file", f"cannot read {ca_file}")
    out = VsphereConfig(
        url=url,
        username=r.string("username", default.username),
        password=password,
        password_file=password_file,
        ca_file=ca_file,
        insecure_skip_verify=r.boolean("insecure_skip_verify", default.insecure_skip_verify),
        vm_include=r.strings("vm_include", default.vm_include),
        page_size=r.integer("page_size", default.page_size, minimum=1),
        target_counters=r.boolean("target_counters", default.target_counters),
        custom_attributes=_custom_attributes(r, default.custom_attributes),
        shard=r.string("shard", default.shard),
        shards=_shards(r),
    )
    names = [name for name, _ in out.shards]
    if names and out.shard not in names:
        raise r.error(
            "shard",
            f"{'must be' if out.shard else 'set it to'} this agent's part of shards, one of "
            + ", ".join(f'"{name}"' for name in names),
        )
    r.finish()
    return out


def _shards(r: _Reader) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """[sources.vsphere.shards]: shard name -> inventory paths, each path in one shard only.

    A host belongs to the shard whose path is the longest that leads to it (a cluster's over
    its datacenter's, "*" last), so the shards of one map can never overlap.
    """
    table = r.table_of("shards")
    if table is None:
        return ()
    owner: dict[str, str] = {}
    out: list[tuple[str, tuple[str, ...]]] = []
    for name in table.table:
        if not name.strip():
            raise table.error(name, "a shard needs a name")
        paths: list[str] = []
        for raw in table.strings(name, ()):
            path = raw if raw == "*" else "/" + "/".join(p for p in raw.split("/") if p)
            if raw != "*" and (not raw.startswith("/") or path == "/"):
                raise table.error(
                    name,
                    f'"{raw}" is not an inventory path such as "/DC1" or '
                    '"/DC1/host/Cluster-A" (or "*" for the rest)',
                )
            if path in owner:
                where = "this shard" if owner[path] == name else f'shard "{owner[path]}"'
                raise table.error(
                    name,
                    f'"{raw}" is in {where} already: each datacenter, folder, cluster or host '
                    "belongs to one shard",
                )
            owner[path] = name
            paths.append(path)
        if not paths:
            raise table.error(name, "list the inventory paths of this shard")
        out.append((name, tuple(paths)))
    table.finish()
    if not out:
        raise r.error("shards", "name at least one shard")
    return tuple(out)


def _logs(r: _Reader) -> LogsConfig:
    default = LogsConfig()
    files = r.strings("files", default.files)
    kmsg = r.boolean("kmsg", default.kmsg)
    if not files and not kmsg:
        raise r.error("files", "list at least one file or glob (or set kmsg = true)")
    patterns: list[tuple[str, str]] = []
    table = r.table_of("patterns")
    if table is not None:
        for name in table.table:
            regex = table.string(name, "")
            try:
                re.compile(regex)
            except re.error as exc:
                raise table.error(name, f"bad regular expression: {exc}") from None
            if not regex:
                raise table.error(name, "empty regular expression")
            patterns.append((name, regex))
        table.finish()
    r.finish()
    return LogsConfig(files=files, patterns=tuple(patterns), kmsg=kmsg)


# libvirtd owns the QMP monitors of its domains: a second client there would stall it.
LIBVIRT_STATE_DIRS = ("/var/lib/libvirt/", "/run/libvirt/", "/var/run/libvirt/")


def _under_libvirt(pattern: str) -> bool:
    """A sockets glob that can only match under libvirt's state directories."""
    normal = os.path.normpath(pattern) + "/"
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    real = os.path.realpath(os.path.dirname(literal) or "/") + "/"
    return any(normal.startswith(d) or real.startswith(d) for d in LIBVIRT_STATE_DIRS)


def _qmp(r: _Reader) -> QmpConfig:
    default = QmpConfig()
    sockets = r.strings("sockets", default.sockets)
    if not sockets or not all(sockets):
        raise r.error("sockets", "list at least one QMP socket path or glob")
    for pattern in sockets:
        if not os.path.isabs(pattern):
            raise r.error("sockets", f"{pattern!r} is not an absolute path")
        if _under_libvirt(pattern):
            raise r.error(
                "sockets",
                f"{pattern!r} is under libvirt's state directory: libvirtd owns those "
                "monitors (use [[sources.libvirt]])",
            )
    proxmox = r.string("proxmox_config", default.proxmox_config)
    if proxmox not in ("", "auto") and not os.path.isdir(proxmox):
        raise r.error("proxmox_config", f'{proxmox!r} is not a directory (or use "auto" or "")')
    connect_timeout = r.seconds("connect_timeout", default.connect_timeout, positive=True)
    out = QmpConfig(
        sockets=sockets,
        proxmox_config=proxmox,
        connect_timeout=connect_timeout,
        set_stats_period=r.integer("set_stats_period", default.set_stats_period),
        host_root=_host_root(r, default.host_root),
        agent_ping=r.boolean("agent_ping", default.agent_ping),
        context_tags=_context_tags(r, catalog.QMP, default.context_tags),
    )
    r.finish()
    return out


def _health(r: Optional[_Reader]) -> HealthConfig:
    default = HealthConfig()
    if r is None:
        return default
    stuck_for = r.seconds("stuck_for", default.stuck_for)
    out = HealthConfig(
        stuck_gap_ratio=r.ratio("stuck_gap_ratio", default.stuck_gap_ratio),
        stuck_for=stuck_for,
        stale_after=r.duration("stale_after", default.stale_after),
    )
    r.finish()
    return out


# A rule's optional keys (`for` is for_seconds); field, measurement, warn and crit have none.
_THRESHOLD_DEFAULTS: dict[str, Any] = {
    item.name: item.default for item in fields(ThresholdRule) if item.default is not MISSING
}


def _threshold(r: _Reader) -> ThresholdRule:
    name = r.string("field", "")
    if not name:
        raise r.error("field", "required: the field this rule watches")
    measurement = r.string("measurement", "")
    if measurement:
        if measurement not in (catalog.BALLOON, catalog.HOST):
            raise r.error("measurement", 'must be "balloon" or "balloon_host"')
        if not catalog.thresholdable(measurement, name):
            raise r.error("field", f"{measurement} has no numeric or boolean field {name!r}")
    elif catalog.thresholdable(catalog.BALLOON, name):
        measurement = catalog.BALLOON
    elif catalog.thresholdable(catalog.HOST, name):
        measurement = catalog.HOST
    else:
        raise r.error("field", f"no numeric or boolean field {name!r} in balloon or balloon_host")
    warn = r.number("warn", None)
    crit = r.number("crit", None)
    if warn is None and crit is None:
        raise r.error("warn", "set warn, crit or both")
    below = r.boolean("below", _THRESHOLD_DEFAULTS["below"])
    if warn is not None and crit is not None and (warn < crit if below else warn > crit):
        side = "above" if below else "beyond"
        raise r.error("warn", f"warn ({warn:g}) is {side} crit ({crit:g})")
    for_seconds = r.seconds("for", _THRESHOLD_DEFAULTS["for_seconds"])
    out = ThresholdRule(name, measurement, warn, crit, for_seconds, below)
    r.finish()
    return out


_SOURCES: dict[str, Callable[[_Reader], Any]] = {
    "guest": _guest,
    "libvirt": _libvirt,
    "vsphere": _vsphere,
    "logs": _logs,
    "qmp": _qmp,
}

_IDENTITY: dict[str, Callable[[Any], str]] = {
    "guest": lambda c: os.path.normpath(c.root),
    "libvirt": lambda c: c.uri,
    "vsphere": lambda c: f"{c.url}#{c.shard}",
    "logs": lambda c: "\0".join(sorted(c.files)),
    "qmp": lambda c: "\0".join(sorted(c.sockets)),
}


def load_text(text: str, path: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Parse and validate config text; ConfigError on the first problem."""
    env = os.environ if environ is None else environ
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"TOML syntax: {exc}") from None
    top = _Reader(path, "", data, env)
    agent = _agent(top.table_of("agent"))
    found: dict[str, list[Any]] = {kind: [] for kind in _SOURCES}
    sources = top.table_of("sources")
    if sources is not None:
        for kind in sources.table:
            if kind not in _SOURCES:
                raise sources.error(
                    kind, f"unknown source kind (known: {', '.join(sorted(_SOURCES))})"
                )
            items = _list_of_tables(sources, kind)
            if not items:
                raise sources.error(kind, "empty list of sources")
            seen: dict[str, str] = {}
            for reader in items:
                parsed = _SOURCES[kind](reader)
                identity = _IDENTITY[kind](parsed)
                if identity in seen:
                    raise ConfigError(
                        path, reader.keypath, f"duplicate of {seen[identity]} (same {kind} target)"
                    )
                seen[identity] = reader.keypath
                if kind == "qmp" and parsed.connect_timeout >= agent.timeout:
                    raise ConfigError(
                        path,
                        f"{reader.keypath}.connect_timeout",
                        f"{parsed.connect_timeout:g}s must be shorter than agent.timeout "
                        f"({agent.timeout:g}s): one busy VM would make the source miss its poll",
                    )
                found[kind].append(parsed)
    readers = [i for i, logs in enumerate(found["logs"]) if logs.kmsg]
    if len(readers) > 1:  # each would count every kernel event once more
        raise ConfigError(
            path,
            f"sources.logs[{readers[1]}].kmsg",
            f"the kernel log is read by sources.logs[{readers[0]}] already",
        )
    health = _health(top.table_of("health"))
    thresholds = tuple(_threshold(r) for r in _list_of_tables(top, "thresholds"))
    top.finish()
    config = Config(
        path=path,
        agent=agent,
        guest=tuple(found["guest"]),
        libvirt=tuple(found["libvirt"]),
        vsphere=tuple(found["vsphere"]),
        logs=tuple(found["logs"]),
        health=health,
        thresholds=thresholds,
        qmp=tuple(found["qmp"]),
        warnings=tuple(top.warnings),
    )
    if config.source_count() == 0:
        raise ConfigError(path, "sources", "no source configured (add e.g. [[sources.guest]])")
    return config


def load(path: str, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Read and validate a config file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read config: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8: {exc}") from None
    return load_text(text, path, environ)


def custom_tags(config: Config) -> frozenset[str]:
    """The balloon tags the config's vSphere custom_attributes add."""
    return frozenset(
        custom_attribute_tag(name) for vs in config.vsphere for name in vs.custom_attributes
    )


def hostname(config: Config) -> str:
    """The guest-side host tag: [agent] hostname, else the machine's name."""
    return config.agent.hostname or socket.gethostname()
