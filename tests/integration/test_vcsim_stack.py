"""The vCenter simulator keeps the launcher's promises, checked with pyvmomi as the oracle.

* RetrievePropertiesEx pages (min(page, maxObjects) objects and a token), continuing returns
  the rest, every VM exactly once, a used token faults, CancelRetrievePropertiesEx works;
* QueryPerf returns exactly what configure_vm set (vmmemctl from ballooned MB, vmmemctltarget
  from its key, swapped, compressed), with a 20 s aligned timestamp, zeros included;
* config.vpxd.stats.maxQueryMetrics is readable and a QueryPerf over it faults
  RestrictedByAdministrator;
* only the configured credentials log in; TerminateSession kills another session;
* the certificate verifies with cert_file and a default context refuses it;
* /sim/calls counts calls; restart keeps the port and drops the sessions.
"""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.stack.libvirt_stack import StackError
from tests.stack.vcsim import DEFAULT_CACHE_DIR, Vcsim, build_launcher

pytestmark = pytest.mark.integration
pyVmomi = pytest.importorskip("pyVmomi")

from tests.stack.vsphere_setup import (  # noqa: E402
    all_vms,
    configure_vm,
    configure_vms,
    connect,
    connected,
    container_view,
    counter_ids,
    disconnect,
    query_perf,
    retrieve,
    set_max_query_metrics,
    terminate_other_sessions,
    view_filter_spec,
    view_objects,
    vim,
    vm_by_name,
    vmodl,
)

PC = vmodl.query.PropertyCollector
BALLOON_COUNTERS = [
    "mem.vmmemctl.average",
    "mem.vmmemctltarget.average",
    "mem.swapped.average",
    "mem.compressed.average",
]


@pytest.fixture()
def si(vcsim: Vcsim) -> Iterator[Any]:
    with connected(vcsim) as conn:
        yield conn


def test_inventory_multiplies_as_documented(vcsim: Vcsim, si: Any) -> None:
    vms = all_vms(si)
    # (2 clusters + 1 standalone host) x 4 VMs
    assert len(vms) == vcsim.vms == 12
    assert len(view_objects(si.RetrieveContent(), vim.HostSystem)) == 2 * 2 + 1


def test_paging_returns_every_vm_once_and_tokens_work_once(si: Any) -> None:
    content = si.RetrieveContent()
    pc = content.propertyCollector
    with container_view(content, [vim.VirtualMachine]) as view:
        spec = view_filter_spec(view, [(vim.VirtualMachine, ["name"])])
        # maxObjects below the page size wins
        first = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=5))
        assert len(first.objects) == 5 and first.token
        names = [o.propSet[0].val for o in first.objects]
        res = first
        pages = 1
        while res.token:
            token = res.token
            res = pc.ContinueRetrievePropertiesEx(token)
            pages += 1
            names += [o.propSet[0].val for o in res.objects]
        assert pages == 3  # 5 + 5 + 2
        assert len(names) == len(set(names)) == 12
        with pytest.raises(vmodl.fault.InvalidArgument):
            pc.ContinueRetrievePropertiesEx(first.token)
        with pytest.raises(vmodl.fault.InvalidArgument):
            pc.ContinueRetrievePropertiesEx(token)

        # no maxObjects: the launcher's page size (7)
        res = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions())
        assert len(res.objects) == 7 and res.token
        pc.CancelRetrievePropertiesEx(res.token)
        with pytest.raises(vmodl.fault.InvalidArgument):
            pc.ContinueRetrievePropertiesEx(res.token)

        # maxObjects above the page size: still 7
        res = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=1000))
        assert len(res.objects) == 7
        rest = pc.ContinueRetrievePropertiesEx(res.token)
        assert len(rest.objects) == 5 and not rest.token


def test_token_belongs_to_its_session(vcsim: Vcsim, si: Any) -> None:
    content = si.RetrieveContent()
    other = connect(vcsim)
    try:
        with container_view(content, [vim.VirtualMachine]) as view:
            spec = view_filter_spec(view, [(vim.VirtualMachine, ["name"])])
            res = content.propertyCollector.RetrievePropertiesEx(
                [spec], PC.RetrieveOptions(maxObjects=3)
            )
            with pytest.raises(vmodl.fault.InvalidArgument):
                other.RetrieveContent().propertyCollector.ContinueRetrievePropertiesEx(res.token)
            content.propertyCollector.CancelRetrievePropertiesEx(res.token)
    finally:
        disconnect(other)


