"""VMware vSphere: every VM of a vCenter in one paged property-collector poll, plus balloon targets.

pyVmomi does what it does well: the session (login, TLS, re-login), container views and the
once-per-session lookups (performance counter ids, the server's query limit). The hot path,
the property retrieval of every VM and host and the realtime QueryPerf, is SOAP built here and
sent on pyVmomi's own connection and session cookie, its reply parsed while it streams in:
pyVmomi's object building is most of a bulk poll's time (about 360 µs per VM measured on the
simulator, against about 60 µs here), and the tests keep pyVmomi as the oracle the figures
must equal.
"""

from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import gc
import http.client
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Container, Iterable, Iterator, Sequence
from datetime import timezone
from typing import Any, Callable, Optional
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from pyVim import connect as _connect
from pyVmomi import vim, vmodl

from ..config import VsphereConfig
from ..log import Log
from ..model import Fields, HostInfo, PollResult, Sample, Tags

KIB = 1024
MIB = 1024 * 1024
REALTIME_INTERVAL = 20  # seconds: vCenter's realtime performance sample
# A counter sample older than this (two realtime intervals) is never used: the VM then reports
# its quickStats and no balloon target.
MAX_SAMPLE_AGE = 2 * REALTIME_INTERVAL
DEFAULT_MAX_QUERY_METRICS = 64  # when the server does not say (the most cautious common value)
REPLY_ELEMENTS = 200_000  # keep each QueryPerf reply well under vCenter's 500,000 elements
CHUNK = 64 * 1024

_NS = "urn:vim25"
_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_T_OBJECTS = f"{{{_NS}}}objects"
_T_OBJ = f"{{{_NS}}}obj"
_T_PROPSET = f"{{{_NS}}}propSet"
_T_NAME = f"{{{_NS}}}name"
_T_VAL = f"{{{_NS}}}val"
_T_TOKEN = f"{{{_NS}}}token"
_T_RETURNVAL = f"{{{_NS}}}returnval"
_T_ENTITY = f"{{{_NS}}}entity"
_T_SAMPLEINFO = f"{{{_NS}}}sampleInfo"
_T_TIMESTAMP = f"{{{_NS}}}timestamp"
_T_VALUE = f"{{{_NS}}}value"
_T_ID = f"{{{_NS}}}id"
_T_COUNTER = f"{{{_NS}}}counterId"
_T_FAULT = f"{{{_SOAP}}}Fault"
_XSI_TYPE = f"{{{_XSI}}}type"

# Leaf property paths only: each builds a small reply element, where `summary` would build all.
VM_PATHS: tuple[str, ...] = (
    "name",
    "config.template",
    "config.instanceUuid",
    "config.hardware.memoryMB",
    "config.memoryAllocation.reservation",
    "config.memoryAllocation.limit",
    "runtime.powerState",
    "runtime.host",
    "summary.quickStats.balloonedMemory",
    "summary.quickStats.swappedMemory",
    "summary.quickStats.compressedMemory",
    "summary.quickStats.grantedMemory",
    "summary.quickStats.hostMemoryUsage",
    "summary.quickStats.guestMemoryUsage",
    "summary.quickStats.sharedMemory",
    "summary.quickStats.consumedOverheadMemory",
)
VM_PATH_PATHS = ("parent", "parentVApp")  # asked only when vm_include needs inventory paths
HOST_PATHS = ("summary.hardware.memorySize", "summary.quickStats.overallMemoryUsage")
# Everything above the VMs: names and parents make tags (cluster, datacenter) and paths.
INVENTORY_TYPES = (
    "Folder",
    "Datacenter",
    "ComputeResource",
    "ClusterComputeResource",
    "HostSystem",
    "VirtualApp",
)

# quickStats (MB, compressed in KB) -> field, scale
_QUICKSTATS: tuple[tuple[str, str, int], ...] = (
    ("summary.quickStats.swappedMemory", "host_swapped_bytes", MIB),
    ("summary.quickStats.compressedMemory", "compressed_bytes", KIB),
    ("summary.quickStats.grantedMemory", "granted_bytes", MIB),
    ("summary.quickStats.hostMemoryUsage", "consumed_bytes", MIB),
    ("summary.quickStats.guestMemoryUsage", "active_bytes", MIB),
    ("summary.quickStats.sharedMemory", "shared_bytes", MIB),
    ("summary.quickStats.consumedOverheadMemory", "overhead_bytes", MIB),
)
# vCenter leaves out an optional int it has nothing for; a powered-on VM's reclaim figures are
# then 0 (the simulator leaves out every zero). The others stay absent when left out.
_ZERO_WHEN_MISSING = frozenset(
    (
        "summary.quickStats.balloonedMemory",
        "summary.quickStats.swappedMemory",
        "summary.quickStats.compressedMemory",
    )
)

