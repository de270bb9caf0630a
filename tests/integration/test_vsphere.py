"""The vSphere source against a real vCenter simulator, with pyVmomi as the oracle.

The simulator is govmomi's (tests/vcsim/, tests/stack/vcsim.py). Values are set through the
ordinary API (ReconfigVM_Task) and read back two ways: by the plugin's own streamed SOAP and
by pyVmomi, whose values tests/stack/vsphere_oracle.py turns into the fields the plugin must
report; the bytes must agree exactly.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import line_protocol_parser
import pytest

from telegraf_balloon import catalog
from telegraf_balloon.config import VsphereConfig, load_text
from telegraf_balloon.log import Log
from telegraf_balloon.model import PollResult
from telegraf_balloon.runner import Runner
from telegraf_balloon.sources.vsphere.fields import VM_PATHS
from telegraf_balloon.sources.vsphere.source import VsphereSource
from tests.stack.clock import Clock
from tests.stack.execd import Execd
from tests.stack.fixtures import _start_vcsim, running_vcsim
from tests.stack.vcsim import Vcsim
from tests.stack.vsphere_oracle import (
    VMMEMCTL,
    VMMEMCTLTARGET,
    apply_sample,
    expected_fields,
    reported,
)
from tests.stack.vsphere_setup import (
    all_vms,
    configure_vm,
    connected,
    query_perf,
    retrieve,
    terminate_other_sessions,
    view_objects,
    vim,
    vm_by_name,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
# Our own simulator for this module: the tests here change VMs. 2 datacenters, each with
# 2 clusters of 2 hosts and a standalone host, 3 VMs per cluster and standalone host: 18 VMs,
# pages of 5 (smaller than the inventory, so the continuation loop runs).
INVENTORY = {"dc": 2, "cluster": 2, "host": 2, "standalone_host": 1, "vm": 3, "page": 5}


@pytest.fixture(scope="module")
def sim() -> Iterator[Vcsim]:
    with running_vcsim(INVENTORY) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def si(sim: Vcsim) -> Iterator[Any]:
    with connected(sim) as client:
        yield client


def config_for(sim: Vcsim, **overrides: Any) -> VsphereConfig:
    values: dict[str, Any] = {
        "url": sim.url,
        "username": sim.username,
        "password": sim.password,
        "ca_file": sim.cert_file or "",
        "page_size": 500,
    }
    values.update(overrides)
    return VsphereConfig(**values)


def source_for(sim: Vcsim, log: Log | None = None, **overrides: Any) -> VsphereSource:
    return VsphereSource(config_for(sim, **overrides), log or Log(io.StringIO()), timeout=10)


def poll_ok(source: VsphereSource) -> PollResult:
    result = source.poll(time.time())
    assert result.error is None, result.error
    return result


def oracle(si: Any) -> dict[str, dict[str, Any]]:
    """pyVmomi's view of every VM: {name: {path: value}} plus the host's name.

    The plugin's own leaf paths: the simulator leaves zero ints out of a whole quickStats
    object (which pyVmomi then reads as None), but sends them for a leaf path.
    """
    props, _ = retrieve(si, VM_PATHS)
    hosts = {h._moId: h.name for h in _hosts(si)}
    out = {}
    for moid, values in props.items():
        values["moid"] = moid
        host = values.get("runtime.host")
        values["host_name"] = hosts.get(host._moId) if host is not None else None
        out[values["name"]] = values
    return out


def _hosts(si: Any) -> list[Any]:
    return view_objects(si.RetrieveContent(), vim.HostSystem)


# --- exact figures ------------------------------------------------------------------------------


def test_every_vm_equals_what_pyvmomi_reads(sim: Vcsim, si: Any) -> None:
    names = sorted(vm.name for vm in all_vms(si))
    settings: dict[str, dict[str, Any]] = {
        names[0]: {
            "memory_mb": 4096,
            "ballooned_mb": 1024,
            "vmmemctltarget_kb": 2 * 1024 * 1024,
            "swapped_mb": 64,
            "compressed_kb": 3000,
            "reservation_mb": 512,
            "limit_mb": 3072,
            "granted_mb": 4000,
            "consumed_mb": 3100,
            "active_mb": 700,
            "shared_mb": 90,
            "overhead_mb": 33,
        },
        names[1]: {"memory_mb": 2048, "ballooned_mb": 600, "vmmemctltarget_kb": 600 * 1024},
        names[2]: {"memory_mb": 1024, "reservation_mb": 1024},
    }
    for name, values in settings.items():
        configure_vm(vm_by_name(si, name), **values)

    result = poll_ok(source_for(sim))
    truth = oracle(si)
    expected = {n for n, v in truth.items() if reported(v)}
    by_name = {s.tags["guest"]: s for s in result.samples}
    assert set(by_name) == expected
    assert len(result.samples) == len(expected)  # each VM once across the pages

    # the counters the plugin asks for these VMs: their quickStats carry swapped and compressed
    perf = query_perf(si, [vm_by_name(si, n) for n in expected], [VMMEMCTL, VMMEMCTLTARGET])
    for name in expected:
        want = truth[name]
        got = by_name[name]
        fields = expected_fields(want)
        apply_sample({c: series[-1] for c, series in perf[want["moid"]].items()}, want, fields)
        assert "balloon_target_bytes" in fields, name
        assert got.fields == fields, name
        assert got.tags["uuid"] == want["config.instanceUuid"] == got.key
        assert got.tags["host"] == want["host_name"]
        assert got.tags["hypervisor"] == "vmware" and got.tags["source"] == "vsphere"
        assert got.tags["vcenter"] == f"127.0.0.1:{sim.port}"
        assert got.tags["datacenter"] in ("DC0", "DC1")
        as_objects: dict[str, object] = dict(got.fields)
        for problem in catalog.check_point(catalog.BALLOON, got.tags, as_objects):
            pytest.fail(problem)

    first = by_name[names[0]].fields
    assert first["balloon_actual_bytes"] == 1024 * MIB
    assert first["balloon_target_bytes"] == 2048 * MIB
    assert first["host_swapped_bytes"] == 64 * MIB
    assert first["compressed_bytes"] == 3000 * 1024
    assert first["limit_bytes"] == 3072 * MIB
    assert by_name[names[2]].fields["inflation_blocked"] is True


def test_hosts_and_their_sums(sim: Vcsim, si: Any) -> None:
    result = poll_ok(source_for(sim))
    hosts = {h.name: h for h in _hosts(si)}
    assert {info.tags["host"] for info in result.hosts} == set(hosts)
    for info in result.hosts:
        host = hosts[info.tags["host"]]
        assert info.memory_bytes == host.summary.hardware.memorySize
        used = host.summary.quickStats.overallMemoryUsage
        assert info.free_bytes == host.summary.hardware.memorySize - used * MIB
        assert info.tags["hypervisor"] == "vmware" and info.tags["datacenter"] in ("DC0", "DC1")
        standalone = host.parent.__class__.__name__ == "vim.ComputeResource"
        assert ("cluster" in info.tags) is not standalone
    clusters = {s.tags.get("cluster") for s in result.samples}
    assert {"DC0_C0", "DC0_C1", "DC1_C0", "DC1_C1"} <= clusters


# --- what the plugin asks of vCenter ----------------------------------------------------------


def test_paged_retrieval_destroys_its_views(sim: Vcsim) -> None:
    source = source_for(sim, page_size=4)
    poll_ok(source)  # log in and look counters up
    sim.reset_calls()
    result = poll_ok(source)
    calls = sim.calls()["calls"]
    assert calls.get("RetrievePropertiesEx") == 2  # one for the VMs, one for the hosts
    vms_pages = math.ceil(len(all_vms_of(sim)) / 4)
    assert calls.get("ContinueRetrievePropertiesEx", 0) >= vms_pages - 1
    assert calls.get("CreateContainerView") == calls.get("DestroyView") == 2
    assert "Login" not in calls  # the session is reused
    assert len(result.samples) == len({s.key for s in result.samples})


def all_vms_of(sim: Vcsim) -> list[Any]:
    with connected(sim) as client:
        return all_vms(client)


def test_targets_asked_once_per_realtime_sample(sim: Vcsim) -> None:
    clock = Clock(1000.0)
    source = VsphereSource(config_for(sim), Log(io.StringIO()), timeout=10, clock=clock)
    sim.reset_calls()
    first = poll_ok(source)
    asked = sim.calls()["calls"].get("QueryPerf", 0)
    assert asked >= 1
    clock.now += 10
    second = poll_ok(source)
    assert sim.calls()["calls"].get("QueryPerf", 0) == asked  # reused, not asked again
    targets = {s.key: s.fields.get("balloon_target_bytes") for s in first.samples}
    assert {s.key: s.fields.get("balloon_target_bytes") for s in second.samples} == targets
    clock.now += 10
    poll_ok(source)
    assert sim.calls()["calls"].get("QueryPerf", 0) == 2 * asked  # a new 20 s sample


def test_target_counters_off_asks_no_queryperf(sim: Vcsim) -> None:
    source = source_for(sim, target_counters=False)
    sim.reset_calls()
    result = poll_ok(source)
    assert "QueryPerf" not in sim.calls()["calls"]
    assert all("balloon_target_bytes" not in s.fields for s in result.samples)
    assert all("balloon_actual_bytes" in s.fields for s in result.samples)  # from quickStats


def test_queryperf_batched_under_max_query_metrics() -> None:
    simulator = _start_vcsim(
        {"dc": 1, "cluster": 1, "host": 2, "standalone_host": 0, "vm": 9, "max_query_metrics": 6}
    )
    try:
        source = source_for(simulator)
        simulator.reset_calls()
        result = poll_ok(source)
        stats = simulator.calls()
        vms = len(result.samples)
        assert vms == 9
        # 2 counters per VM (quickStats carry swapped and compressed): 3 VMs per call
        assert stats["query_perf"]["refused"] == 0
        assert stats["query_perf"]["max_metric_ids"] <= 6
        assert stats["calls"]["QueryPerf"] == math.ceil(vms / 3)
        assert all("balloon_target_bytes" in s.fields for s in result.samples)
    finally:
        simulator.stop()


def test_vm_include_inventory_path_globs(sim: Vcsim, si: Any) -> None:
    everything = {s.tags["guest"] for s in poll_ok(source_for(sim)).samples}
    only = poll_ok(source_for(sim, vm_include=("/DC1/vm/*",))).samples
    assert only and {s.tags["datacenter"] for s in only} == {"DC1"}
    assert {s.tags["guest"] for s in only} < everything
    one = sorted(everything)[0]
    dc = next(
        s.tags["datacenter"] for s in poll_ok(source_for(sim)).samples if s.tags["guest"] == one
    )
    picked = poll_ok(source_for(sim, vm_include=(f"/{dc}/vm/{one}", "/nowhere/*"))).samples
    assert [s.tags["guest"] for s in picked] == [one]


def test_templates_and_powered_off_vms_get_no_line(sim: Vcsim, si: Any) -> None:
    names = sorted(vm.name for vm in all_vms(si))
    off, template = names[-1], names[-2]
    configure_vm(vm_by_name(si, off), power="off")
    configure_vm(vm_by_name(si, template), template=True)
    try:
        seen = {s.tags["guest"] for s in poll_ok(source_for(sim)).samples}
        assert off not in seen and template not in seen
        assert names[0] in seen
    finally:
        configure_vm(vm_by_name(si, off), power="on")


def test_vmware_tools_running_not_running_and_not_installed(sim: Vcsim, si: Any) -> None:
    """Tools' state set through the API, read in the same paged retrieval as the rest: the
    source's fields equal what pyVmomi reads (the oracle), for each of the three states."""
    names = sorted(vm.name for vm in all_vms(si))
    states = {
        names[6]: ("guestToolsRunning", "guestToolsCurrent", True, "current"),
        names[7]: ("guestToolsNotRunning", "guestToolsNeedUpgrade", False, "need_upgrade"),
        names[8]: ("guestToolsNotRunning", "guestToolsNotInstalled", False, "not_installed"),
    }
    for name, (running, version, _, _) in states.items():
        configure_vm(
            vm_by_name(si, name), tools_running_status=running, tools_version_status=version
        )
    source = source_for(sim)
    result = poll_ok(source)
    truth = oracle(si)
    by_name = {s.tags["guest"]: s for s in result.samples}
    for name, (running, version, want_running, want_status) in states.items():
        assert truth[name]["guest.toolsRunningStatus"] == running
        assert truth[name]["guest.toolsVersionStatus2"] == version
        fields = by_name[name].fields
        assert fields["tools_running"] is want_running, name
        assert fields["tools_status"] == want_status, name
        assert fields["tools_running"] == expected_fields(truth[name])["tools_running"]
        assert fields["tools_status"] == expected_fields(truth[name])["tools_status"]
    # a VM as the simulator makes it: tools not running, no version status at all
    untouched = by_name[names[9]].fields
    assert untouched["tools_running"] is False and "tools_status" not in untouched
    # no extra round trip: the tools' state comes in the VMs' own retrieval
    sim.reset_calls()
    again = poll_ok(source)
    assert sim.calls()["calls"].get("RetrievePropertiesEx") == 2  # the VMs, then the hosts
    assert all("tools_running" in s.fields for s in again.samples)


