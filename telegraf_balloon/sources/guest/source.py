"""Inside a Linux guest: balloon state from /proc, /sys and debugfs under a configurable root."""

from __future__ import annotations

import errno
import os
import time
from typing import Callable, Optional

from ...config import GuestConfig
from ...log import Log
from ...model import Detail, Fields, PollResult, Sample
from .detect import (
    BALLOON_MODULES,
    VIRTIO_CONSOLE,
    CpuFlag,
    blacklist_origins,
    debugfs_world_readable,
    detect_blacklist,
    detect_driver,
    detect_hypervisor,
    virtio_mem_devices,
)
from .files import GuestFiles, read_regular
from .parsers import (
    F_DEFLATE_ON_OOM,
    F_FREE_PAGE_HINT,
    F_REPORTING,
    F_STATS_VQ,
    INT64_MAX,
    decimal,
    parse_features,
    parse_hex,
    parse_hv_balloon,
    parse_meminfo,
    parse_psi,
    parse_thp,
    parse_ulong,
    parse_uuid,
    parse_vmem_iomem,
    parse_vmmemctl,
    parse_vmstat,
)

KIB = 1024
VMW_PAGE = 4096  # vmw_balloon counts in 4 KiB pages whatever the guest's page size
MAX_VMEM_BLOCKS = 4096  # memory blocks whose state is read per poll (x86: 512 GiB or more)


