#!/usr/bin/env python3
"""How fast the vSphere source polls a vCenter, beside pyVmomi, a naive loop, a peer and the floor.

    python bench/bench_vsphere.py [--quick] [--sizes 2000,10000,40000] [--repeat 5]
                                  [--rss-polls 3] [--profile] [--no-exporter]

Against govmomi's vCenter simulator (tests/stack/vcsim.py, pages of 500 objects,
maxQueryMetrics 64), one inventory per size up to vCenter 8's maximum (40,000 VMs on 2,500
hosts in 4 datacenters), each polled five ways in the same run, interleaved round by round,
median of --repeat after a warm-up:

  a. the plugin: ``VsphereSource.poll`` in steady state (logged in, counters resolved), the
     QueryPerf forced every round by a clock advanced 20 s per round (a new realtime sample);
  b. the same requests through pyVmomi objects: the inventory and VM retrievals
     (RetrievePropertiesEx/Continue, the same leaf paths and pages) and QueryPerf with the
     same batching, reduced to the same figures (above 10,000 VMs timed on the first
     datacenter's VMs and scaled per VM: the table says so);
  c. a naive per-VM pyVmomi loop: ``vm.summary.quickStats`` and one QueryPerf per VM (on
     large inventories timed on a subset and scaled per VM: the table says so);
  d. vmware_exporter 0.18.4's scrape of the same simulator (VMs only, up to 10,000 VMs), in
     its own venv under .cache/ (created here on a full run); it dials port 443 only, so the
     simulator listens on 127.0.0.1:443 (root needed); its reason is printed instead when it
     cannot run;
  e. the raw bytes: the same SOAP requests the plugin sends, each reply read and thrown away
     (the floor: the simulator's own work and the transport);
  f. a with ``custom_attributes = ["Owner", "Team"]``: every VM has an Owner, every other one
     a Team (set through the CustomFieldsManager); target: at most 5% more CPU per poll than a
     (the median of each round's ratio, a, f and g back to back: the machine's speed drifts).
     The values ride on the VM pages every 5 minutes (VALUES_REFRESH_SECONDS): f is the polls
     between, g the poll that carries them (its plugin's clock moves 5 minutes a poll).

Also the plugin's own CPU per VM (process CPU time of a), the peak RSS (VmHWM) of the whole
plugin (a through its Runner, with the sample config's rules: health stage, host sums, line
protocol; --rss-polls polls) and of a process doing only a, the simulator's build time and
memory, how busy the machine was, and the oracle: a's figures and tags equal b's for every
VM b read. A share of the VMs carries realistic values (ballooned, balloon targets, some
stuck, swapped, compressed, reservations and limits), some are powered off, a few are
templates. --quick runs 200 VMs, then the whole plugin's memory at 10,000 VMs (judged).

Timings here are taken on a machine shared with other jobs: medians and ranges are printed,
and the load average beside them. Exits 0 even when a target fails; a failed target prints FAIL.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from benchlib import (
    REPO_ROOT,
    CpuMeter,
    SpeedCheck,
    fmt_ms,
    fmt_us,
    median,
    parser,
    table,
    timed,
    verdict,
)

from telegraf_balloon.config import VsphereConfig
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from telegraf_balloon.sources.vsphere.attributes import VALUES_REFRESH_SECONDS
from telegraf_balloon.sources.vsphere.fields import COUNTERS, VM_PATHS, counters_for
from telegraf_balloon.sources.vsphere.inventory import INVENTORY_TYPES, inventory_specs
from telegraf_balloon.sources.vsphere.perf import batches
from telegraf_balloon.sources.vsphere.session import DEFAULT_MAX_QUERY_METRICS
from telegraf_balloon.sources.vsphere.soap import (
    CHUNK,
    REALTIME_INTERVAL,
    continue_request,
    retrieve_request,
)
from telegraf_balloon.sources.vsphere.source import VsphereSource
from tests.stack.clock import Clock
from tests.stack.vcsim import Vcsim, VcsimError, launcher_available
from tests.stack.vsphere_oracle import apply_sample, expected_fields, reported
from tests.stack.vsphere_setup import (
    all_vms,
    configure_vms,
    connect,
    container_view,
    disconnect,
    retrieve_pages,
    view_objects,
    vim,
)

PAGE = 500  # the simulator's page and the plugin's page_size (50 for the --quick inventory)
MAX_QUERY_METRICS = 64
# size -> the simulator's inventory (datacenters, clusters of hosts, VMs per cluster)
SHAPES: dict[int, dict[str, Any]] = {
    200: {"cluster": 2, "host": 2, "vm": 100, "page": 50},  # small pages: paging still runs
    2000: {"cluster": 4, "host": 5, "vm": 500},
    10000: {"cluster": 20, "host": 10, "vm": 500},
    # vCenter 8's maximum: 40,000 powered-on VMs on 2,500 hosts
    40000: {"dc": 4, "cluster": 25, "host": 25, "vm": 400},
}
NAIVE_SAMPLE = 2000  # VMs the naive loop is timed on when the inventory is larger
# Above this, b (pyVmomi objects) is timed on the first datacenter's VMs and scaled per VM
# (its objects for 40,000 VMs would take half a minute a round, and 300 MB).
PYVMOMI_WHOLE = 10000
EXPORTER_MOST = 10000  # vmware_exporter's scrape of 40,000 VMs would take minutes
RSS_POLLS = 3  # polls of the peak-RSS children (--rss-polls; 100 to show RSS stays flat)

# The vSphere source's performance targets (the last table's verdicts): at the largest size,
# at 10,000 (the whole plugin's memory), against the naive loop and the peer at 2,000.
TARGET_VS_FLOOR = 2.0  # a within this many times e
TARGET_VS_PYVMOMI = 3.5  # a at least this many times faster than b (at 10,000)
TARGET_CPU_US = 70.0  # the plugin's CPU per VM, at the largest size
TARGET_WHOLE_RSS_MB = {10000: 60.0, 40000: 150.0}  # the whole plugin's peak RSS
TARGET_VS_NAIVE = 5.0  # a at least this many times faster than c (at 2,000)
TARGET_VS_EXPORTER = 5.0  # and than d
TARGET_ATTRIBUTES = 1.05  # f (custom attributes as tags) at most this many times a's CPU
ATTRIBUTES = ("Owner", "Team")

EXPORTER_VERSION = "0.18.4"
EXPORTER_VENV = REPO_ROOT / ".cache" / "vmware-exporter"
EXPORTER_PACKAGES = (f"vmware_exporter=={EXPORTER_VERSION}", "requests", "twisted==22.10.0")

Figures = dict[str, tuple[dict[str, str], dict[str, Any]]]  # key -> (tags, fields)


# ---------------------------------------------------------------------------------------------
# the inventory
# ---------------------------------------------------------------------------------------------


def start_simulator(size: int, want_443: bool) -> tuple[Vcsim, str]:
    """The simulator for one size; on 127.0.0.1:443 when the peer needs it (else why not)."""
    shape = SHAPES[size]
    sim = Vcsim(
        max_query_metrics=MAX_QUERY_METRICS,
        # vCenter applies maxQueryMetrics to historical queries; realtime ones (20 s) pass.
        # The plugin batches under the limit anyway; vmware_exporter sends 5,000 VMs a query.
        max_query_metrics_historical_only=True,
        **{"dc": 1, "standalone_host": 0, "page": PAGE, **shape},
    )
    if want_443:
        try:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", 443))
        except OSError as exc:
            return sim.start(), f"127.0.0.1:443 is not free for the simulator ({exc.strerror})"
        try:
            return sim.start(port=443), ""
        except VcsimError:
            sim.stop()
            sim = Vcsim(**sim.inventory)
            return sim.start(), "the simulator could not listen on 127.0.0.1:443"
    return sim.start(), ""


def prepare(si: Any, seed: int = 7) -> dict[str, int]:
    """Realistic values on a share of the VMs, a few powered off and templates; counts."""
    rng = random.Random(seed)
    vms = sorted(all_vms(si), key=lambda vm: vm.name)
    items: list[tuple[Any, dict[str, Any]]] = []
    counts = {"vms": len(vms), "valued": 0, "stuck": 0, "blocked": 0, "off": 0, "templates": 0}
    for i, vm in enumerate(vms):
        if i % 200 == 7:
            items.append((vm, {"template": True}))
            counts["templates"] += 1
        elif i % 20 == 5:
            items.append((vm, {"power": "off"}))
            counts["off"] += 1
        elif i % 10 == 3:  # 10%: a guest under memory pressure
            memory = rng.choice((2048, 4096, 8192, 16384))
            ballooned = rng.randrange(0, memory // 3)
            target_mb = ballooned
            if rng.random() < 0.2:  # a stuck balloon: the target well above what inflated
                target_mb = ballooned + memory // 8
                counts["stuck"] += 1
            values: dict[str, Any] = {
                "memory_mb": memory,
                "ballooned_mb": ballooned,
                "vmmemctltarget_kb": target_mb * 1024 + rng.randrange(0, 1024),
                "swapped_mb": rng.choice((0, 0, 0, rng.randrange(1, 512))),
                "compressed_kb": rng.choice((0, 0, rng.randrange(1, 200_000))),
                "consumed_mb": memory - ballooned,
                "active_mb": rng.randrange(1, memory),
                "granted_mb": memory,
                "shared_mb": rng.randrange(0, 256),
                "overhead_mb": rng.randrange(20, 80),
            }
            if rng.random() < 0.15:
                values["reservation_mb"] = memory
                counts["blocked"] += 1
            elif rng.random() < 0.3:
                values["reservation_mb"] = memory // 4
                values["limit_mb"] = memory // 2 + memory // 4
            items.append((vm, values))
            counts["valued"] += 1
    configure_vms(items, batch=8)
    return counts


def attribute_rounds_of(repeat: int) -> int:
    """Polls per way of a, f and g alone: a 5% difference needs more than the other ways."""
    return max(3 * repeat, 9)


def set_attributes(si: Any) -> int:
    """f's custom attributes: Owner on every VM, Team on every other; VMs set."""
    manager = si.RetrieveContent().customFieldsManager
    owner = manager.AddCustomFieldDef(name=ATTRIBUTES[0], moType=vim.VirtualMachine)
    team = manager.AddCustomFieldDef(name=ATTRIBUTES[1], moType=vim.VirtualMachine)
    vms = sorted(all_vms(si), key=lambda vm: vm.name)
    for i, vm in enumerate(vms):
        manager.SetField(entity=vm, key=owner.key, value=f"owner-{i % 97}@example.com")
        if i % 2 == 0:
            manager.SetField(entity=vm, key=team.key, value=f"team-{i % 13}")
    return len(vms)