# --- judgement through the runner -------------------------------------------------------------


def _run_polls(config_text: str, source: VsphereSource, times: list[float]) -> list[dict[str, Any]]:
    config = load_text(config_text, "test.toml")
    clock = Clock(1000.0)
    out = io.BytesIO()
    runner = Runner(config, [source], out, Log(io.StringIO()), "plugin-host", clock=clock)
    try:
        for at in times:
            clock.now = at
            runner.poll()
    finally:
        runner.close()
    return [line_protocol_parser.parse_line(line) for line in out.getvalue().decode().splitlines()]


def test_stuck_and_blocked_through_the_health_stage(sim: Vcsim, si: Any) -> None:
    names = sorted(vm.name for vm in all_vms(si))
    stuck_vm, blocked_vm = names[3], names[4]
    configure_vm(
        vm_by_name(si, stuck_vm), memory_mb=1024, ballooned_mb=100, vmmemctltarget_kb=400 * 1024
    )
    configure_vm(vm_by_name(si, blocked_vm), memory_mb=2048, reservation_mb=2048, limit_mb=-1)
    text = (
        f'[[sources.vsphere]]\nurl = "{sim.url}"\n'
        '[health]\nstuck_for = "5m"\nstuck_gap_ratio = 0.05\n'
    )
    points = _run_polls(text, source_for(sim), [1000.0, 1000.0 + 301])
    vm_lines = [p for p in points if p["measurement"] == "balloon"]
    assert len(vm_lines) == 2 * len({p["tags"]["guest"] for p in vm_lines})
    first, last = ([p for p in vm_lines if p["tags"]["guest"] == stuck_vm][i] for i in (0, 1))
    assert first["fields"]["balloon_gap_bytes"] == 300 * MIB
    assert first["fields"]["stuck"] is False  # not yet for stuck_for
    assert last["fields"]["stuck"] is True
    blocked = [p for p in vm_lines if p["tags"]["guest"] == blocked_vm][-1]
    assert blocked["fields"]["inflation_blocked"] is True
    assert blocked["fields"]["reservation_bytes"] == 2048 * MIB
    hosts = [p for p in points if p["measurement"] == "balloon_host"]
    last_time = max(p["time"] for p in hosts)
    latest = [p for p in hosts if p["time"] == last_time]
    final = [p for p in vm_lines if p["time"] == last_time]
    short = {
        p["tags"]["guest"]
        for p in final
        if p["fields"].get("balloon_gap_bytes", 0) / p["fields"]["memory_max_bytes"] > 0.05
    }
    assert stuck_vm in short
    assert {p["tags"]["guest"] for p in final if p["fields"].get("stuck")} == short
    assert sum(p["fields"]["vms_stuck"] for p in latest) == len(short)
    assert sum(p["fields"]["vms_blocked"] for p in latest) >= 1
    for p in latest:
        assert p["tags"]["source"] == "vsphere" and "vcenter" in p["tags"]
        if p["fields"]["vms_total"]:
            assert p["fields"]["overcommit_ratio"] > 0
    collectors = [p for p in points if p["measurement"] == "balloon_collector"]
    assert all(p["fields"]["up"] is True for p in collectors)
    assert collectors[-1]["fields"]["vms"] == len(vm_lines) // 2