def test_retrieve_helper_follows_tokens(si: Any) -> None:
    got, pages = retrieve(si, ["name", "summary.config.memorySizeMB"])
    assert len(got) == 12 and pages == 2
    assert all(v["summary.config.memorySizeMB"] == 32 for v in got.values())


def test_perf_override_returns_configured_values(si: Any) -> None:
    vm = vm_by_name(si, "DC0_C0_RP0_VM0")
    configure_vm(
        vm,
        memory_mb=4096,
        reservation_mb=1024,
        limit_mb=-1,
        ballooned_mb=300,
        swapped_mb=12,
        compressed_kb=777,
        consumed_mb=2000,
        vmmemctltarget_kb=409600,
    )
    try:
        qs = vm.summary.quickStats
        assert (qs.balloonedMemory, qs.swappedMemory, qs.compressedMemory) == (300, 12, 777)
        assert vm.summary.config.memorySizeMB == 4096
        assert vm.config.hardware.memoryMB == 4096
        assert vm.config.memoryAllocation.reservation == 1024
        assert vm.config.memoryAllocation.limit == -1
        assert vm.summary.config.memoryReservation == 1024

        other = vm_by_name(si, "DC0_C0_RP0_VM1")  # untouched: zeros, still one sample each
        got = query_perf(si, [vm, other], [*BALLOON_COUNTERS, "mem.consumed.average"])
        assert got[vm._moId] == {
            "mem.vmmemctl.average": [300 * 1024],
            "mem.vmmemctltarget.average": [409600],
            "mem.swapped.average": [12 * 1024],
            "mem.compressed.average": [777],
            "mem.consumed.average": [2000 * 1024],
        }
        assert got[other._moId] == {n: [0] for n in [*BALLOON_COUNTERS, "mem.consumed.average"]}

        ids = counter_ids(si)
        PM = vim.PerformanceManager
        res = si.RetrieveContent().perfManager.QueryPerf(
            [
                PM.QuerySpec(
                    entity=vm,
                    intervalId=20,
                    maxSample=3,
                    metricId=[PM.MetricId(counterId=ids["mem.vmmemctltarget.none"], instance="")],
                )
            ]
        )
        stamps = [s.timestamp for s in res[0].sampleInfo]
        assert len(stamps) == 3 and all(s.interval == 20 for s in res[0].sampleInfo)
        assert all(t.second % 20 == 0 and t.microsecond == 0 for t in stamps)
        assert stamps == sorted(stamps)
        now = datetime.datetime.now(datetime.timezone.utc)
        assert now - datetime.timedelta(seconds=21) < stamps[-1] <= now
        assert list(res[0].value[0].value) == [409600] * 3

        # any counter through its sim.perf key
        configure_vm(vm, perf={"mem.swaptarget.average": 2048})
        assert query_perf(si, [vm], ["mem.swaptarget.average"])[vm._moId] == {
            "mem.swaptarget.average": [2048]
        }
    finally:
        configure_vm(
            vm,
            ballooned_mb=0,
            swapped_mb=0,
            compressed_kb=0,
            consumed_mb=0,
            vmmemctltarget_kb=0,
            perf={"mem.swaptarget.average": 0},
            memory_mb=32,
            reservation_mb=0,
            limit_mb=-1,
        )


def test_powered_off_vm_has_no_realtime_samples(si: Any) -> None:
    vm = vm_by_name(si, "DC0_H0_VM3")
    configure_vm(vm, ballooned_mb=5, power="off")
    try:
        got = query_perf(si, [vm], ["mem.vmmemctl.average"])
        assert got[vm._moId] == {}
    finally:
        configure_vm(vm, ballooned_mb=0, power="on")


def test_template_is_powered_off_and_has_no_samples() -> None:
    with Vcsim(cluster=1, host=1, standalone_host=0, vm=2) as sim:
        conn = connect(sim)
        tmpl, other = all_vms(conn)
        configure_vm(tmpl, memory_mb=2048, template=True)
        got, _ = retrieve(conn, ["name", "config.template", "runtime.powerState"])
        assert got[tmpl._moId]["config.template"] is True
        assert got[tmpl._moId]["runtime.powerState"] == "poweredOff"
        assert got[other._moId]["config.template"] is False
        assert got[other._moId]["runtime.powerState"] == "poweredOn"
        assert tmpl.summary.config.template is True
        assert query_perf(conn, [tmpl, other], ["mem.vmmemctl.average"]) == {
            tmpl._moId: {},
            other._moId: {"mem.vmmemctl.average": [0]},
        }


