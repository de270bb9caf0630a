"""vSphere custom attributes as tags (`custom_attributes = ["Owner", "Team"]`).

A VM's custom attribute values come with its other properties, in the paged retrieval the
source makes every poll anyway: the path `customValue` is added to it (only when attributes
are configured), its value a list of (field key, value). Which key is which attribute is
the CustomFieldsManager's `field` list: read once per session, again when a VM carries a key
that list does not have (an attribute defined since), and at most REFRESH_SECONDS old (a
renamed attribute). Nothing is asked per VM.

An attribute's tag is its name lower-cased with every character but a-z, 0-9 and _ made _
(config.custom_attribute_tag); its value is made a tag value (sources/context.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

from ...config import custom_attribute_tag
from ...log import Log
from ...model import Tags
from ..context import cut_message, tag_value
from .session import Client, Session

REFRESH_SECONDS = 600.0  # the attribute definitions are read again at least this often
CUSTOM_VALUE = "customValue"  # the VM property path of its custom attribute values


class CustomAttributes:
    """The configured attributes of one vCenter: definitions, and tags from a VM's values."""

    def __init__(
        self, names: Sequence[str], client: Client, log: Log, clock: Callable[[], float]
    ) -> None:
        self._wanted = {name: custom_attribute_tag(name) for name in names}  # name -> tag
        self._client = client
        self._log = log
        self._clock = clock
        self._by_key: dict[str, str] = {}  # field key -> tag, for the attributes asked for
        self._defined: frozenset[str] = frozenset()  # every field key VMs may carry
        self._session: Optional[Session] = None  # the session the definitions were read on
        self._read_at = 0.0
        self._reread = False  # read again during this poll already

    def begin(self, session: Session) -> None:
        """Before a poll's VMs: the definitions of this session, fresh enough."""
        self._reread = False
        if session is not self._session or self._clock() - self._read_at >= REFRESH_SECONDS:
            self._read(session)

    def tag(self, values: Any, tags: Tags, vm: str) -> None:
        """Add a VM's configured attributes to `tags` from its customValue ({key: value});
        `vm` is its moid."""
        if not isinstance(values, dict) or not values:
            return
        if not self._reread and not values.keys() <= self._defined and self._session:
            self._read(self._session)  # an attribute defined since: once a poll at most
            self._reread = True
            self._defined |= values.keys()  # a key still unknown asks no more
        cut: list[str] = []
        for key, raw in values.items():
            tag = self._by_key.get(key)
            if tag is None:
                continue
            value, was_cut = tag_value(raw)
            if value is not None:
                tags[tag] = value
            if was_cut:
                cut.append(tag)
        if cut:
            name = tags.get("guest", vm)
            self._log.fault(f"vsphere-attribute:{vm}", f"vsphere: VM {name!r}: {cut_message(cut)}")

    def _read(self, session: Session) -> None:
        definitions = self._client.custom_fields(session)  # key -> name
        self._session = session
        self._read_at = self._clock()
        self._defined = frozenset(definitions)
        self._by_key = {
            key: self._wanted[name] for key, name in definitions.items() if name in self._wanted
        }
        found = set(definitions.values())
        missing = [name for name in self._wanted if name not in found]
        key = f"vsphere-attributes:{self._client.instance}"
        if missing:
            known = ", ".join(repr(name) for name in sorted(found)[:10]) or "none"
            self._log.fault(
                key,
                f"vsphere {self._client.instance}: no custom attribute "
                f"{', '.join(repr(n) for n in missing)} for VMs (defined: {known})",
            )
        else:
            self._log.clear(key, f"vsphere {self._client.instance}: custom attributes all found")