# Realtime counters, all in KB.
VMMEMCTL = "mem.vmmemctl.average"
VMMEMCTLTARGET = "mem.vmmemctltarget.average"
SWAPPED = "mem.swapped.average"
COMPRESSED = "mem.compressed.average"
COUNTERS = (VMMEMCTL, VMMEMCTLTARGET, SWAPPED, COMPRESSED)


class VsphereFault(Exception):
    """A SOAP fault from the server: its type name (NotAuthenticated, ...) and message."""

    def __init__(self, fault: str, message: str) -> None:
        self.fault = fault
        super().__init__(f"{fault}: {message}" if message else fault)


class _SessionLost(Exception):
    """The session is gone (vCenter restarted, session expired or terminated): log in again."""


Props = dict[str, Any]  # property path -> str, or (type, moid) for a reference
_pyvim: Any = _connect  # pyVim's functions carry no annotations


# -- SOAP requests ------------------------------------------------------------------------------

_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{_SOAP}" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    f'xmlns:xsi="{_XSI}"><soapenv:Body>{{body}}</soapenv:Body></soapenv:Envelope>'
)


def _mor(tag: str, kind: str, moid: str) -> str:
    return f'<{tag} type="{escape(kind)}">{escape(moid)}</{tag}>'


def retrieve_request(
    collector: str, view: str, specs: Sequence[tuple[str, Sequence[str]]], page_size: int
) -> bytes:
    """RetrievePropertiesEx over a container view: property paths per type, `page_size` a page."""
    props = "".join(
        f"<propSet><type>{kind}</type><all>false</all>"
        + "".join(f"<pathSet>{escape(p)}</pathSet>" for p in paths)
        + "</propSet>"
        for kind, paths in specs
    )
    objects = (
        f"<objectSet>{_mor('obj', 'ContainerView', view)}<skip>true</skip>"
        '<selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type>'
        "<path>view</path><skip>false</skip></selectSet></objectSet>"
    )
    body = (
        f'<RetrievePropertiesEx xmlns="{_NS}">'
        f"{_mor('_this', 'PropertyCollector', collector)}"
        f"<specSet>{props}{objects}</specSet>"
        f"<options><maxObjects>{page_size}</maxObjects></options></RetrievePropertiesEx>"
    )
    return _ENVELOPE.format(body=body).encode("utf-8")


def continue_request(collector: str, token: str) -> bytes:
    body = (
        f'<ContinueRetrievePropertiesEx xmlns="{_NS}">'
        f"{_mor('_this', 'PropertyCollector', collector)}"
        f"<token>{escape(token)}</token></ContinueRetrievePropertiesEx>"
    )
    return _ENVELOPE.format(body=body).encode("utf-8")


def query_perf_request(perf_manager: str, queries: Iterable[tuple[str, Sequence[int]]]) -> bytes:
    """QueryPerf: the latest realtime sample (maxSample 1) of the given counters per VM."""
    specs = "".join(
        f"<querySpec>{_mor('entity', 'VirtualMachine', moid)}<maxSample>1</maxSample>"
        + "".join(
            f"<metricId><counterId>{c}</counterId><instance></instance></metricId>" for c in ids
        )
        + f"<intervalId>{REALTIME_INTERVAL}</intervalId></querySpec>"
        for moid, ids in queries
    )
    body = (
        f'<QueryPerf xmlns="{_NS}">{_mor("_this", "PerformanceManager", perf_manager)}'
        f"{specs}</QueryPerf>"
    )
    return _ENVELOPE.format(body=body).encode("utf-8")


# -- SOAP replies, parsed while they stream in ---------------------------------------------------