def test_other_counters_come_from_the_recorded_data(si: Any) -> None:
    vm = vm_by_name(si, "DC0_C1_RP0_VM2")
    got = query_perf(
        si, [vm], ["cpu.usage.average", "mem.vmmemctl.average", "mem.latency.average"], max_sample=3
    )[vm._moId]
    # cpu.usage has recorded data (3 samples, not all zero); mem.latency has none: left out
    assert set(got) == {"cpu.usage.average", "mem.vmmemctl.average"}
    assert len(got["cpu.usage.average"]) == 3 and any(got["cpu.usage.average"])
    assert got["mem.vmmemctl.average"] == [0, 0, 0]


def test_update_sets_host_properties() -> None:
    with Vcsim(cluster=1, host=2, standalone_host=0, vm=1) as sim:
        conn = connect(sim)
        paths = ["summary.quickStats.overallMemoryUsage", "summary.hardware.memorySize"]
        before, _ = retrieve(conn, paths, obj_type=vim.HostSystem)
        first, second = sorted(before)
        sim.update(
            "HostSystem",
            first,
            {"summary.quickStats.overallMemoryUsage": 3000, "summary.hardware.memorySize": 8 << 30},
        )
        after, _ = retrieve(conn, paths, obj_type=vim.HostSystem)
        assert after[first] == {
            "summary.quickStats.overallMemoryUsage": 3000,
            "summary.hardware.memorySize": 8 << 30,
        }
        assert after[second] == before[second]
        with pytest.raises(StackError, match="has no field"):
            sim.update("HostSystem", first, {"summary.noSuchField": 1})
        with pytest.raises(StackError, match="want an integer"):
            sim.update("HostSystem", first, {"summary.quickStats.overallMemoryUsage": "1"})
        with pytest.raises(StackError, match="404"):
            sim.update("HostSystem", "host-0", {"name": "x"})


def test_max_query_metrics_is_readable_and_enforced(vcsim: Vcsim, si: Any) -> None:
    content = si.RetrieveContent()
    opts = content.setting.QueryOptions("config.vpxd.stats.maxQueryMetrics")
    assert [(o.key, o.value) for o in opts] == [("config.vpxd.stats.maxQueryMetrics", "64")]
    vms = all_vms(si)
    ids = counter_ids(si)
    PM = vim.PerformanceManager
    names = [
        "mem.vmmemctl.average",
        "mem.vmmemctltarget.average",
        "mem.swapped.average",
        "mem.compressed.average",
        "mem.consumed.average",
        "mem.active.average",
    ]

    def spec(vm: Any) -> Any:
        return PM.QuerySpec(
            entity=vm,
            intervalId=20,
            maxSample=1,
            metricId=[PM.MetricId(counterId=ids[n], instance="") for n in names],
        )

    # 12 VMs x 6 counters = 72 > 64
    with pytest.raises(vim.fault.RestrictedByAdministrator) as err:
        content.perfManager.QueryPerf([spec(vm) for vm in vms])
    assert err.value.details == "vpxd.stats.maxQueryMetrics"
    assert "restricted by the administrator - 'vpxd.stats.maxQueryMetrics'" in err.value.msg
    # 10 x 6 = 60 fits
    assert len(content.perfManager.QueryPerf([spec(vm) for vm in vms[:10]])) == 10
    # the limit is read on every call
    set_max_query_metrics(si, 100)
    try:
        assert len(content.perfManager.QueryPerf([spec(vm) for vm in vms])) == 12
    finally:
        set_max_query_metrics(si, 64)


def test_only_configured_credentials_log_in(vcsim: Vcsim) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        connect(vcsim, pwd=vcsim.password + "x")
    with pytest.raises(vim.fault.InvalidLogin):
        connect(vcsim, user="administrator@vsphere.local")
    disconnect(connect(vcsim))


def test_terminate_session_kills_another_session(vcsim: Vcsim, si: Any) -> None:
    victim = connect(vcsim)
    sm = victim.RetrieveContent().sessionManager
    victim_key = sm.currentSession.key
    assert victim_key in {s["key"] for s in vcsim.sessions()}
    si.RetrieveContent().sessionManager.TerminateSession(sessionId=[victim_key])
    assert victim_key not in {s["key"] for s in vcsim.sessions()}
    # the dead session can read nothing but its (now empty) currentSession
    with pytest.raises(vim.fault.NotAuthenticated):
        all_vms(victim)
    content = victim.RetrieveContent()
    with container_view(si.RetrieveContent(), [vim.VirtualMachine]) as view:
        spec = view_filter_spec(view, [(vim.VirtualMachine, ["name"])])
        with pytest.raises(vim.fault.NotAuthenticated):
            content.propertyCollector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
    assert content.sessionManager.currentSession is None
    # the same through RetrievePropertiesEx: unset, not a NotAuthenticated missingSet
    probe = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=content.sessionManager)],
        propSet=[PC.PropertySpec(type=vim.SessionManager, pathSet=["currentSession"])],
    )
    res = content.propertyCollector.RetrievePropertiesEx([probe], PC.RetrieveOptions())
    assert [(list(o.propSet), list(o.missingSet)) for o in res.objects] == [([], [])]
    # the killer is fine
    assert len(all_vms(si)) == 12


