"""Proxmox VE context: a VM config's `tags:` and the pools of user.cfg, as Proxmox writes them.

The formats are Proxmox's documented ones (qm.conf(5) for `tags`, a `pve-tag-list`; the
access-control file user.cfg for `pool:<id>:<comment>:<vmids>:<storages>:`). The qmp source
reading them from a node's files against real QEMU is in tests/integration/test_qmp_qemu.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from telegraf_balloon.sources import proxmox

USER_CFG = """\
user:root@pam:1:0:::root@example.com:::
user:alice@pve:1:0:Alice:Smith:alice@example.com::

group:admins:root@pam,alice@pve:Administrators:

pool:shop:Web%20shop:101,103:local-lvm:
pool:db::102:
pool:empty::::
pool:twice::103,104:
pool:bad vm list::x1,105 ,106;107:

role:Auditors:VM.Audit:

acl:1:/pool/shop:alice@pve:PVEVMUser:
"""


def test_tags_line_sorted_and_each_once() -> None:
    config = proxmox.parse_config("memory: 1024\ntags: web;prod;db;web\nname: web-01\n")
    assert config.tags == ("db", "prod", "web")
    assert proxmox.parse_config("tags: a,b c;;\n").tags == ("a", "b", "c")
    assert proxmox.parse_config("memory: 512\n").tags == ()


def test_tags_of_a_snapshot_are_not_the_vm_s() -> None:
    config = proxmox.parse_config("tags: live\n\n[before-upgrade]\ntags: old;stale\n")
    assert config.tags == ("live",)


def test_pools_of_user_cfg() -> None:
    pools = proxmox.parse_pools(USER_CFG)
    assert pools == {
        "101": "shop",
        "103": "shop",  # first pool wins, as Proxmox keeps it
        "102": "db",
        "104": "twice",
        "105": "bad vm list",
        "106": "bad vm list",
        "107": "bad vm list",
    }


@pytest.mark.parametrize(
    ("directory", "user_cfg"),
    [
        ("/etc/pve/qemu-server", "/etc/pve/user.cfg"),
        ("/etc/pve/qemu-server/", "/etc/pve/user.cfg"),
        ("/etc/pve/nodes/pve1/qemu-server", "/etc/pve/user.cfg"),
        ("/srv/pve-copy/qemu-server", "/srv/pve-copy/user.cfg"),
    ],
)
def test_user_cfg_beside_the_config_directory(directory: str, user_cfg: str) -> None:
    assert proxmox.user_cfg_path(directory) == user_cfg


def test_unreadable_user_cfg(tmp_path: Path) -> None:
    assert proxmox.read_pools(str(tmp_path / "user.cfg")) is None
    (tmp_path / "user.cfg").write_bytes(b"pool:\xff\xfe::101:\n")
    assert proxmox.read_pools(str(tmp_path / "user.cfg")) == {"101": "\ufffd\ufffd"}