# --- sessions and faults ----------------------------------------------------------------------


def test_wrong_password_one_error_and_no_secret(sim: Vcsim, tmp_path: Path) -> None:
    secret = "n0t-the-Passw0rd!"
    config = tmp_path / "plugin.toml"
    config.write_text(
        f'[[sources.vsphere]]\nurl = "{sim.url}"\nusername = "{sim.username}"\n'
        f'password = "{secret}"\nca_file = "{sim.cert_file}"\n'
    )
    with Execd(["--config", str(config)]) as proc:
        proc.wait_ready()
        for count in (1, 2, 3):
            proc.tick()
            batch = proc.wait_batches(count, timeout=20)[count - 1]
            fields = batch.collector(f"127.0.0.1:{sim.port}").fields
            assert fields["up"] is False
            assert "login failed" in str(fields["error"])
        errors = proc.stderr_lines("E! ")
        assert len(errors) == 1, errors  # logged when it starts, not every poll
        assert "login" in errors[0]
        code, _ = proc.shutdown()
        assert code == 0
        everything = proc.transcript(limit=10_000)
    assert secret not in everything


def test_session_terminated_elsewhere_logs_in_again_in_the_same_poll(sim: Vcsim, si: Any) -> None:
    log_stream = io.StringIO()
    source = source_for(sim, log=Log(log_stream))
    poll_ok(source)
    killed = terminate_other_sessions(si)
    assert killed  # the plugin's session among them
    sim.reset_calls()
    result = poll_ok(source)  # no down poll: re-login and retry
    assert result.samples
    assert sim.calls()["calls"].get("Login") == 1
    assert "session lost" in log_stream.getvalue()