# ---------------------------------------------------------------------------------------------
# a. the plugin
# ---------------------------------------------------------------------------------------------


def plugin_config(sim: Vcsim, attributes: tuple[str, ...] = ()) -> VsphereConfig:
    return sim.source_config(custom_attributes=attributes)


class Plugin:
    def __init__(
        self, sim: Vcsim, attributes: tuple[str, ...] = (), step: float = REALTIME_INTERVAL
    ) -> None:
        self.clock = Clock(1_000_000.0)  # the plugin's monotonic clock: `step` more per round
        self.step = step
        self.log = io.StringIO()
        self.source = VsphereSource(
            plugin_config(sim, attributes), Log(self.log), timeout=120, clock=self.clock
        )
        self.result = PollResult()
        self.cpu: list[float] = []

    def __call__(self) -> None:
        self.clock.now += self.step  # a new realtime sample: QueryPerf every round
        cpu = time.process_time()
        result = self.source.poll(time.time())
        self.cpu.append(time.process_time() - cpu)
        if result.error is not None:
            raise SystemExit(f"the plugin's poll failed: {result.error}")
        self.result = result

    def figures(self) -> Figures:
        return {s.key: (dict(s.tags), dict(s.fields)) for s in self.result.samples}

    def perf_requests(self) -> list[bytes]:
        """The QueryPerf bodies one poll sends (recorded from the plugin itself)."""
        bodies: list[bytes] = []
        client = self.source.client
        call = client.call

        def recording(session: Any, body: bytes, *rest: Any) -> list[Any]:
            if b"<QueryPerf " in body:
                bodies.append(body)
            return call(session, body, *rest)

        setattr(client, "call", recording)  # noqa: B010 (an instance override)
        try:
            self()
        finally:
            delattr(client, "call")
        return bodies

    def close(self) -> None:
        self.source.close()