class _Stream:
    """Feeds a reply to an XMLPullParser in chunks; yields each finished element of interest."""

    def __init__(self, read: Callable[[int], bytes], wanted: frozenset[str]) -> None:
        self._read = read
        self._wanted = wanted
        self._parser: Any = ET.XMLPullParser(events=("end",))

    def __iter__(self) -> Iterator[ET.Element]:
        parser, wanted = self._parser, self._wanted
        while True:
            chunk = self._read(CHUNK)
            if chunk:
                parser.feed(chunk)
            else:
                parser.close()
            for _, elem in parser.read_events():
                if elem.tag in wanted:
                    yield elem
            if not chunk:
                return


# <soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>...</faultstring>
#   <detail><NotAuthenticatedFault xsi:type="NotAuthenticated">...</detail></soapenv:Fault>
def parse_fault(elem: ET.Element) -> VsphereFault:
    message = (elem.findtext("faultstring") or "").strip()
    name = "ServerFault"
    detail = elem.find("detail")
    if detail is not None and len(detail):
        first = detail[0]
        name = first.get(_XSI_TYPE) or first.tag.rsplit("}", 1)[-1].removesuffix("Fault")
        name = name.rsplit(":", 1)[-1]
    return VsphereFault(name, " ".join(message.split()))


def _value(val: ET.Element) -> Any:
    kind = val.get("type")
    if kind is not None:  # a ManagedObjectReference
        return (kind, val.text or "")
    return val.text or ""


def parse_objects(
    elems: Iterable[ET.Element], token: list[str]
) -> Iterator[tuple[str, str, Props]]:
    """(type, moid, {path: value}) per ObjectContent; the continuation token into `token`."""
    for elem in elems:
        tag = elem.tag
        if tag == _T_OBJECTS:
            kind = moid = ""
            props: Props = {}
            for child in elem:
                ctag = child.tag
                if ctag == _T_PROPSET:
                    name = child.findtext(_T_NAME)
                    val = child.find(_T_VAL)
                    if name is not None and val is not None:
                        props[name] = _value(val)
                elif ctag == _T_OBJ:
                    kind, moid = child.get("type", ""), child.text or ""
            elem.clear()
            yield kind, moid, props
        elif tag == _T_TOKEN:
            token.append(elem.text or "")
        elif tag == _T_FAULT:
            raise parse_fault(elem)


def parse_perf(elems: Iterable[ET.Element]) -> Iterator[tuple[str, float, dict[int, int]]]:
    """(VM moid, sample time, {counter id: latest value}) per PerfEntityMetric."""
    last_text, last_stamp = None, 0.0
    for elem in elems:
        if elem.tag == _T_FAULT:
            raise parse_fault(elem)
        entity = elem.findtext(_T_ENTITY)
        if entity is None:
            elem.clear()
            continue
        stamp = 0.0
        infos = elem.findall(_T_SAMPLEINFO)
        if infos:
            text = infos[-1].findtext(_T_TIMESTAMP) or ""
            if text != last_text:  # every VM of a reply usually has the same sample time
                last_text, last_stamp = text, _iso_seconds(text)
            stamp = last_stamp
        values: dict[int, int] = {}
        for series in elem.iterfind(_T_VALUE):
            ident = series.find(_T_ID)  # a plain child lookup stays in C (a path would not)
            counter = ident.findtext(_T_COUNTER) if ident is not None else None
            points = series.findall(_T_VALUE)
            if counter is None or not points:
                continue
            text = (points[-1].text or "").strip()
            with contextlib.suppress(ValueError):
                number = int(text)
                if number >= 0:  # -1: no data for this sample
                    values[int(counter)] = number
        elem.clear()
        yield entity, stamp, values