def test_close_logs_out(sim: Vcsim) -> None:
    source = source_for(sim)
    poll_ok(source)
    sim.reset_calls()
    source.close()
    assert sim.calls()["calls"].get("Logout") == 1


def test_tls_refused_without_ca_accepted_with_it(sim: Vcsim) -> None:
    refused = source_for(sim, ca_file="").poll(time.time())
    assert refused.error is not None and "certificate" in refused.error
    assert "ca_file" in refused.error  # says what to do
    poll_ok(source_for(sim))  # ca_file = the simulator's certificate
    poll_ok(source_for(sim, ca_file="", insecure_skip_verify=True))


def test_simulator_restart_under_execd(tmp_path: Path) -> None:
    simulator = _start_vcsim({"dc": 1, "cluster": 1, "host": 1, "standalone_host": 0, "vm": 2})
    config = tmp_path / "plugin.toml"
    config.write_text(
        '[agent]\ntimeout = "5s"\n'
        f'[[sources.vsphere]]\nurl = "{simulator.url}"\nusername = "{simulator.username}"\n'
        f'password = "{simulator.password}"\nca_file = "{simulator.cert_file}"\n'
    )
    instance = f"127.0.0.1:{simulator.port}"
    try:
        with Execd(["--config", str(config)]) as proc:
            proc.wait_ready()
            proc.tick()
            first = proc.wait_batches(1, timeout=20)[0]
            assert first.collector(instance).fields["up"] is True
            simulator.kill()  # vCenter gone: its port refuses
            proc.tick()
            down = proc.wait_batches(2, timeout=20)[1]
            assert down.collector(instance).fields["up"] is False
            simulator.restart()  # same port, new process: every session is gone
            count, deadline = 2, time.monotonic() + 60
            while True:
                count += 1
                proc.tick()
                batch = proc.wait_batches(count, timeout=20)[count - 1]
                if batch.collector(instance).fields["up"] is True:
                    break
                assert time.monotonic() < deadline, proc.transcript()
                time.sleep(1)
            assert len(batch.of("balloon")) == 2
            proc.wait_stderr(r"^I! vsphere .*answering again", timeout=5)
            code, seconds = proc.shutdown()
            assert code == 0 and seconds < 1.5
    finally:
        simulator.stop()