# ---------------------------------------------------------------------------------------------
# b. the same poll through pyVmomi objects
# ---------------------------------------------------------------------------------------------


def _lookup(si: Any) -> tuple[dict[str, int], int]:
    """Counter ids (group.name.rollup) and maxQueryMetrics, looked up once as the plugin does."""
    content = si.RetrieveContent()
    wanted = set(COUNTERS)
    ids = {}
    for info in content.perfManager.perfCounter:
        name = f"{info.groupInfo.key}.{info.nameInfo.key}.{info.rollupType}"
        if name in wanted:
            ids[name] = int(info.key)
    limit = DEFAULT_MAX_QUERY_METRICS
    for option in content.setting.QueryOptions("config.vpxd.stats.maxQueryMetrics") or ():
        limit = max(0, int(option.value))
    return ids, limit


class Pyvmomi:
    """RetrievePropertiesEx/Continue and QueryPerf as pyVmomi objects, reduced to the figures."""

    def __init__(self, si: Any, instance: str, page: int, root: Any = None) -> None:
        self.si = si
        self.page = page
        self.content = si.RetrieveContent()
        self.instance = instance
        self.root = root  # the VMs below this datacenter only (None: every VM)
        self.ids, self.max_metrics = _lookup(si)
        self.names = {v: k for k, v in self.ids.items()}
        self.figures: Figures = {}

    def _retrieve(
        self, specs: Sequence[tuple[str, Sequence[str]]], root: Any = None
    ) -> list[tuple[Any, Any]]:
        """(object, {path: value}) of every object of the specs' types, in pages as a's."""
        out = []
        typed = [(getattr(vim, kind), paths) for kind, paths in specs]
        for res in retrieve_pages(self.content, typed, max_objects=self.page, root=root):
            for oc in res.objects:
                out.append((oc.obj, {p.name: p.val for p in oc.propSet}))
        return out

    def __call__(self) -> None:
        entities: dict[str, tuple[str, str, str]] = {}
        for obj, props in self._retrieve(inventory_specs()):
            parent = props.get("parent")
            entities[obj._moId] = (
                obj._wsdlName,
                props.get("name", obj._moId),
                parent._moId if parent is not None else "",
            )
        hosts: dict[str, tuple[str, str, str]] = {}  # moid -> name, cluster, datacenter
        for moid, (kind, name, parent) in entities.items():
            if kind != "HostSystem":
                continue
            compute = entities.get(parent)
            cluster = compute[1] if compute and compute[0] == "ClusterComputeResource" else ""
            datacenter, up = "", parent
            while up in entities:
                if entities[up][0] == "Datacenter":
                    datacenter = entities[up][1]
                    break
                up = entities[up][2]
            hosts[moid] = (name, cluster, datacenter)

        figures: Figures = {}
        chosen: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
        for obj, props in self._retrieve([("VirtualMachine", VM_PATHS)], self.root):
            if not reported(props):
                continue
            host_ref = props.get("runtime.host")
            host = hosts.get(host_ref._moId) if host_ref is not None else None
            uuid = props.get("config.instanceUuid")
            tags = {
                "host": host[0] if host else "",
                "guest": props.get("name", obj._moId),
                "hypervisor": "vmware",
                "source": "vsphere",
                "vcenter": self.instance,
            }
            if uuid:
                tags["uuid"] = uuid
            if host and host[2]:
                tags["datacenter"] = host[2]
            if host and host[1]:
                tags["cluster"] = host[1]
            fields = expected_fields(props)
            figures[uuid or obj._moId] = (tags, fields)
            chosen.append((obj, props, fields))

        queries: list[tuple[str, list[int]]] = []
        by_moid = {}
        for obj, props, fields in chosen:  # the counters the plugin asks for (its own choice)
            names = counters_for(props)
            queries.append((obj._moId, [self.ids[n] for n in names if n in self.ids]))
            by_moid[obj._moId] = (obj, props, fields)
        pm = vim.PerformanceManager
        perf = self.content.perfManager
        for batch in batches(queries, self.max_metrics):
            specs_ = [
                pm.QuerySpec(
                    entity=by_moid[moid][0],
                    maxSample=1,
                    intervalId=REALTIME_INTERVAL,
                    metricId=[pm.MetricId(counterId=c, instance="") for c in ids],
                )
                for moid, ids in batch
            ]
            for em in perf.QueryPerf(specs_) or ():
                values = {}
                for series in em.value or ():
                    if series.value and series.value[-1] >= 0:
                        values[self.names.get(series.id.counterId, "")] = int(series.value[-1])
                _, props, fields = by_moid[em.entity._moId]
                apply_sample(values, props, fields)
        self.figures = figures