def _iso_seconds(text: str) -> float:
    """vCenter's xsd:dateTime (2026-11-28T10:00:20Z, maybe with fraction/offset) -> epoch s."""
    from datetime import datetime

    text = text.strip()
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _http_date(value: Optional[str]) -> Optional[float]:
    """An HTTP Date header (Sat, 28 Nov 2026 10:00:31 GMT) -> epoch s; None when absent or bad."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _int(value: Any) -> Optional[int]:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


# -- the source ---------------------------------------------------------------------------------


class _Session:
    """One logged-in pyVmomi service instance and what is looked up once per session."""

    def __init__(self, si: Any) -> None:
        self.si = si
        content = si.RetrieveContent()
        self.content = content
        self.stub = si._stub
        self.collector: str = content.propertyCollector._moId
        self.perf_manager: str = content.perfManager._moId if content.perfManager else ""
        self.counter_ids: dict[str, int] = {}
        self.max_query_metrics = DEFAULT_MAX_QUERY_METRICS


class VsphereSource:
    """One vCenter (or ESXi host): a session kept across polls, re-made when it is lost."""

    kind = "vsphere"

    def __init__(
        self,
        config: VsphereConfig,
        log: Log,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.log = log
        self.timeout = timeout
        self._clock = clock
        parts = urlsplit(config.url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._protocol = parts.scheme
        self._path = parts.path or "/sdk"
        self.instance = self._host if parts.port is None else f"{self._host}:{parts.port}"
        self._session: Optional[_Session] = None
        self._filter = tuple(config.vm_include) != ("*",)
        # The last realtime sample per VM moid: (its age when it came, by the server's clock;
        # our clock then; {counter name: KB}). Its age now is the first plus the time since.
        self._perf: dict[str, tuple[float, float, dict[str, int]]] = {}
        self._reply_date: Optional[float] = None  # the last reply's Date header (epoch s)
        self._perf_asked = -float(REALTIME_INTERVAL)  # monotonic time of the last full query
        self._retrieve_seconds = 0.0  # time in the property retrievals' calls since reset

    # -- session --

    def _ssl_context(self) -> ssl.SSLContext:
        if self.config.insecure_skip_verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.config.ca_file or None)

    def _login(self) -> _Session:
        kwargs: dict[str, Any] = {}
        if self._protocol == "https":
            kwargs["sslContext"] = self._ssl_context()
        si = _pyvim.SmartConnect(
            protocol=self._protocol,
            host=self._host,
            port=self._port,
            path=self._path,
            user=self.config.username,
            pwd=self.config.password,
            httpConnectionTimeout=self.timeout,
            **kwargs,
        )
        session = _Session(si)
        self._lookups(session)
        self.log.debug(f"vsphere {self.instance}: logged in as {self.config.username}")
        return session

    def _lookups(self, session: _Session) -> None:
        """Counter ids by group.name.rollup and the server's QueryPerf limit, once per session."""
        if not self.config.target_counters or not session.perf_manager:
            return
        wanted = set(COUNTERS)
        for info in session.content.perfManager.perfCounter:
            name = f"{info.groupInfo.key}.{info.nameInfo.key}.{info.rollupType}"
            if name in wanted:
                session.counter_ids[name] = int(info.key)
        missing = wanted - set(session.counter_ids)
        if missing:
            self.log.warn(
                f"vsphere {self.instance}: no performance counter {', '.join(sorted(missing))}"
            )
        try:
            options = session.content.setting.QueryOptions("config.vpxd.stats.maxQueryMetrics")
        except vim.fault.InvalidName:
            return  # an ESXi host, not a vCenter: no such limit
        for option in options or ():
            with contextlib.suppress(TypeError, ValueError):
                limit = int(option.value)
                session.max_query_metrics = limit if limit > 0 else 0  # 0: unlimited

    def _drop(self, logout: bool = False) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if logout:
            with contextlib.suppress(Exception):
                _pyvim.Disconnect(session.si)
        with contextlib.suppress(Exception):
            session.stub.DropConnections()

    def close(self) -> None:
        self._drop(logout=True)

    # -- the poll --

    def poll(self, now: float) -> PollResult:
        relogged = reconnected = False
        while True:
            try:
                if self._session is None:
                    self._session = self._login()
                with _gc_paused():
                    return self._poll(self._session, now)
            except (_SessionLost, vim.fault.NotAuthenticated) as exc:
                # vCenter restarted, the session expired or was terminated: log in again, once.
                self._drop()
                if relogged:
                    return PollResult(error=self._scrub(f"session lost again: {_message(exc)}"))
                relogged = True
                self.log.info(f"vsphere {self.instance}: session lost; logging in again")
            except _DROPPED as exc:
                # A pooled keep-alive connection the server closed: a new one, once, same session.
                if reconnected or self._session is None:
                    self._drop()
                    return PollResult(error=self._scrub(_message(exc)))
                reconnected = True
                self.log.debug(f"vsphere {self.instance}: connection dropped; reconnecting")
            except vim.fault.InvalidLogin as exc:
                self._drop()
                return PollResult(error=self._scrub(f"login failed: {_message(exc)}"))
            except ssl.SSLCertVerificationError as exc:
                self._drop()
                hint = "set ca_file to the vCenter's CA bundle, or insecure_skip_verify = true"
                return PollResult(error=self._scrub(f"TLS: {exc.verify_message} ({hint})"))
            except (OSError, http.client.HTTPException, ET.ParseError, VsphereFault) as exc:
                # Dropped connection, refused port, timeout: the next poll logs in afresh.
                self._drop()
                return PollResult(error=self._scrub(_message(exc)))
            except vmodl.MethodFault as exc:
                self._drop()
                return PollResult(error=self._scrub(_message(exc)))

    def _scrub(self, text: str) -> str:
        secret = self.config.password
        return text.replace(secret, "***") if secret else text

    def _poll(self, session: _Session, now: float) -> PollResult:
        inventory = self._inventory(session)
        self._retrieve_seconds = 0.0
        paths = VM_PATHS + (VM_PATH_PATHS if self._filter else ())
        samples: list[Sample] = []
        # Per VM only what the counters step needs: each page's properties are reduced and
        # dropped as the next page streams in (10,000 VMs' property dicts would be ~25 MB).
        chosen: list[tuple[str, Container[str], Fields]] = []
        vcenter = self.instance
        pages = self._retrieve(session, "VirtualMachine", [("VirtualMachine", paths)])
        for _, moid, props in pages:
            if props.get("config.template") == "true":
                continue
            if props.get("runtime.powerState") != "poweredOn":
                continue  # as libvirt's shut-off domains: no line
            if self._filter and not self._included(moid, props, inventory):
                continue
            host_ref = props.get("runtime.host")
            host = inventory.hosts.get(host_ref[1]) if isinstance(host_ref, tuple) else None
            tags: Tags = {
                "host": host.name if host else "",
                "guest": str(props.get("name", moid)),
                "hypervisor": "vmware",
                "source": "vsphere",
                "vcenter": vcenter,
            }
            uuid = props.get("config.instanceUuid")
            if uuid:
                tags["uuid"] = str(uuid)
            if host is not None:
                if host.datacenter:
                    tags["datacenter"] = host.datacenter
                if host.cluster:
                    tags["cluster"] = host.cluster
            fields = _fields(props)
            samples.append(Sample(str(uuid) if uuid else moid, tags, fields))
            chosen.append(
                (moid, _QUICK_PRESENT[_SWAPPED_QS in props, _COMPRESSED_QS in props], fields)
            )
        latency = self._retrieve_seconds  # the VM pages' round trips (each parsed as it streams)
        if self.config.target_counters and session.counter_ids:
            self._targets(session, chosen, now)
        hosts = [
            HostInfo(
                {
                    "host": h.name,
                    "hypervisor": "vmware",
                    "source": "vsphere",
                    "vcenter": vcenter,
                    **({"datacenter": h.datacenter} if h.datacenter else {}),
                    **({"cluster": h.cluster} if h.cluster else {}),
                },
                h.memory_bytes,
                h.free_bytes,
            )
            for h in inventory.hosts.values()
        ]
        return PollResult(samples=samples, hosts=hosts, api_latency_seconds=latency)

    def _included(self, moid: str, props: Props, inventory: _Inventory) -> bool:
        parent = props.get("parent") or props.get("parentVApp")
        base = inventory.path(parent[1]) if isinstance(parent, tuple) else ""
        path = f"{base}/{props.get('name', moid)}"
        return any(fnmatch.fnmatchcase(path, p) for p in self.config.vm_include)

    # -- property retrieval --

    def _inventory(self, session: _Session) -> _Inventory:
        specs: list[tuple[str, Sequence[str]]] = [
            (kind, ("name", "parent")) for kind in INVENTORY_TYPES if kind != "HostSystem"
        ]
        specs.append(("HostSystem", ("name", "parent", *HOST_PATHS)))
        inventory = _Inventory()
        for kind, moid, props in self._retrieve(session, INVENTORY_TYPES, specs):
            inventory.add(kind, moid, props)
        inventory.resolve()
        return inventory

    def _retrieve(
        self,
        session: _Session,
        types: str | Sequence[str],
        specs: Sequence[tuple[str, Sequence[str]]],
    ) -> Iterator[tuple[str, str, Props]]:
        """Every object of a container view, a page at a time (the next page is asked once this
        one is consumed); the view is destroyed in any case, when the caller is done."""
        kinds = [types] if isinstance(types, str) else list(types)
        content = session.content
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [getattr(vim, k) for k in kinds], True
        )
        try:
            token: list[str] = []
            body = retrieve_request(session.collector, view._moId, specs, self.config.page_size)
            while True:
                token.clear()
                begun = self._clock()
                page = self._call(session, body, _OBJECT_TAGS, parse_objects, token)
                self._retrieve_seconds += self._clock() - begun
                yield from page
                del page
                if not token or not token[0]:
                    return
                body = continue_request(session.collector, token[0])
        finally:
            with contextlib.suppress(Exception):
                view.Destroy()

    def _call(
        self,
        session: _Session,
        body: bytes,
        wanted: frozenset[str],
        parse: Callable[..., Iterator[Any]],
        *extra: Any,
    ) -> list[Any]:
        """POST one SOAP request on pyVmomi's connection and session; parse the reply streaming."""
        stub = session.stub
        headers = {
            "Cookie": stub.cookie,
            "SOAPAction": stub.versionId,
            "Content-Type": "text/xml; charset=UTF-8",
        }
        conn = stub.GetConnection()
        try:
            conn.request("POST", stub.path, body, headers)
            resp = conn.getresponse()
            self._reply_date = _http_date(resp.getheader("Date"))
            if resp.status not in (200, 500):
                resp.read()
                raise http.client.HTTPException(f"HTTP {resp.status} {resp.reason}")
            try:
                items = list(parse(_Stream(resp.read, wanted), *extra))
            except VsphereFault as fault:
                resp.read()
                if fault.fault == "NotAuthenticated":
                    raise _SessionLost(str(fault)) from None
                raise
        except BaseException:
            conn.close()
            stub.DropConnections()
            raise
        stub.ReturnConnection(conn)
        return items

    # -- balloon targets from realtime performance counters --

    def _targets(
        self, session: _Session, chosen: list[tuple[str, Container[str], Fields]], now: float
    ) -> None:
        """Fill target (and swapped/compressed where quickStats lack them) from counters.

        Asked at most once per realtime sample (20 s) for every VM, and at once for VMs never
        sampled; in between each VM's last sample is reused. A sample is used only while it is
        at most MAX_SAMPLE_AGE old (its age when it came, by the server's clock, plus the time
        since, by ours): else, and for a VM the last answer left out, the VM keeps its
        quickStats and gets no target, so a QueryPerf that stops answering freezes nothing.
        """
        ids = session.counter_ids
        due_all = self._clock() - self._perf_asked >= REALTIME_INTERVAL
        queries: list[tuple[str, list[int]]] = []
        for moid, props, _ in chosen:
            if not due_all and moid in self._perf:
                continue
            names = [VMMEMCTL, VMMEMCTLTARGET]
            if _SWAPPED_QS not in props:
                names.append(SWAPPED)
            if _COMPRESSED_QS not in props:
                names.append(COMPRESSED)
            queries.append((moid, [ids[n] for n in names if n in ids]))
        key = f"vsphere-perf:{self.instance}"
        if queries:
            try:
                self._query_perf(session, queries, now)
            except (VsphereFault, ET.ParseError) as exc:
                self.log.fault(
                    key,
                    f"vsphere {self.instance}: QueryPerf failed: {_message(exc)}; balloon targets "
                    f"absent (quickStats used) for VMs without a sample from the last "
                    f"{MAX_SAMPLE_AGE} s, until it answers again",
                )
            else:
                self.log.clear(
                    key, f"vsphere {self.instance}: QueryPerf answering again; balloon targets back"
                )
                if due_all:
                    self._perf_asked = self._clock()
        present = {moid for moid, _, _ in chosen}
        for gone in set(self._perf) - present:
            del self._perf[gone]
        clock = self._clock()
        late = 0
        oldest = 0.0
        for moid, props, fields in chosen:
            held = self._perf.get(moid)
            if held is None or not held[2]:
                continue
            came_age, came_at, values = held
            if came_age > MAX_SAMPLE_AGE:  # old already when vCenter answered with it
                late += 1
                oldest = max(oldest, came_age)
                continue
            if came_age + (clock - came_at) <= MAX_SAMPLE_AGE:
                _counter_fields(values, props, fields)
        late_key = f"vsphere-perf-age:{self.instance}"
        if late:
            self.log.fault(
                late_key,
                f"vsphere {self.instance}: the newest realtime sample of {late} VM(s) is over "
                f"{MAX_SAMPLE_AGE} s old (up to {oldest:.0f} s): their balloon targets absent "
                "(quickStats used) until their hosts report again",
            )
        else:
            self.log.clear(
                late_key, f"vsphere {self.instance}: every VM's realtime sample is recent again"
            )

    def _query_perf(
        self, session: _Session, queries: list[tuple[str, list[int]]], now: float
    ) -> None:
        names = {v: k for k, v in session.counter_ids.items()}
        for batch in _batches(queries, session.max_query_metrics):
            body = query_perf_request(session.perf_manager, batch)
            answer = self._call(session, body, _PERF_TAGS, parse_perf)
            came_at = self._clock()
            # The samples' ages by the server's own clock (its reply's Date), so a skewed clock
            # here neither ages nor rejuvenates them; the poll's time when it sends no Date.
            server_now = self._reply_date if self._reply_date is not None else now
            asked = {moid for moid, _ in batch}
            for moid, stamp, values in answer:
                age = max(0.0, server_now - stamp) if stamp > 0 else 0.0
                named = {names[c]: v for c, v in values.items() if c in names}
                self._perf[moid] = (age, came_at, named)
                asked.discard(moid)
            for moid in asked:  # asked, left out of the answer: no sample (not asked again
                self._perf[moid] = (0.0, came_at, {})  # until the next 20 s), no target
            if asked:
                self.log.debug(
                    f"vsphere {self.instance}: no realtime sample for {len(asked)} VM(s)"
                )


