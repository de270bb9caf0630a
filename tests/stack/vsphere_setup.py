"""pyvmomi helpers for tests against :class:`tests.stack.vcsim.Vcsim` (test code only).

Everything goes through the ordinary vSphere API, as a test would against a real vCenter:

* :func:`connect` logs in (verifying the simulator's certificate by default);
* :func:`container_view`, :func:`view_objects`, :func:`view_filter_spec` and
  :func:`retrieve_pages` are the one way tests and benches list objects and retrieve their
  properties through a container view (the view destroyed after); :func:`all_vms` lists every
  VM, :func:`retrieve` reads property paths of every object of a type;
* :func:`configure_vm` sets memory, reservation/limit, quickStats and per-VM performance
  counter values with one ``ReconfigVM_Task``, using the simulator's ``SET.<property path>``
  extraConfig keys and the launcher's ``sim.perf.<group>.<name>.<rollup>`` keys, then powers the
  VM on or off and marks it a template if asked; :func:`configure_vms` does many in small batches
  (the simulator panicked under 10,000 concurrent WaitForTask calls);
* :func:`retrieve`, :func:`counter_ids`, :func:`query_perf`, :func:`terminate_other_sessions`
  read back what the plugin would read.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import pyVim.connect as _pyvim_connect
import pyVmomi as _pyvmomi

from tests.stack.vcsim import Vcsim, VcsimError
from tests.stack.vsphere_oracle import QUICKSTATS

# pyVmomi's partial annotations do not help mypy --strict here: treat the API as dynamic.
vim: Any = _pyvmomi.vim
vmodl: Any = _pyvmomi.vmodl
VmomiSupport: Any = _pyvmomi.VmomiSupport
SmartConnect: Any = _pyvim_connect.SmartConnect
Disconnect: Any = _pyvim_connect.Disconnect

__all__ = [
    "PERF_KEY_PREFIX",
    "all_vms",
    "configure_vm",
    "configure_vms",
    "connect",
    "container_view",
    "counter_ids",
    "disconnect",
    "mark_template",
    "query_perf",
    "reconfigure_spec",
    "retrieve",
    "retrieve_pages",
    "set_max_query_metrics",
    "terminate_other_sessions",
    "view_filter_spec",
    "view_objects",
    "vm_by_name",
    "wait_task",
]

PERF_KEY_PREFIX = "sim.perf."
_INT = VmomiSupport.vmodlTypes["int"]

# configure_vm keyword -> summary.quickStats field (all MB except compressedMemory, KB)
_QUICKSTATS = {keyword: attr for attr, keyword, _, _ in QUICKSTATS}


def connect(
    sim: Vcsim, *, verify: bool = True, user: Optional[str] = None, pwd: Optional[str] = None
) -> Any:
    """A logged-in ServiceInstance. ``verify=False`` disables certificate checks (tests only)."""
    kwargs: Dict[str, Any] = {}
    if sim.cert_file is None:
        kwargs["protocol"] = "http"
    elif verify:
        kwargs["sslContext"] = ssl.create_default_context(cafile=sim.cert_file)
    else:
        kwargs["disableSslCertValidation"] = True
    return SmartConnect(
        host=sim.host,
        port=sim.port,
        user=sim.username if user is None else user,
        pwd=sim.password if pwd is None else pwd,
        **kwargs,
    )


def disconnect(si: Any) -> None:
    with contextlib.suppress(Exception):  # the session may be gone already
        Disconnect(si)


@contextlib.contextmanager
def connected(
    sim: Vcsim, *, verify: bool = True, user: Optional[str] = None, pwd: Optional[str] = None
) -> Iterator[Any]:
    """A :func:`connect`-ed ServiceInstance for the block, disconnected after it."""
    si = connect(sim, verify=verify, user=user, pwd=pwd)
    try:
        yield si
    finally:
        disconnect(si)


@contextlib.contextmanager
def container_view(content: Any, types: Sequence[Any], root: Any = None) -> Iterator[Any]:
    """A ContainerView of every object of ``types`` below the root folder (or ``root``, a
    datacenter, folder, cluster or host), destroyed on exit.

    ``content`` is the ServiceContent (``si.RetrieveContent()``, a round trip: callers that
    loop keep theirs).
    """
    container = content.rootFolder if root is None else root
    view = content.viewManager.CreateContainerView(container, list(types), True)
    try:
        yield view
    finally:
        view.Destroy()


def view_objects(content: Any, obj_type: Any) -> List[Any]:
    """Every object of one type (``vim.HostSystem``, ...) in the inventory."""
    with container_view(content, [obj_type]) as view:
        return list(view.view)


def view_filter_spec(view: Any, specs: Sequence[Tuple[Any, Sequence[str]]]) -> Any:
    """A PropertyCollector FilterSpec for the objects of ``view``: ``[(type, paths)]``."""
    PC = vmodl.query.PropertyCollector
    return PC.FilterSpec(
        objectSet=[
            PC.ObjectSpec(
                obj=view,
                skip=True,
                selectSet=[
                    PC.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView
                    )
                ],
            )
        ],
        propSet=[PC.PropertySpec(type=kind, pathSet=list(paths)) for kind, paths in specs],
    )


def retrieve_pages(
    content: Any,
    specs: Sequence[Tuple[Any, Sequence[str]]],
    *,
    max_objects: int = 0,
    root: Any = None,
) -> Iterator[Any]:
    """Each RetrievePropertiesEx page (a RetrieveResult) for every object of ``specs``' types,
    ``[(type, paths)]``, through one container view (of everything, or below ``root``),
    following the tokens to the last page.

    ``max_objects`` 0 leaves the page size to the server.
    """
    PC = vmodl.query.PropertyCollector
    pc = content.propertyCollector
    with container_view(content, [kind for kind, _ in specs], root) as view:
        opts = PC.RetrieveOptions(maxObjects=max_objects) if max_objects else PC.RetrieveOptions()
        res = pc.RetrievePropertiesEx([view_filter_spec(view, specs)], opts)
        while res is not None:
            yield res
            res = pc.ContinueRetrievePropertiesEx(res.token) if res.token else None


def all_vms(si: Any) -> List[Any]:
    """Every VirtualMachine in the inventory (templates included)."""
    return view_objects(si.RetrieveContent(), vim.VirtualMachine)


def vm_by_name(si: Any, name: str) -> Any:
    for vm in all_vms(si):
        if vm.name == name:
            return vm
    raise KeyError(name)


def retrieve(
    si: Any, paths: Sequence[str], *, obj_type: Any = vim.VirtualMachine, max_objects: int = 0
) -> Tuple[Dict[str, Dict[str, Any]], int]:
    """``({moid: {path: value}}, pages)`` for every object of a type, following tokens."""
    out: Dict[str, Dict[str, Any]] = {}
    pages = 0
    for res in retrieve_pages(si.RetrieveContent(), [(obj_type, paths)], max_objects=max_objects):
        pages += 1
        for oc in res.objects:
            out[oc.obj._moId] = {p.name: p.val for p in oc.propSet}
    return out, pages


def wait_task(task: Any, timeout: float = 120.0) -> Any:
    """Wait for a task by polling its info; raise its error."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        info = task.info
        if info.state == vim.TaskInfo.State.success:
            return info.result
        if info.state == vim.TaskInfo.State.error:
            raise info.error
        if time.monotonic() > deadline:
            raise VcsimError(f"task {task} did not finish within {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _opt(key: str, value: int) -> Any:
    return vim.option.OptionValue(key=key, value=_INT(int(value)))


def reconfigure_spec(
    vm: Any,
    *,
    memory_mb: Optional[int] = None,
    reservation_mb: Optional[int] = None,
    limit_mb: Optional[int] = None,
    vmmemctltarget_kb: Optional[int] = None,
    perf: Optional[Mapping[str, int]] = None,
    perf_lag_s: Optional[int] = None,
    perf_omit: Optional[bool] = None,
    tools_running_status: Optional[str] = None,
    tools_version_status: Optional[str] = None,
    **quickstats: Optional[int],
) -> Optional[Any]:
    """The ConfigSpec :func:`configure_vm` sends, or None when nothing changes."""
    unknown = set(quickstats) - set(_QUICKSTATS)
    if unknown:
        raise TypeError(f"unknown configure_vm arguments: {sorted(unknown)}")
    spec: Any = vim.vm.ConfigSpec()
    extra: List[Any] = []
    changed = False
    if memory_mb is not None:
        spec.memoryMB = int(
            memory_mb
        )  # sets config.hardware.memoryMB and summary.config.memorySizeMB
        changed = True
    if reservation_mb is not None or limit_mb is not None:
        # memoryAllocation is replaced whole: send reservation and limit together
        current = vm.config.memoryAllocation if vm.config is not None else None
        reservation = reservation_mb
        if reservation is None:
            reservation = (current.reservation if current is not None else None) or 0
        limit = limit_mb
        if limit is None:
            limit = current.limit if current is not None and current.limit is not None else -1
        spec.memoryAllocation = vim.ResourceAllocationInfo(
            reservation=int(reservation), limit=int(limit)
        )
        extra.append(_opt("SET.summary.config.memoryReservation", int(reservation)))
        changed = True
    for arg, field in _QUICKSTATS.items():
        value = quickstats.get(arg)
        if value is not None:
            extra.append(_opt(f"SET.summary.quickStats.{field}", value))
    if vmmemctltarget_kb is not None:
        for rollup in ("average", "none", "maximum", "minimum"):
            extra.append(_opt(f"{PERF_KEY_PREFIX}mem.vmmemctltarget.{rollup}", vmmemctltarget_kb))
    for name, value in (perf or {}).items():
        if name.count(".") != 2:
            raise ValueError(f"a perf counter is group.name.rollup, not {name!r}")
        extra.append(_opt(PERF_KEY_PREFIX + name, value))
    if perf_lag_s is not None:
        extra.append(_opt("sim.perf_lag_s", perf_lag_s))
    if perf_omit is not None:
        extra.append(_opt("sim.perf_omit", 1 if perf_omit else 0))
    # VMware Tools' state: strings (the simulator sets a string property from a string value)
    for path, text in (
        ("guest.toolsRunningStatus", tools_running_status),
        ("guest.toolsVersionStatus2", tools_version_status),
    ):
        if text is not None:
            extra.append(vim.option.OptionValue(key=f"SET.{path}", value=str(text)))
    if extra:
        spec.extraConfig = extra
        changed = True
    return spec if changed else None


_POWER = {
    "on": "poweredOn",
    "poweredOn": "poweredOn",
    "off": "poweredOff",
    "poweredOff": "poweredOff",
    "suspended": "suspended",
    "suspend": "suspended",
}


def _power_task(vm: Any, power: Optional[str]) -> Optional[Any]:
    if power is None:
        return None
    want = _POWER.get(power)
    if want is None:
        raise ValueError(f"power must be on, off or suspended, not {power!r}")
    state = vm.runtime.powerState
    if state == want:
        return None
    if want == "poweredOn":
        return vm.PowerOnVM_Task()
    if want == "poweredOff":
        return vm.PowerOffVM_Task()
    if state != "poweredOn":
        wait_task(vm.PowerOnVM_Task())
    return vm.SuspendVM_Task()


def mark_template(vm: Any) -> None:
    """Power the VM off and mark it a template (MarkAsTemplate, as on vCenter)."""
    if vm.runtime.powerState != "poweredOff":
        wait_task(vm.PowerOffVM_Task())
    if not (vm.config is not None and vm.config.template):
        vm.MarkAsTemplate()


def configure_vm(
    vm: Any,
    *,
    memory_mb: Optional[int] = None,
    reservation_mb: Optional[int] = None,
    limit_mb: Optional[int] = None,
    ballooned_mb: Optional[int] = None,
    swapped_mb: Optional[int] = None,
    compressed_kb: Optional[int] = None,
    consumed_mb: Optional[int] = None,
    active_mb: Optional[int] = None,
    granted_mb: Optional[int] = None,
    shared_mb: Optional[int] = None,
    private_mb: Optional[int] = None,
    overhead_mb: Optional[int] = None,
    vmmemctltarget_kb: Optional[int] = None,
    perf: Optional[Mapping[str, int]] = None,
    perf_lag_s: Optional[int] = None,
    perf_omit: Optional[bool] = None,
    tools_running_status: Optional[str] = None,
    tools_version_status: Optional[str] = None,
    power: Optional[str] = None,
    template: bool = False,
    timeout: float = 120.0,
) -> None:
    """Set what the plugin reads for one VM, through ReconfigVM_Task, and wait for it.

    Units are vSphere's: quickStats in MB except ``compressed_kb``; ``vmmemctltarget_kb`` (KB)
    becomes the VM's ``mem.vmmemctltarget.*`` counters; ``perf`` forces any counter
    (``{"mem.swaptarget.average": 1024}``, in the counter's unit). ``perf_lag_s`` puts the
    VM's newest realtime sample that many seconds in the past (its host stopped reporting);
    ``perf_omit=True`` leaves the VM out of QueryPerf replies. ``tools_running_status``
    (``guestToolsRunning``, ``guestToolsNotRunning``, ...) and ``tools_version_status``
    (``guestToolsCurrent``, ``guestToolsNotInstalled``, ...) set VMware Tools' state as the
    guest would report it (the simulator makes every VM "not running"). ``limit_mb=-1`` is
    unlimited. ``power``: "on", "off", "suspended" or None (leave it). ``template=True`` powers
    off and marks the VM a template. The simulator's own counters derive from quickStats:
    ``mem.vmmemctl`` = ballooned MB * 1024, ``mem.swapped`` = swapped MB * 1024,
    ``mem.compressed`` = compressed KB (and consumed/active/granted/shared/overhead likewise).
    """
    spec = reconfigure_spec(
        vm,
        memory_mb=memory_mb,
        reservation_mb=reservation_mb,
        limit_mb=limit_mb,
        vmmemctltarget_kb=vmmemctltarget_kb,
        perf=perf,
        perf_lag_s=perf_lag_s,
        perf_omit=perf_omit,
        tools_running_status=tools_running_status,
        tools_version_status=tools_version_status,
        ballooned_mb=ballooned_mb,
        swapped_mb=swapped_mb,
        compressed_kb=compressed_kb,
        consumed_mb=consumed_mb,
        active_mb=active_mb,
        granted_mb=granted_mb,
        shared_mb=shared_mb,
        private_mb=private_mb,
        overhead_mb=overhead_mb,
    )
    if spec is not None:
        wait_task(vm.ReconfigVM_Task(spec), timeout)
    if template:
        mark_template(vm)
        return
    task = _power_task(vm, power)
    if task is not None:
        wait_task(task, timeout)


def configure_vms(
    items: Iterable[Tuple[Any, Mapping[str, Any]]], *, batch: int = 16, timeout: float = 120.0
) -> int:
    """``configure_vm(vm, **kwargs)`` for many VMs, ``batch`` reconfigure tasks in flight at a time.

    Power changes and templates are applied after each batch's reconfigures. Returns the count.
    """
    pending: List[Tuple[Any, Mapping[str, Any]]] = []
    done = 0

    def flush() -> None:
        tasks = []
        for vm, kw in pending:
            spec_kw = {k: v for k, v in kw.items() if k not in ("power", "template")}
            spec = reconfigure_spec(vm, **spec_kw)
            if spec is not None:
                tasks.append(vm.ReconfigVM_Task(spec))
        for t in tasks:
            wait_task(t, timeout)
        power_tasks = []
        for vm, kw in pending:
            if kw.get("template"):
                mark_template(vm)
                continue
            t = _power_task(vm, kw.get("power"))
            if t is not None:
                power_tasks.append(t)
        for t in power_tasks:
            wait_task(t, timeout)
        pending.clear()

    for vm, kw in items:
        pending.append((vm, kw))
        done += 1
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return done


def counter_ids(si: Any) -> Dict[str, int]:
    """``{"group.name.rollup": counterId}`` from the PerformanceManager."""
    pm = si.RetrieveContent().perfManager
    return {f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}": c.key for c in pm.perfCounter}


def query_perf(
    si: Any,
    vms: Sequence[Any],
    names: Sequence[str],
    *,
    interval: int = 20,
    max_sample: int = 1,
    ids: Optional[Mapping[str, int]] = None,
) -> Dict[str, Dict[str, List[int]]]:
    """``{vm moid: {"group.name.rollup": [values]}}`` with one QueryPerf call.

    Pass ``ids`` (from :func:`counter_ids`) when calling often: reading the 560 counters
    costs a quarter of a second of pyvmomi parsing each time.
    """
    if ids is None:
        ids = counter_ids(si)
    by_id = {ids[n]: n for n in names}
    PM = vim.PerformanceManager
    specs = [
        PM.QuerySpec(
            entity=vm,
            intervalId=interval,
            maxSample=max_sample,
            metricId=[PM.MetricId(counterId=ids[n], instance="") for n in names],
        )
        for vm in vms
    ]
    out: Dict[str, Dict[str, List[int]]] = {}
    for em in si.RetrieveContent().perfManager.QueryPerf(specs) or []:
        out[em.entity._moId] = {by_id[s.id.counterId]: list(s.value) for s in (em.value or [])}
    return out


def set_max_query_metrics(si: Any, value: int) -> None:
    """Change ``config.vpxd.stats.maxQueryMetrics`` (the launcher reads it on every QueryPerf)."""
    si.RetrieveContent().setting.UpdateOptions(
        changedValue=[
            vim.option.OptionValue(key="config.vpxd.stats.maxQueryMetrics", value=str(value))
        ]
    )


def terminate_other_sessions(si: Any) -> List[str]:
    """Terminate every session but this one (e.g. the plugin's); returns their keys."""
    sm = si.RetrieveContent().sessionManager
    mine = sm.currentSession.key
    others = [s.key for s in (sm.sessionList or []) if s.key != mine]
    if others:
        sm.TerminateSession(sessionId=others)
    return others