def compare(ours: Figures, theirs: Figures, subset: bool = False) -> list[str]:
    """Differences between the plugin's figures and pyVmomi's, VM by VM (empty: equal); with
    `subset`, pyVmomi read some of the VMs (one datacenter's), each of which must be equal."""
    problems = []
    keys = set(theirs) if subset else set(ours) | set(theirs)
    for key in sorted(keys):
        if key not in ours or key not in theirs:
            problems.append(f"{key}: only in {'pyVmomi' if key in theirs else 'the plugin'}")
        elif ours[key] != theirs[key]:
            a_tags, a_fields = ours[key]
            b_tags, b_fields = theirs[key]
            diff = sorted(
                k
                for k in set(a_fields) | set(b_fields) | set(a_tags) | set(b_tags)
                if a_fields.get(k, a_tags.get(k)) != b_fields.get(k, b_tags.get(k))
            )
            problems.append(f"{key}: {', '.join(diff)} differ")
    return problems


# ---------------------------------------------------------------------------------------------
# c. the naive loop
# ---------------------------------------------------------------------------------------------


class Naive:
    """List the VMs, then per VM: vm.summary.quickStats and one QueryPerf (2 counters)."""

    def __init__(self, si: Any, sample: int) -> None:
        self.si = si
        self.content = si.RetrieveContent()
        ids, _ = _lookup(si)
        pm = vim.PerformanceManager
        self.metrics = [pm.MetricId(counterId=ids[n], instance="") for n in COUNTERS[:2]]
        self.sample = sample
        self.scale = 1.0
        self.vms = 0

    def __call__(self) -> float:
        """Seconds of one poll of every VM (the per-VM part scaled from the sample)."""
        content = self.content
        started = time.perf_counter()
        vms = view_objects(content, vim.VirtualMachine)
        listed = time.perf_counter() - started
        subset = vms[: self.sample] if self.sample < len(vms) else vms
        self.vms, self.scale = len(vms), len(vms) / len(subset)
        pm = vim.PerformanceManager
        perf = content.perfManager
        started = time.perf_counter()
        for vm in subset:
            vm.summary.quickStats  # noqa: B018 (one property round trip, as a naive loop does)
            perf.QueryPerf(
                [pm.QuerySpec(entity=vm, maxSample=1, intervalId=20, metricId=self.metrics)]
            )
        return listed + (time.perf_counter() - started) * self.scale


# ---------------------------------------------------------------------------------------------
# d. vmware_exporter
# ---------------------------------------------------------------------------------------------