def test_sim_endpoint_terminates_every_session() -> None:
    with Vcsim(cluster=1, host=1, standalone_host=0, vm=1) as sim:
        a, b = connect(sim), connect(sim)
        keys = {
            a.content.sessionManager.currentSession.key,
            b.content.sessionManager.currentSession.key,
        }
        assert {s["key"] for s in sim.sessions()} == keys
        assert set(sim.terminate_sessions()) == keys
        assert sim.sessions() == []
        for conn in (a, b):
            with pytest.raises(vim.fault.NotAuthenticated):
                all_vms(conn)
        # terminate_other_sessions through the API does the same from inside
        c, d = connect(sim), connect(sim)
        d_key = d.content.sessionManager.currentSession.key
        assert terminate_other_sessions(c) == [d_key]
        with pytest.raises(vim.fault.NotAuthenticated):
            all_vms(d)
        assert len(all_vms(c)) == 1


def test_idle_sessions_expire() -> None:
    with Vcsim(cluster=1, host=1, standalone_host=0, vm=1, session_idle_timeout=0.5) as sim:
        conn = connect(sim)
        assert len(all_vms(conn)) == 1
        time.sleep(1.6)
        with pytest.raises(vim.fault.NotAuthenticated):
            all_vms(conn)


def test_method_delay_slows_only_that_method() -> None:
    with Vcsim(cluster=1, host=1, standalone_host=0, vm=2, method_delay={"QueryPerf": 300}) as sim:
        conn = connect(sim)
        vms = all_vms(conn)
        ids = counter_ids(conn)
        t0 = time.monotonic()
        all_vms(conn)
        fast = time.monotonic() - t0
        t0 = time.monotonic()
        query_perf(conn, vms, ["mem.vmmemctl.average"], ids=ids)
        slow = time.monotonic() - t0
        assert slow >= 0.3 > fast


def test_certificate_verifies_with_cert_file_only(vcsim: Vcsim) -> None:
    assert vcsim.cert_file is not None
    ctx = ssl.create_default_context(cafile=vcsim.cert_file)
    with urllib.request.urlopen(f"https://127.0.0.1:{vcsim.port}/sim/calls", context=ctx) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(
            f"https://127.0.0.1:{vcsim.port}/sim/calls", context=ssl.create_default_context()
        )
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    # pyvmomi with the same context
    disconnect(connect(vcsim, verify=True))


def test_call_counts_move(vcsim: Vcsim, si: Any) -> None:
    vcsim.reset_calls()
    base = vcsim.calls()
    assert base["total"] == 0
    _, pages = retrieve(si, ["name"])
    query_perf(si, all_vms(si)[:3], ["mem.vmmemctl.average", "mem.vmmemctltarget.average"])
    c = vcsim.calls()
    assert c["calls"]["RetrievePropertiesEx"] >= 1
    assert c["calls"]["ContinueRetrievePropertiesEx"] == pages - 1 == 1
    assert c["calls"]["QueryPerf"] == 1
    assert c["query_perf"]["entities"] == 3
    assert c["query_perf"]["metric_ids"] == 6
    assert c["retrieve"]["objects"] >= 12
    vcsim.reset_calls()
    assert vcsim.calls()["total"] == 0


def test_restart_keeps_port_and_certificate(vcsim_factory: Callable[..., Vcsim]) -> None:
    sim = vcsim_factory(cluster=1, host=1, standalone_host=0, vm=3)
    port, pem = sim.port, Path(sim.cert_file or "").read_text()
    si = connect(sim)
    before, _ = retrieve(si, ["name", "runtime.host"])
    assert len(before) == 3
    sim.restart()
    assert sim.port == port
    assert Path(sim.cert_file or "").read_text() == pem
    # the old connection breaks (as with a real vCenter restart), then the old session is
    # gone: a client has to log in again
    try:
        all_vms(si)
    except (OSError, http.client.HTTPException):
        pass
    else:
        pytest.fail("the pooled connection survived the restart")
    with pytest.raises(vim.fault.NotAuthenticated):
        all_vms(si)
    si = connect(sim)
    # the same inventory: same names, ids and hosts (changes made through the API are lost)
    assert retrieve(si, ["name", "runtime.host"])[0] == before
    disconnect(si)