_OBJECT_TAGS = frozenset((_T_OBJECTS, _T_TOKEN, _T_FAULT))
# What a server that closed an idle keep-alive connection looks like to the next request.
# Over TLS it is an EOF "in violation of protocol".
_DROPPED = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
_SWAPPED_QS = "summary.quickStats.swappedMemory"
_COMPRESSED_QS = "summary.quickStats.compressedMemory"
# Which of the two quickStats a VM's reply carried (the counters fill in the others): one
# shared set per combination, so nothing is kept per VM but a reference.
_QUICK_PRESENT: dict[tuple[bool, bool], frozenset[str]] = {
    (swapped, compressed): frozenset(
        path for path, there in ((_SWAPPED_QS, swapped), (_COMPRESSED_QS, compressed)) if there
    )
    for swapped in (False, True)
    for compressed in (False, True)
}
_PERF_TAGS = frozenset((_T_RETURNVAL, _T_FAULT))


def _batches(
    queries: list[tuple[str, list[int]]], max_metrics: int
) -> Iterator[list[tuple[str, list[int]]]]:
    """Split per-VM queries under the server's metric limit and a reply-size bound."""
    batch: list[tuple[str, list[int]]] = []
    metrics = elements = 0
    for moid, ids in queries:
        cost = max(1, len(ids))
        size = 8 + 8 * cost  # reply elements per VM: entity, sampleInfo, one series per counter
        if batch and (
            (max_metrics and metrics + cost > max_metrics) or elements + size > REPLY_ELEMENTS
        ):
            yield batch
            batch, metrics, elements = [], 0, 0
        batch.append((moid, ids))
        metrics += cost
        elements += size
    if batch:
        yield batch