def exporter_program(install: bool) -> tuple[Optional[Path], str]:
    """vmware_exporter's program in its own venv (installed on a full run), or why not."""
    program = EXPORTER_VENV / "bin" / "vmware_exporter"
    if program.is_file():
        return program, ""
    if not install:
        return None, "not installed (a full run installs it under .cache/)"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(EXPORTER_VENV)], check=True)
        proc = subprocess.run(
            [
                str(EXPORTER_VENV / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                *EXPORTER_PACKAGES,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create its venv: {exc}"
    if proc.returncode != 0 or not program.is_file():
        tail = " ".join((proc.stderr or proc.stdout).split())[-200:]
        return None, f"pip install {' '.join(EXPORTER_PACKAGES)} failed: {tail}"
    return program, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Exporter:
    """vmware_exporter serving /metrics on a loopback port; one scrape = one GET."""

    def __init__(self, program: Path, sim: Vcsim) -> None:
        self.port = _free_port()
        env = dict(
            os.environ,
            VSPHERE_HOST="127.0.0.1",
            VSPHERE_USER=sim.username,
            VSPHERE_PASSWORD=sim.password,
            VSPHERE_IGNORE_SSL="True",
            VSPHERE_COLLECT_VMS="True",
            VSPHERE_COLLECT_VMGUESTS="False",
            VSPHERE_COLLECT_DATASTORES="False",
            VSPHERE_COLLECT_HOSTS="False",
            VSPHERE_COLLECT_SNAPSHOTS="False",
        )
        # its stderr to a file, not a pipe (a full pipe would stall it); closed by close()
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(program), "-a", "127.0.0.1", "-p", str(self.port), "-l", "WARNING"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.errors,
        )
        self.cpu: list[float] = []
        self.vms = 0
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):  # noqa: SIM117 (3.9: no parenthesised with)
                with urllib.request.urlopen(self._url("/healthz"), timeout=5) as resp:
                    if resp.status == 200:
                        return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.errors.seek(0)
                err = self.errors.read()[-4000:].decode(errors="replace")
                self.close()
                raise RuntimeError(f"vmware_exporter did not serve: {' '.join(err.split())[-200:]}")
            time.sleep(0.2)

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __call__(self) -> None:
        cpu = _cpu_seconds(self.process.pid)
        with urllib.request.urlopen(self._url("/metrics"), timeout=1800) as resp:
            body = resp.read()
        self.cpu.append(_cpu_seconds(self.process.pid) - cpu)
        if b"# Collection failed" in body[:100]:
            raise RuntimeError("vmware_exporter: collection failed")
        self.vms = body.count(b"\nvmware_vm_power_state{")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.errors.close()


# ---------------------------------------------------------------------------------------------
# e. the raw bytes
# ---------------------------------------------------------------------------------------------


class Raw:
    """The plugin's own SOAP requests on a pyVmomi session; each reply read and dropped."""

    def __init__(self, si: Any, perf_bodies: list[bytes], page: int) -> None:
        self.si = si
        self.page = page
        self.content = si.RetrieveContent()
        self.stub = si._stub
        self.collector = self.content.propertyCollector._moId
        self.perf_bodies = perf_bodies
        self.bytes = 0
        self.retrievals: list[tuple[Sequence[str], list[tuple[str, Sequence[str]]]]] = [
            (INVENTORY_TYPES, inventory_specs()),
            (["VirtualMachine"], [("VirtualMachine", VM_PATHS)]),
        ]

    def _post(self, body: bytes) -> bytes:
        stub = self.stub
        conn = stub.GetConnection()
        conn.request(
            "POST",
            stub.path,
            body,
            {
                "Cookie": stub.cookie,
                "SOAPAction": stub.versionId,
                "Content-Type": "text/xml; charset=UTF-8",
            },
        )
        resp = conn.getresponse()
        head = tail = b""
        while True:  # read as the plugin reads (64 KiB at a time), keep only both ends
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            self.bytes += len(chunk)
            if not head:
                head = chunk[:4096]
            tail = (tail + chunk[-1024:])[-1024:]
        stub.ReturnConnection(conn)
        return head + tail

    def __call__(self) -> None:
        content = self.content
        self.bytes = 0
        for kinds, specs in self.retrievals:
            with container_view(content, [getattr(vim, k) for k in kinds]) as view:
                body = retrieve_request(self.collector, view._moId, specs, self.page)
                while True:
                    data = self._post(body)  # its ends: the token leads the result
                    at = data.find(b"<token>")
                    if at < 0:
                        break
                    token = data[at + 7 : data.index(b"</token>", at)].decode()
                    body = continue_request(self.collector, token)
        for body in self.perf_bodies:
            self._post(body)


# ---------------------------------------------------------------------------------------------
# peak RSS of a process doing only a
# ---------------------------------------------------------------------------------------------


# The child imports the plugin's modules only (not this bench's test helpers), as the plugin
# process would: log in, poll `rounds` times (QueryPerf each), print VmHWM, the RSS after the
# imports and after each poll as JSON. With "runner" the polls go through the plugin's Runner
# with the sample config's health settings and threshold rules (health stage, host sums,
# serialised to a discarded stream), as the running plugin does them.
RSS_CHILD = """
import io, json, sys, time
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["root"])
from telegraf_balloon.config import VsphereConfig
from telegraf_balloon.log import Log
from telegraf_balloon.sources.vsphere.soap import REALTIME_INTERVAL
from telegraf_balloon.sources.vsphere.source import VsphereSource


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


baseline = status_kb("VmRSS")
now = [1e6]
config = VsphereConfig(
    url=spec["url"], username=spec["username"], password=spec["password"],
    ca_file=spec["ca_file"], page_size=spec["page"],
)
source = VsphereSource(config, Log(io.StringIO()), timeout=300, clock=lambda: now[0])
rss = []
if spec["runner"]:
    from importlib import resources
    from telegraf_balloon.config import AgentConfig, Config, load_text
    from telegraf_balloon.runner import Runner

    class Null(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            return len(data)

    text = resources.files("telegraf_balloon").joinpath("sample.toml").read_text("utf-8")
    sample = load_text(text, "sample.toml", {})
    plugin = Config(
        path="bench", agent=AgentConfig(timeout=300.0), vsphere=(config,),
        health=sample.health, thresholds=sample.thresholds,
    )
    runner = Runner(plugin, [source], Null(), Log(io.StringIO()), "bench")
    for _ in range(spec["rounds"]):
        now[0] += REALTIME_INTERVAL
        if not runner.poll():
            raise SystemExit("the vSphere source was down")
        rss.append(status_kb("VmRSS"))
    runner.close()
else:
    for _ in range(spec["rounds"]):
        now[0] += REALTIME_INTERVAL
        result = source.poll(time.time())
        if result.error is not None:
            raise SystemExit(result.error)
        result = None  # written out and dropped before the next poll
        rss.append(status_kb("VmRSS"))
source.close()
print(json.dumps({"hwm_kb": status_kb("VmHWM"), "baseline_kb": baseline, "rss_kb": rss}))
"""


def peak_rss(sim: Vcsim, rounds: int, runner: bool) -> dict[str, Any]:
    spec = json.dumps(
        {
            "url": sim.url,
            "username": sim.username,
            "password": sim.password,
            "ca_file": sim.cert_file or "",
            "rounds": rounds,
            "page": int(sim.inventory["page"]),
            "root": str(REPO_ROOT),
            "runner": runner,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, spec],
        capture_output=True,
        text=True,
        timeout=600 + 120 * rounds,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the RSS child failed: {proc.stderr[-1000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def rss_note(rss: dict[str, Any]) -> str:
    """'61.2 MB' and, over more than a few polls, how RSS moved after the first two."""
    note = f"{rss['hwm_kb'] / 1024:.1f} MB"
    after = rss["rss_kb"][2:]
    if len(after) >= 5:
        note += (
            f" (RSS over polls 3-{len(rss['rss_kb'])}: {min(after) / 1024:.1f}-"
            f"{max(after) / 1024:.1f} MB, last {after[-1] / 1024:.1f})"
        )
    return note


def same_requests(sim: Vcsim, plugin: Plugin, pyv: Optional[Pyvmomi], raw: Raw) -> None:
    """b and e send what a sends: the simulator's call counts of one poll each must agree
    (b's only when it reads every VM)."""
    methods = ("RetrievePropertiesEx", "ContinueRetrievePropertiesEx", "QueryPerf")
    counts = {}
    ways: list[tuple[str, Callable[[], object]]] = [("a", plugin), ("e", raw)]
    if pyv is not None:
        ways.insert(1, ("b", pyv))
    for name, fn in ways:
        sim.reset_calls()
        fn()
        calls = sim.calls()["calls"]
        counts[name] = tuple(int(calls.get(m, 0)) for m in methods)
    if len(set(counts.values())) != 1:
        raise SystemExit(f"the ways differ in their calls {methods}: {counts}")


# ---------------------------------------------------------------------------------------------
# one size
# ---------------------------------------------------------------------------------------------


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} (1/5 min) on {os.cpu_count()} cores"


def first_datacenter(si: Any) -> Any:
    """The first datacenter by name: b's part of the largest inventory."""
    content = si.RetrieveContent()
    return min(view_objects(content, vim.Datacenter), key=lambda dc: dc.name)


def bench_size(
    size: int, repeat: int, exporter: tuple[Optional[Path], str], profile: bool, rss_polls: int
) -> dict[str, Any]:
    program, exporter_why = exporter
    if size > EXPORTER_MOST:
        program, exporter_why = None, f"not run above {EXPORTER_MOST:,} VMs (minutes a scrape)"
    started = time.perf_counter()
    sim, port_why = start_simulator(size, want_443=program is not None)
    exporter_why = exporter_why or port_why
    out: dict[str, Any] = {"size": size, "startup": time.perf_counter() - started}
    out["sim_startup"] = float(sim.info.get("startup_s", 0.0))
    out["sim_hosts"] = int(sim.info.get("hosts", 0))
    out["sim_rss"] = sim.resident_mb()
    si = connect(sim)
    plugin: Optional[Plugin] = None
    peer: Optional[Exporter] = None
    extra: list[Plugin] = []  # f's plugin, closed here if the run fails
    try:
        started = time.perf_counter()
        out["counts"] = prepare(si)
        out["prepare"] = time.perf_counter() - started
        started = time.perf_counter()
        set_attributes(si)
        out["attributes_set"] = time.perf_counter() - started
        instance = f"127.0.0.1:{sim.port}"
        plugin = Plugin(sim)
        plugin()  # logs in, looks the counters up
        with_attributes = Plugin(sim, ATTRIBUTES)
        refreshing = Plugin(sim, ATTRIBUTES, step=VALUES_REFRESH_SECONDS)
        extra.extend((with_attributes, refreshing))
        with_attributes()  # logs in, reads the attribute definitions and every VM's values
        refreshing()
        page = int(sim.inventory["page"])
        subset = size > PYVMOMI_WHOLE
        pyv = Pyvmomi(si, instance, page, first_datacenter(si) if subset else None)
        naive = Naive(si, NAIVE_SAMPLE)
        raw = Raw(si, plugin.perf_requests(), page)
        same_requests(sim, plugin, None if subset else pyv, raw)
        if program is not None and not exporter_why:
            try:
                peer = Exporter(program, sim)
                if size <= 2000:  # each scrape logs in afresh anyway; 10,000 VMs take minutes
                    peer()  # warm-up, and proof that it works
            except (OSError, RuntimeError) as exc:
                exporter_why = " ".join(str(exc).split())[-200:]
                if peer is not None:
                    peer.close()
                peer = None
        for fn in (pyv, naive, raw):
            fn()  # warm-up
        plugin.cpu.clear()
        with_attributes.cpu.clear()
        times: dict[str, list[float]] = {k: [] for k in "abcdef"}
        attribute_rounds: dict[str, list[float]] = {"a": [], "f": [], "g": []}  # CPU
        peer_rounds = repeat if size <= 2000 else 1  # its 10,000-VM scrape takes minutes
        out["load_before"] = load()
        meter = CpuMeter(named="this bench and the simulator")
        speed = SpeedCheck()
        for i in range(repeat):
            speed()
            times["a"].append(timed(plugin))
            times["b"].append(timed(pyv))
            times["c"].append(naive())
            if peer is not None and i < peer_rounds:
                times["d"].append(timed(peer))
            times["e"].append(timed(raw))
            times["f"].append(timed(with_attributes))
        pair: list[tuple[str, Plugin]] = [
            ("a", plugin),
            ("f", with_attributes),
            ("g", refreshing),
        ]
        for _ in range(attribute_rounds_of(repeat)):  # a, f, g alone, alternating: CPU compared
            for way, poller in pair:
                started = time.process_time()
                poller()
                attribute_rounds[way].append(time.process_time() - started)
            pair.reverse()
        out["load_after"] = load()
        out["machine"] = meter.report()
        out["speed"] = speed.report()
        out["times"] = times
        out["samples"] = len(plugin.result.samples)
        out["cpu"] = median(plugin.cpu) / out["samples"]
        out["raw_bytes"] = raw.bytes
        out["perf_calls"] = len(raw.perf_bodies)
        out["naive_note"] = (
            f"timed on {naive.sample} of {naive.vms} VMs, scaled x{naive.scale:g}"
            if naive.scale > 1
            else ""
        )
        if subset:  # b read one datacenter: its time scaled to every VM a polled
            part = len(pyv.figures)
            times["b"] = [t * out["samples"] / part for t in times["b"]]
            out["pyvmomi_note"] = (
                f"timed on the {part:,} VMs of one datacenter, scaled x{out['samples'] / part:.2f}"
            )
        out["oracle"] = compare(plugin.figures(), pyv.figures, subset)
        out["oracle_vms"] = len(pyv.figures)
        # each round's polls ran back to back: their ratios cancel the machine's drift
        out["attribute_ratio"] = {
            k: median([x / y for x, y in zip(attribute_rounds[k], attribute_rounds["a"])])
            for k in ("f", "g")
        }
        out["attribute_cpu_median"] = {k: median(v) for k, v in attribute_rounds.items()}
        tagged = [s for s in with_attributes.result.samples if "owner" in s.tags]
        out["attribute_tagged"] = (len(tagged), sum(1 for s in tagged if "team" in s.tags))
        for made in (with_attributes, refreshing):
            extra.remove(made)
            made.close()
        out["targets_reported"] = sum(
            1 for s in plugin.result.samples if "balloon_target_bytes" in s.fields
        )
        out["exporter_why"] = exporter_why if peer is None else ""
        if peer is not None:
            out["exporter_vms"] = peer.vms
            out["exporter_cpu"] = median(peer.cpu)
            out["exporter_rounds"] = len(times["d"])
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(3):
                plugin()
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(30)
            out["profile"] = text.getvalue()
        plugin.close()
        plugin = None
        out["rss"] = peak_rss(sim, rounds=3, runner=False)
        out["rss_runner"] = peak_rss(sim, rounds=rss_polls, runner=True)
        out["sim_rss_after"] = sim.resident_mb()
    finally:
        if peer is not None:
            peer.close()
        if plugin is not None:
            plugin.close()
        for other in extra:
            other.close()
        disconnect(si)
        sim.stop()
    return out


def simulator_line(out: dict[str, Any]) -> str:
    rss, peak = out["sim_rss_after"] if "sim_rss_after" in out else out["sim_rss"]
    return (
        f"  simulator: {out['counts']['vms']:,} VMs on {out['sim_hosts']:,} hosts, built in "
        f"{out['sim_startup']:.1f} s (listening after {out['startup']:.1f} s), "
        f"{out['sim_rss'][0]:,.0f} MB resident once built, {rss:,.0f} MB after the bench "
        f"(peak {peak:,.0f} MB); values set in {out['prepare']:.1f} s"
    )


def report(out: dict[str, Any], repeat: int) -> str:
    n = out["samples"]
    times = out["times"]
    a = median(times["a"])
    labels = {
        "a": "a. plugin: VsphereSource.poll (streamed SOAP)",
        "b": "b. the same requests as pyVmomi objects",
        "c": "c. naive: quickStats + 1 QueryPerf per VM",
        "d": f"d. vmware_exporter {EXPORTER_VERSION} scrape (VMs only)",
        "e": "e. raw bytes of a's requests, unparsed (floor)",
        "f": "f. a with custom_attributes (Owner, Team)",
    }
    rows = []
    for k, label in labels.items():
        values = times[k]
        if not values:
            rows.append([label, "n/a", "", "", "", out["exporter_why"] or "not run"])
            continue
        m = median(values)
        note = {
            "b": out.get("pyvmomi_note", ""),
            "c": out["naive_note"],
            "d": f"{len(values)} scrape(s), {out.get('exporter_vms', 0)} VMs in its output",
        }.get(k, "")
        rows.append(
            [
                label,
                fmt_ms(m),
                f"{fmt_ms(min(values))}..{fmt_ms(max(values))}",
                fmt_us(m / n),
                f"{m / a:,.2f}x" if k != "a" else "1.00x",
            ]
            + ([note] if note else [])
        )
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    headers = ["way (one poll of every VM)", "ms/poll", "min..max ms", "µs/VM", "vs a", "note"]
    counts = out["counts"]
    rss = out["rss"]
    lines = [
        f"== {counts['vms']:,} VMs ({n:,} powered-on non-templates polled, "
        f"{out['targets_reported']:,} with a balloon target; {counts['valued']} with values, "
        f"{counts['stuck']} stuck, {counts['blocked']} blocked, {counts['off']} off, "
        f"{counts['templates']} templates); median of {repeat}, interleaved",
        table(headers[:width], rows, [False, True, True, True, True, False][:width]),
        f"  plugin CPU (process time of a): {fmt_us(out['cpu'])} µs per VM",
        f"  peak RSS of the whole plugin through its Runner (health, host sums, serialised; "
        f"{len(out['rss_runner']['rss_kb'])} polls): {rss_note(out['rss_runner'])}; "
        f"of a process doing only a (3 polls): {rss['hwm_kb'] / 1024:.1f} MB; "
        f"after the imports {rss['baseline_kb'] / 1024:.1f} MB",
        f"  a's requests: {out['raw_bytes'] / 1e6:.1f} MB of reply per poll, "
        f"{out['perf_calls']} QueryPerf calls (maxQueryMetrics {MAX_QUERY_METRICS})",
    ]
    ratio, mid = out["attribute_ratio"], out["attribute_cpu_median"]
    owners, teams = out["attribute_tagged"]
    lines.append(
        f"  f: custom attributes as tags cost {ratio['f']:.3f}x a's CPU per poll, "
        f"{ratio['g']:.3f}x on the poll that carries the values (g, every 5 min): the median "
        f"of each round's ratio, {attribute_rounds_of(repeat)} rounds of a, f and g back to "
        f"back (median CPU a {fmt_ms(mid['a'])}, f {fmt_ms(mid['f'])}, g {fmt_ms(mid['g'])} "
        f"ms); {owners:,} VMs tagged owner, {teams:,} team (set in "
        f"{out['attributes_set']:.1f} s)"
    )
    if "exporter_cpu" in out:
        lines.append(
            f"  vmware_exporter's own CPU per scrape: {out['exporter_cpu']:.2f} s "
            f"({out['exporter_cpu'] / n * 1e6:,.0f} µs per VM; it also reads other metrics)"
        )
    oracle = out["oracle"]
    if oracle:
        lines.append(f"  oracle: {verdict(False)} {len(oracle)} VMs differ from pyVmomi's:")
        lines.extend(f"    {p}" for p in oracle[:10])
    else:
        lines.append(
            f"  oracle: a's tags and fields equal b's (pyVmomi) for all {out['oracle_vms']:,} "
            f"VMs b read: PASS"
        )
    lines.append(simulator_line(out))
    lines.append(f"  {out['load_before']} before, {out['load_after']} after")
    lines.append(out["machine"])
    lines.append(out["speed"])
    if "profile" in out:
        lines.append(out["profile"])
    return "\n".join(lines)


def memory_case(size: int) -> dict[str, Any]:
    """The whole plugin's peak RSS at `size` VMs, nothing timed (the quick run's memory case)."""
    started = time.perf_counter()
    sim, _ = start_simulator(size, want_443=False)
    out: dict[str, Any] = {"size": size, "startup": time.perf_counter() - started}
    out["sim_startup"] = float(sim.info.get("startup_s", 0.0))
    out["sim_hosts"] = int(sim.info.get("hosts", 0))
    out["sim_rss"] = sim.resident_mb()
    si = connect(sim)
    try:
        started = time.perf_counter()
        out["counts"] = prepare(si)
        out["prepare"] = time.perf_counter() - started
        out["rss_runner"] = peak_rss(sim, rounds=RSS_POLLS, runner=True)
        out["sim_rss_after"] = sim.resident_mb()
    finally:
        disconnect(si)
        sim.stop()
    return out


def verdicts(results: dict[int, dict[str, Any]], quick: bool) -> str:
    rows: list[list[Any]] = []
    timed_sizes = sorted(size for size, r in results.items() if "times" in r)
    large = max(timed_sizes)
    small = 2000 if 2000 in results else min(timed_sizes)

    def med(size: int, k: str) -> Optional[float]:
        values = results[size]["times"][k]
        return median(values) if values else None

    a, e = med(large, "a"), med(large, "e")
    assert a is not None and e is not None
    rows.append(
        [
            f"a within {TARGET_VS_FLOOR:g}x the raw floor",
            large,
            f"{a / e:.2f}x",
            a / e <= TARGET_VS_FLOOR,
        ]
    )
    mid = 10000 if 10000 in timed_sizes else large
    a10, b10 = med(mid, "a"), med(mid, "b")
    assert a10 is not None and b10 is not None
    rows.append(
        [
            f"a >= {TARGET_VS_PYVMOMI:g}x faster than pyVmomi objects",
            mid,
            f"{b10 / a10:.2f}x",
            b10 / a10 >= TARGET_VS_PYVMOMI,
        ]
    )
    cpu_us = results[large]["cpu"] * 1e6
    rows.append(
        [
            f"plugin CPU <= {TARGET_CPU_US:g} µs per VM",
            large,
            f"{cpu_us:.1f} µs",
            cpu_us <= TARGET_CPU_US,
        ]
    )
    if mid != large:
        growth = results[large]["cpu"] / results[mid]["cpu"]
        wall = (a / results[large]["samples"]) / (a10 / results[mid]["samples"])
        floor = (e / results[large]["samples"]) / ((med(mid, "e") or 0.0) / results[mid]["samples"])
        rows.append(
            [
                f"per VM, CPU and wall time at {large:,} over {mid:,} (linear: 1)",
                large,
                f"CPU {growth:.2f}x, a's wall {wall:.2f}x, the floor's {floor:.2f}x",
                "info",
            ]
        )
    for size, limit in TARGET_WHOLE_RSS_MB.items():
        if size in results:
            mb = results[size]["rss_runner"]["hwm_kb"] / 1024
            rows.append(
                [f"whole plugin's peak RSS < {limit:g} MB", size, f"{mb:.1f} MB", mb < limit]
            )
    a2, c2, d2 = med(small, "a"), med(small, "c"), med(small, "d")
    assert a2 is not None and c2 is not None
    rows.append(
        [
            f"a >= {TARGET_VS_NAIVE:g}x faster than the naive loop",
            small,
            f"{c2 / a2:.1f}x",
            c2 / a2 >= TARGET_VS_NAIVE,
        ]
    )
    if d2 is None:
        rows.append(
            [f"a >= {TARGET_VS_EXPORTER:g}x faster than vmware_exporter", small, "n/a", None]
        )
    else:
        rows.append(
            [
                f"a >= {TARGET_VS_EXPORTER:g}x faster than vmware_exporter",
                small,
                f"{d2 / a2:.1f}x",
                d2 / a2 >= TARGET_VS_EXPORTER,
            ]
        )
    attribute_cost = results[large]["attribute_ratio"]["f"]
    rows.append(
        [
            f"custom attributes <= {TARGET_ATTRIBUTES:g}x a's CPU per poll",
            f"{large:,}",
            f"{attribute_cost:.3f}x",
            attribute_cost <= TARGET_ATTRIBUTES,
        ]
    )
    oracle_ok = all(not r["oracle"] for r in results.values() if "oracle" in r)
    rows.append(
        [
            "a's figures equal pyVmomi's, every VM",
            "all",
            "equal" if oracle_ok else "DIFFER",
            oracle_ok,
        ]
    )
    cells = []
    for target, size, got, ok in rows:
        judged_always = target.startswith(("a's figures", "whole plugin's"))  # not timings
        if ok == "info":
            judged = "(shown, not judged)"
        elif ok is None:
            judged = "not run"
        elif quick and not judged_always:
            judged = "(quick run: not judged)"
        else:
            judged = verdict(bool(ok))
        cells.append([target, f"{size:,}" if isinstance(size, int) else size, got, judged])
    return table(
        ["target (issues 7 and 21)", "VMs", "measured", "verdict"],
        cells,
        [False, True, True, False],
    )


def main() -> int:
    p = parser(__doc__)
    p.add_argument(
        "--sizes", default="2000,10000,40000", help="inventory sizes (200, 2000, 10000, 40000)"
    )
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile the plugin's poll")
    p.add_argument("--no-exporter", action="store_true", help="skip vmware_exporter")
    p.add_argument(
        "--rss-polls",
        type=int,
        default=RSS_POLLS,
        help="polls of the whole plugin's peak-RSS child (100 shows that RSS stays flat)",
    )
    args = p.parse_args()
    sizes = [200] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    reason = launcher_available()
    if reason is not None:
        print(f"bench_vsphere: skipped, the vCenter simulator cannot be built: {reason}")
        return 0
    if args.no_exporter:
        exporter: tuple[Optional[Path], str] = (None, "skipped (--no-exporter)")
    else:
        exporter = exporter_program(install=not args.quick)
        if exporter[0] is not None and os.geteuid() != 0:
            exporter = (None, "needs root: it dials port 443 only")
    print(
        "vSphere source against govmomi's simulator on 127.0.0.1 (the simulator runs on the "
        "same 2 cores;\nthis machine is shared with other jobs: wall times are inflated and "
        "noisy, medians and ranges given)\n"
    )
    results: dict[int, dict[str, Any]] = {}
    for size in sizes:
        if size not in SHAPES:
            raise SystemExit(f"--sizes: {size} is not one of {sorted(SHAPES)}")
        results[size] = bench_size(size, repeat, exporter, args.profile, args.rss_polls)
        print(report(results[size], repeat))
        print()
    if args.quick:  # the whole plugin's memory at 10,000 VMs: quick to measure, and judged
        case = memory_case(10000)
        results[10000] = case
        print(
            f"== the whole plugin at 10,000 VMs: peak RSS {rss_note(case['rss_runner'])} "
            f"through its Runner ({RSS_POLLS} polls, QueryPerf each)"
        )
        print(simulator_line(case))
        print()
    print(verdicts(results, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
