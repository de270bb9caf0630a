"""Balloon targets from realtime performance counters, used only while their sample is fresh.

QueryPerf is asked at most once per realtime sample (20 s) for every VM, and at once for a VM
never sampled; in between each VM's last sample is reused. Its queries are split under the
server's metric limit and a reply-size bound (:func:`batches`). A sample is used only while it
is at most MAX_SAMPLE_AGE old: its age when it came, by the server's clock (the reply's Date
minus the sample's timestamp), plus the time since, by ours. Otherwise, and for a VM the last
answer left out, the VM keeps its quickStats and gets no target, so a QueryPerf that stops
answering freezes nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Container, Iterator
from typing import TYPE_CHECKING, Callable, Optional

from ...log import Log
from ...model import Fields
from .fields import COUNTERS, counter_fields, counters_for
from .soap import (
    PERF_REPLY,
    REALTIME_INTERVAL,
    VsphereFault,
    error_text,
    parse_perf,
    query_perf_request,
)

if TYPE_CHECKING:
    from .session import Client, Session

# A counter sample older than this (two realtime intervals) is never used: the VM then reports
# its quickStats and no balloon target.
MAX_SAMPLE_AGE = 2 * REALTIME_INTERVAL
REPLY_ELEMENTS = 200_000  # keep each QueryPerf reply well under vCenter's 500,000 elements

# A realtime sample held between polls: its age when it came (by the server's clock), our
# clock then, and the counters' values in COUNTERS order (None: not in the sample); just the
# first two when the answer left the VM out. One flat tuple per VM: every VM's sample is held
# across polls, and a dict of counters each would cost twice as much.
Held = tuple[Optional[float], ...]


class Chosen:
    """The polled VMs as the targets step sees them, in three lists (not a tuple per VM): each
    one's moid, which quickStats its reply carried (fields.QUICK_PRESENT), and its fields, which
    the step completes in place."""

    __slots__ = ("fields", "moids", "present")

    def __init__(self) -> None:
        self.moids: list[str] = []
        self.present: list[Container[str]] = []
        self.fields: list[Fields] = []

    def __len__(self) -> int:
        return len(self.moids)


def batches(
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


class RealtimeTargets:
    """The last realtime sample of each VM, asked again once per sample, used while fresh."""

    def __init__(self, client: Client, log: Log, instance: str, clock: Callable[[], float]) -> None:
        self._client = client
        self.log = log
        self.instance = instance
        self._clock = clock
        # The last realtime sample per VM moid (Held). Its age now is its age when it came
        # plus the time since, by our clock.
        self._perf: dict[str, Held] = {}
        self._perf_asked = -float(REALTIME_INTERVAL)  # monotonic time of the last full query

    def fill(self, session: Session, chosen: Chosen, now: float) -> None:
        """Fill target (and swapped/compressed where quickStats lack them) from counters."""
        ids = session.counter_ids
        due_all = self._clock() - self._perf_asked >= REALTIME_INTERVAL
        queries: list[tuple[str, list[int]]] = []
        perf = self._perf
        asked: dict[Container[str], list[int]] = {}  # one id list per quickStats combination
        for moid, present in zip(chosen.moids, chosen.present):
            if not due_all and moid in perf:
                continue
            wanted = asked.get(present)
            if wanted is None:
                wanted = asked[present] = [ids[n] for n in counters_for(present) if n in ids]
            queries.append((moid, wanted))
        key = f"vsphere-perf:{self.instance}"
        if queries:
            try:
                self._query_perf(session, queries, now)
            except (VsphereFault, ET.ParseError) as exc:
                self.log.fault(
                    key,
                    f"vsphere {self.instance}: QueryPerf failed: {error_text(exc)}; balloon "
                    f"targets absent (quickStats used) for VMs without a sample from the last "
                    f"{MAX_SAMPLE_AGE} s, until it answers again",
                )
            else:
                self.log.clear(
                    key, f"vsphere {self.instance}: QueryPerf answering again; balloon targets back"
                )
                if due_all:
                    self._perf_asked = self._clock()
        if sum(1 for moid in chosen.moids if moid in perf) < len(perf):
            for gone in set(perf).difference(chosen.moids):  # VMs gone: their samples too
                del perf[gone]
        clock = self._clock()
        late = 0
        oldest = 0.0
        for moid, present, fields in zip(chosen.moids, chosen.present, chosen.fields):
            held = perf.get(moid)
            if held is None or len(held) == 2:
                continue
            came_age, came_at = held[0], held[1]
            assert came_age is not None and came_at is not None
            if came_age > MAX_SAMPLE_AGE:  # old already when vCenter answered with it
                late += 1
                oldest = max(oldest, came_age)
                continue
            if came_age + (clock - came_at) <= MAX_SAMPLE_AGE:
                values = {n: int(v) for n, v in zip(COUNTERS, held[2:]) if v is not None}
                counter_fields(values, present, fields)
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
        self, session: Session, queries: list[tuple[str, list[int]]], now: float
    ) -> None:
        # Each counter id's place in a held sample (COUNTERS order).
        ids = session.counter_ids
        places = {ids[name]: i for i, name in enumerate(COUNTERS) if name in ids}
        client = self._client
        perf = self._perf
        for batch in batches(queries, session.max_query_metrics):
            body = query_perf_request(session.perf_manager, batch)
            answer = client.call(session, body, PERF_REPLY, parse_perf)
            came_at = self._clock()
            # The samples' ages by the server's own clock (its reply's Date), so a skewed clock
            # here neither ages nor rejuvenates them; the poll's time when it sends no Date.
            server_now = client.reply_date if client.reply_date is not None else now
            asked = {moid for moid, _ in batch}
            ages: dict[float, float] = {}  # one age per sample time (usually one per reply)
            for moid, stamp, values in answer:
                age = ages.get(stamp)
                if age is None:
                    age = ages[stamp] = max(0.0, server_now - stamp) if stamp > 0 else 0.0
                sample: list[Optional[float]] = [age, came_at, None, None, None, None]
                for counter, value in values.items():
                    place = places.get(counter)
                    if place is not None:
                        sample[2 + place] = value
                perf[moid] = tuple(sample)
                asked.discard(moid)
            for moid in asked:  # asked, left out of the answer: no sample (not asked again
                perf[moid] = (0.0, came_at)  # until the next 20 s), no target
            if asked:
                self.log.debug(
                    f"vsphere {self.instance}: no realtime sample for {len(asked)} VM(s)"
                )