def test_failed_start_carries_the_launcher_stderr() -> None:
    sim = Vcsim(cluster=1, host=1, standalone_host=0, vm=1).start()
    port = sim.port
    try:
        sim.kill()
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            with pytest.raises(StackError) as err:
                sim.restart(retry_for=0.3)
        assert "address already in use" in str(err.value)
    finally:
        sim.stop()


def test_launcher_build_is_cached() -> None:
    first = build_launcher()
    t0 = time.monotonic()
    assert build_launcher() == first
    assert time.monotonic() - t0 < 5
    assert first.parent == DEFAULT_CACHE_DIR


def test_pause_and_resume() -> None:
    sim = Vcsim(cluster=1, host=1, standalone_host=0, vm=1).start()
    try:
        sim.pause()
        ctx = sim.ssl_context()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{sim.base_url}/sim/calls", context=ctx, timeout=0.5)
        sim.resume()
        assert sim.calls()["total"] >= 0
    finally:
        sim.stop()


def test_2000_vms_page_and_query_in_chunks(vcsim_2000: Vcsim) -> None:
    conn = connect(vcsim_2000)
    try:
        vms = all_vms(conn)
        assert len(vms) == vcsim_2000.vms == 2000
        picked = vms[::97]
        for i, vm in enumerate(picked):
            configure_vm(vm, ballooned_mb=10 + i, vmmemctltarget_kb=(20 + i) * 1024)
        ids = counter_ids(conn)
        vcsim_2000.reset_calls()
        got, pages = retrieve(conn, ["name", "summary.quickStats.balloonedMemory"])
        assert len(got) == 2000 and pages == 4  # pages of 500
        for i, vm in enumerate(picked):
            assert got[vm._moId]["summary.quickStats.balloonedMemory"] == 10 + i
        perf: dict[str, dict[str, list[int]]] = {}
        for start in range(0, 2000, 32):  # 32 VMs x 2 counters = 64, the limit
            perf.update(query_perf(conn, vms[start : start + 32], BALLOON_COUNTERS[:2], ids=ids))
        calls = vcsim_2000.calls()
        assert calls["calls"]["RetrievePropertiesEx"] == 1
        assert calls["calls"]["ContinueRetrievePropertiesEx"] == 3
        assert calls["retrieve"] == {"objects": 2000, "pages": 4}
        assert calls["query_perf"]["calls"] == 63
        assert calls["query_perf"]["entities"] == 2000
        assert calls["query_perf"]["max_metric_ids"] == 64
        assert calls["query_perf"]["refused"] == 0
        for i, vm in enumerate(picked):
            assert perf[vm._moId] == {
                "mem.vmmemctl.average": [(10 + i) * 1024],
                "mem.vmmemctltarget.average": [(20 + i) * 1024],
            }
    finally:
        for vm in vms[::97]:
            configure_vm(vm, ballooned_mb=0, vmmemctltarget_kb=0)
        disconnect(conn)


def test_2000_vms_concurrent_sessions_page_and_query(vcsim_2000: Vcsim) -> None:
    """Several sessions paging and querying while another reconfigures: no lost or mixed token."""
    errors: list[str] = []

    def reader(max_objects: int) -> None:
        try:
            conn = connect(vcsim_2000)
            ids = counter_ids(conn)
            got, pages = retrieve(conn, ["name"], max_objects=max_objects)
            assert len(got) == 2000 and pages == -(-2000 // min(max_objects or 500, 500))
            vms = all_vms(conn)
            for start in range(0, 2000, 32):
                res = query_perf(conn, vms[start : start + 32], BALLOON_COUNTERS[:2], ids=ids)
                assert len(res) == len(vms[start : start + 32])
            disconnect(conn)
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    def writer(value: int) -> None:
        try:
            conn = connect(vcsim_2000)
            configure_vms(((vm, {"ballooned_mb": value}) for vm in all_vms(conn)[:300]), batch=32)
            disconnect(conn)
        except Exception as exc:
            errors.append("writer: " + repr(exc))

    threads = [threading.Thread(target=reader, args=(n,)) for n in (0, 170, 499)]
    threads.append(threading.Thread(target=writer, args=(7,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    writer(0)
    assert errors == []
    assert "panic" not in vcsim_2000.log_tail(200)
