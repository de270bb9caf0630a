"""vSphere custom attributes as tags (`custom_attributes = ["Owner", "Team"]`).

A VM's custom attribute values are its `customValue` property: an array of (field key,
value), every attribute the VM carries. Asked on every poll's VM pages, that array costs the
poll's parse about 4 µs per value (measured: 7-8 µs per VM with two values, 7-12% of the
poll). So it rides on the VM pages the source retrieves anyway once every
VALUES_REFRESH_SECONDS, and each VM's tags are kept until the next such poll. A VM first
seen between two such polls is not left without its tags (which would start a second series
for it): one RetrievePropertiesEx of those VMs, by name, in the same poll. Nothing is ever
asked per VM.

Which key is which attribute is the CustomFieldsManager's `field` list: read once per
session, again when a VM carries a key that list does not have (an attribute defined since),
and at least every DEFINITIONS_REFRESH_SECONDS (a renamed attribute).

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

VALUES_REFRESH_SECONDS = 300.0  # every VM's values read again (an edited attribute)
DEFINITIONS_REFRESH_SECONDS = 600.0  # the attribute definitions read again at least this often
CUSTOM_VALUE = "customValue"  # the VM property path of its custom attribute values
_VALUES_KEPT = 65536  # made tag values remembered (owners and teams repeat across VMs)


class CustomAttributes:
    """The configured attributes of one vCenter: definitions, and each VM's tags."""

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
        self._defined_at = 0.0
        self._reread = False  # definitions read again during this poll already
        self._values: dict[str, tuple[Optional[str], bool]] = {}  # raw -> tag_value(raw)
        self._by_vm: dict[str, Tags] = {}  # moid -> its attribute tags, until the next refresh
        self._values_at: Optional[float] = None  # when the VM pages last carried the values
        self._fresh = False  # this poll's VM pages carry customValue
        self._seen: set[str] = set()  # VMs of this poll's pages
        self._pending: list[tuple[str, Tags]] = []  # VMs first seen since the last refresh

    def begin(self, session: Session) -> bool:
        """Before a poll's VMs: whether its VM pages must ask for customValue."""
        self._reread = False
        now = self._clock()
        if session is not self._session or now - self._defined_at >= DEFINITIONS_REFRESH_SECONDS:
            self._read(session)
        self._fresh = self._values_at is None or now - self._values_at >= VALUES_REFRESH_SECONDS
        if self._fresh:
            self._values_at = now
        self._seen.clear()
        self._pending.clear()
        return self._fresh

    def tag(self, values: Any, tags: Tags, vm: str) -> None:
        """Add a VM's attribute tags; `values` its customValue ({key: value}) on a poll whose
        pages carry it, `vm` its moid."""
        if self._fresh:
            self._seen.add(vm)
            made = self._by_vm[vm] = self._made(values, vm, tags.get("guest", vm))
        else:
            cached = self._by_vm.get(vm)
            if cached is None:
                self._pending.append((vm, tags))
                return
            made = cached
        if made:
            tags.update(made)

    def finish(self, session: Session) -> None:
        """After a poll's VMs: the tags of VMs first seen since the last refresh, in one call;
        on a refresh, forget the VMs that are gone."""
        if self._fresh:
            for gone in self._by_vm.keys() - self._seen:
                del self._by_vm[gone]
        if not self._pending:
            return
        pending = {vm: tags for vm, tags in self._pending}
        self._pending.clear()
        found = {
            moid: props.get(CUSTOM_VALUE)
            for _, moid, props in self._client.retrieve_objects(
                session, "VirtualMachine", list(pending), (CUSTOM_VALUE,)
            )
        }
        for vm, tags in pending.items():
            made = self._by_vm[vm] = self._made(found.get(vm), vm, tags.get("guest", vm))
            tags.update(made)

    def _made(self, values: Any, vm: str, name: str) -> Tags:
        """A VM's attribute tags from its customValue; an oversized value: one `W! `."""
        if not isinstance(values, dict) or not values:
            return {}
        if not self._reread and not values.keys() <= self._defined and self._session:
            self._read(self._session)  # an attribute defined since: once a poll at most
            self._reread = True
            self._defined |= values.keys()  # a key still unknown asks no more
        made: Tags = {}
        cut: list[str] = []
        for key, raw in values.items():
            tag = self._by_key.get(key)
            if tag is None:
                continue
            value_cut = self._values.get(raw)
            if value_cut is None:
                if len(self._values) >= _VALUES_KEPT:
                    self._values.clear()
                value_cut = self._values[raw] = tag_value(raw)
            value, was_cut = value_cut
            if value is not None:
                made[tag] = value
            if was_cut:
                cut.append(tag)
        if cut:
            self._log.fault(f"vsphere-attribute:{vm}", f"vsphere: VM {name!r}: {cut_message(cut)}")
        return made

    def _read(self, session: Session) -> None:
        definitions = self._client.custom_fields(session)  # key -> name
        self._session = session
        self._defined_at = self._clock()
        self._defined = frozenset(definitions)
        by_key = {
            key: self._wanted[name] for key, name in definitions.items() if name in self._wanted
        }
        if by_key != self._by_key:
            self._values_at = None  # an attribute renamed or defined: every VM's values again
        self._by_key = by_key
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