def _fields(props: Props) -> Fields:
    """The balloon fields of one powered-on VM from its properties (sizes to bytes)."""
    fields: Fields = {}
    memory_mb = _int(props.get("config.hardware.memoryMB"))
    if memory_mb is not None:
        fields["memory_max_bytes"] = memory_mb * MIB
    ballooned = _int(props.get("summary.quickStats.balloonedMemory", "0"))
    if ballooned is not None:
        fields["balloon_actual_bytes"] = ballooned * MIB
        if memory_mb is not None:
            fields["memory_current_bytes"] = max(0, memory_mb - ballooned) * MIB
    for path, name, scale in _QUICKSTATS:
        raw = props.get(path, "0" if path in _ZERO_WHEN_MISSING else None)
        value = _int(raw)
        if value is not None and value >= 0:
            fields[name] = value * scale
    reservation = _int(props.get("config.memoryAllocation.reservation"))
    if reservation is not None and reservation >= 0:
        fields["reservation_bytes"] = reservation * MIB
    limit = _int(props.get("config.memoryAllocation.limit"))
    if limit is not None and limit >= 0:  # -1: unlimited
        fields["limit_bytes"] = limit * MIB
    fields["inflation_blocked"] = (
        reservation is not None and memory_mb is not None and reservation >= memory_mb > 0
    )
    return fields


