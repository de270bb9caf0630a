"""A real InfluxDB 1.x (``influxd`` from Debian) in a temporary directory, for tests and benches.

:class:`InfluxDB` writes a config whose meta, data and WAL directories live in a fresh temporary
directory, binds the HTTP API to ``127.0.0.1:<free port>`` and the backup/restore RPC service
(``bind-address``, 8088 by default) to another free loopback port, disables reporting, the
``_internal`` monitor store and every other listener (graphite, collectd, opentsdb, udp, ifql),
starts ``influxd -config FILE`` and waits for ``/ping`` to answer 204.  If the daemon exits or
does not answer in time, :class:`InfluxError` is raised carrying the tail of its log.

Only the standard library is used (``urllib``), so benches can use it without pytest::

    with InfluxDB() as db:
        db.create_db("t")
        status, text = db.write("t", "m,t=a v=1i 1\\n")
        rows = db.query("t", "SELECT * FROM m")
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from tests.stack.common import free_port, stop_process, tail, wait_for

__all__ = ["InfluxDB", "InfluxError", "find_influxd", "quote_ident", "series_rows"]


class InfluxError(RuntimeError):
    """influxd could not be started, or answered a query with an error."""


def find_influxd() -> Optional[str]:
    """Path of ``influxd`` on PATH or in /usr/bin, /usr/sbin; None when it is not installed."""
    return shutil.which("influxd") or shutil.which("influxd", path="/usr/bin:/usr/sbin:/sbin")


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string for paths


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier (measurement, database, tag or field key)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def series_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Flatten a /query answer (one statement) into one dict per row, with ``name`` and tags.

    Each row maps column -> value and carries ``"_measurement"`` and ``"_tags"`` (a dict) when
    the series has them.  Raises :class:`InfluxError` when the statement failed.
    """
    rows: List[Dict[str, Any]] = []
    for statement in result.get("results", []):
        if "error" in statement:
            raise InfluxError(f"query failed: {statement['error']}")
        for series in statement.get("series", []):
            columns = series["columns"]
            for values in series.get("values", []):
                row = dict(zip(columns, values))
                row["_measurement"] = series.get("name")
                row["_tags"] = dict(series.get("tags") or {})
                rows.append(row)
    return rows


