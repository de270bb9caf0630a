"""One vCenter's client: pyVmomi's session, the SOAP calls on its connection, and retries.

pyVmomi does what it does well: the login (TLS, the session cookie), logout, container views
and the once-per-session lookups (performance counter ids, the server's QueryPerf limit). The
hot path's SOAP (soap.py) is posted on pyVmomi's own pooled connection with its session
cookie, and its reply parsed while it streams in. This is the only module of the source that
imports pyVmomi.

:meth:`Client.run` is the retry rule of a poll: a lost session (vCenter restarted, the session
expired or was terminated) logs in again once, a keep-alive connection the server closed is
replaced once, and every other failure ends the poll with one line of error, the password
never in it; the next poll then logs in afresh.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from pyVim import connect as _connect
from pyVmomi import vim, vmodl

from ...config import VsphereConfig
from ...log import Log
from ...model import PollResult
from .fields import COUNTERS
from .soap import (
    OBJECT_REPLY,
    Props,
    Reply,
    Stream,
    VsphereFault,
    continue_request,
    error_text,
    http_date,
    objects_request,
    parse_objects,
    retrieve_request,
)

Clock = Callable[[], float]
DEFAULT_MAX_QUERY_METRICS = 64  # when the server does not say (the most cautious common value)

_pyvim: Any = _connect  # pyVim's functions carry no annotations

# What a server that closed an idle keep-alive connection looks like to the next request.
# Over TLS it is an EOF "in violation of protocol".
DROPPED = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class SessionLost(Exception):
    """The session is gone (vCenter restarted, session expired or terminated): log in again."""


class Session:
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


class Client:
    """One vCenter (or ESXi host) by its URL: a session kept across polls, re-made when lost."""

    def __init__(self, config: VsphereConfig, log: Log, timeout: float, clock: Clock) -> None:
        """`timeout`: seconds for each connection's socket; `clock`: monotonic seconds."""
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
        self._session: Optional[Session] = None
        self.reply_date: Optional[float] = None  # the last reply's Date header (epoch s)
        self.retrieve_seconds = 0.0  # time in the property retrievals' calls since reset

    # -- session --

    def _ssl_context(self) -> ssl.SSLContext:
        if self.config.insecure_skip_verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.config.ca_file or None)

    def _login(self) -> Session:
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
        session = Session(si)
        self._lookups(session)
        self.log.debug(f"vsphere {self.instance}: logged in as {self.config.username}")
        return session

    def _lookups(self, session: Session) -> None:
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

    def retrieve_objects(
        self, session: Session, kind: str, moids: Sequence[str], paths: Sequence[str]
    ) -> Iterator[tuple[str, str, Props]]:
        """`paths` of the named objects of one type, in pages (one call for all of them)."""
        token: list[str] = []
        size = self.config.page_size
        body = objects_request(session.collector, kind, moids, paths, size)
        while True:
            token.clear()
            yield from self.call(session, body, OBJECT_REPLY, parse_objects, token)
            if not token or not token[0]:
                return
            body = continue_request(session.collector, token[0])

    def custom_fields(self, session: Session) -> dict[str, str]:
        """The custom attributes VMs may carry (CustomFieldsManager.field): key -> name."""
        manager = session.content.customFieldsManager
        out: dict[str, str] = {}
        for definition in (manager.field if manager is not None else None) or ():
            kind = definition.managedObjectType  # None: an attribute of every type
            if kind is None or getattr(kind, "_wsdlName", kind) == "VirtualMachine":
                out[str(definition.key)] = str(definition.name)
        return out

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

    # -- one poll's work, retried --

    def run(self, work: Callable[[Session], PollResult]) -> PollResult:
        """`work` on a logged-in session (logging in first when there is none), retried once
        on a lost session and once on a dropped connection; any other failure is the poll's
        error, and the session is dropped so that the next poll starts afresh."""
        relogged = reconnected = False
        while True:
            try:
                if self._session is None:
                    self._session = self._login()
                return work(self._session)
            except (SessionLost, vim.fault.NotAuthenticated) as exc:
                # vCenter restarted, the session expired or was terminated: log in again, once.
                self._drop()
                if relogged:
                    return PollResult(error=self._scrub(f"session lost again: {error_text(exc)}"))
                relogged = True
                self.log.info(f"vsphere {self.instance}: session lost; logging in again")
            except DROPPED as exc:
                # A pooled keep-alive connection the server closed: a new one, once, same session.
                if reconnected or self._session is None:
                    self._drop()
                    return PollResult(error=self._scrub(error_text(exc)))
                reconnected = True
                self.log.debug(f"vsphere {self.instance}: connection dropped; reconnecting")
            except vim.fault.InvalidLogin as exc:
                self._drop()
                return PollResult(error=self._scrub(f"login failed: {error_text(exc)}"))
            except ssl.SSLCertVerificationError as exc:
                self._drop()
                hint = "set ca_file to the vCenter's CA bundle, or insecure_skip_verify = true"
                return PollResult(error=self._scrub(f"TLS: {exc.verify_message} ({hint})"))
            except (OSError, http.client.HTTPException, ET.ParseError, VsphereFault) as exc:
                # Dropped connection, refused port, timeout: the next poll logs in afresh.
                self._drop()
                return PollResult(error=self._scrub(error_text(exc)))
            except vmodl.MethodFault as exc:
                self._drop()
                return PollResult(error=self._scrub(error_text(exc)))

    def _scrub(self, text: str) -> str:
        secret = self.config.password
        return text.replace(secret, "***") if secret else text

    # -- calls --

    def retrieve(
        self,
        session: Session,
        types: str | Sequence[str],
        specs: Sequence[tuple[str, Sequence[str]]],
        roots: Optional[Sequence[tuple[str, str]]] = None,
    ) -> Iterator[tuple[str, str, Props]]:
        """Every object of a container view over the whole inventory, or over each of `roots`
        ((type, moid) of a folder, datacenter, cluster or host), a page at a time (the next
        page is asked once this one is consumed); the views are destroyed in any case, when
        the caller is done."""
        kinds = [getattr(vim, k) for k in ([types] if isinstance(types, str) else types)]
        content = session.content
        containers = (
            [content.rootFolder]
            if roots is None
            else [getattr(vim, kind)(moid, session.stub) for kind, moid in roots]
        )
        if not containers:
            return
        views: list[Any] = []
        try:
            for container in containers:
                views.append(content.viewManager.CreateContainerView(container, kinds, True))
            token: list[str] = []
            ids = [view._moId for view in views]
            body = retrieve_request(
                session.collector, ids[0] if len(ids) == 1 else ids, specs, self.config.page_size
            )
            while True:
                token.clear()
                begun = self._clock()
                page = self.call(session, body, OBJECT_REPLY, parse_objects, token)
                self.retrieve_seconds += self._clock() - begun
                yield from page
                del page
                if not token or not token[0]:
                    return
                body = continue_request(session.collector, token[0])
        finally:
            for view in views:
                with contextlib.suppress(Exception):
                    view.Destroy()

    def call(
        self,
        session: Session,
        body: bytes,
        reply: Reply,
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
            self.reply_date = http_date(resp.getheader("Date"))
            if resp.status not in (200, 500):
                resp.read()
                raise http.client.HTTPException(f"HTTP {resp.status} {resp.reason}")
            try:
                items = list(parse(Stream(resp.read, reply), *extra))
            except VsphereFault as fault:
                resp.read()
                if fault.fault == "NotAuthenticated":
                    raise SessionLost(str(fault)) from None
                raise
        except BaseException:
            conn.close()
            stub.DropConnections()
            raise
        stub.ReturnConnection(conn)
        return items