def _counter_fields(values: dict[str, int], props: Container[str], fields: Fields) -> None:
    """Balloon actual and target from one realtime sample (same instant, KB precision)."""
    actual = values.get(VMMEMCTL)
    target = values.get(VMMEMCTLTARGET)
    if actual is not None:
        fields["balloon_actual_bytes"] = actual * KIB
        maximum = fields.get("memory_max_bytes")
        if isinstance(maximum, int):
            fields["memory_current_bytes"] = max(0, maximum - actual * KIB)
    if target is not None and (actual is not None or "balloon_actual_bytes" in fields):
        fields["balloon_target_bytes"] = target * KIB
    swapped = values.get(SWAPPED)
    if swapped is not None and _SWAPPED_QS not in props:
        fields["host_swapped_bytes"] = swapped * KIB
    compressed = values.get(COMPRESSED)
    if compressed is not None and _COMPRESSED_QS not in props:
        fields["compressed_bytes"] = compressed * KIB


class _Host:
    __slots__ = ("cluster", "datacenter", "free_bytes", "memory_bytes", "name", "parent")

    def __init__(self, name: str, parent: str) -> None:
        self.name = name
        self.parent = parent
        self.cluster = ""
        self.datacenter = ""
        self.memory_bytes: Optional[int] = None
        self.free_bytes: Optional[int] = None