# --- scale --------------------------------------------------------------------------------------


def test_two_thousand_vms_in_one_poll(vcsim_2000: Vcsim) -> None:
    with connected(vcsim_2000) as client:
        truth = oracle(client)
    source = source_for(vcsim_2000)
    started = time.perf_counter()
    result = poll_ok(source)
    seconds = time.perf_counter() - started
    expected = {n for n, v in truth.items() if reported(v)}
    assert len(expected) >= 1900
    assert {s.tags["guest"] for s in result.samples} == expected
    for sample in result.samples:
        want = truth[sample.tags["guest"]]
        assert sample.fields["memory_max_bytes"] == want["config.hardware.memoryMB"] * MIB
        assert sample.tags["host"] == want["host_name"]
    assert len({s.tags["cluster"] for s in result.samples}) == 4
    assert seconds < 60, seconds  # a sanity bound, not a benchmark (bench/ measures)


def test_example_vcenter_config_polls_the_simulator(sim: Vcsim) -> None:
    """examples/vcenter.toml as shipped, its variables pointed at the simulator: real lines."""
    import subprocess
    import sys

    from tests.stack.execd import REPO, child_env

    env = child_env(
        {
            "VCENTER_HOST": f"127.0.0.1:{sim.port}",
            "VSPHERE_USER": sim.username,
            "VSPHERE_PASSWORD": sim.password,
            "VSPHERE_CA_FILE": sim.cert_file or "",
        }
    )
    config = str(REPO / "examples" / "vcenter.toml")
    args = [sys.executable, "-m", "telegraf_balloon", "--config", config]
    checked = subprocess.run([*args, "--check-config"], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    done = subprocess.run([*args, "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sim.password not in done.stdout + done.stderr
    points = [line_protocol_parser.parse_line(line) for line in done.stdout.splitlines()]
    kinds = {p["measurement"] for p in points}
    assert kinds == {"balloon", "balloon_host", "balloon_collector"}
    assert all(
        "host_swapped_bytes_level" in p["fields"] for p in points if p["measurement"] == "balloon"
    )


def test_restarted_vcenter_is_answered_in_the_very_next_poll() -> None:
    """The pooled connection is dead and the session gone: reconnect, log in, same poll."""
    simulator = _start_vcsim({"dc": 1, "cluster": 1, "host": 1, "standalone_host": 0, "vm": 2})
    try:
        log_stream = io.StringIO()
        source = source_for(simulator, log=Log(log_stream, debug=True))
        assert len(poll_ok(source).samples) == 2
        simulator.restart()
        assert len(poll_ok(source).samples) == 2  # not a single down poll
        log = log_stream.getvalue()
        assert "session lost; logging in again" in log
        source.close()
    finally:
        simulator.stop()
