"""Context tags: the names operators search by (OpenStack, KubeVirt, Proxmox, vSphere), made safe.

A context tag's value comes from whoever named the VM: a project name typed into OpenStack,
a Proxmox tag, a vSphere custom attribute. Such a value may hold anything, so it is made a
tag value here, the same way for every source: control characters and other characters that
print nothing become a space, runs of white space one space, and a value longer than
MAX_TAG_BYTES (UTF-8) is cut there (the caller says so once, with a `W! `). An empty value is
no tag. The line-protocol serializer escapes what remains.

Which tags exist is the operator's choice (`context_tags`, `custom_attributes`): each is
one more series key per distinct value, so none is on by default.
"""

from __future__ import annotations

import re
from typing import Optional

MAX_TAG_BYTES = 1024  # a context tag's value is cut to this many bytes of UTF-8

_SPACES = re.compile(r"\s+")


def tag_value(raw: str) -> tuple[Optional[str], bool]:
    """`raw` as a context tag value, and whether it was cut; None when nothing is left."""
    text = raw if raw.isprintable() else "".join(c if c.isprintable() else " " for c in raw)
    text = _SPACES.sub(" ", text).strip()
    if not text:
        return None, False
    if len(text) <= MAX_TAG_BYTES // 4:  # at most 4 bytes a character: short enough
        return text, False
    data = text.encode("utf-8")
    if len(data) <= MAX_TAG_BYTES:
        return text, False
    cut = data[:MAX_TAG_BYTES].decode("utf-8", "ignore").rstrip()
    return (cut or None), True


def cut_message(tags: list[str]) -> str:
    """What a `W! ` line says of values cut at MAX_TAG_BYTES."""
    names = ", ".join(sorted(tags))
    return f"context tag value(s) longer than {MAX_TAG_BYTES} bytes cut: {names}"