class _Inventory:
    """Names and parents of everything above the VMs, from one retrieval."""

    def __init__(self) -> None:
        self.entities: dict[str, tuple[str, str, str]] = {}  # moid -> (type, name, parent moid)
        self.hosts: dict[str, _Host] = {}
        self._paths: dict[str, str] = {}

    def add(self, kind: str, moid: str, props: Props) -> None:
        parent = props.get("parent")
        parent_id = parent[1] if isinstance(parent, tuple) else ""
        name = str(props.get("name", moid))
        self.entities[moid] = (kind, name, parent_id)
        if kind == "HostSystem":
            host = _Host(name, parent_id)
            memory = _int(props.get("summary.hardware.memorySize"))
            if memory is not None and memory > 0:
                host.memory_bytes = memory
                used = _int(props.get("summary.quickStats.overallMemoryUsage"))
                if used is not None and used >= 0:
                    host.free_bytes = max(0, memory - used * MIB)
            self.hosts[moid] = host

    def resolve(self) -> None:
        for host in self.hosts.values():
            compute = self.entities.get(host.parent)
            if compute is not None and compute[0] == "ClusterComputeResource":
                host.cluster = compute[1]
            host.datacenter = self._datacenter(host.parent)

    def _datacenter(self, moid: str) -> str:
        for _ in range(64):  # inventory depth bound: a malformed parent loop ends here
            entity = self.entities.get(moid)
            if entity is None:
                return ""
            if entity[0] == "Datacenter":
                return entity[1]
            moid = entity[2]
        return ""

    def path(self, moid: str) -> str:
        """The inventory path of a folder or vApp ('/DC0/vm/prod'); the root folder is ''."""
        known = self._paths.get(moid)
        if known is not None:
            return known
        parts: list[str] = []
        current = moid
        for _ in range(64):
            entity = self.entities.get(current)
            if entity is None:
                break
            parts.append(entity[1])
            current = entity[2]
        path = "".join(f"/{p}" for p in reversed(parts))
        self._paths[moid] = path
        return path


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for one poll, back on after (if it was on).

    A poll builds about 50 parser elements and a dozen dicts and strings per VM, none of them
    in a reference cycle (each page is freed by reference counting as the next streams in), yet
    their sheer number sets off collections that walk every object of the process, pyVmomi's
    type tables included: measured at 10,000 VMs, 14 µs of CPU per VM (a sixth of the poll).
    Nothing cyclic is left uncollected: the collector runs as usual once it is back on.
    """
    if not gc.isenabled():  # off already (by the program, or another source's poll)
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _message(exc: BaseException) -> str:
    text = getattr(exc, "msg", None) or str(exc).strip() or type(exc).__name__
    if isinstance(exc, socket.timeout):
        text = "timed out"
    return " ".join(str(text).split())