class GuestSource:
    """Reads one guest's balloon state; every file is optional, every parser may fail alone."""

    kind = "guest"

    def __init__(
        self,
        config: GuestConfig,
        hostname: str,
        log: Log,
        page_size: Optional[int] = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.root = config.root
        self.instance = config.root
        self.hostname = hostname
        self.log = log
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self._clock = clock
        self.files = GuestFiles(config.root, log)
        self._cpu_flag = CpuFlag(self.files)  # read once: it cannot change while the machine runs
        self._psi: Optional[bool] = None  # the kernel's PSI: None until a poll has seen

    def close(self) -> None:
        pass

    def _pressure(self, fields: Fields) -> None:
        """The guest's own memory pressure (PSI): what the balloon costs it.

        A kernel without PSI, or booted with it off, says so once (`I! `) on the first poll
        that sees the tree, and the file is not read again: PSI cannot be turned on while the
        kernel runs. Any other fault is a file fault like the others (said once, retried).
        """
        if self._psi is False:
            return
        rel = "proc/pressure/memory"
        if self._psi is None:
            try:
                read_regular(self.files.path(rel))
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EOPNOTSUPP):
                    self._psi = False
                    why = (
                        "PSI is off in this kernel (boot it with psi=1)"
                        if exc.errno == errno.EOPNOTSUPP
                        else "this kernel has no PSI (no proc/pressure/memory)"
                    )
                    self.log.info(f"guest {self.root}: no guest_memory_stall_* fields: {why}")
                    return
        text = self.files.read(rel)  # a fault is said once, and again when it clears
        if text is None:
            return
        self._psi = True
        totals = self.files.parse_text(rel, text, parse_psi)
        if totals is not None:
            fields["guest_memory_stall_seconds_total"] = totals[0]
            if totals[1] is not None:
                fields["guest_memory_stall_full_seconds_total"] = totals[1]

    def poll(self, now: float) -> PollResult:
        started = self._clock()
        meminfo_text = self.files.read("proc/meminfo")
        if meminfo_text is None:
            return PollResult(error=f"no readable proc/meminfo under {self.root!r}")
        meminfo = self.files.parse_text("proc/meminfo", meminfo_text, parse_meminfo) or {}
        vmstat = self.files.parse("proc/vmstat", parse_vmstat) or {}
        modules = self.files.read("proc/modules")
        driver = detect_driver(self.files, modules)
        fields: Fields = {}
        page = self.page_size

        balloon_bytes: Optional[int] = None
        target_bytes: Optional[int] = None
        current_override: Optional[int] = None
        shrinks_memtotal = False
        if driver is not None and driver.name == "virtio_balloon":
            features = None
            if driver.device is not None:
                features = self.files.parse(
                    os.path.relpath(os.path.join(driver.device, "features"), self.root),
                    parse_features,
                )
            if features is not None:

                def bit(n: int) -> bool:
                    return n < len(features) and bool(features[n])

                fields["feature_stats_vq"] = bit(F_STATS_VQ)
                fields["feature_deflate_on_oom"] = bit(F_DEFLATE_ON_OOM)
                fields["feature_free_page_hint"] = bit(F_FREE_PAGE_HINT)
                fields["feature_free_page_reporting"] = bit(F_REPORTING)
                # Without DEFLATE_ON_OOM the driver takes ballooned pages out of MemTotal.
                shrinks_memtotal = not bit(F_DEFLATE_ON_OOM)
            if "nr_balloon_pages" in vmstat:
                balloon_bytes = vmstat["nr_balloon_pages"] * page
            elif "Balloon" in meminfo:
                balloon_bytes = meminfo["Balloon"] * KIB
            elif "balloon_inflate" in vmstat and "balloon_deflate" in vmstat:
                balloon_bytes = max(0, vmstat["balloon_inflate"] - vmstat["balloon_deflate"]) * page
        elif driver is not None and driver.name == "vmw_balloon":
            stats = self.files.parse("sys/kernel/debug/vmmemctl", parse_vmmemctl)
            if stats is not None:
                balloon_bytes = stats["current"] * VMW_PAGE
                target_bytes = stats["target"] * VMW_PAGE
        elif driver is not None and driver.name == "xen_balloon":
            shrinks_memtotal = True  # balloon.c takes ballooned pages out of managed memory
            base = "sys/devices/system/xen_memory/xen_memory0/"
            values = {
                name: self.files.parse(base + name, parse_ulong)
                for name in ("target_kb", "info/current_kb", "info/low_kb", "info/high_kb")
            }
            current_kb, target_kb = values["info/current_kb"], values["target_kb"]
            low_kb, high_kb = values["info/low_kb"], values["info/high_kb"]
            if low_kb is not None and high_kb is not None:
                balloon_bytes = (low_kb + high_kb) * KIB
            if current_kb is not None:
                current_override = current_kb * KIB
                if balloon_bytes is not None and target_kb is not None:
                    # xen's target is the domain's memory; the balloon's target is the rest.
                    target_bytes = max(0, current_override + balloon_bytes - target_kb * KIB)
        elif driver is not None and driver.name == "hv_balloon":
            hv_stats = self.files.parse("sys/kernel/debug/hv-balloon", parse_hv_balloon)
            if hv_stats is not None:
                hv_page = decimal(hv_stats["page_size"]) if "page_size" in hv_stats else page
                balloon_bytes = decimal(hv_stats["pages_ballooned"]) * hv_page
            shrinks_memtotal = True

        if "MemTotal" in meminfo:
            total = meminfo["MemTotal"] * KIB
            fields["guest_total_bytes"] = total
            if current_override is not None:
                fields["memory_current_bytes"] = current_override
                if balloon_bytes is not None:
                    fields["memory_max_bytes"] = current_override + balloon_bytes
            elif balloon_bytes is not None:
                maximum = total + balloon_bytes if shrinks_memtotal else total
                fields["memory_max_bytes"] = maximum
                fields["memory_current_bytes"] = maximum - balloon_bytes
            elif shrinks_memtotal:
                # The balloon's size is unknown and MemTotal lacks it: the VM's configured
                # memory cannot be known, only what the guest has now.
                fields["memory_current_bytes"] = total
            else:
                fields["memory_max_bytes"] = total
        if balloon_bytes is not None:
            fields["balloon_actual_bytes"] = balloon_bytes
        if target_bytes is not None:
            fields["balloon_target_bytes"] = target_bytes
        for name, key in (
            ("guest_free_bytes", "MemFree"),
            ("guest_available_bytes", "MemAvailable"),
            ("swap_total_bytes", "SwapTotal"),
        ):
            if key in meminfo:
                fields[name] = meminfo[key] * KIB
        if "Cached" in meminfo and "Buffers" in meminfo:
            fields["guest_disk_caches_bytes"] = (meminfo["Cached"] + meminfo["Buffers"]) * KIB

        for name, key, scale in (
            ("swap_in_bytes_total", "pswpin", page),
            ("swap_out_bytes_total", "pswpout", page),
            ("major_faults_total", "pgmajfault", 1),
            # the virtio driver reports pgfault as "minor faults"; so do we, to agree with it
            ("minor_faults_total", "pgfault", 1),
            ("inflate_pages_total", "balloon_inflate", 1),
            ("deflate_pages_total", "balloon_deflate", 1),
            ("migrate_pages_total", "balloon_migrate", 1),
            ("oom_kills_total", "oom_kill", 1),
        ):
            if key in vmstat:
                fields[name] = vmstat[key] * scale

        self._pressure(fields)

        thp = self.files.parse("sys/kernel/mm/transparent_hugepage/enabled", parse_thp)
        if thp is not None:
            fields["thp_mode"] = thp

        hypervisor = detect_hypervisor(self.files, driver, self._cpu_flag)
        if hypervisor != "none":
            # On a machine that is not a VM, there is no balloon to judge: its memory and
            # swap figures stay (they are true), no driver or inflation judgement is made.
            blacklist = detect_blacklist(self.files)
            if driver is not None:
                fields["driver_loaded"] = driver.bound
                fields["driver_blacklisted"] = driver.name in blacklist
            else:
                fields["driver_loaded"] = False
                fields["driver_blacklisted"] = any(m in blacklist for m in BALLOON_MODULES)
            fields["inflation_blocked"] = driver is None or not driver.bound
            fields["virtio_console_blacklisted"] = VIRTIO_CONSOLE in blacklist
        self._vmem(fields)
        readable = debugfs_world_readable(self.files, driver)
        if readable is not None:
            fields["debugfs_world_readable"] = readable

        tags = {
            "host": self.hostname,
            "guest": self.hostname,
            "hypervisor": hypervisor,
            "source": "guest",
            "driver": driver.name if driver is not None else "none",
        }
        uuid_text = self.files.read("sys/class/dmi/id/product_uuid")
        if uuid_text and uuid_text.strip():
            product_uuid = self.files.parse_text(
                "sys/class/dmi/id/product_uuid", uuid_text, parse_uuid
            )
            if product_uuid is not None:
                tags["uuid"] = product_uuid
        for name, value in list(fields.items()):
            # Each input fits int64; a product of two (pages x page size) may not.
            if type(value) is int and not -INT64_MAX - 1 <= value <= INT64_MAX:
                del fields[name]
                self.log.fault(
                    f"guest-range:{self.root}:{name}",
                    f"guest source: {name} under {self.root} is out of range, skipped",
                )
        sample = Sample(tags.get("uuid", self.hostname), tags, fields)
        if fields.get("driver_blacklisted") is True:
            # Where it is blacklisted, for --explain to name the file (not a field).
            origins = blacklist_origins(self.root)
            sample.detail = Detail({m: origins[m] for m in BALLOON_MODULES if m in origins})
        return PollResult(samples=[sample], api_latency_seconds=self._clock() - started)

    def _vmem(self, fields: Fields) -> None:
        """virtio-mem devices: their driver, and the memory the kernel shows they added.

        The guest kernel shows no plugged or requested size per device (only its log does,
        at each request): /proc/iomem holds each device's region and, beneath it, every
        memory block the driver added, whose state says whether it is online. Root only:
        other readers see every address as 0, and get the driver's state alone.
        """
        devices = virtio_mem_devices(self.files)
        if not devices:
            return
        fields["vmem_driver_loaded"] = all(bound for _, bound in devices)
        text = self.files.read("proc/iomem")
        if text is None:
            return
        names = {name for name, _ in devices}
        regions = self.files.parse_text(
            "proc/iomem", text, lambda t: parse_vmem_iomem(t, names) or {}
        )
        if not regions:
            return
        fields["vmem_max_bytes"] = sum(size for size, _ in regions.values())
        blocks = [span for _, spans in regions.values() for span in spans]
        fields["vmem_plugged_bytes"] = sum(end - start + 1 for start, end in blocks)
        block_size = self.files.parse("sys/devices/system/memory/block_size_bytes", parse_hex)
        if not block_size:
            return
        spans = [(start // block_size, (end + 1) // block_size) for start, end in blocks]
        if sum(last - first for first, last in spans) > MAX_VMEM_BLOCKS:
            return
        offline = 0
        for first, last in spans:
            for index in range(first, last):
                state = self.files.read(f"sys/devices/system/memory/memory{index}/state")
                if state is not None and state.strip() == "offline":
                    offline += 1
        fields["vmem_offline_bytes"] = offline * block_size
