"""Proxmox VE VM configs (<vmid>.conf): the name, memory and balloon minimum of a running VM,
and whether its QEMU guest agent's channel is enabled.

Written from Proxmox's documented format (qm.conf(5) and the admin guide), not from its code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional

PVE_DIR = "/etc/pve/qemu-server"  # pmxcfs: the cluster file system's VM configs of this node
MIB = 1024 * 1024
DEFAULT_MEMORY_MIB = 512  # qm.conf(5): memory defaults to 512 MiB

# /etc/pve/qemu-server/101.conf:
# #Web front end
# #second description line
# balloon: 1024
# memory: 4096
# name: web-01
# smbios1: uuid=5a1c8ef0-0d5c-4f5e-9c59-2d3b4b1c2a10
# agent: 1,fstrim_cloned_disks=1
# parent: before-upgrade
#
# [before-upgrade]
# memory: 2048
# snaptime: 1700000000
_LINE = re.compile(r"^([a-z][a-z0-9_-]*):\s*(.*?)\s*$")


@dataclass
class PveConfig:
    """The current values of one VM config (snapshots and pending changes left out)."""

    name: Optional[str] = None
    memory_mib: Optional[int] = None  # None: the key is absent (Proxmox uses 512)
    balloon_mib: Optional[int] = None  # None: unset (a device, no auto-ballooning); 0: no device
    shares: Optional[int] = None
    uuid: Optional[str] = None
    agent: bool = False  # the QEMU guest agent's channel (a <vmid>.qga socket) is enabled
    tags: tuple[str, ...] = ()  # `tags: a;b`, sorted, each once
    problems: list[str] = field(default_factory=list)

    @property
    def memory_bytes(self) -> int:
        return (self.memory_mib if self.memory_mib is not None else DEFAULT_MEMORY_MIB) * MIB


def _property_string(value: str, default_key: str) -> dict[str, str]:
    """'current=4096' or '4096' or 'uuid=...,manufacturer=...' -> {key: value}."""
    out: dict[str, str] = {}
    for part in value.split(","):
        key, sep, item = part.partition("=")
        if sep:
            out[key.strip()] = item.strip()
        elif part.strip():
            out[default_key] = part.strip()
    return out


def _mib(value: str) -> Optional[int]:
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def parse_config(text: str) -> PveConfig:
    """The values before the first section header: `[snapshot]`, `[PENDING]`,
    `[special:cloudinit]` hold other states of the VM, not the running one."""
    config = PveConfig()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # the description is stored as leading comment lines
        if line.startswith("["):
            break
        match = _LINE.match(line)
        if match is None:
            config.problems.append(f"line {number}: not 'key: value'")
            continue
        key, value = match.group(1), match.group(2)
        if key == "name":
            config.name = value or None
        elif key == "memory":
            mib = _mib(_property_string(value, "current").get("current", ""))
            if mib is None:
                config.problems.append(f"line {number}: memory {value!r} is not a number of MiB")
            config.memory_mib = mib
        elif key == "balloon":
            mib = _mib(value)
            if mib is None:
                config.problems.append(f"line {number}: balloon {value!r} is not a number of MiB")
            config.balloon_mib = mib
        elif key == "shares":
            config.shares = _mib(value)
        elif key == "smbios1":
            config.uuid = _property_string(value, "uuid").get("uuid") or None
        elif key == "agent":
            # agent: [enabled=]<1|0>[,fstrim_cloned_disks=<1|0>][,type=<virtio|isa>]...
            enabled = _property_string(value, "enabled").get("enabled", "")
            if enabled not in ("0", "1"):
                config.problems.append(f"line {number}: agent {value!r} is not enabled=0 or 1")
            config.agent = enabled == "1"
        elif key == "tags":
            config.tags = split_tags(value)
    return config


def split_tags(value: str) -> tuple[str, ...]:
    """`tags: web;prod` (Proxmox writes ';', and reads ',' and spaces as well) -> sorted."""
    return tuple(sorted({tag for tag in re.split(r"[;,\s]+", value) if tag}))


# /etc/pve/user.cfg, one line per entry, fields split at ':' (pve-access-control's format):
# pool:<pool id>:<comment>:<vmid>,<vmid>,...:<storage>,...:
# A VM is in at most one pool; a vmid listed twice keeps its first pool, as Proxmox does.
def parse_pools(text: str) -> dict[str, str]:
    """vmid -> pool from user.cfg's `pool:` lines."""
    pools: dict[str, str] = {}
    for raw in text.splitlines():
        parts = [part.strip() for part in raw.strip().split(":")]
        if len(parts) < 4 or parts[0] != "pool" or not parts[1]:
            continue
        for vmid in re.split(r"[;,\s]+", parts[3]):
            if vmid.isascii() and vmid.isdigit():
                pools.setdefault(str(int(vmid)), parts[1])
    return pools


def user_cfg_path(pve_dir: str) -> str:
    """user.cfg of the cluster file system a VM config directory belongs to:
    /etc/pve/qemu-server -> /etc/pve/user.cfg, /etc/pve/nodes/<node>/qemu-server too."""
    parent = os.path.dirname(os.path.normpath(pve_dir))
    if os.path.basename(os.path.dirname(parent)) == "nodes":
        parent = os.path.dirname(os.path.dirname(parent))
    return os.path.join(parent, "user.cfg")


def _read_text(path: str, limit: int) -> Optional[str]:
    """At most `limit` bytes of a file as text (bad UTF-8 replaced), or None when unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit)
    except OSError:
        return None
    return data.decode("utf-8", "replace")


def read_pools(path: str) -> Optional[dict[str, str]]:
    """vmid -> pool from a user.cfg, or None when it cannot be read."""
    text = _read_text(path, 4 << 20)
    return None if text is None else parse_pools(text)


def read_config(path: str) -> Optional[PveConfig]:
    """The parsed config file, or None when it cannot be read (the VM is not on this node)."""
    text = _read_text(path, 1 << 20)
    return None if text is None else parse_config(text)


def resolve_dir(setting: str, auto_dir: str = PVE_DIR) -> Optional[str]:
    """The config directory to read: "" -> None; "auto" -> auto_dir when it exists."""
    if not setting:
        return None
    if setting == "auto":
        return auto_dir if os.path.isdir(auto_dir) else None
    return setting