class InfluxDB:
    """One ``influxd`` process with its own config and storage in a temporary directory."""

    def __init__(
        self,
        binary: Optional[str] = None,
        *,
        startup_timeout: float = 30.0,
        request_timeout: float = 30.0,
    ) -> None:
        found = binary or find_influxd()
        if found is None:
            raise InfluxError("influxd is not installed (apt-get install influxdb)")
        self.binary: str = found
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.tmpdir: Optional[Path] = None
        self.log_path: Optional[Path] = None  # influxd.log in tmpdir, once started
        self.port: int = 0
        self.rpc_port: int = 0
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._log_file: Optional[Any] = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon's log (stdout and stderr)."""
        return tail(self.log_path, lines)

    def _write_config(self, root: Path) -> Path:
        config = f"""\
reporting-enabled = false
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = {_toml_string(str(root / "meta"))}
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = {_toml_string(str(root / "data"))}
  wal-dir = {_toml_string(str(root / "wal"))}
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false
  max-body-size = 0

[ifql]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false

[logging]
  suppress-logo = true
  level = "warn"
"""
        path = root / "influxdb.conf"
        path.write_text(config, encoding="utf-8")
        return path

    def start(self) -> InfluxDB:
        """Start the daemon and wait for ``/ping``.

        Raises :class:`InfluxError` carrying the tail of the daemon's log when it exits or does
        not answer within ``startup_timeout``.
        """
        if self.process is not None:
            return self
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind: retry
            self.tmpdir = Path(tempfile.mkdtemp(prefix="influxd-"))
            self.log_path = self.tmpdir / "influxd.log"
            for sub in ("meta", "data", "wal"):
                (self.tmpdir / sub).mkdir()
            self.port = free_port()
            self.rpc_port = free_port()
            while self.rpc_port == self.port:
                self.rpc_port = free_port()
            config = self._write_config(self.tmpdir)
            self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
            env = dict(os.environ, INFLUXDB_REPORTING_DISABLED="true")
            self.process = subprocess.Popen(
                [self.binary, "-config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=str(self.tmpdir),
                env=env,
                start_new_session=True,
            )
            try:
                wait_for(self._ping, self.startup_timeout, f"{self.url}/ping", 0.05, InfluxError)
                return self
            except InfluxError as exc:
                error = str(exc)
            last_error = f"{error}\n--- influxd log tail ({self.log_path}) ---\n{self.log_tail()}"
            port_clash = "address already in use" in last_error
            self.stop(remove=not port_clash)
            if not port_clash:
                break
        raise InfluxError(f"influxd did not start: {last_error}")

    def _ping(self) -> bool:
        """True once /ping answers 204; InfluxError when the daemon has exited."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise InfluxError(f"influxd exited with status {code}")
        try:
            return self._request("GET", "/ping", timeout=1.0)[0] == 204
        except OSError:
            return False

    def stop(self, remove: bool = True) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and remove its directory."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout=10, group=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if remove and self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> InfluxDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP API ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        params: Optional[Dict[str, str]] = None,
        body: Optional[bytes] = None,
        timeout: Optional[float] = None,
    ) -> Tuple[int, str]:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Content-Type": "text/plain; charset=utf-8"} if body is not None else {}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.request_timeout) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")

    def create_db(self, name: str) -> None:
        """CREATE DATABASE (idempotent)."""
        status, text = self._request(
            "POST", "/query", {"q": f"CREATE DATABASE {quote_ident(name)}"}
        )
        if status != 200 or '"error"' in text:
            raise InfluxError(f"CREATE DATABASE {name} failed: {status} {text}")

    def write(self, db: str, body: str, precision: str = "ns") -> Tuple[int, str]:
        """POST /write: (HTTP status, response text); 204 and "" on success."""
        return self._request(
            "POST", "/write", {"db": db, "precision": precision}, body.encode("utf-8")
        )

    def drop_db(self, name: str) -> None:
        """DROP DATABASE (no error when it does not exist)."""
        status, text = self._request("POST", "/query", {"q": f"DROP DATABASE {quote_ident(name)}"})
        if status != 200 or '"error"' in text:
            raise InfluxError(f"DROP DATABASE {name} failed: {status} {text}")

    def query_text(self, db: str, q: str, epoch: str = "ns") -> str:
        """Run InfluxQL and return the JSON answer undecoded.

        SELECT and SHOW are sent with GET, anything else with POST; times come back as integer
        nanoseconds (``epoch``).  Raises :class:`InfluxError` on a non-200 status.  Decode it
        yourself to keep numbers exact (``json.loads(text, parse_int=str, parse_float=str)``:
        InfluxDB writes the float 1.0 as ``1`` and -0.0 as ``-0``).
        """
        method = "GET" if q.lstrip().upper().startswith(("SELECT", "SHOW")) else "POST"
        params = {"db": db, "q": q}
        if epoch:
            params["epoch"] = epoch
        status, text = self._request(method, "/query", params)
        if status != 200:
            raise InfluxError(f"query {q!r} failed: {status} {text}")
        return text

    def query(self, db: str, q: str, epoch: str = "ns") -> Dict[str, Any]:
        """Run InfluxQL (see :meth:`query_text`) and return the decoded JSON answer."""
        result: Dict[str, Any] = json.loads(self.query_text(db, q, epoch))
        return result

    def rows(self, db: str, q: str) -> List[Dict[str, Any]]:
        """:meth:`query` flattened by :func:`series_rows`."""
        return series_rows(self.query(db, q))
